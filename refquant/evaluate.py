"""``refquant eval``: per-class AP and mAP of a detector on a split of a VOC-format tree.

The path is Darknet's ``validate_detector`` (examples/detector.c) followed by the VOC
devkit: every image of the split is letterboxed into the network input, the region head
is decoded with the validation threshold 0.005 and per-class NMS at 0.45
(:func:`refquant.decode.detect_records`), and the detections are scored against the
split's annotations by :func:`refquant.metrics.average_precision` (IoU >= 0.5; the area
rule of VOC2010 and later by default, the 11-point rule of VOC2007 with ``use_07``).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

from refquant import darknet
from refquant.decode import NMS_THRESHOLD, VALIDATION_THRESHOLD, detect_records
from refquant.data.voc import ground_truth, load_voc, read_names
from refquant.metrics import average_precision

MODELS_DIRS = (Path(__file__).resolve().parent.parent / "data" / "models",
               Path(sys.prefix) / "share" / "refquant" / "models")
"""Where the shipped model lives: ``data/models/`` of a source checkout (an editable install),
else where ``pip install .`` puts it (``setup.cfg``'s ``data_files``: ``<prefix>/share/refquant/models``)."""

SHIPPED_MODEL = "shapes-tiny-yolo"
"""File stem of the shipped model: ``<stem>.cfg``, ``<stem>.weights``, ``<stem>.names``, ``<stem>.json``."""


def shipped_model(suffix):
    """Path of the shipped model's file with ``suffix`` ('.cfg', '.weights', '.names', '.json'), from
    the first of :data:`MODELS_DIRS` that has the weights (FileNotFoundError naming both otherwise)."""
    for folder in MODELS_DIRS:
        if (folder / f"{SHIPPED_MODEL}.weights").is_file():
            return folder / f"{SHIPPED_MODEL}{suffix}"
    raise FileNotFoundError(f"the shipped model {SHIPPED_MODEL}.weights is in none of "
                            f"{', '.join(str(folder) for folder in MODELS_DIRS)}; reinstall refquant "
                            "(pip install .) or pass --cfg/--weights/--names")


def region_head(net):
    """The network's last layer, which must be a ``[region]`` head (ValueError naming the network)."""
    head = net.layers[-1]
    if head.type != "region":
        raise ValueError(f"{net.name}: the last layer is [{head.type}]; refquant decodes region (YOLOv2) heads")
    return head


def check_names(net, names, where):
    """ValueError unless ``names`` has one name per class of the network's region head."""
    head = region_head(net)
    if head.classes != len(names):
        raise ValueError(f"{where}: {len(names)} class names but {net.name}'s [region] has classes={head.classes}")


def predictor(net):
    """x (B, 3, H, W) -> the activated region head output, in inference mode (rolling batch-norm statistics)."""
    return lambda x: net.forward(x, training=False)


def evaluate(net, records, names, thresh=VALIDATION_THRESHOLD, nms=NMS_THRESHOLD, iou_threshold=0.5,
             use_07=False, letterbox=True, batch_size=16, progress=True):
    """AP per class and mAP of ``net`` on VOC ``records``; returns ``(ap, detections)``.

    ``ap``: {class name: AP for every name in ``names`` (nan for a class with no
    non-difficult object), "mAP": mean over the classes with one}, from
    :func:`refquant.metrics.average_precision`; ``detections``: the list it scored.
    """
    check_names(net, names, "evaluate")
    head = region_head(net)
    height, width = net.input_shape[1], net.input_shape[2]
    found = detect_records(predictor(net), records, head.anchors.ravel(), names, width, height, thresh=thresh,
                           nms=nms, letterbox=letterbox, batch_size=batch_size, progress=progress)
    scores = average_precision(found, ground_truth(records), iou_threshold=iou_threshold, use_07_metric=use_07)
    ap = {name: scores.get(name, math.nan) for name in names}
    ap["mAP"] = scores["mAP"]
    return ap, found


def format_table(ap, names):
    """The AP table as text: one row per class (AP in %), then the mAP."""
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  AP (%)"]
    lines += [f"{name:<{width}}  {100 * ap[name]:6.2f}" for name in names]
    lines.append(f"{'mAP':<{width}}  {100 * ap['mAP']:6.2f}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--cfg", default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    parser.add_argument("--weights", default=None, help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    parser.add_argument("--data", default=None, help="VOC-format tree (default: the shapes data set)")
    parser.add_argument("--names", default=None,
                        help="class names file (default: the only *.names file at the root of --data)")
    parser.add_argument("--split", default="test", help="image set of ImageSets/Main (default test)")
    parser.add_argument("--thresh", type=float, default=VALIDATION_THRESHOLD,
                        help=f"score threshold (default {VALIDATION_THRESHOLD}, Darknet's for mAP)")
    parser.add_argument("--nms", type=float, default=NMS_THRESHOLD, help=f"NMS IoU threshold (default {NMS_THRESHOLD})")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to match (default 0.5)")
    parser.add_argument("--use-07", action="store_true", help="VOC2007 11-point AP instead of the VOC2010 area rule")
    parser.add_argument("--no-letterbox", action="store_true", help="resize images to the input instead of letterboxing")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    parser.add_argument("--json", default=None, help="also write the APs to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_paths(args):
    """(cfg, weights) from the arguments, the shipped model's for those not given."""
    cfg = Path(args.cfg) if args.cfg else shipped_model(".cfg")
    weights = Path(args.weights) if args.weights else (shipped_model(".weights") if not args.cfg else None)
    if weights is None:
        raise ValueError("--weights: required with --cfg (an untrained network detects nothing)")
    return cfg, weights


def run(args):
    """``refquant eval``: 0 on success; 2, with the message on stderr, for bad input (ValueError, OSError)."""
    try:
        return _run(args)
    except (ValueError, OSError) as error:
        print(f"refquant eval: error: {error}", file=sys.stderr)
        return 2


def _run(args):
    from refquant.train import default_data, default_names
    cfg, weights = model_paths(args)
    data = Path(args.data) if args.data else default_data()
    names_path = Path(args.names) if args.names else default_names(data)
    names = read_names(names_path)
    net = darknet.load(cfg, weights)
    check_names(net, names, names_path)
    records = load_voc(data, args.split, names)
    if args.limit is not None:
        records = records[:args.limit]
    ap, found = evaluate(net, records, names, thresh=args.thresh, nms=args.nms, iou_threshold=args.iou,
                         use_07=args.use_07, letterbox=not args.no_letterbox, progress=not args.no_progress)
    rule = "VOC2007 11-point" if args.use_07 else "VOC2010 area"
    print(f"{weights} on {data} split {args.split} ({len(records)} images, {len(found)} detections, "
          f"IoU >= {args.iou}, {rule} rule)")
    print(format_table(ap, names))
    if args.json:
        Path(args.json).write_text(json.dumps({k: (None if np.isnan(v) else v) for k, v in ap.items()}, indent=1) + "\n")
    return 0
