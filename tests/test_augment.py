"""Darknet's image operations (refquant.data.image) and training augmentation (refquant.data.augment).

Independent truths: PyTorch's bilinear interpolation with align_corners=True (what Darknet's
resize_image computes); Python's colorsys for the HSV conversions; NumPy's edge padding for the
clamped crop; hand-worked box corrections; and the pixels themselves: a rectangle drawn into an
image must be found, after crop, resize, flip and colour distortion, where its corrected box says.
"""
import colorsys

import numpy as np
import pytest
import torch

from refquant.data.augment import augment_region, correct_boxes, darknet_truths, load_batch
from refquant.data.image import (
    crop_image,
    distort_image,
    flip_image,
    hsv_to_rgb,
    letterbox_image,
    resize_image,
    rgb_to_hsv,
)
from refquant.data.shapes import generate
from refquant.data.voc import load_voc, read_names
from refquant.detection.boxes import voc_to_darknet


@pytest.mark.parametrize("source, target", [((17, 23), (40, 31)), ((50, 40), (13, 29)), ((500, 375), (416, 416)),
                                            ((1, 5), (3, 4)), ((8, 8), (8, 8))])
def test_resize_matches_torch_align_corners(source, target):
    """Independent truth: torch.nn.functional.interpolate(bilinear, align_corners=True). The 500 -> 416
    rows case is one where float32 rounding puts Darknet's last source row just below 499: Darknet's
    code would darken that row; refquant copies the last row, as align_corners defines."""
    image = np.random.default_rng(0).random((3, *source), dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=target, mode="bilinear",
                                               align_corners=True)[0].numpy()
    resized = resize_image(image, target[1], target[0])
    assert resized.dtype == np.float32 and resized.shape == (3, *target)
    np.testing.assert_allclose(resized, expected, rtol=0, atol=2e-6)


def test_letterbox_places_the_resized_image_on_grey():
    """Hand-worked: a 40x20 image into 32x32: new size 32x16, top = (32 - 16) // 2 = 8; rows 0..7 and
    24..31 are grey 0.5, rows 8..23 the image resized to 32x16 (checked against torch)."""
    image = np.random.default_rng(1).random((3, 20, 40), dtype=np.float32)
    boxed = letterbox_image(image, 32, 32)
    inner = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=(16, 32), mode="bilinear",
                                            align_corners=True)[0].numpy()
    assert np.all(boxed[:, :8] == 0.5) and np.all(boxed[:, 24:] == 0.5)
    np.testing.assert_allclose(boxed[:, 8:24], inner, rtol=0, atol=2e-6)


def test_crop_clamps_like_edge_padding():
    """Independent truth: np.pad(mode="edge") then slicing, for a window reaching past every border."""
    image = np.random.default_rng(2).random((3, 10, 12), dtype=np.float32)
    padded = np.pad(image, ((0, 0), (5, 5), (5, 5)), mode="edge")
    np.testing.assert_array_equal(crop_image(image, -3, -4, 20, 17), padded[:, 1:18, 2:22])
    np.testing.assert_array_equal(crop_image(image, 2, 3, 5, 4), image[:, 3:7, 2:7])
    np.testing.assert_array_equal(flip_image(image), image[:, :, ::-1])


def test_hsv_conversions_match_colorsys():
    """Independent truth: colorsys.rgb_to_hsv / hsv_to_rgb per pixel (same definitions; hue in [0, 1))."""
    rgb = np.random.default_rng(3).random((3, 20, 20), dtype=np.float32)
    rgb[:, 0, :5] = rgb[0, 0, :5]  # some grey pixels
    hsv = rgb_to_hsv(rgb)
    expected = np.array([colorsys.rgb_to_hsv(*rgb[:, i, j]) for i in range(20) for j in range(20)])
    np.testing.assert_allclose(hsv.reshape(3, -1).T, expected, rtol=0, atol=2e-6)
    back = np.array([colorsys.hsv_to_rgb(*hsv[:, i, j]) for i in range(20) for j in range(20)])
    np.testing.assert_allclose(hsv_to_rgb(hsv).reshape(3, -1).T, back, rtol=0, atol=2e-6)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, rtol=0, atol=2e-6)


@pytest.mark.parametrize("hue, saturation, exposure", [(0.1, 1.5, 1 / 1.5), (-0.07, 0.6, 1.4), (0.0, 1.0, 1.0)])
def test_distort_matches_colorsys(hue, saturation, exposure):
    """Independent truth: Darknet's distort_image written per pixel with colorsys: to HSV, s *=
    saturation, v *= exposure, hue shifted and wrapped once, back to RGB, clipped to [0, 1]."""
    rgb = np.random.default_rng(4).random((3, 16, 16), dtype=np.float32)
    expected = np.empty((16 * 16, 3))
    for k, (i, j) in enumerate(np.ndindex(16, 16)):
        h, s, v = colorsys.rgb_to_hsv(*rgb[:, i, j])
        h = h + hue
        h = h - 1 if h > 1 else h + 1 if h < 0 else h
        expected[k] = np.clip(colorsys.hsv_to_rgb(h, s * saturation, v * exposure), 0, 1)
    np.testing.assert_allclose(distort_image(rgb, hue, saturation, exposure).reshape(3, -1).T, expected,
                               rtol=0, atol=3e-6)


