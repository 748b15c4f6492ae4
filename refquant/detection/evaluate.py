"""``refquant eval``: per-class AP and mAP of a detector on a split of a VOC-format tree.

The path is Darknet's ``validate_detector`` (examples/detector.c) followed by the VOC
devkit: every image of the split is letterboxed into the network input, the region head
is decoded with the validation threshold 0.005 and per-class NMS at 0.45
(:func:`refquant.detection.decode.detect_records`), and the detections are scored against the
split's annotations by :func:`refquant.detection.metrics.average_precision` (IoU >= 0.5; the area
rule of VOC2010 and later by default, the 11-point rule of VOC2007 with ``use_07``).
"""
import math
import sys
from pathlib import Path

from refquant.data.voc import ground_truth
from refquant.detection.decode import NMS_THRESHOLD, VALIDATION_THRESHOLD, detect_records
from refquant.detection.metrics import average_precision

MODELS_DIRS = (Path(__file__).resolve().parents[2] / "data" / "models",
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
    :func:`refquant.detection.metrics.average_precision`; ``detections``: the list it scored.
    """
    check_names(net, names, "evaluate")
    head = region_head(net)
    height, width = net.input_shape[1], net.input_shape[2]
    found = detect_records(predictor(net), records, head.anchors.ravel(), names, width, height, thresh=thresh,
                           nms=nms, letterbox=letterbox, batch_size=batch_size, progress=progress)
    return score_detections(found, records, names, iou_threshold, use_07), found


def score_detections(found, records, names, iou_threshold=0.5, use_07=False):
    """The ``ap`` dict of :func:`evaluate` for detections ``found`` on ``records`` (the VOC devkit's rule,
    :func:`refquant.detection.metrics.average_precision`)."""
    scores = average_precision(found, ground_truth(records), iou_threshold=iou_threshold, use_07_metric=use_07)
    ap = {name: scores.get(name, math.nan) for name in names}
    ap["mAP"] = scores["mAP"]
    return ap


def format_table(ap, names):
    """The AP table as text: one row per class (AP in %), then the mAP."""
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  AP (%)"]
    lines += [f"{name:<{width}}  {100 * ap[name]:6.2f}" for name in names]
    lines.append(f"{'mAP':<{width}}  {100 * ap['mAP']:6.2f}")
    return "\n".join(lines)
