"""``refquant detect IMAGE``: a model's detections drawn into a PNG
(:func:`refquant.detection.detect.detect_image`).
"""
from pathlib import Path

from refquant import darknet
from refquant.cli import FRACTION, model_paths, path
from refquant.data.voc import load_image, read_names
from refquant.detection.decode import DETECTION_THRESHOLD, NMS_THRESHOLD
from refquant.detection.detect import detect_image
from refquant.detection.draw import draw_detections
from refquant.detection.evaluate import SHIPPED_MODEL


def add_arguments(parser):
    parser.add_argument("image", type=path, help="image file (JPEG, PNG, ...)")
    parser.add_argument("--out", type=path, required=True, help="output PNG")
    parser.add_argument("--cfg", type=path, default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    parser.add_argument("--weights", type=path, default=None, help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    parser.add_argument("--names", type=path, default=None,
                        help="class names file (default: the .names file beside the cfg, same stem)")
    parser.add_argument("--thresh", type=FRACTION, default=DETECTION_THRESHOLD,
                        help=f"score threshold (default {DETECTION_THRESHOLD}, Darknet's for drawing)")
    parser.add_argument("--nms", type=FRACTION, default=NMS_THRESHOLD, help=f"NMS IoU threshold (default {NMS_THRESHOLD})")
    parser.add_argument("--no-letterbox", action="store_true", help="resize the image to the input instead of letterboxing")


def default_names_for(cfg):
    """The names file beside a cfg: same stem, ``.names`` (ValueError naming it when absent)."""
    names = Path(cfg).with_suffix(".names")
    if not names.is_file():
        raise ValueError(f"{names}: no names file beside the cfg {cfg}; give --names")
    return names


def run(args):
    """``refquant detect``: 0 on success (bad input is reported by :func:`refquant.cli.main`)."""
    cfg, weights = model_paths(args)
    names = read_names(Path(args.names) if args.names else default_names_for(cfg))
    net = darknet.load(cfg, weights)
    image = load_image(args.image)
    found = detect_image(net, image, names, thresh=args.thresh, nms=args.nms, letterbox=not args.no_letterbox,
                         image_id=Path(args.image).stem)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, found, labels=names, path=args.out)
    for d in sorted(found, key=lambda d: -d["score"]):
        print(f"{d['label']:<12s} {d['score']:.3f}  box {tuple(round(v, 1) for v in d['box'])}")
    print(f"{len(found)} detections drawn into {args.out}")
    return 0
