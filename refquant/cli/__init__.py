"""The ``refquant`` command line: one module per subcommand in this package, each providing
``add_arguments(parser)`` and ``run(args) -> int``; :func:`main` dispatches and turns the errors a
user can cause into one line on stderr and exit status 2 (:func:`user_errors`).

Arguments are checked where argparse reads them, by the types below (:func:`number`,
:func:`integer`, :func:`path`): a number is ASCII decimal and finite and within its range, a
path is not empty; argparse's own errors are printed in the same one line (:class:`Parser`).
"""
import argparse
import importlib
import re
import sys
from pathlib import Path

from refquant import validate
from refquant.detection.evaluate import shipped_model


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, ``refquant COMMAND: error: MESSAGE``, exit status 2
    (argparse's status; its default prints the usage first, several lines)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(low=None, high=None, open_low=False, open_high=False, bounds=None):
    """An argparse type: a finite decimal number (:func:`refquant.validate.parse_decimal`, so not
    ``nan``, ``inf`` or ``1_0``) within the range (``bounds`` as in :mod:`refquant.validate`)."""
    bounds = bounds or (low, high, open_low, open_high)

    def parse(text):
        try:
            return validate.check_range(validate.parse_decimal(text.strip()), bounds, "value")
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {_expected('a finite decimal number', bounds)}")
    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


INTEGER_ARGUMENT = re.compile(r"[+-]?[0-9]{1,19}\Z", re.ASCII)


def integer(low=None, high=None):
    """An argparse type: an integer in ASCII digits (not ``1_0``, ``1.0`` or non-ASCII digits)
    within [``low``, ``high``] (None: unbounded on that side)."""
    bounds = (low, high, False, False)

    def parse(text):
        if not INTEGER_ARGUMENT.match(text.strip()) or not _inside(int(text), bounds):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {_expected('an integer', bounds)}")
        return int(text)
    parse.__name__ = "integer"
    return parse


def path(text):
    """An argparse type: a path that is not empty (an empty ``--cfg ''`` must not fall back to
    the shipped default) and has no NUL character (no file system takes one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: a path cannot contain a NUL character")
    return text


def _expected(kind, bounds):
    """``an integer >= 1``, ``a finite decimal number in [0, 1]``."""
    if bounds[0] is None and bounds[1] is None:
        return kind
    return f"{kind} {validate.describe_range(bounds).removeprefix('a value ')}"


def _inside(value, bounds):
    try:
        validate.check_range(value, bounds, "value")
    except ValueError:
        return False
    return True


BITS = integer(2, 8)
"""A width in bits (:data:`refquant.plan.MIN_BITS` .. :data:`refquant.plan.MAX_BITS`)."""


COUNT = integer(1)
"""A positive count (images, updates)."""


SEED = integer(0, 2**63 - 1)
"""A seed of ``numpy.random.default_rng`` (non-negative)."""


FRACTION = number(0, 1)
"""A threshold or fraction in [0, 1]."""

WORKERS = integer(1, 1024)
"""Worker processes of a local Dask cluster (``--workers``)."""


SCHEDULER_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?[A-Za-z0-9._\-\[\]:]+\Z", re.ASCII)


def scheduler_address(text):
    """An argparse type: a Dask scheduler's address, ``[PROTOCOL://]HOST[:PORT]`` (``tcp://10.0.0.5:8786``)."""
    if not SCHEDULER_ADDRESS.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a Dask scheduler address such as tcp://HOST:8786")
    return text.strip()


def add_cluster_arguments(parser):
    """``--workers N`` and ``--scheduler ADDRESS`` (one or the other): where the per-image and
    per-layer work runs (:func:`refquant.distributed.connect`); neither runs it in this process."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=WORKERS, default=None,
                       help="run the per-image and per-layer work on a local Dask cluster of N worker processes "
                            "(pip install refquant[dask]; the same results bit for bit)")
    group.add_argument("--scheduler", type=scheduler_address, default=None,
                       help="run it on the Dask cluster whose scheduler is at ADDRESS (tcp://HOST:8786)")


SUBCOMMANDS = {
    "demo": ("refquant.cli.demo", "run the paper's experiment on the shipped data and model"),
    "train": ("refquant.cli.train", "train a detector from a Darknet cfg on a VOC-format tree"),
    "eval": ("refquant.cli.eval", "per-class AP and mAP of a model on a VOC-format tree"),
    "detect": ("refquant.cli.detect", "draw a model's detections on an image into a PNG"),
    "diagnose": ("refquant.cli.diagnose", "which tensor of a quantized model costs accuracy (per-tensor sensitivity)"),
    "data": ("refquant.cli.data", "draw a fresh shapes data set from a seed (held-out data)"),
    "golden": ("refquant.cli.golden", "export or check golden vectors for other implementations"),
    "export": ("refquant.cli.export", "write a quantized model for another engine (ONNX, run by onnxruntime)"),
}


def build_parser(command=None):
    """The parser; only the chosen subcommand's module is imported (they pull in Numba)."""
    parser = Parser(prog="refquant", description="Low-precision YOLO, reference implementation.")
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
        message = " ".join(str(error).split("\n"))  # one line, whatever the message holds
        print(f"refquant {command}: error: {message}", file=sys.stderr)
        return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or an argument refused (2), already printed
        return exit_request.code
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
