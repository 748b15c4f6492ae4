"""``refquant train``: arguments of a training run (:func:`refquant.train.train`).
"""
from pathlib import Path

from refquant import darknet, validate
from refquant.cli import SEED, default_data, default_names, integer, number, path
from refquant.detection.evaluate import shipped_model
from refquant.train import train


def add_arguments(parser):
    parser.add_argument("--cfg", type=path, default=None, help="Darknet cfg of the network, its [net] giving the defaults "
                                                    "(default: the shipped model's cfg)")
    parser.add_argument("--data", type=path, default=None,
                        help="VOC-format tree to train on (default: the shapes data set, generated on first use)")
    parser.add_argument("--names", type=path, default=None,
                        help="class names file (default: the only *.names file at the root of --data)")
    parser.add_argument("--split", default="train", help="image set of ImageSets/Main to train on (default train)")
    parser.add_argument("--weights", type=path, default=None, help="Darknet weights to start from (default: random init)")
    parser.add_argument("--out", type=path, required=True, help="output directory for checkpoints and the final weights")
    parser.add_argument("--name", default=None, help="file stem of the outputs (default: the cfg's)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the initialisation, images and augmentation")
    parser.add_argument("--checkpoint-every", type=integer(1), default=100, help="updates between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out (its files are replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for key, kind, text in (("batch", int, "images per update"), ("subdivisions", int, "passes per update"),
                            ("learning-rate", float, "base learning rate"), ("momentum", float, "SGD momentum"),
                            ("decay", float, "weight decay"), ("max-batches", int, "number of updates"),
                            ("burn-in", int, "updates of the burn-in ramp"), ("power", float, "burn-in/poly power"),
                            ("policy", str, "learning-rate policy"), ("jitter", float, "crop jitter"),
                            ("hue", float, "hue shift"), ("saturation", float, "saturation scale"),
                            ("exposure", float, "exposure scale")):
        parser.add_argument(f"--{key}", type=_cfg_type(key.replace("-", "_"), kind), default=None,
                            help=f"{text} (default: the cfg's)")
    parser.add_argument("--steps", default=None, help="comma-separated updates where the rate is scaled (steps policy)")
    parser.add_argument("--scales", default=None, help="comma-separated scales, one per step")


def _cfg_type(key, kind):
    """The argparse type of an option that overrides the cfg key ``key``: its range there
    (:data:`refquant.darknet.KEY_RANGES`); ``--max-batches`` at least 1 (a cfg may leave 0, Darknet's
    default, but a run trains at least one update)."""
    if kind is str:
        return path
    bounds = validate.at_least(1) if key == "max_batches" else darknet.KEY_RANGES.get(key, (None, None, False, False))
    if kind is int:
        return integer(bounds[0], bounds[1])
    return number(bounds=bounds)


def _parse_list(text, kind, option):
    """Comma-separated numbers under the cfg's rules (:func:`refquant.validate.parse_integer`,
    :func:`refquant.validate.parse_decimal`: ASCII decimal, finite)."""
    if text is None:
        return None
    parse = validate.parse_integer if kind is int else validate.parse_decimal
    try:
        return [parse(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{option}={text!r}: expected comma-separated {kind.__name__} values") from None


def run(args):
    """``refquant train``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    overrides = {key: getattr(args, key) for key in ("batch", "subdivisions", "learning_rate", "momentum", "decay",
                                                      "max_batches", "burn_in", "power", "policy", "jitter", "hue",
                                                      "saturation", "exposure")}
    overrides["steps"] = _parse_list(args.steps, int, "--steps")  # the arguments first, then the data
    overrides["scales"] = _parse_list(args.scales, float, "--scales")
    data = Path(args.data) if args.data else default_data()
    names = Path(args.names) if args.names else default_names(data)
    try:
        result = train(args.cfg or shipped_model(".cfg"), data, names, args.out, split=args.split,
                       weights=args.weights, seed=args.seed, overrides=overrides,
                       checkpoint_every=args.checkpoint_every, resume=args.resume, name=args.name,
                       progress=not args.no_progress, force=args.force)
    except KeyboardInterrupt:
        return 130
    print(f"trained {result['iteration']} updates ({result['seen']} images seen) in {result['seconds']:.0f} s; "
          f"weights: {result['weights']}")
    return 0
