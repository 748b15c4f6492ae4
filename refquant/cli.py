"""The ``refquant`` command line: ``refquant demo`` and the other subcommands."""
import argparse
import sys


def _demo(args):
    print("refquant demo: the end-to-end experiment is not built yet (issue 7).")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="refquant", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the paper's experiment on the shipped data and model")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
