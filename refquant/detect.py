"""``refquant detect IMAGE``: a detector's boxes, labelled, drawn into a PNG.

As Darknet's ``test_detector`` (examples/detector.c): the image is letterboxed into the
network input, the region head decoded with the drawing threshold 0.5 and NMS 0.45
(:func:`refquant.decode.detections`), and the boxes drawn with their labels and scores
(:func:`refquant.draw.draw_detections`).
"""
import sys
from pathlib import Path

from refquant import darknet
from refquant.data.voc import load_image, read_names
from refquant.decode import DETECTION_THRESHOLD, NMS_THRESHOLD, detections, network_input
from refquant.draw import draw_detections
from refquant.evaluate import SHIPPED_MODEL, check_names, model_paths, region_head, shipped_model


def detect_image(net, image, names, thresh=DETECTION_THRESHOLD, nms=NMS_THRESHOLD, letterbox=True, image_id="image"):
    """Detections of ``net`` on one image (3, H, W) float in [0, 1]: dicts with label, score, box (VOC pixels)."""
    check_names(net, names, "detect")
    head = region_head(net)
    _, height, width = image.shape
    net_height, net_width = net.input_shape[1], net.input_shape[2]
    x = network_input(image, net_width, net_height, letterbox)[None]
    output = net.forward(x, training=False)
    return detections(output, head.anchors.ravel(), names, [image_id], [(width, height)], net_width, net_height,
                      thresh=thresh, nms=nms, letterbox=letterbox)


def add_arguments(parser):
    parser.add_argument("image", help="image file (JPEG, PNG, ...)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--cfg", default=None, help=f"Darknet cfg (default: the shipped {SHIPPED_MODEL}.cfg)")
    parser.add_argument("--weights", default=None, help=f"Darknet weights (default: the shipped {SHIPPED_MODEL}.weights)")
    parser.add_argument("--names", default=None,
                        help="class names file (default: the .names file beside the cfg, same stem)")
    parser.add_argument("--thresh", type=float, default=DETECTION_THRESHOLD,
                        help=f"score threshold (default {DETECTION_THRESHOLD}, Darknet's for drawing)")
    parser.add_argument("--nms", type=float, default=NMS_THRESHOLD, help=f"NMS IoU threshold (default {NMS_THRESHOLD})")
    parser.add_argument("--no-letterbox", action="store_true", help="resize the image to the input instead of letterboxing")


def default_names_for(cfg):
    """The names file beside a cfg: same stem, ``.names`` (ValueError naming it when absent)."""
    names = Path(cfg).with_suffix(".names")
    if not names.is_file():
        raise ValueError(f"{names}: no names file beside the cfg {cfg}; give --names")
    return names


def run(args):
    """``refquant detect``: 0 on success; 2, with the message on stderr, for bad input (ValueError, OSError)."""
    try:
        return _run(args)
    except (ValueError, OSError) as error:
        print(f"refquant detect: error: {error}", file=sys.stderr)
        return 2


def _run(args):
    cfg, weights = model_paths(args)
    names = read_names(Path(args.names) if args.names else default_names_for(cfg))
    net = darknet.load(cfg, weights)
    image = load_image(args.image)
    found = detect_image(net, image, names, thresh=args.thresh, nms=args.nms, letterbox=not args.no_letterbox,
                         image_id=Path(args.image).stem)
    draw_detections(image, found, labels=names, path=args.out)
    for d in sorted(found, key=lambda d: -d["score"]):
        print(f"{d['label']:<12s} {d['score']:.3f}  box {tuple(round(v, 1) for v in d['box'])}")
    print(f"{len(found)} detections drawn into {args.out}")
    return 0
