"""VOC average precision (refquant.metrics) and the VOC IoU (refquant.detection.boxes.voc_iou).

Independent truths: hand-worked examples (each worked in its docstring), and a
transcription into Python of the VOC devkit's MATLAB (VOCcode/VOCevaldet.m with
VOCap.m, and the 11-point loop of the VOC2007 VOCevaldet.m), written here loop
for loop like the MATLAB rather than like refquant's code, run on random scenes.
"""
import math

import numpy as np
import pytest

from refquant.detection.boxes import voc_iou
from refquant.detection.metrics import average_precision, format_table, voc_ap


def det(image, label, score, box):
    return {"image": image, "label": label, "score": score, "box": box}


def gt(image, label, box, difficult=False):
    return {"image": image, "label": label, "box": box, "difficult": difficult}


# ---------------------------------------------------------------- IoU, +1 pixel convention

def test_voc_iou_counts_pixels_inclusively():
    """Hand-worked: (1,1,10,10) and (6,1,15,10) are 10x10 = 100 pixels each, overlap columns
    6..10 = 5 x 10 = 50 pixels, union 150, IoU 1/3 (without the +1 it would be 36/126)."""
    assert voc_iou([1, 1, 10, 10], [6, 1, 15, 10])[0, 0] == pytest.approx(1 / 3, abs=1e-15)


def test_voc_iou_single_pixel_and_touching_boxes():
    """Hand-worked: a one-pixel box (5,5,5,5) has area 1, so its IoU with itself is 1; boxes sharing
    no pixel ((1,1,5,5) and (6,1,10,5): iw = 5 - 6 + 1 = 0) have IoU 0; a one-pixel overlap of two
    2x2 boxes (1,1,2,2) and (2,2,3,3) is 1 / (4 + 4 - 1)."""
    assert voc_iou([5, 5, 5, 5], [5, 5, 5, 5])[0, 0] == 1.0
    assert voc_iou([1, 1, 5, 5], [6, 1, 10, 5])[0, 0] == 0.0
    assert voc_iou([1, 1, 2, 2], [2, 2, 3, 3])[0, 0] == pytest.approx(1 / 7, abs=1e-15)


