"""Region-head decoding, thresholds, letterbox correction and NMS (refquant.decode), and the box
conversions of refquant.boxes.

Independent truths: hand-built head outputs whose boxes are worked out in the docstrings;
hand-worked NMS cases; Darknet's own formulas worked by hand for the letterbox; and OpenCV's
Darknet importer (cv2.dnn, its RegionLayer: decoding, thresholds and per-class NMS) on a
region head fed random logits through an identity 1x1 convolution.
"""
import struct

import cv2
import numpy as np
import pytest
from scipy.special import expit, softmax

from refquant.data.image import letterbox_size
from refquant.detection.boxes import darknet_iou, darknet_to_voc, voc_to_darknet
from refquant.detection.decode import correct_region_boxes, detections, nms_sort, region_boxes, region_probabilities

NAMES = ["circle", "square", "star"]
ANCHORS = [0.5, 0.5, 1.0, 0.5]  # two anchors, in grid cells


def hand_built_head():
    """Activated head (1, 2*(5+3), H=2, W=3) with one confident candidate: anchor 1, row 1, col 2,
    x = 0.5, y = 0.25, w = h = log 0.5 (raw), objectness 0.8, class probabilities 0.1, 0.7, 0.2.
    Another one (anchor 0, row 0, col 0) has objectness 0.09, below a 0.1 threshold. All others 0.001.
    Its box: bx = (2 + .5)/3 = 5/6, by = (1 + .25)/2 = 5/8, bw = .5 * 1/3 = 1/6, bh = .5 * .5/2 = 1/8."""
    head = np.zeros((1, 16, 2, 3))
    head[0, 4] = head[0, 12] = 0.001
    head[0, 8:12, 1, 2] = [0.5, 0.25, np.log(0.5), np.log(0.5)]
    head[0, 12, 1, 2] = 0.8
    head[0, 13:16, 1, 2] = [0.1, 0.7, 0.2]
    head[0, 4, 0, 0] = 0.09
    head[0, 5:8, 0, 0] = [0.0, 0.0, 1.0]
    return head


def test_region_boxes_of_a_hand_built_head():
    """Hand-worked (see hand_built_head): candidate index of anchor 1, row 1, col 2 is
    n*H*W + row*W + col = 6 + 3 + 2 = 11 (Darknet's order)."""
    boxes, objectness, class_prob = region_boxes(hand_built_head(), ANCHORS, classes=3)
    assert boxes.shape == (1, 12, 4) and objectness.shape == (1, 12) and class_prob.shape == (1, 12, 3)
    np.testing.assert_allclose(boxes[0, 11], [5 / 6, 5 / 8, 1 / 6, 1 / 8], rtol=0, atol=1e-15)
    assert objectness[0, 11] == 0.8 and objectness[0, 0] == 0.09
    np.testing.assert_allclose(class_prob[0, 11], [0.1, 0.7, 0.2])
    # an empty cell: anchor 0, row 1, col 0 = index 3: box (0 + 0)/3, (1 + 0)/2, exp(0)*.5/3, exp(0)*.5/2
    np.testing.assert_allclose(boxes[0, 3], [0, 0.5, 0.5 / 3, 0.25], rtol=0, atol=1e-15)


def test_probabilities_and_thresholds():
    """Hand-worked: p = objectness * class prob = .08, .56, .16 for the confident candidate; .08 is
    not > 0.1 and is zeroed; the candidate of objectness .09 gets nothing even for its class at
    probability 1 (Darknet tests objectness first)."""
    _, objectness, class_prob = region_boxes(hand_built_head(), ANCHORS, classes=3)
    prob = region_probabilities(objectness[0], class_prob[0], thresh=0.1)
    np.testing.assert_allclose(prob[11], [0, 0.56, 0.16], rtol=0, atol=1e-15)
    assert np.count_nonzero(prob) == 2


