"""Pascal VOC average precision, the devkit's rule exactly.

The rule is the one of the VOC devkit's ``VOCcode/VOCevaldet.m`` (matching and
precision/recall) with ``VOCap.m`` (area rule, VOC2010 and later) or the 11-point
rule of VOC2007 (the loop at the end of the 2007 ``VOCevaldet.m``):

1. Detections of one label are taken by descending score; ties keep their input
   order (MATLAB's ``sort`` is stable).
2. Each detection is compared with every ground-truth object of its image and
   label; it goes to the one of highest IoU (the first one on a tie), the IoU
   computed with the devkit's ``+ 1`` pixel areas (:func:`refquant.boxes.voc_iou`).
3. IoU >= threshold: a true positive if that object is not yet detected, a false
   positive if it is (duplicate); neither if the object is ``difficult``.
   IoU below the threshold, or no object of that label in the image: a false
   positive.
4. recall = cumsum(tp) / (number of non-difficult objects),
   precision = cumsum(tp) / (cumsum(tp) + cumsum(fp)).
5. AP: area under the precision envelope (area rule), or the mean over
   t = 0, 0.1, ..., 1 of the highest precision at recall >= t (11-point rule).

Where MATLAB and NumPy differ, MATLAB wins: ``max`` ignores the NaN precision of
the leading detections that matched only difficult objects (0/0), which
py-faster-rcnn's ``voc_eval.py`` does not; and the devkit's threshold test is
``>=`` where ``voc_eval.py`` has ``>``.
"""
import math
from collections import defaultdict

import numpy as np

from refquant.boxes import voc_iou


