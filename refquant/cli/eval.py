"""``refquant eval``: per-class AP and mAP of a model on a VOC-format tree
(:func:`refquant.detection.evaluate.evaluate`).
"""
import json
from pathlib import Path

import numpy as np

from refquant import atomic, darknet, distributed
from refquant.cli import COUNT, FRACTION, add_cluster_arguments, default_data, default_names, model_paths, number, path
from refquant.data.voc import load_voc, read_names
from refquant.detection.decode import NMS_THRESHOLD, VALIDATION_THRESHOLD
from refquant.detection.evaluate import SHIPPED_MODEL, check_names, evaluate, format_table


def add_arguments(parser):
    parser.add_argument("--cfg", type=path, default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    parser.add_argument("--weights", type=path, default=None, help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    parser.add_argument("--data", type=path, default=None, help="VOC-format tree (default: the shapes data set)")
    parser.add_argument("--names", type=path, default=None,
                        help="class names file (default: the only *.names file at the root of --data)")
    parser.add_argument("--split", default="test", help="image set of ImageSets/Main (default test)")
    parser.add_argument("--thresh", type=FRACTION, default=VALIDATION_THRESHOLD,
                        help=f"score threshold (default {VALIDATION_THRESHOLD}, Darknet's for mAP)")
    parser.add_argument("--nms", type=FRACTION, default=NMS_THRESHOLD, help=f"NMS IoU threshold (default {NMS_THRESHOLD})")
    parser.add_argument("--iou", type=number(0, 1, open_low=True), default=0.5, help="IoU a detection needs to match (default 0.5)")
    parser.add_argument("--use-07", action="store_true", help="VOC2007 11-point AP instead of the VOC2010 area rule")
    parser.add_argument("--no-letterbox", action="store_true", help="resize images to the input instead of letterboxing")
    parser.add_argument("--limit", type=COUNT, default=None, help="evaluate only the first N images of the split")
    parser.add_argument("--json", type=path, default=None, help="also write the APs to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cluster_arguments(parser)


def run(args):
    """``refquant eval``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    cfg, weights = model_paths(args)
    if args.data and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data: {args.data} does not exist or is not a folder")
    data = Path(args.data) if args.data else default_data()
    names_path = Path(args.names) if args.names else default_names(data)
    names = read_names(names_path)
    net = darknet.load(cfg, weights)
    check_names(net, names, names_path)
    records = load_voc(data, args.split, names)
    if args.limit is not None:
        records = records[:args.limit]
    options = {"thresh": args.thresh, "nms": args.nms, "iou_threshold": args.iou, "use_07": args.use_07,
               "letterbox": not args.no_letterbox, "progress": not args.no_progress}
    with distributed.connect(args.workers, args.scheduler) as client:
        if client is None:
            ap, found = evaluate(net, records, names, **options)
        else:
            files = distributed.network_files(net, Path(cfg).read_text(encoding="utf-8"))
            ap, found = distributed.evaluate(client, files, net, records, names, **options)
    rule = "VOC2007 11-point" if args.use_07 else "VOC2010 area"
    print(f"{weights} on {data} split {args.split} ({len(records)} images, {len(found)} detections, "
          f"IoU >= {args.iou}, {rule} rule)")
    print(format_table(ap, names))
    if args.json:
        atomic.write_text(args.json, json.dumps({k: (None if np.isnan(v) else v) for k, v in ap.items()}, indent=1) + "\n")
    return 0