def test_letterbox_size_and_correction_hand_worked():
    """Hand-worked (Darknet correct_region_boxes): a 300x100 image in a 96x64 input: 96/300 < 64/100,
    so new size 96 x (100*96)//300 = 96 x 32, placed 16 rows down. A box at y = 5/8, h = 1/8 of the
    input becomes y = (5/8 - 16/64) / (32/64) = 3/4, h = 1/8 * 64/32 = 1/4 of the image; x, w stay."""
    assert letterbox_size(300, 100, 96, 64) == (96, 32)
    assert letterbox_size(100, 300, 64, 96) == (32, 96)
    assert letterbox_size(500, 375, 416, 416) == (416, 312)
    corrected = correct_region_boxes([[5 / 6, 5 / 8, 1 / 6, 1 / 8]], 300, 100, 96, 64)
    np.testing.assert_allclose(corrected, [[5 / 6, 3 / 4, 1 / 6, 1 / 4]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(correct_region_boxes([[5 / 6, 5 / 8, 1 / 6, 1 / 8]], 300, 100, 96, 64,
                                                    letterbox=False), [[5 / 6, 5 / 8, 1 / 6, 1 / 8]])


def test_detections_of_a_hand_built_head():
    """Hand-worked end to end, a 300x100 image letterboxed into 96x64: the box relative to the
    image is (5/6, 3/4, 1/6, 1/4), in pixels centre (250, 75), size 50 x 25, so VOC pixels
    xmin = 250 - 25 + 1 = 226, xmax = 276, ymin = 75 - 12.5 + 1 = 63.5, ymax = 88.5
    (print_detector_detections). Two classes pass 0.1: square .56 and star .16.
    Plainly resized instead: y = 5/8 * 100 = 62.5, h = 12.5: ymin = 57.25, ymax = 69.75."""
    found = detections(hand_built_head(), ANCHORS, NAMES, ["im"], [(300, 100)], 96, 64, thresh=0.1)
    assert [(d["image"], d["label"]) for d in found] == [("im", "square"), ("im", "star")]
    assert [d["score"] for d in found] == pytest.approx([0.56, 0.16], abs=1e-15)
    for d in found:
        assert d["box"] == pytest.approx((226, 63.5, 276, 88.5), abs=1e-12)
    plain = detections(hand_built_head(), ANCHORS, NAMES, ["im"], [(300, 100)], 96, 64, thresh=0.1,
                       letterbox=False)
    assert plain[0]["box"] == pytest.approx((226, 57.25, 276, 69.75), abs=1e-12)
    assert detections(hand_built_head(), ANCHORS, NAMES, ["im"], [(300, 100)], 96, 64, thresh=0.6) == []


def test_head_shape_is_checked():
    """Hand-made: 15 channels cannot hold 2 anchors of 3 classes (16 needed)."""
    with pytest.raises(ValueError, match=r"expected shape \(N, 2\*\(4\+1\+3\), H, W\)"):
        region_boxes(np.zeros((1, 15, 2, 3)), ANCHORS, classes=3)


# ---------------------------------------------------------------- NMS

def test_nms_suppressed_boxes_do_not_suppress():
    """Hand-worked, boxes 0.2 x 0.2 on one row: A at x = .50 (p .9), B at .52 (p .8), D at .58 (p .7),
    C far away (p .6). IoU(A,B) = .036/.044 = .82 > .45: B goes. IoU(B,D) = .028/.052 = .54, but B is
    already suppressed, and IoU(A,D) = .024/.056 = .43 <= .45: D stays. Class 2 ranks B first: there
    B stays and A, D (IoU with B .82 and .54) go; C stays in both."""
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.58, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    prob = np.array([[0.9, 0.3], [0.8, 0.95], [0.7, 0.2], [0.6, 0.1]])
    kept = nms_sort(boxes, prob, nms=0.45)
    np.testing.assert_array_equal(kept, [[0.9, 0], [0, 0.95], [0.7, 0], [0.6, 0.1]])


def test_nms_threshold_is_strict():
    """Hand-worked: B = (1, 1, 2, 1) lies inside A = (1, 1, 2, 2): IoU = 2 / 4 = 0.5 exactly. Darknet
    suppresses when IoU > nms: kept at nms = 0.5, suppressed at 0.49."""
    boxes = np.array([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 1.0]])
    assert darknet_iou(boxes[:1], boxes[1:])[0, 0] == 0.5
    prob = np.array([[0.9], [0.8]])
    np.testing.assert_array_equal(nms_sort(boxes, prob, nms=0.5), prob)
    np.testing.assert_array_equal(nms_sort(boxes, prob, nms=0.49), [[0.9], [0.0]])


def test_nms_ties_keep_candidate_order():
    """Hand-worked: two identical boxes of equal probability: the earlier candidate is kept."""
    boxes = np.array([[0.5, 0.5, 0.2, 0.2]] * 2)
    np.testing.assert_array_equal(nms_sort(boxes, np.array([[0.5], [0.5]])), [[0.5], [0.0]])


# ---------------------------------------------------------------- boxes

def test_darknet_iou_hand_worked():
    """Hand-worked (box.c): (0.5,0.5,0.2,0.2) and (0.6,0.5,0.2,0.2) overlap 0.1 x 0.2 = 0.02 of a
    union 0.06: IoU 1/3; disjoint boxes: 0."""
    np.testing.assert_allclose(darknet_iou([0.5, 0.5, 0.2, 0.2], [[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]),
                               [[1 / 3, 0]], rtol=1e-12, atol=0)


def test_voc_darknet_round_trip_hand_worked():
    """Hand-worked (voc_label.py convert): VOC box (48, 240, 195, 371) in a 353x500 image has centre
    ((48 + 195)/2 - 1, (240 + 371)/2 - 1) = (120.5, 304.5) and size (147, 131) in pixels;
    print_detector_detections maps it back: 120.5 - 73.5 + 1 = 48, 120.5 + 73.5 + 1 = 195."""
    darknet = voc_to_darknet([48, 240, 195, 371], 353, 500)
    np.testing.assert_allclose(darknet, [[120.5 / 353, 304.5 / 500, 147 / 353, 131 / 500]], rtol=1e-15)
    np.testing.assert_allclose(darknet_to_voc(darknet, 353, 500), [[48, 240, 195, 371]], rtol=0, atol=1e-12)
    # Darknet clips only xmin >= 1, ymin >= 1, xmax <= w, ymax <= h:
    np.testing.assert_allclose(darknet_to_voc([[0.0, 1.0, 0.5, 0.5]], 100, 10), [[1, 8.5, 26, 10]])


# ---------------------------------------------------------------- OpenCV's region layer

def opencv_region(logits, anchors, classes, thresh, tmp_path):
    """OpenCV's Darknet importer on [identity 1x1 conv] -> [region]: its (H*W*num, 5+classes) output,
    rows in OpenCV's order (row*W + col)*num + anchor. Its RegionLayer applies the logistic and
    softmax, thresholds objectness*class at thresh and runs per-class NMS at 0.4."""
    _, channels, height, width = logits.shape
    cfg = tmp_path / "region.cfg"
    cfg.write_text(f"[net]\nwidth={width}\nheight={height}\nchannels={channels}\n\n"
                   f"[convolutional]\nfilters={channels}\nsize=1\nstride=1\npad=0\nactivation=linear\n\n"
                   f"[region]\nanchors={','.join(str(a) for a in anchors)}\nclasses={classes}\ncoords=4\n"
                   f"num={len(anchors) // 2}\nsoftmax=1\nthresh={thresh}\n")
    weights = tmp_path / "region.weights"
    weights.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + np.zeros(channels, np.float32).tobytes()
                        + np.eye(channels, dtype=np.float32).tobytes())
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(logits.astype(np.float32))
    return net.forward()


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_opencv_region_layer(seed, tmp_path):
    """Independent truth: cv2.dnn's RegionLayer (box decoding, objectness * class thresholded,
    per-class NMS at its default 0.4) on random logits, 5x5 grid (OpenCV normalises w by the rows,
    so the grid is square), 3 anchors large enough that boxes overlap and NMS acts, 4 classes. refquant's side activates the same logits
    (logistic on x, y, objectness; softmax over classes), then region_boxes, region_probabilities,
    nms_sort."""
    rng = np.random.default_rng(seed)
    anchors, classes, num, thresh = [1.2, 1.9, 2.7, 2.1, 4.2, 3.5], 4, 3, 0.2
    logits = rng.normal(0, 1.5, (1, num, 5 + classes, 5, 5))
    logits[:, :, 2:4] *= 0.2  # sizes near the anchors, so that neighbouring boxes overlap
    logits = logits.reshape(1, num * (5 + classes), 5, 5)
    expected = opencv_region(logits, anchors, classes, thresh, tmp_path)

    entries = logits.reshape(1, num, 5 + classes, 5, 5).copy()
    entries[:, :, [0, 1, 4]] = expit(entries[:, :, [0, 1, 4]])
    entries[:, :, 5:] = softmax(entries[:, :, 5:], axis=2)
    boxes, objectness, class_prob = region_boxes(entries.reshape(logits.shape), anchors, classes)
    prob = nms_sort(boxes[0], region_probabilities(objectness[0], class_prob[0], thresh), nms=0.4)

    # OpenCV row (row*W + col)*num + anchor  <->  Darknet candidate anchor*H*W + row*W + col
    anchor, cell = np.meshgrid(np.arange(num), np.arange(25), indexing="ij")
    opencv_rows = (cell * num + anchor).ravel()
    np.testing.assert_allclose(boxes[0], expected[opencv_rows, :4], rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(prob, expected[opencv_rows, 5:], rtol=2e-6, atol=1e-7)
    assert np.count_nonzero(prob) > 3  # the case is not empty
    assert np.count_nonzero(region_probabilities(objectness[0], class_prob[0], thresh)) > np.count_nonzero(prob) + 3


# ---------------------------------------------------------------- drawing (refquant detect)

def test_draw_detections_outlines_the_voc_box(tmp_path):
    """Hand-worked: VOC box (11, 21, 30, 40) is 0-based columns 10..29, rows 20..39; with line width
    1 the outline runs along those columns and rows (outside the caption), the inside stays black,
    and the PNG written reads back with the same pixels."""
    from PIL import Image

    from refquant.detection.draw import draw_detections

    black = np.zeros((3, 60, 80), dtype=np.float32)
    found = [{"image": "im", "label": "star", "score": 0.9, "box": (11, 21, 30, 40)}]
    drawn = draw_detections(black, found, labels=NAMES, path=tmp_path / "out.png", line_width=1)
    pixels = np.asarray(drawn).max(axis=2)
    assert np.all(pixels[39, 10:30] > 0) and np.all(pixels[25:40, 10] > 0) and np.all(pixels[25:40, 29] > 0)
    assert np.all(pixels[22:39, 11:29] == 0)  # the caption sits above the box, not inside it
    assert np.all(pixels[41:, :] == 0) and np.all(pixels[21:, 31:] == 0)  # caption: rows 20 and above
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(drawn))
    with pytest.raises(ValueError, match=r"out\.jpg: expected a \.png output path"):
        draw_detections(black, found, path=tmp_path / "out.jpg")