def test_voc_iou_is_pairwise():
    """Hand-worked: a (2, 4) by (3, 4) call gives the (2, 3) matrix of the single-pair values."""
    a = [[1, 1, 10, 10], [5, 5, 5, 5]]
    b = [[1, 1, 10, 10], [6, 1, 15, 10], [5, 5, 5, 5]]
    expected = [[1.0, 1 / 3, 1 / 100], [1 / 100, 0.0, 1.0]]
    np.testing.assert_allclose(voc_iou(a, b), expected, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- hand-worked AP

def three_detections():
    """Two objects A, B; d1 (0.9) on A, d2 (0.8) on nothing, d3 (0.7) on B.
    tp = 1,0,1  fp = 0,1,0  -> recall .5,.5,1  precision 1, 1/2, 2/3."""
    truths = [gt("im", "a", [1, 1, 10, 10]), gt("im", "a", [21, 21, 40, 40])]
    found = [det("im", "a", 0.9, [1, 1, 10, 10]), det("im", "a", 0.8, [60, 60, 70, 70]),
             det("im", "a", 0.7, [21, 21, 40, 40])]
    return found, truths


def test_area_rule_hand_worked():
    """Hand-worked (VOCap.m): mrec = 0,.5,.5,1,1; envelope mpre = 1,1,2/3,2/3,0; recall changes at
    .5 and 1: AP = .5 * 1 + .5 * 2/3 = 5/6."""
    found, truths = three_detections()
    assert average_precision(found, truths)["a"] == pytest.approx(5 / 6, abs=1e-15)


def test_eleven_point_rule_hand_worked():
    """Hand-worked (VOC2007): for t = 0,...,.5 the best precision at recall >= t is 1 (6 points), for
    t = .6,...,1 it is 2/3 (5 points): AP = (6 + 5 * 2/3) / 11 = 28/33, not the area rule's 5/6."""
    found, truths = three_detections()
    assert average_precision(found, truths, use_07_metric=True)["a"] == pytest.approx(28 / 33, abs=1e-15)


def test_ties_keep_input_order():
    """Hand-worked: one object, two detections of equal score, one on it, one not. Listed miss
    first: tp = 0,1, precision 0, 1/2, recall 0, 1: AP = 1/2. Listed hit first: precision 1, 1/2
    at recall 1, 1: AP = 1. MATLAB's sort (VOCevaldet.m) is stable, so input order decides."""
    truths = [gt("im", "a", [1, 1, 10, 10])]
    hit, miss = det("im", "a", 0.5, [1, 1, 10, 10]), det("im", "a", 0.5, [50, 50, 60, 60])
    assert average_precision([miss, hit], truths)["a"] == pytest.approx(0.5, abs=1e-15)
    assert average_precision([hit, miss], truths)["a"] == pytest.approx(1.0, abs=1e-15)


def test_iou_exactly_at_threshold_is_a_match():
    """Hand-worked: (1,1,10,5) inside (1,1,10,10): 50 of 100 pixels, IoU exactly 0.5. The devkit tests
    ovmax >= minoverlap, so it is a true positive: AP 1. At threshold 0.6 it is a miss: AP 0."""
    truths = [gt("im", "a", [1, 1, 10, 10])]
    found = [det("im", "a", 0.9, [1, 1, 10, 5])]
    assert average_precision(found, truths)["a"] == 1.0
    assert average_precision(found, truths, iou_threshold=0.6)["a"] == 0.0


def test_difficult_objects_count_neither_way():
    """Hand-worked: A difficult, B not; d1 (0.9) on A, d2 (0.8) on nothing, d3 (0.7) on B.
    d1 counts neither way: tp = 0,0,1, fp = 0,1,0, one positive: recall 0,0,1, precision
    nan, 0, 1/2 -> AP = 1/2. Were A not difficult: 5/6 (two positives); were A absent, d1 would
    be a false positive: precision 0, 0, 1/3 -> AP = 1/3."""
    found, truths = three_detections()
    truths[0]["difficult"] = True
    assert average_precision(found, truths)["a"] == pytest.approx(0.5, abs=1e-15)
    assert average_precision(found, truths[1:])["a"] == pytest.approx(1 / 3, abs=1e-15)


def test_only_difficult_matches_before_the_first_hit():
    """Hand-worked: the leading detections match only difficult objects, so the devkit's
    precision starts 0/0 = NaN, which MATLAB's max ignores: d1 on a difficult object, d2 on the
    single positive: precision nan, 1 at recall 0, 1: AP = 1 by both rules."""
    truths = [gt("im", "a", [1, 1, 10, 10], difficult=True), gt("im", "a", [21, 21, 40, 40])]
    found = [det("im", "a", 0.9, [1, 1, 10, 10]), det("im", "a", 0.8, [21, 21, 40, 40])]
    assert average_precision(found, truths)["a"] == 1.0
    assert average_precision(found, truths, use_07_metric=True)["a"] == pytest.approx(1.0, abs=1e-15)


def test_duplicate_detection_is_a_false_positive():
    """Hand-worked: objects A, B; d1 (0.9) on A, d2 (0.8) on A again, d3 (0.7) on B. The second
    match to A is a false positive: tp = 1,0,1, the same curve as three_detections: AP = 5/6."""
    truths = [gt("im", "a", [1, 1, 10, 10]), gt("im", "a", [21, 21, 40, 40])]
    found = [det("im", "a", 0.9, [1, 1, 10, 10]), det("im", "a", 0.8, [1, 1, 10, 9]),
             det("im", "a", 0.7, [21, 21, 40, 40])]
    assert average_precision(found, truths)["a"] == pytest.approx(5 / 6, abs=1e-15)


def test_match_goes_to_the_highest_iou_object_even_if_taken():
    """Hand-worked: A = (1,1,10,10), B = (3,1,12,10). d1 (0.9) = B: true positive. d2 (0.8) =
    (3,1,11,10) has IoU 80/110 with A and 90/100 with B: it goes to B, already detected, so it is a
    false positive (the devkit does not fall back to A): recall .5,.5, precision 1, 1/2: AP = 1/2."""
    truths = [gt("im", "a", [1, 1, 10, 10]), gt("im", "a", [3, 1, 12, 10])]
    found = [det("im", "a", 0.9, [3, 1, 12, 10]), det("im", "a", 0.8, [3, 1, 11, 10])]
    assert average_precision(found, truths)["a"] == pytest.approx(0.5, abs=1e-15)


def test_detections_are_matched_within_their_image_and_label():
    """Hand-worked: a detection of label a on image 2, where only image 1 has an a, and one of label
    b on image 1's a box, are both false positives for their labels."""
    truths = [gt(1, "a", [1, 1, 10, 10]), gt(2, "b", [1, 1, 10, 10])]
    found = [det(2, "a", 0.9, [1, 1, 10, 10]), det(1, "a", 0.5, [1, 1, 10, 10]),
             det(1, "b", 0.9, [1, 1, 10, 10])]
    result = average_precision(found, truths)
    assert result["a"] == pytest.approx(0.5, abs=1e-15)  # precision 0 then 1/2 at recall 1
    assert result["b"] == 0.0  # its only object is never found


def test_empty_classes():
    """Hand-worked: label a has an object and no detection: AP 0. Label b has detections and no
    object, label c only a difficult object: their AP is undefined (nan) and left out of the mean;
    label d is found perfectly: AP 1. mAP = (0 + 1) / 2."""
    truths = [gt("im", "a", [1, 1, 10, 10]), gt("im", "c", [1, 1, 10, 10], difficult=True),
              gt("im", "d", [1, 1, 10, 10])]
    found = [det("im", "b", 0.9, [1, 1, 10, 10]), det("im", "d", 0.9, [1, 1, 10, 10])]
    result = average_precision(found, truths)
    assert result["a"] == 0.0 and result["d"] == 1.0
    assert math.isnan(result["b"]) and math.isnan(result["c"])
    assert result["mAP"] == 0.5
    assert set(result) == {"a", "b", "c", "d", "mAP"}


def test_no_ground_truth_gives_nan_mean():
    """Hand-worked: no object at all: every AP is undefined, and so is their mean."""
    result = average_precision([det("im", "a", 0.9, [1, 1, 10, 10])], [])
    assert math.isnan(result["a"]) and math.isnan(result["mAP"])


def test_eleven_point_thresholds_include_exact_tenths():
    """Hand-worked: 10 objects, 3 found by the first three detections, then 7 misses: recall
    reaches exactly 3/10 with precision 1. Points t = 0, .1, .2, .3 get precision 1, the other 7
    get 0: AP = 4/11 (a threshold computed as 3 * 0.1 = 0.30000000000000004 would give 3/11)."""
    truths = [gt("im", "a", [20 * k + 1, 1, 20 * k + 10, 10]) for k in range(10)]
    found = [det("im", "a", 1.0 - k / 100, [20 * k + 1, 1, 20 * k + 10, 10]) for k in range(3)]
    found += [det("im", "a", 0.5, [500, 500, 510, 510]) for _ in range(7)]
    assert average_precision(found, truths, use_07_metric=True)["a"] == pytest.approx(4 / 11, abs=1e-15)


def test_voc_ap_of_an_empty_curve_is_zero():
    """Hand-worked: no detection: the envelope over mrec = 0, 1 is 0, and no recall reaches any t."""
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0


@pytest.mark.parametrize("bad, message", [
    ({"image": 1, "label": "a", "box": [1, 1, 2, 2]}, "score"),
    ({"image": 1, "label": "a", "score": float("nan"), "box": [1, 1, 2, 2]}, "finite"),
    ({"image": 1, "label": "a", "score": 0.5, "box": [1, 1, 2]}, "4 finite numbers"),
])
def test_bad_detections_are_named(bad, message):
    """Hand-worked: malformed input is refused with a message naming the entry and what is expected."""
    with pytest.raises(ValueError, match=r"detections\[0\].*" + message):
        average_precision([bad], [])


def test_bad_threshold_and_reserved_label():
    """Hand-worked: a threshold outside (0, 1] and a class called "mAP" are refused."""
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision([], [], iou_threshold=0)
    with pytest.raises(ValueError, match="mAP"):
        average_precision([], [gt("im", "mAP", [1, 1, 2, 2])])


# ---------------------------------------------------------------- the devkit, transcribed

def matlab_max(values):
    """MATLAB's max: NaN ignored; [] when empty; NaN if all are NaN."""
    values = [v for v in values]
    if not values:
        return None
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def devkit_evaldet(gt_by_image, ids, confidence, BB, minoverlap, use_07):
    """VOCevaldet.m, transcribed statement by statement (0-based where MATLAB is 1-based).

    gt_by_image: {image id: (BB (4, n) list of columns, diff list)}; ids, confidence, BB: the
    detection file's columns. Returns ap. The 11-point loop is the VOC2007 one (t = 0:0.1:1, taken as
    the tenths k/10); otherwise VOCap.m. The only addition: a detection whose image has no object of
    the class sees an empty gt(i).BB (the devkit's test set lists every image)."""
    gt = {i: {"BB": g[0], "diff": list(g[1]), "det": [False] * len(g[1])} for i, g in gt_by_image.items()}
    npos = sum(sum(1 for d in g["diff"] if not d) for g in gt.values())
    si = sorted(range(len(confidence)), key=lambda k: -confidence[k])  # [sc,si]=sort(-confidence): stable
    ids = [ids[k] for k in si]
    BB = [BB[k] for k in si]
    nd = len(confidence)
    tp = [0] * nd
    fp = [0] * nd
    for d in range(nd):
        i = ids[d]
        g = gt.get(i, {"BB": [], "diff": [], "det": []})
        bb = BB[d]
        ovmax = -math.inf
        jmax = None
        for j in range(len(g["BB"])):
            bbgt = g["BB"][j]
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        if ovmax >= minoverlap:
            if not g["diff"][jmax]:
                if not g["det"][jmax]:
                    tp[d] = 1
                    g["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    fp = list(np.cumsum(fp)) if nd else []
    tp = list(np.cumsum(tp)) if nd else []
    rec = [t / npos for t in tp]
    prec = [t / (f + t) if (f + t) > 0 else math.nan for t, f in zip(tp, fp)]
    if use_07:
        ap = 0.0
        for k in range(11):
            t = k / 10
            p = matlab_max([p for p, r in zip(prec, rec) if r >= t])
            if p is None or math.isnan(p):
                p = 0
            ap = ap + p / 11
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = matlab_max([mpre[i], mpre[i + 1]])
    idx = [i for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]]
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in idx)


