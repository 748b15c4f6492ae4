"""``refquant diagnose``: which tensor of a quantized model costs accuracy
(:func:`refquant.diagnosis.sensitivity.sensitivity`), on held-out images.

Calibrates on the train split, quantizes one tensor at a time on another split (``val`` by
default: never the split one reports), prints the table, and with ``--out`` writes
``sensitivity.json`` and ``sensitivity.png``.
"""
import json
import warnings
from pathlib import Path

from refquant import atomic, darknet, ptq
from refquant.cli import BITS, COUNT, default_data, default_names, model_paths, new_output_folder, path
from refquant.data.voc import load_voc, read_names
from refquant.demo.experiment import letterboxed_inputs, mean_average_precision
from refquant.density.em import ConvergenceWarning
from refquant.detection.evaluate import SHIPPED_MODEL, check_names
from refquant.diagnosis.plots import plot_predicted_errors, plot_sensitivity
from refquant.diagnosis.sensitivity import sensitivity, sensitivity_lines
from refquant.plan import DEFAULT_BITS_FIRST_LAST
from refquant.quantizers.baselines import METHODS


def add_arguments(parser):
    parser.add_argument("--cfg", type=path, default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    parser.add_argument("--weights", type=path, default=None, help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    parser.add_argument("--data", type=path, default=None, help="VOC-format tree (default: the shapes data set)")
    parser.add_argument("--names", type=path, default=None, help="class names file (default: the *.names at the root of --data)")
    parser.add_argument("--split", default="val", help="held-out image set to measure on (default val)")
    parser.add_argument("--images", type=COUNT, default=None, help="only the first N images of --split")
    parser.add_argument("--calibration-images", type=COUNT, default=64,
                        help="first N images of the train split to calibrate on (default 64)")
    parser.add_argument("--bits", type=BITS, default=8, help="width of weights and activations (default 8)")
    parser.add_argument("--first-bits", type=BITS, default=DEFAULT_BITS_FIRST_LAST,
                        help=f"width of the first convolution (default {DEFAULT_BITS_FIRST_LAST})")
    parser.add_argument("--last-bits", type=BITS, default=DEFAULT_BITS_FIRST_LAST,
                        help=f"width of the last convolution (default {DEFAULT_BITS_FIRST_LAST})")
    parser.add_argument("--method", default="pgm", choices=list(METHODS), help="calibration method (default pgm)")
    parser.add_argument("--activation-breakpoints", default=ptq.DEFAULT_ACTIVATION_BREAKPOINTS,
                        choices=list(ptq.ACTIVATION_BREAKPOINTS), help="the PGM's activation breakpoint policy")
    parser.add_argument("--out", type=path, default=None, help="folder for sensitivity.json and sensitivity.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """``refquant diagnose``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    cfg, weights = model_paths(args)
    data = Path(args.data) if args.data else default_data()
    names_path = Path(args.names) if args.names else default_names(data)
    names = read_names(names_path)
    net = darknet.load(cfg, weights)
    check_names(net, names, names_path)
    for option in ("images", "calibration_images"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')}: expected a positive number of images, got {value}")
    out = new_output_folder(args.out) if args.out else None
    progress = not args.no_progress
    _, height, width = net.input_shape
    calibration = load_voc(data, "train", names)[:args.calibration_images]
    records = load_voc(data, args.split, names)[:args.images]
    if not calibration or not records:
        raise ValueError(f"{data}: no images in the train split or in split {args.split!r}")
    statistics = ptq.calibration_statistics(net, letterboxed_inputs(calibration, width, height, progress), progress=progress,
                                            activation_breakpoints=args.activation_breakpoints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plan = ptq.quantization_plan(statistics, args.bits, args.bits, args.method, args.first_bits, args.last_bits)
    inputs = letterboxed_inputs(records, width, height, progress)
    float_mAP, rows = sensitivity(statistics, plan, inputs,
                                  lambda heads: mean_average_precision(heads, records, statistics.net, names)[0],
                                  progress=progress)
    layer_names = [layer.type for layer in statistics.net.layers]
    print(f"{weights} on {data} split {args.split} ({len(records)} images), {args.method} at {args.bits} bits "
          f"(first/last {args.first_bits}/{args.last_bits})")
    print("\n".join(sensitivity_lines(float_mAP, rows, layer_names)))
    if out is not None:
        _write(out, args, float_mAP, rows)
        print(f"written: {out / 'sensitivity.json'}, {out / 'sensitivity.png'}")
    return 0


def _write(out, args, float_mAP, rows):
    from matplotlib.figure import Figure
    out.mkdir(parents=True, exist_ok=True)
    record = {"split": args.split, "method": args.method, "bits": args.bits, "float_mAP": float_mAP,
              "tensors": [row.__dict__ for row in rows]}
    atomic.write_text(out / "sensitivity.json", json.dumps(record, indent=1) + "\n")
    figure = Figure(figsize=(11, max(4.5, 0.3 * len(rows) + 1.2)))
    left, right = figure.subplots(1, 2)
    plot_sensitivity(rows, ax=left)
    if any(row.predicted_mse for row in rows):
        plot_predicted_errors(rows, ax=right)
    else:
        right.set_axis_off()
    figure.tight_layout()
    atomic.atomic_write(out / "sensitivity.png", lambda f: figure.savefig(f, format="png", dpi=110))
