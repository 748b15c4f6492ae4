"""The ``refquant`` command line.

Each subcommand lives in the module that owns its concept; that module provides
``add_arguments(parser)`` and ``run(args) -> int``. This file only dispatches.
"""
import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("refquant.cli.demo", "run the paper's experiment on the shipped data and model"),
    "train": ("refquant.cli.train", "train a detector from a Darknet cfg on a VOC-format tree"),
    "eval": ("refquant.cli.eval", "per-class AP and mAP of a model on a VOC-format tree"),
    "detect": ("refquant.cli.detect", "draw a model's detections on an image into a PNG"),
    "golden": ("refquant.cli.golden", "export or check golden vectors for other implementations"),
}


def _load(module_name):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return None


def build_parser(command=None):
    """The parser; only the chosen subcommand's module is imported (they pull in Numba)."""
    parser = argparse.ArgumentParser(prog="refquant", description="Low-precision YOLO, reference implementation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        module = _load(module_name)
        if module is None or not hasattr(module, "run"):
            sub_parser.set_defaults(run=lambda args, n=name, m=module_name: _not_built(n, m))
            continue
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(run=module.run)
    return parser


def _not_built(name, module_name):
    print(f"refquant {name}: not built yet in this version ({module_name} provides no run()).", file=sys.stderr)
    return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
