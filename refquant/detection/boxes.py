"""Box conventions: the one place that says what a box's numbers mean.

Two conventions meet in a VOC detector, and every module converts through here.

**VOC pixel boxes** ``(xmin, ymin, xmax, ymax)``: 1-based, inclusive pixel indices,
as the annotation XML writes them. A box covering the single pixel in column 0,
row 0 is ``(1, 1, 1, 1)`` and has width ``xmax - xmin + 1 = 1``. The VOC devkit
(``VOCcode/VOCevaldet.m``; its Python port ``voc_eval.py`` in py-faster-rcnn)
computes every area and intersection with that ``+ 1``: see :func:`voc_iou`.

**Darknet boxes** ``(x, y, w, h)``: centre and size, continuous, relative to the
image (in [0, 1]), the format of Darknet's label files, of the region head and
of the truths given to the region loss. Pixel centres sit at integer
coordinates (0-based), so a box's edges run through the centres of its first and
last pixels. Darknet's IoU (``box.c``: ``box_iou``) has no ``+ 1``: see
:func:`darknet_iou`.

The bridges between them are Darknet's own: ``scripts/voc_label.py``
(``convert``) turns a VOC box into a Darknet box, and ``examples/detector.c``
(``print_detector_detections``) turns a detection back into the VOC pixel box
the devkit scores. They are exact inverses (:func:`voc_to_darknet`,
:func:`darknet_to_voc`).
"""
import numpy as np


def _as_boxes(boxes, name):
    """``boxes`` as a float64 array of shape (N, 4); a single box (4,) becomes (1, 4)."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (N, 4) or (4,), got shape {np.shape(boxes)}")
    return array


def voc_iou(boxes_a, boxes_b):
    """IoU of VOC pixel boxes with the devkit's ``+ 1`` pixel areas.

    ``boxes_a`` (N, 4), ``boxes_b`` (M, 4): ``(xmin, ymin, xmax, ymax)``, inclusive
    pixel indices. Returns (N, M) float64.

        iw = min(xmax_a, xmax_b) - max(xmin_a, xmin_b) + 1,   ih likewise
        inter = iw * ih if iw > 0 and ih > 0 else 0
        union = (xmax_a - xmin_a + 1)(ymax_a - ymin_a + 1)
              + (xmax_b - xmin_b + 1)(ymax_b - ymin_b + 1) - inter
        IoU = inter / union

    Source: the VOC devkit, ``VOCcode/VOCevaldet.m`` (the ``bi``, ``iw``, ``ih``,
    ``ua`` lines), identical in ``voc_eval.py`` (py-faster-rcnn). A pair with no
    overlap has IoU 0 (the devkit skips it, which the threshold makes equivalent).
    """
    a = _as_boxes(boxes_a, "boxes_a")[:, None, :]
    b = _as_boxes(boxes_b, "boxes_b")[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    return inter / (area_a + area_b - inter)


def darknet_iou(boxes_a, boxes_b):
    """IoU of Darknet centre-size boxes, continuous areas (no ``+ 1``).

    ``boxes_a`` (N, 4), ``boxes_b`` (M, 4): ``(x, y, w, h)``, any common unit.
    Returns (N, M) float64. Source: Darknet ``src/box.c`` (``overlap``,
    ``box_intersection``, ``box_union``, ``box_iou``): the overlap along each axis
    is ``min(right) - max(left)``, the intersection 0 if either overlap is
    negative. Used by non-maximum suppression (``refquant.detection.decode``) and by the
    region loss. Two empty boxes (w = h = 0) give 0/0 = nan, as in Darknet.
    """
    a = _as_boxes(boxes_a, "boxes_a")[:, None, :]
    b = _as_boxes(boxes_b, "boxes_b")[None, :, :]
    overlap_w = np.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2) - np.maximum(
        a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    overlap_h = np.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2) - np.maximum(
        a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    inter = np.where((overlap_w < 0) | (overlap_h < 0), 0.0, overlap_w * overlap_h)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def voc_to_darknet(boxes, width, height):
    """VOC pixel boxes (N, 4) of an image ``width`` x ``height`` -> Darknet boxes (N, 4).

    Darknet ``scripts/voc_label.py`` (``convert``), the script that writes the
    label files Darknet trains on:

        x = ((xmin + xmax) / 2 - 1) / width,   w = (xmax - xmin) / width
        y = ((ymin + ymax) / 2 - 1) / height,  h = (ymax - ymin) / height

    The ``- 1`` moves 1-based pixel indices to 0-based pixel centres; the size is
    centre-to-centre, so a one-pixel box has w = 0.
    """
    box = _as_boxes(boxes, "boxes")
    return np.stack([((box[:, 0] + box[:, 2]) / 2 - 1) / width,
                     ((box[:, 1] + box[:, 3]) / 2 - 1) / height,
                     (box[:, 2] - box[:, 0]) / width,
                     (box[:, 3] - box[:, 1]) / height], axis=1)


def darknet_to_voc(boxes, width, height):
    """Darknet boxes (N, 4) relative to an image ``width`` x ``height`` -> VOC pixel boxes (N, 4).

    Darknet ``examples/detector.c`` (``print_detector_detections``, which writes
    the files the devkit scores), with x, w scaled by ``width`` and y, h by
    ``height`` first:

        xmin = x - w/2 + 1,  xmax = x + w/2 + 1   (then xmin >= 1, xmax <= width)
        ymin = y - h/2 + 1,  ymax = y + h/2 + 1   (then ymin >= 1, ymax <= height)

    Exactly the inverse of :func:`voc_to_darknet` for boxes inside the image.
    Only those two clips are Darknet's; a box wholly outside the image keeps
    xmin > xmax, which the devkit scores as a false positive.
    """
    box = _as_boxes(boxes, "boxes")
    x, y = box[:, 0] * width, box[:, 1] * height
    w, h = box[:, 2] * width, box[:, 3] * height
    xmin = np.maximum(x - w / 2 + 1, 1.0)
    ymin = np.maximum(y - h / 2 + 1, 1.0)
    xmax = np.minimum(x + w / 2 + 1, float(width))
    ymax = np.minimum(y + h / 2 + 1, float(height))
    return np.stack([xmin, ymin, xmax, ymax], axis=1)