def test_correct_boxes_hand_worked():
    """Hand-worked (Darknet correct_boxes): a 100-wide image cropped from column 10 to a window of
    80: sx = 100/80 = 1.25, dx = 10/80 = .125. Box x = .3, w = .2: edges .2, .4 -> .125, .375, so
    x = .25, w = .25; flipped: edges .625, .875, x = .75. Box x = .05, w = .2: left -.05 ->
    -.1875 clipped to 0, right .15 -> .0625: x = .03125, w = .0625. y is untouched (sy = 1, dy = 0)."""
    truths = np.array([[0.3, 0.5, 0.2, 0.4, 2], [0.05, 0.5, 0.2, 0.4, 5]], dtype=np.float32)
    moved = correct_boxes(truths, dx=0.125, dy=0, sx=1.25, sy=1, flip=False)
    np.testing.assert_allclose(moved, [[0.25, 0.5, 0.25, 0.4, 2], [0.03125, 0.5, 0.0625, 0.4, 5]], atol=1e-7)
    flipped = correct_boxes(truths, dx=0.125, dy=0, sx=1.25, sy=1, flip=True)
    np.testing.assert_allclose(flipped[0], [0.75, 0.5, 0.25, 0.4, 2], atol=1e-7)


def test_darknet_truths_skip_difficult_objects():
    """Hand-worked (voc_label.py): the difficult object is left out; the other, VOC (11, 21, 30, 40)
    in a 100x50 image, becomes ((11 + 30)/2 - 1, (21 + 40)/2 - 1, 19, 19) / (100, 50, 100, 50)."""
    record = {"width": 100, "height": 50, "objects": [
        {"box": (11, 21, 30, 40), "class_id": 3, "difficult": False},
        {"box": (1, 1, 50, 50), "class_id": 1, "difficult": True}]}
    np.testing.assert_allclose(darknet_truths(record), [[19.5 / 100, 29.5 / 50, 19 / 100, 19 / 50, 3]], rtol=1e-6)


def rectangle_image():
    """A 120x90 black image with a white rectangle on columns 30..69, rows 20..49 (0-based): VOC box
    (31, 21, 70, 50)."""
    image = np.zeros((3, 90, 120), dtype=np.float32)
    image[:, 20:50, 30:70] = 1.0
    truths = np.hstack([voc_to_darknet([31, 21, 70, 50], 120, 90), [[4.0]]]).astype(np.float32)
    return image, truths


@pytest.mark.parametrize("seed", range(24))
def test_box_follows_the_drawn_rectangle(seed):
    """Independent truth: the pixels. After augment_region (jitter .3, flip, HSV distortion) into a
    64x48 input, the rectangle's pixels (brighter than .25) span, within 1.5 input pixels, from the
    corrected box's left edge to its right edge (x * 64), and top to bottom (y * 48); a box cropped
    away entirely is dropped and then no rectangle pixel remains."""
    image, truths = rectangle_image()
    x, moved = augment_region(image, truths, 64, 48, np.random.default_rng(seed), jitter=0.3)
    assert x.shape == (3, 48, 64) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    rows, cols = np.nonzero(x.max(axis=0) > 0.25)
    if len(moved) == 0:
        assert rows.size <= 2
        return
    (bx, by, bw, bh, class_id), = moved
    assert class_id == 4
    assert cols.min() == pytest.approx((bx - bw / 2) * 64, abs=1.5)
    assert cols.max() == pytest.approx((bx + bw / 2) * 64, abs=1.5)
    assert rows.min() == pytest.approx((by - bh / 2) * 48, abs=1.5)
    assert rows.max() == pytest.approx((by + bh / 2) * 48, abs=1.5)


def test_flip_happens_and_moves_the_box():
    """Over 40 seeds both flipped and unflipped examples occur (probability 1/2 each): the rectangle,
    left of centre in the source (centre column 49.5 of 120), ends up right of centre in some."""
    image, truths = rectangle_image()
    centres = [augment_region(image, truths, 64, 48, np.random.default_rng(seed), jitter=0.05)[1][0, 0]
               for seed in range(40)]
    assert min(centres) < 0.45 and max(centres) > 0.55


def test_load_batch_from_a_shapes_tree(tmp_path):
    """Batching contract (docs/SPECIFICATION.md, section 8.9): x (N, 3, H, W) float32 in [0, 1]; truths N float32 (M_i, 5)
    arrays, relative boxes in [0, 1], integer class ids, at most the non-difficult objects."""
    root = generate(tmp_path / "shapes", seed=3, size=64, train=5, val=0, test=0, progress=False)
    records = load_voc(root, "train", read_names(root / "shapes.names"))
    x, truths = load_batch(records, 96, 64, np.random.default_rng(0))
    assert x.shape == (5, 3, 64, 96) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert len(truths) == 5
    for record, t in zip(records, truths):
        assert t.dtype == np.float32 and t.ndim == 2 and t.shape[1] == 5
        assert len(t) <= sum(not o["difficult"] for o in record["objects"])
        assert np.all((t[:, :4] >= 0) & (t[:, :4] <= 1))
        assert np.all(t[:, 4] == np.round(t[:, 4])) and np.all((t[:, 4] >= 0) & (t[:, 4] < 7))
