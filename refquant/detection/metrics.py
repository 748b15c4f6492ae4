"""Pascal VOC average precision, the devkit's rule exactly.

The rule is the one of the VOC devkit's ``VOCcode/VOCevaldet.m`` (matching and
precision/recall) with ``VOCap.m`` (area rule, VOC2010 and later) or the 11-point
rule of VOC2007 (the loop at the end of the 2007 ``VOCevaldet.m``):

1. Detections of one label are taken by descending score; ties keep their input
   order (MATLAB's ``sort`` is stable).
2. Each detection is compared with every ground-truth object of its image and
   label; it goes to the one of highest IoU (the first one on a tie), the IoU
   computed with the devkit's ``+ 1`` pixel areas (:func:`refquant.detection.boxes.voc_iou`).
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

from refquant.detection.boxes import voc_iou


def average_precision(detections, ground_truth, iou_threshold=0.5, use_07_metric=False):
    """AP per label and their mean, by the VOC devkit's rule.

    ``detections``: iterable of dicts with ``image`` (any hashable id), ``label``,
    ``score`` (float) and ``box`` (xmin, ymin, xmax, ymax) in VOC pixels (1-based,
    inclusive; see :mod:`refquant.detection.boxes`).
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
    found = _detection_arrays(list(detections))
    truth = _ground_truth_arrays(list(ground_truth))
    labels = list(dict.fromkeys(truth["label"] + found["label"]))
    if "mAP" in labels:
        raise ValueError('label "mAP" is reserved for the mean in the returned dict; rename that class')
    found_by_label, truth_by_label = _indices_by(found["label"]), _indices_by(truth["label"])
    result = {}
    for label in labels:
        recall, precision, positives = _precision_recall(
            _subset(found, found_by_label.get(label, [])), _subset(truth, truth_by_label.get(label, [])),
            iou_threshold)
        result[label] = voc_ap(recall, precision, use_07_metric) if positives > 0 else math.nan
    scored = [ap for ap in result.values() if not math.isnan(ap)]
    result["mAP"] = float(np.mean(scored)) if scored else math.nan
    return result


def format_table(result, labels=None, title="AP"):
    """The dict of :func:`average_precision` as a two-column text table, in percent.

    One line per label, in the order of ``labels`` (e.g. the class names; labels
    missing from ``result`` are skipped, others follow in the dict's order), then
    the mean; undefined APs print as "n/a"::

        class        AP
        circle     91.2
        ...
        mAP        88.4
    """
    present = [label for label in result if label != "mAP"]
    labels = [label for label in (labels or []) if label in result] + present
    labels = list(dict.fromkeys(labels))
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
    return _precision_recall(_detection_arrays(list(detections)), _ground_truth_arrays(list(ground_truth)),
                             iou_threshold)


def _precision_recall(found, truth, iou_threshold):
    """:func:`precision_recall` on the arrays of :func:`_detection_arrays` and :func:`_ground_truth_arrays`."""
    boxes, difficult, detected = _ground_truth_by_image(truth)
    positives = int(np.count_nonzero(~truth["difficult"]))
    order = np.argsort(-found["score"], kind="stable")  # MATLAB's sort is stable
    true_positive = np.zeros(len(order))
    false_positive = np.zeros(len(order))
    # The devkit walks all detections by rank; matches only interact within an image, so
    # each image's detections are walked in that same rank order, with one IoU matrix.
    ranks_by_image = defaultdict(list)
    for rank, k in enumerate(order.tolist()):
        ranks_by_image[found["image"][k]].append(rank)
    for image, ranks in ranks_by_image.items():
        if image not in boxes:
            false_positive[ranks] = 1
            continue
        overlaps = voc_iou(found["box"][order[ranks]], boxes[image])
        best = np.argmax(overlaps, axis=1)  # first maximum, as the devkit's strict ``ov > ovmax``
        best_overlap = overlaps[np.arange(len(ranks)), best]
        for rank, j, overlap in zip(ranks, best.tolist(), best_overlap.tolist()):
            if overlap >= iou_threshold:
                if not difficult[image][j]:
                    if not detected[image][j]:
                        true_positive[rank] = 1
                        detected[image][j] = True
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
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]  # mpre[i] = max(mpre[i:]); fmax ignores NaN, as MATLAB's max
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def _ground_truth_by_image(truth):
    """Per image: boxes (M, 4), difficult (M,) bool, detected (M,) bool all False."""
    rows = _indices_by(truth["image"])
    boxes = {image: truth["box"][index] for image, index in rows.items()}
    difficult = {image: truth["difficult"][index].tolist() for image, index in rows.items()}
    detected = {image: [False] * len(index) for image, index in rows.items()}
    return boxes, difficult, detected


def _indices_by(keys):
    """{key: list of the positions where it occurs}, keys in first-seen order."""
    positions = defaultdict(list)
    for position, key in enumerate(keys):
        positions[key].append(position)
    return positions


def _subset(arrays, index):
    return {key: [value[i] for i in index] if isinstance(value, list) else value[index]
            for key, value in arrays.items()}


def _detection_arrays(detections):
    """Checked columns of the detection dicts: image, label (lists), score (D,), box (D, 4)."""
    return _columns(detections, "detections", ("image", "label", "score", "box"), with_score=True)


def _ground_truth_arrays(ground_truth):
    """Checked columns of the ground-truth dicts: image, label (lists), box (M, 4), difficult (M,)."""
    return _columns(ground_truth, "ground_truth", ("image", "label", "box"), with_score=False)


def _columns(entries, name, keys, with_score):
    """Checked columns of ``entries`` (dicts): image, label (lists), box (n, 4), score or difficult (n,)."""
    for index, entry in enumerate(entries):
        missing = set(keys) - set(entry)
        if missing:
            raise ValueError(f"{name}[{index}]: missing key(s) {sorted(missing)}; expected "
                             f"{', '.join(keys)}{'' if with_score else ', difficult'}")
    columns = {"image": [e["image"] for e in entries], "label": [e["label"] for e in entries],
               "box": _finite([e["box"] for e in entries], (4,), name,
                              "box must be 4 finite numbers (xmin, ymin, xmax, ymax)")}
    if with_score:
        columns["score"] = _finite([e["score"] for e in entries], (), name, "score must be a finite number")
    else:
        columns["difficult"] = np.array([bool(e.get("difficult", False)) for e in entries], dtype=bool)
    return columns


def _finite(values, shape, name, requirement):
    """float64 array (len(values), *shape) of finite numbers, else a ValueError naming the first bad entry."""
    try:
        array = np.array(values, dtype=np.float64)
        if array.shape == (len(values),) + shape and np.all(np.isfinite(array)):
            return array
    except (TypeError, ValueError):
        pass
    for index, value in enumerate(values):  # the fast path failed: find and name the faulty entry
        try:
            one = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            one = None
        if one is None or one.shape != shape or not np.all(np.isfinite(one)):
            raise ValueError(f"{name}[{index}]: {requirement}, got {value!r}")
    return np.zeros((0,) + shape)  # no entry at all
