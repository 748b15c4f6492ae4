"""Training-time augmentation and batching, as Darknet's ``load_data_region`` (``src/data.c``).

For each image of a batch, Darknet v2 (region layer) training:

1. crops a window whose four edges move by a random whole number of pixels
   within +-``jitter`` of the image size (the window may reach outside the image;
   those pixels repeat the border),
2. resizes the window to the network input (:func:`refquant.data.image.resize_image`),
3. flips it left-right with probability 1/2,
4. distorts it in HSV: hue shifted by U(-hue, hue), saturation and value scaled
   by ``rand_scale`` (U(1, s) or its inverse, each with probability 1/2),
5. moves every box into the window (``correct_boxes``): shifted, scaled,
   mirrored if flipped, clipped to [0, 1], and dropped if narrower or shorter
   than 0.005 (``fill_truth_region``).

Truths are the boxes Darknet's ``scripts/voc_label.py`` writes: non-difficult
objects only, converted by :func:`refquant.detection.boxes.voc_to_darknet`. A batch is
``x`` (N, 3, H, W) float32 in [0, 1] and ``truths``, a list of N float32 arrays
(M_i, 5): x_center, y_center, w, h relative to the input, class id (the region
loss's input, see docs/SPECIFICATION.md, section 8.9).

Random numbers come from a ``numpy.random.Generator`` in Darknet's order
(pleft, pright, ptop, pbot, flip, hue, saturation, exposure), then a
permutation of the boxes (Darknet's ``randomize_boxes``; the loss assigns
truths in order).
"""
import numpy as np

from refquant.data.image import crop_image, distort_image, flip_image, resize_image
from refquant.data.voc import load_image
from refquant.detection.boxes import voc_to_darknet

SMALLEST_BOX = 0.005  # fill_truth_region drops boxes with w or h below this, relative to the input


def darknet_truths(record):
    """(M, 5) float32 truths of a VOC record: Darknet boxes of its non-difficult objects, class id.

    As ``scripts/voc_label.py``, which skips difficult objects when it writes the
    label files Darknet trains on.
    """
    objects = [obj for obj in record["objects"] if not obj["difficult"]]
    if not objects:
        return np.zeros((0, 5), dtype=np.float32)
    boxes = voc_to_darknet([obj["box"] for obj in objects], record["width"], record["height"])
    class_ids = np.array([obj["class_id"] for obj in objects], dtype=np.float64)[:, None]
    return np.hstack([boxes, class_ids]).astype(np.float32)


def rand_scale(scale, rng):
    """U(1, scale), or its inverse with probability 1/2 (Darknet ``rand_scale``, ``utils.c``)."""
    value = rng.uniform(1.0, scale) if scale >= 1 else rng.uniform(scale, 1.0)
    return value if rng.integers(2) else 1.0 / value


def jitter_window(width, height, jitter, rng):
    """Random crop offsets ``(pleft, pright, ptop, pbot)`` in pixels (``load_data_region``).

    dw = int(width * jitter), dh = int(height * jitter); each offset is
    U(-dw, dw) (or U(-dh, dh)) truncated toward zero, as C's float-to-int.
    Positive offsets cut into the image, negative ones pad it.
    """
    dw, dh = int(width * jitter), int(height * jitter)
    pleft, pright = (int(np.trunc(rng.uniform(-dw, dw))) for _ in range(2))
    ptop, pbot = (int(np.trunc(rng.uniform(-dh, dh))) for _ in range(2))
    return pleft, pright, ptop, pbot


def correct_boxes(truths, dx, dy, sx, sy, flip):
    """Move Darknet truths (M, 5) into a crop window (Darknet ``correct_boxes``, ``data.c``).

    Edges: left' = left * sx - dx, top' = top * sy - dy (likewise right, bottom);
    if ``flip``: (left', right') = (1 - right', 1 - left'); each edge clipped to
    [0, 1]; centre and size recomputed from the clipped edges. ``load_data_region``
    calls it with sx = width / window width, dx = pleft / window width (dy, sy
    likewise), i.e. image-relative coordinates become window-relative.
    Returns a new float32 (M, 5) array; the class column is kept.
    """
    truths = np.asarray(truths, dtype=np.float32)
    x, y, w, h = truths[:, 0], truths[:, 1], truths[:, 2], truths[:, 3]
    left, right = (x - w / 2) * sx - dx, (x + w / 2) * sx - dx
    top, bottom = (y - h / 2) * sy - dy, (y + h / 2) * sy - dy
    if flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (np.clip(edge, 0, 1) for edge in (left, right, top, bottom))
    corrected = np.stack([(left + right) / 2, (top + bottom) / 2, right - left, bottom - top, truths[:, 4]], axis=1)
    return corrected.astype(np.float32)


def augment_region(image, truths, net_width, net_height, rng, jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5):
    """One training example as Darknet's ``load_data_region`` makes it.

    ``image``: (3, H, W) float32 in [0, 1]; ``truths``: (M, 5) Darknet truths of
    that image. Returns ``(x (3, net_height, net_width) float32, truths (M', 5))``
    with M' <= M (boxes cropped away or thinner than 0.005 dropped), in random
    order. Defaults are ``yolov2-tiny-voc.cfg``'s (jitter .2, hue .1,
    saturation 1.5, exposure 1.5).
    """
    _, height, width = image.shape
    pleft, pright, ptop, pbot = jitter_window(width, height, jitter, rng)
    window_width, window_height = width - pleft - pright, height - ptop - pbot
    flip = bool(rng.integers(2))
    sized = resize_image(crop_image(image, pleft, ptop, window_width, window_height), net_width, net_height)
    if flip:
        sized = flip_image(sized)
    sized = distort_image(sized, rng.uniform(-hue, hue), rand_scale(saturation, rng), rand_scale(exposure, rng))
    moved = correct_boxes(np.asarray(truths, dtype=np.float32)[rng.permutation(len(truths))],
                          dx=pleft / window_width, dy=ptop / window_height,
                          sx=width / window_width, sy=height / window_height, flip=flip)
    kept = (moved[:, 2] >= SMALLEST_BOX) & (moved[:, 3] >= SMALLEST_BOX)
    return sized, moved[kept]


def load_batch(records, net_width, net_height, rng, jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5):
    """Decode and augment VOC records into a training batch.

    ``records``: from :func:`refquant.data.voc.load_voc`. Returns ``(x, truths)``:
    x (N, 3, net_height, net_width) float32 in [0, 1], truths a list of N float32
    arrays (M_i, 5) (x_center, y_center, w, h relative, class id), as the region
    loss takes them.
    """
    images, truths = [], []
    for record in records:
        image = load_image(record["image_path"], (record["width"], record["height"]))
        x, t = augment_region(image, darknet_truths(record), net_width, net_height, rng,
                              jitter=jitter, hue=hue, saturation=saturation, exposure=exposure)
        images.append(x)
        truths.append(t)
    return np.stack(images).astype(np.float32), truths
