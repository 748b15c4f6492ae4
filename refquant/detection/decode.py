"""Region-head (YOLOv2) decoding: activated head output -> scored boxes, as Darknet does it.

The head output layout is Darknet's (``region_layer.c``, ``entry_index``; see
docs/SPECIFICATION.md, section 8.8): (N, num*(coords+1+classes), H, W); for anchor n,
channel n*(coords+1+classes) + j holds j = 0..3 the box (x, y already logistic,
w, h raw), j = 4 the objectness (logistic), j = 5.. the class probabilities.

Darknet's path from the head to the boxes the devkit scores, one function each:

1. :func:`region_boxes` (``get_region_box``): bx = (col + x) / W,
   by = (row + y) / H, bw = exp(w) anchor_w / W, bh = exp(h) anchor_h / H,
   relative to the network input; candidate index n*H*W + row*W + col.
2. :func:`region_probabilities` (``get_region_detections``): objectness kept if
   > thresh; probability of class j = objectness * class_prob_j, kept if > thresh.
3. :func:`correct_region_boxes`: undo the letterbox, boxes relative to the image.
4. :func:`nms_sort` (``box.c``, ``do_nms_sort``): per class, by descending
   probability, zero the probability of every later box whose IoU with a kept
   one exceeds ``nms`` (0.45 in ``examples/detector.c``).
5. :func:`detections` (``print_detector_detections``): one detection per
   (candidate, class) whose probability is still > 0, the box in VOC pixels
   (:func:`refquant.detection.boxes.darknet_to_voc`).

Darknet sorts with ``qsort``, whose order among equal probabilities is
unspecified; here ties keep candidate order (a stable sort), so results are
reproducible.
"""
import numba
import numpy as np
from tqdm import tqdm

from refquant.data.image import letterbox_image, letterbox_size, resize_image
from refquant.data.voc import load_image
from refquant.detection.boxes import darknet_iou, darknet_to_voc

VALIDATION_THRESHOLD = 0.005  # examples/detector.c, validate_detector: thresh for mAP


DETECTION_THRESHOLD = 0.5  # examples/detector.c, test_detector: default -thresh for drawing


NMS_THRESHOLD = 0.45  # examples/detector.c: nms = .45


