"""``refquant demo``: arguments of the paper's experiment (:mod:`refquant.demo`).
"""
import datetime
from pathlib import Path

from refquant import cli, validate
from refquant.cli import BITS as WIDTH
from refquant.cli import COUNT, SEED, default_data, default_names, model_paths, new_output_folder, number, path
from refquant.demo.experiment import (
    BITS,
    CALIBRATION_IMAGES,
    PTQ_METHODS,
    QAT_BATCH,
    QAT_BITS,
    QAT_ITERATIONS,
    QAT_LEARNING_RATE,
    QAT_STEP_AT,
    QUICK,
    REFIT_EVERY,
    Settings,
)


def add_arguments(parser):
    parser.add_argument("--out", type=path, default=None, help="output folder (default: a new ./refquant-demo-YYYYmmdd-HHMMSS)")
    parser.add_argument("--cfg", type=path, default=None, help="Darknet cfg (default: the shipped shapes-tiny-yolo.cfg)")
    parser.add_argument("--weights", type=path, default=None, help="Darknet weights (default: the shipped model's)")
    parser.add_argument("--names", type=path, default=None, help="class names (default: the shipped model's .names)")
    parser.add_argument("--data", type=path, default=None, help="VOC-format tree with train and test splits "
                                                     "(default: the shapes data set)")
    parser.add_argument("--bits", default=None, help=f"PTQ widths, comma-separated (default {','.join(map(str, BITS))})")
    parser.add_argument("--methods", default=None,
                        help=f"PTQ methods, comma-separated, among pgm,minmax,percentile,aciq,aciq-gauss,mse,kl "
                             f"(default {','.join(PTQ_METHODS)})")
    parser.add_argument("--qat-bits", default=None,
                        help=f"QAT widths, comma-separated, or 'none' (default {','.join(map(str, QAT_BITS))})")
    parser.add_argument("--activation-breakpoints", choices=("auto", "kink"), default="auto",
                        help="breakpoints of the activations' PGMs: chosen by BIC with 0 among the candidates "
                             "(auto, the default), or 0 alone for leaky-ReLU outputs (kink); see refquant.ptq")
    parser.add_argument("--first-bits", type=WIDTH, default=8, help="width of the first convolution (default 8)")
    parser.add_argument("--last-bits", type=WIDTH, default=8, help="width of the last convolution (default 8)")
    parser.add_argument("--calibration-images", type=COUNT, default=None,
                        help=f"train images for calibration (default {CALIBRATION_IMAGES})")
    parser.add_argument("--test-images", type=COUNT, default=None,
                        help="evaluate on the first N test images (default: the whole test split)")
    parser.add_argument("--qat-iterations", type=COUNT, default=None, help=f"QAT updates (default {QAT_ITERATIONS})")
    parser.add_argument("--qat-batch", type=COUNT, default=None, help=f"images per QAT update (default {QAT_BATCH})")
    parser.add_argument("--qat-learning-rate", type=number(0, open_low=True), default=QAT_LEARNING_RATE,
                        help=f"QAT learning rate (default {QAT_LEARNING_RATE})")
    parser.add_argument("--qat-step-at", type=number(0, 1, open_low=True), default=QAT_STEP_AT,
                        help=f"fraction of the QAT updates after which the learning rate drops x0.1 "
                             f"(default {QAT_STEP_AT:.3g}; 1: never)")
    parser.add_argument("--refit-every", type=COUNT, default=None,
                        help=f"refit the PGMs every N QAT iterations (default {REFIT_EVERY})")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the QAT batches and augmentation (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (a few images and QAT iterations) for tests and a first look")
    parser.add_argument("--profiles", action="store_true",
                        help="also score the 8-bit and 4-bit PGM models under every arithmetic profile (exact, "
                             "gemmlowp, gemmlowp-single, float-scale: docs/SPECIFICATION.md, section 11.8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_cluster_arguments(parser)


def _widths(text, option, allow_none=False):
    if text is None:
        return None
    if allow_none and text.strip().lower() == "none":
        return ()
    try:
        values = tuple(validate.parse_integer(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"{option}={text!r}: expected comma-separated integers") from None
    if not values or any(not 2 <= v <= 8 for v in values):
        raise ValueError(f"{option}={text!r}: expected widths between 2 and 8")
    return values


def settings_from_arguments(args):
    """:class:`Settings` from the parsed arguments: the shipped model and data by default,
    ``--quick``'s budgets where no explicit value is given."""
    from refquant.detection.evaluate import shipped_model
    from refquant.quantizers.baselines import METHODS
    # Every check of the arguments alone first, before anything is loaded or generated (the shapes
    # data set is made on first use: seconds).
    bits = _widths(args.bits, "--bits") or BITS
    qat_bits = QAT_BITS if args.qat_bits is None else _widths(args.qat_bits, "--qat-bits", True)
    for option, value in (("--first-bits", args.first_bits), ("--last-bits", args.last_bits)):
        if not 2 <= value <= 8:
            raise ValueError(f"{option}={value}: expected a width between 2 and 8")
    methods = PTQ_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown or methods}; expected some of {', '.join(METHODS)}")
    budget = dict(QUICK) if args.quick else {}
    for key in ("calibration_images", "test_images", "qat_iterations", "qat_batch", "refit_every"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    for key, value in budget.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"--{key.replace('_', '-')}={value!r}: expected a positive integer")
    if not 0 < args.qat_step_at <= 1:
        raise ValueError(f"--qat-step-at={args.qat_step_at!r}: expected a fraction in (0, 1]")
    if not args.qat_learning_rate > 0:
        raise ValueError(f"--qat-learning-rate={args.qat_learning_rate!r}: expected a positive rate")
    cfg, weights = (str(path) for path in model_paths(args))
    if args.data and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data: {args.data} does not exist or is not a folder")
    if args.names and not Path(args.names).is_file():
        raise FileNotFoundError(f"--names: {args.names} does not exist")
    data = args.data or str(default_data())
    names = args.names or (str(shipped_model(".names")) if not args.data else str(default_names(data)))
    out = args.out or f"refquant-demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return Settings(cfg=cfg, weights=weights, names=names, data=data, out=out,
                    bits=bits, methods=methods, qat_bits=qat_bits,
                    first_bits=args.first_bits, last_bits=args.last_bits, qat_learning_rate=args.qat_learning_rate,
                    qat_step_at=args.qat_step_at,
                    activation_breakpoints=args.activation_breakpoints,
                    seed=args.seed, quick=args.quick, progress=not args.no_progress, profiles=args.profiles,
                    **budget)


def run(args):
    from refquant.demo import run_experiment
    from refquant.demo.report import summary_lines
    from refquant.distributed import connect
    settings = settings_from_arguments(args)
    out = new_output_folder(settings.out)
    print(f"refquant demo: {settings.cfg} with {settings.weights}; results in {out}/")
    with connect(args.workers, args.scheduler) as client:
        results = run_experiment(settings, client)
    print()
    print("\n".join(summary_lines(results)))
    print(f"report: {out / 'report.md'}")
    return 0