def random_scene(rng):
    """Random images with objects of 3 labels (some difficult), and detections: jittered copies of
    objects (some twice), random boxes, scores rounded to 0.05 so that ties happen."""
    truths, found = [], []
    for image in range(int(rng.integers(5, 15))):
        for _ in range(int(rng.integers(0, 6))):
            label = "abc"[int(rng.integers(3))]
            x, y = rng.integers(1, 200, 2)
            w, h = rng.integers(5, 80, 2)
            box = [int(x), int(y), int(x + w), int(y + h)]
            truths.append(gt(image, label, box, difficult=bool(rng.random() < 0.2)))
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                jitter = rng.integers(-int(w) // 3, int(w) // 3 + 1, 4)
                guess = label if rng.random() < 0.85 else "abc"[int(rng.integers(3))]
                found.append(det(image, guess, round(float(rng.random()) * 20) / 20,
                                 [int(v) for v in np.array(box) + jitter]))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(1, 200, 2)
            found.append(det(image, "abc"[int(rng.integers(3))], round(float(rng.random()) * 20) / 20,
                             [int(x), int(y), int(x + rng.integers(3, 60)), int(y + rng.integers(3, 60))]))
    return found, truths


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("use_07", [False, True])
def test_agrees_with_the_devkit_on_random_scenes(seed, use_07):
    """Independent truth: devkit_evaldet, the transcription of VOCevaldet.m/VOCap.m, per label, on
    random scenes with ties, duplicates, difficult objects and mislabelled detections."""
    rng = np.random.default_rng(seed)
    found, truths = random_scene(rng)
    threshold = [0.5, 0.3, 0.7][seed % 3]
    result = average_precision(found, truths, iou_threshold=threshold, use_07_metric=use_07)
    for label in "abc":
        gt_by_image = {}
        for g in truths:
            if g["label"] == label:
                boxes, diff = gt_by_image.setdefault(g["image"], ([], []))
                boxes.append(g["box"])
                diff.append(g["difficult"])
        mine = [d for d in found if d["label"] == label]
        npos = sum(not g["difficult"] for g in truths if g["label"] == label)
        if npos == 0:
            assert math.isnan(result.get(label, math.nan))
            continue
        expected = devkit_evaldet(gt_by_image, [d["image"] for d in mine], [d["score"] for d in mine],
                                  [d["box"] for d in mine], threshold, use_07)
        assert result[label] == pytest.approx(expected, abs=1e-12), label


def test_format_table():
    """Hand-written expectation: labels in order, percent with one decimal, n/a for undefined."""
    table = format_table({"circle": 0.9123, "ring": math.nan, "mAP": 0.9123})
    assert table.splitlines() == ["class      AP", "circle   91.2", "ring      n/a", "mAP      91.2"]


def test_format_table_in_class_order():
    """Hand-written expectation: rows follow the given class order; unknown names are skipped."""
    table = format_table({"ring": 0.5, "circle": 1.0, "mAP": 0.75}, labels=["circle", "square", "ring"])
    assert [line.split()[0] for line in table.splitlines()] == ["class", "circle", "ring", "mAP"]
