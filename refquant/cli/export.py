"""``refquant export onnx``: a quantized model as an ONNX graph onnxruntime runs with its integer
kernels (:func:`refquant.export.onnx.export_onnx`, docs/onnx.md).
"""
from pathlib import Path

from refquant import darknet
from refquant.cli import model_paths, path
from refquant.detection.evaluate import SHIPPED_MODEL
from refquant.plan import QuantizationPlan


def add_arguments(parser):
    """``refquant export onnx --plan PLAN --output FILE [--cfg CFG --weights WEIGHTS] [--per-channel]``."""
    sub = parser.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    exporter = sub.add_parser(
        "onnx", help="the plan's integer network as an ONNX model (QLinearConv, uint8 codes in, float32 head input out)",
        description="Write the quantized network (the model folded, then lowered by the plan) as an ONNX model that "
                    "onnxruntime runs with its integer kernels, in refquant's float-scale arithmetic. Input: uint8 "
                    "codes of the plan's input grid; outputs: the region head's input as float32 and as codes. "
                    "Needs the onnx package (pip install refquant[onnx]).")
    exporter.add_argument("--cfg", type=path, default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    exporter.add_argument("--weights", type=path, default=None,
                          help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    exporter.add_argument("--plan", type=path, required=True,
                          help="quantization plan JSON of this model (e.g. a refquant demo's plans/pgm-8bit.plan.json)")
    exporter.add_argument("--output", type=path, required=True, help="the ONNX file to write")
    exporter.add_argument("--per-channel", action="store_true",
                          help="one weight scale per output channel in QLinearConv (default: one per tensor, which "
                               "a plan with per-channel weight steps cannot use)")


def run(args):
    """``refquant export onnx``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    cfg, weights = model_paths(args)
    if not Path(args.plan).is_file():
        raise FileNotFoundError(f"--plan: {args.plan} does not exist or is not a file")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"--output: the folder {output.parent} does not exist")
    net = darknet.load(cfg, weights)
    plan = QuantizationPlan.load(args.plan, net=net)
    from refquant.export.onnx import export_onnx  # onnx is imported when the export runs
    try:
        model = export_onnx(net, plan, output, per_channel=args.per_channel)
    except ModuleNotFoundError as error:  # the optional extra is missing: the user's to install, one line
        raise ValueError(str(error)) from None
    print(f"{output}: {len(model.graph.node)} ONNX nodes, {net.name} quantized by {args.plan} "
          f"({'per-channel' if args.per_channel else 'per-tensor'} weight scales)")
    return 0