def average_precision(detections, ground_truth, iou_threshold=0.5, use_07_metric=False):
    """AP per label and their mean, by the VOC devkit's rule.

    ``detections``: iterable of dicts with ``image`` (any hashable id), ``label``,
    ``score`` (float) and ``box`` (xmin, ymin, xmax, ymax) in VOC pixels (1-based,
    inclusive; see :mod:`refquant.boxes`).
    ``ground_truth``: iterable of dicts with ``image``, ``label``, ``box`` and
    ``difficult`` (bool; False when absent).
    ``iou_threshold``: in (0, 1]; a match needs IoU >= it (VOC: 0.5).
    ``use_07_metric``: True for the VOC2007 11-point rule, False for the area rule
    of VOC2010 and later.

    Returns ``{label: AP for every label seen in either input, "mAP": mean}``.
    A label with no non-difficult ground-truth object has AP ``nan`` (recall has
    no denominator; the devkit never meets this case) and is left out of the
    mean; ``mAP`` is ``nan`` when no label has one. A detection on an image that
    has no object of its label is a false positive.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold: expected a number in (0, 1], got {iou_threshold!r}")
    detections = [_checked_detection(d, i) for i, d in enumerate(detections)]
    ground_truth = [_checked_ground_truth(g, i) for i, g in enumerate(ground_truth)]
    labels = list(dict.fromkeys([g["label"] for g in ground_truth] + [d["label"] for d in detections]))
    if "mAP" in labels:
        raise ValueError('label "mAP" is reserved for the mean in the returned dict; rename that class')
    result = {}
    for label in labels:
        recall, precision, positives = precision_recall(
            [d for d in detections if d["label"] == label],
            [g for g in ground_truth if g["label"] == label], iou_threshold)
        result[label] = voc_ap(recall, precision, use_07_metric) if positives > 0 else math.nan
    scored = [ap for ap in result.values() if not math.isnan(ap)]
    result["mAP"] = float(np.mean(scored)) if scored else math.nan
    return result


def format_table(result, title="AP"):
    """The dict of :func:`average_precision` as a two-column text table, in percent.

    One line per label in the dict's order, then the mean; undefined APs print as "n/a"::

        class        AP
        circle     91.2
        ...
        mAP        88.4
    """
    labels = [label for label in result if label != "mAP"]
    width = max([len(str(label)) for label in labels] + [len("mAP"), len("class")])
    cell = lambda ap: "n/a" if math.isnan(ap) else f"{100 * ap:.1f}"
    lines = [f"{'class':<{width}} {title:>6}"]
    lines += [f"{str(label):<{width}} {cell(result[label]):>6}" for label in labels]
    lines.append(f"{'mAP':<{width}} {cell(result['mAP']):>6}")
    return "\n".join(lines)


def precision_recall(detections, ground_truth, iou_threshold=0.5):
    """Recall and precision after each detection of ONE label (``VOCevaldet.m``).

    ``detections``, ``ground_truth``: dicts as in :func:`average_precision`, all of
    the same label. Returns ``(recall (D,), precision (D,), positives)`` in the
    devkit's order (descending score, stable), with ``positives`` the number of
    non-difficult objects. ``recall`` is all ``nan`` when ``positives`` is 0;
    ``precision`` is ``nan`` where no detection has counted yet (only difficult
    matches so far), as in the devkit.
    """
    boxes, difficult, detected = _ground_truth_by_image(ground_truth)
    positives = int(sum(int(np.sum(~d)) for d in difficult.values()))
    order = sorted(range(len(detections)), key=lambda k: -detections[k]["score"])  # stable
    true_positive = np.zeros(len(order))
    false_positive = np.zeros(len(order))
    for rank, k in enumerate(order):
        image = detections[k]["image"]
        if image not in boxes:
            false_positive[rank] = 1
            continue
        overlaps = voc_iou(detections[k]["box"], boxes[image])[0]
        best = int(np.argmax(overlaps))  # first maximum, as the devkit's strict ``ov > ovmax``
        if overlaps[best] >= iou_threshold:
            if not difficult[image][best]:
                if not detected[image][best]:
                    true_positive[rank] = 1
                    detected[image][best] = True
                else:
                    false_positive[rank] = 1  # second detection of the same object
        else:
            false_positive[rank] = 1
    true_positive = np.cumsum(true_positive)
    false_positive = np.cumsum(false_positive)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = true_positive / positives if positives > 0 else np.full(len(order), np.nan)
        precision = true_positive / (true_positive + false_positive)
    return recall, precision, positives


def voc_ap(recall, precision, use_07_metric=False):
    """Average precision from a precision/recall curve (``VOCap.m`` or VOC2007's 11 points).

    ``recall``, ``precision``: (D,) arrays in detection order, ``nan`` precision
    allowed (ignored, as MATLAB's ``max`` ignores NaN).

    Area rule (``VOCap.m``): mrec = [0, recall, 1], mpre = [0, precision, 0];
    mpre[i] = max(mpre[i], mpre[i + 1]) from the end; AP = sum over the indices i
    where mrec changes of (mrec[i] - mrec[i - 1]) * mpre[i].
    11-point rule: AP = mean over t in {0, 0.1, ..., 1} of max(precision[recall >= t]),
    0 where no recall reaches t (or only undefined precisions do). The thresholds
    are the doubles nearest to k/10 (see the comment in the code).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall and precision: expected two (D,) arrays, got {recall.shape} and {precision.shape}")
    if use_07_metric:
        ap = 0.0
        # t = k/10 as the nearest doubles, so that a recall of exactly 3/10 reaches t = 0.3;
        # MATLAB's 0:0.1:1 and NumPy's arange make the 4th threshold 3*0.1 = 0.30000000000000004.
        for t in [k / 10 for k in range(11)]:
            reached = precision[(recall >= t) & ~np.isnan(precision)]
            ap += (reached.max() if reached.size else 0.0) / 11
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])  # fmax ignores NaN, like MATLAB's max
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def _ground_truth_by_image(ground_truth):
    """Per image: boxes (M, 4), difficult (M,) bool, detected (M,) bool all False."""
    grouped = defaultdict(list)
    for g in ground_truth:
        grouped[g["image"]].append(g)
    boxes = {image: np.array([g["box"] for g in objects], dtype=np.float64) for image, objects in grouped.items()}
    difficult = {image: np.array([g["difficult"] for g in objects], dtype=bool) for image, objects in grouped.items()}
    detected = {image: np.zeros(len(objects), dtype=bool) for image, objects in grouped.items()}
    return boxes, difficult, detected


def _checked_box(box, where):
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: box must be 4 numbers (xmin, ymin, xmax, ymax), got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: box must be 4 finite numbers (xmin, ymin, xmax, ymax), got {box!r}")
    return values


def _checked_detection(detection, index):
    where = f"detections[{index}]"
    missing = {"image", "label", "score", "box"} - set(detection)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}; expected image, label, score, box")
    score = float(detection["score"])
    if not math.isfinite(score):
        raise ValueError(f"{where}: score must be finite, got {detection['score']!r}")
    return {"image": detection["image"], "label": detection["label"], "score": score,
            "box": _checked_box(detection["box"], where)}


def _checked_ground_truth(truth, index):
    where = f"ground_truth[{index}]"
    missing = {"image", "label", "box"} - set(truth)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}; expected image, label, box, difficult")
    return {"image": truth["image"], "label": truth["label"], "box": _checked_box(truth["box"], where),
            "difficult": bool(truth.get("difficult", False))}