def region_boxes(output, anchors, classes, coords=4):
    """Boxes, objectness and class probabilities of every candidate of an activated region head.

    ``output``: (N, num*(coords+1+classes), H, W) activated head output;
    ``anchors``: the cfg's ``anchors`` (2*num,) in grid cells. Returns
    ``boxes`` (N, num*H*W, 4) (x, y, w, h) relative to the network input,
    ``objectness`` (N, num*H*W) and ``class_prob`` (N, num*H*W, classes), the
    candidate axis in Darknet's order n*H*W + row*W + col.
    """
    output = np.asarray(output, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    num = anchors.shape[0]
    if output.ndim != 4 or output.shape[1] != num * (coords + 1 + classes):
        raise ValueError(f"region head output: expected shape (N, {num}*({coords}+1+{classes}), H, W) for "
                         f"{num} anchors and {classes} classes, got {output.shape}")
    batch, _, height, width = output.shape
    entries = output.reshape(batch, num, coords + 1 + classes, height, width)
    col = np.arange(width)[None, None, None, :]
    row = np.arange(height)[None, None, :, None]
    bx = (col + entries[:, :, 0]) / width
    by = (row + entries[:, :, 1]) / height
    bw = np.exp(entries[:, :, 2]) * anchors[None, :, 0, None, None] / width
    bh = np.exp(entries[:, :, 3]) * anchors[None, :, 1, None, None] / height
    boxes = np.stack([bx, by, bw, bh], axis=-1).reshape(batch, num * height * width, 4)
    objectness = entries[:, :, coords].reshape(batch, num * height * width)
    class_prob = entries[:, :, coords + 1:].transpose(0, 1, 3, 4, 2).reshape(batch, num * height * width, classes)
    return boxes, objectness, class_prob


def region_probabilities(objectness, class_prob, thresh):
    """Per-class probabilities (M, classes) of candidates, Darknet's thresholds applied.

    ``objectness`` (M,), ``class_prob`` (M, classes). A candidate whose
    objectness is not > ``thresh`` gets all zeros; otherwise
    p_j = objectness * class_prob_j, zeroed where not > ``thresh``
    (``get_region_detections``).
    """
    objectness = np.asarray(objectness, dtype=np.float64)
    prob = objectness[:, None] * np.asarray(class_prob, dtype=np.float64)
    prob = np.where(prob > thresh, prob, 0.0)
    return np.where((objectness > thresh)[:, None], prob, 0.0)


def correct_region_boxes(boxes, image_width, image_height, net_width, net_height, letterbox=True):
    """Boxes (M, 4) relative to the network input -> relative to the image (``correct_region_boxes``).

    With ``letterbox`` (the image was placed by
    :func:`refquant.data.image.letterbox_image`): with (new_w, new_h) =
    :func:`refquant.data.image.letterbox_size`,
    x' = (x - (net_w - new_w) / 2 / net_w) / (new_w / net_w), w' = w net_w / new_w,
    y and h likewise. Without (the image was plainly resized to the input, which
    Darknet expresses by passing the input size as the image size), boxes are
    already relative to the image.
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    if not letterbox:
        return boxes
    new_width, new_height = letterbox_size(image_width, image_height, net_width, net_height)
    boxes[:, 0] = (boxes[:, 0] - (net_width - new_width) / 2 / net_width) / (new_width / net_width)
    boxes[:, 1] = (boxes[:, 1] - (net_height - new_height) / 2 / net_height) / (new_height / net_height)
    boxes[:, 2] *= net_width / new_width
    boxes[:, 3] *= net_height / new_height
    return boxes


def nms_sort(boxes, prob, nms=NMS_THRESHOLD):
    """Per-class greedy non-maximum suppression (Darknet ``do_nms_sort``, ``box.c``).

    ``boxes`` (M, 4) Darknet (x, y, w, h); ``prob`` (M, classes). For each class,
    candidates in descending probability (stable on ties): a candidate with
    probability > 0 zeroes that class's probability of every later candidate with
    IoU > ``nms`` (:func:`refquant.detection.boxes.darknet_iou`); a zeroed candidate
    suppresses nothing. Returns the new (M, classes) probabilities.
    """
    prob = np.array(prob, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    # Candidates at probability 0 in every class neither suppress nor change when suppressed.
    live = np.flatnonzero(prob.max(axis=1, initial=0) > 0)
    overlaps = darknet_iou(boxes[live], boxes[live])
    for k in range(prob.shape[1]):
        ranked = np.flatnonzero(prob[live, k] > 0)
        ranked = ranked[np.argsort(-prob[live[ranked], k], kind="stable")]
        kept = _greedy_suppression(overlaps, ranked, float(nms))
        prob[live[ranked[~kept]], k] = 0
    return prob


@numba.njit(cache=True)
def _greedy_suppression(overlaps, ranked, nms):
    """kept[a] for candidates ``ranked`` (best first): not within IoU > nms of a better kept one."""
    kept = np.ones(ranked.size, dtype=np.bool_)
    for a in range(ranked.size):
        if kept[a]:
            for b in range(a + 1, ranked.size):
                if kept[b] and overlaps[ranked[a], ranked[b]] > nms:
                    kept[b] = False
    return kept


def detections(output, anchors, names, image_ids, image_sizes, net_width, net_height,
               thresh=VALIDATION_THRESHOLD, nms=NMS_THRESHOLD, letterbox=True, coords=4):
    """Detections of a batch, as dicts ``{"image", "label", "score", "box"}`` (VOC pixels).

    ``output``: (N, num*(coords+1+classes), H, W) activated region head for N
    images; ``names``: class names (their number is ``classes``); ``image_ids``:
    N ids; ``image_sizes``: N (width, height) of the original images;
    ``letterbox``: whether the images were letterboxed (else plainly resized).
    ``thresh`` 0.005 is Darknet's for mAP (``validate_detector``), 0.5 its default
    for drawing (``test_detector``). ``nms`` 0 or None skips suppression.
    The output is what :func:`refquant.detection.metrics.average_precision` takes.
    """
    boxes, objectness, class_prob = region_boxes(output, anchors, len(names), coords)
    found = []
    for b, (image_id, (width, height)) in enumerate(zip(image_ids, image_sizes)):
        prob = region_probabilities(objectness[b], class_prob[b], thresh)
        image_boxes = correct_region_boxes(boxes[b], width, height, net_width, net_height, letterbox)
        if nms:
            prob = nms_sort(image_boxes, prob, nms)
        candidates, labels = np.nonzero(prob)
        pixel_boxes = darknet_to_voc(image_boxes[candidates], width, height)
        found.extend({"image": image_id, "label": names[label], "score": float(prob[c, label]),
                      "box": tuple(float(v) for v in box)}
                     for c, label, box in zip(candidates, labels, pixel_boxes))
    return found


def network_input(image, net_width, net_height, letterbox=True):
    """An image (3, H, W) prepared for the network: letterboxed (Darknet's detector) or resized."""
    if letterbox:
        return letterbox_image(image, net_width, net_height)
    return resize_image(image, net_width, net_height)


def detect_records(predict, records, anchors, names, net_width, net_height, thresh=VALIDATION_THRESHOLD,
                   nms=NMS_THRESHOLD, letterbox=True, batch_size=16, progress=True):
    """Run a detector over VOC records; the detections for :func:`refquant.detection.metrics.average_precision`.

    ``predict``: a callable x (B, 3, net_height, net_width) float32 -> activated
    region head output (B, num*(5+classes), H, W), e.g. a network's forward.
    ``records``: from :func:`refquant.data.voc.load_voc`. Shows a tqdm bar.
    """
    found = []
    for start in tqdm(range(0, len(records), batch_size), desc="detect", unit="batch", disable=not progress):
        batch = records[start:start + batch_size]
        x = np.stack([network_input(load_image(r["image_path"], (r["width"], r["height"])),
                                    net_width, net_height, letterbox) for r in batch])
        found.extend(detections(predict(x), anchors, names, [r["id"] for r in batch],
                                [(r["width"], r["height"]) for r in batch], net_width, net_height,
                                thresh=thresh, nms=nms, letterbox=letterbox))
    return found
