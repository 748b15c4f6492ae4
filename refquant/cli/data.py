"""``refquant data shapes PATH``: draw a fresh shapes tree from a seed (:func:`refquant.data.shapes.generate`).

The held-out protocol: settings are chosen on trees of one's own seeds and on validation splits;
a tree of another seed is new data for the shipped model (same generator, other images).
"""
from refquant.cli import SEED, integer, path
from refquant.data.shapes import generate


def add_arguments(parser):
    sub = parser.add_subparsers(dest="data_command", required=True)
    shapes = sub.add_parser("shapes", help="draw a shapes VOC tree from a seed into a new folder",
                            description="Draw a shapes VOC tree (Annotations, JPEGImages, ImageSets, "
                                        "shapes.names) from a seed into PATH, which must not exist.")
    shapes.add_argument("path", type=path, metavar="PATH", help="the new tree's folder (must not exist)")
    shapes.add_argument("--seed", type=SEED, required=True, help="the generator's seed (the shipped tree is seed 0)")
    shapes.add_argument("--size", type=integer(16, 4096), default=160, help="image side in pixels (default 160)")
    for split, default in (("train", 2000), ("val", 200), ("test", 500)):
        shapes.add_argument(f"--{split}", type=integer(0, 10**7), default=default, help=f"images in the {split} split "
                                                                          f"(default {default})")
    shapes.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """``refquant data shapes``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    path = generate(args.path, seed=args.seed, size=args.size, train=args.train, val=args.val, test=args.test,
                    progress=not args.no_progress)
    print(f"shapes tree, seed {args.seed}: {args.train} train, {args.val} val, {args.test} test images of "
          f"{args.size}x{args.size} in {path}")
    return 0
