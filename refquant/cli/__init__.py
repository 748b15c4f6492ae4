"""The ``refquant`` command line: one module per subcommand in this package, each providing
``add_arguments(parser)`` and ``run(args) -> int``; :func:`main` dispatches and turns the errors a
user can cause into one line on stderr and exit status 2 (:func:`user_errors`).
"""
import argparse
import importlib
import sys
from pathlib import Path

from refquant.detection.evaluate import shipped_model

SUBCOMMANDS = {
    "demo": ("refquant.cli.demo", "run the paper's experiment on the shipped data and model"),
    "train": ("refquant.cli.train", "train a detector from a Darknet cfg on a VOC-format tree"),
    "eval": ("refquant.cli.eval", "per-class AP and mAP of a model on a VOC-format tree"),
    "detect": ("refquant.cli.detect", "draw a model's detections on an image into a PNG"),
    "diagnose": ("refquant.cli.diagnose", "which tensor of a quantized model costs accuracy (per-tensor sensitivity)"),
    "data": ("refquant.cli.data", "draw a fresh shapes data set from a seed (held-out data)"),
    "golden": ("refquant.cli.golden", "export or check golden vectors for other implementations"),
}


def build_parser(command=None):
    """The parser; only the chosen subcommand's module is imported (they pull in Numba)."""
    parser = argparse.ArgumentParser(prog="refquant", description="Low-precision YOLO, reference implementation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(run=module.run)
    return parser


USER_ERRORS = (ValueError, OSError)
"""What bad input raises (a malformed file, a missing path, an argument out of range): reported in
one line naming the command, not as a traceback. Anything else is a bug and keeps its traceback."""


def user_errors(command, run, args):
    """``run(args)``, with :data:`USER_ERRORS` turned into ``refquant COMMAND: error: MESSAGE`` on
    stderr and exit status 2 (argparse's status for bad arguments)."""
    try:
        return run(args)
    except USER_ERRORS as error:
        print(f"refquant {command}: error: {error}", file=sys.stderr)
        return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    return user_errors(args.command, args.run, args)



def default_names(data):
    """The class names file of a VOC tree: the only ``*.names`` file at its root."""
    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data: {data} does not exist or is not a folder")
    found = sorted(Path(data).glob("*.names"))
    if len(found) != 1:
        raise ValueError(f"{data}: expected exactly one *.names file at the root of the tree to name the classes, "
                         f"found {len(found)}; give --names")
    return found[0]


def default_data():
    """The shapes data set (:func:`refquant.data.shapes.shapes_dataset`, generated on first use)."""
    from refquant.data.shapes import shapes_dataset
    return shapes_dataset()


def model_paths(args):
    """(cfg, weights) from the arguments, the shipped model's for those not given."""
    cfg = Path(args.cfg) if args.cfg else shipped_model(".cfg")
    if not cfg.is_file():
        raise FileNotFoundError(f"--cfg: {cfg} does not exist")
    weights = Path(args.weights) if args.weights else (shipped_model(".weights") if not args.cfg else None)
    if weights is None:
        raise ValueError("--weights: required with --cfg (an untrained network detects nothing)")
    if not weights.is_file():
        hint = ("" if args.weights else " (the shipped model is committed with the project; in a source "
                                          "checkout it is data/models/)")
        raise FileNotFoundError(f"--weights: {weights} does not exist{hint}")
    return cfg, weights


def new_output_folder(path, option="--out"):
    """``path`` as a Path, refused if it exists and holds anything: a command never writes into an
    earlier run's files."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{option}: {path} exists and is not empty; choose a new folder")
    return path


if __name__ == "__main__":
    sys.exit(main())
