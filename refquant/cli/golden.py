"""``refquant golden export DIR`` and ``refquant golden check DIR`` (:mod:`refquant.golden`).
"""
import sys
from pathlib import Path

import refquant
from refquant.cli import path
from refquant.golden.check import check
from refquant.golden.export import export
from refquant.golden.vectors import VECTORS
from refquant.integer.profiles import PROFILES


def add_arguments(parser):
    """``refquant golden export DIR`` and ``refquant golden check DIR``."""
    sub = parser.add_subparsers(dest="golden_command", required=True)
    exporter = sub.add_parser("export", help="write the golden vectors and their manifest into DIR",
                              description="Write the golden vectors (.npz), the network files and manifest.json.")
    exporter.add_argument("directory", type=path, metavar="DIR")
    exporter.add_argument("--profile", choices=list(PROFILES), default="exact",
                          help="arithmetic profile of the integer_network vector (default: exact, refquant's "
                               "own; gemmlowp, gemmlowp-single: TFLite's; float-scale: onnxruntime's and fbgemm's)")
    checker = sub.add_parser("check", help="recompute the golden vectors in DIR and report every mismatch",
                             description="Recompute every golden vector in DIR with this refquant; exit status 1 "
                                         "and one line per mismatch (vector, array, index, expected, got) if any.")
    checker.add_argument("directory", type=path, metavar="DIR")
    checker.add_argument("--vector", action="append", choices=list(VECTORS), default=None,
                         help="check only this vector (repeatable; default: all)")
    for sub_parser in (exporter, checker):
        sub_parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """Run ``export`` or ``check``; the exit status (0 when everything matches)."""
    progress = False if args.no_progress else None
    if args.golden_command == "export":
        manifest = export(args.directory, progress=progress, profile=args.profile)
        count = sum(len(v["arrays"]) for v in manifest["vectors"].values())
        print(f"golden vectors: {len(manifest['vectors'])} vectors, {count} arrays, "
              f"{len(manifest['files'])} files in {args.directory}")
        return 0
    if not Path(args.directory).is_dir():
        raise FileNotFoundError(f"DIR: {args.directory} does not exist or is not a folder "
                                "(make one with 'refquant golden export DIR')")
    mismatches = check(args.directory, vectors=args.vector, progress=progress)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}")
    if mismatches:
        count = len(mismatches)
        print(f"golden check: {count} mismatch{'es' if count != 1 else ''} in {args.directory}", file=sys.stderr)
        return 1
    print(f"golden check: every vector in {args.directory} matches refquant {refquant.__version__}")
    return 0
