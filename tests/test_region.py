"""Tests of the YOLOv2 region head (refquant/yolo/region.py) and its loss."""
import math
import re
from importlib import resources

import cv2
import numpy as np
import pytest
import torch

from refquant.testing import identity_head_files
from refquant.yolo.region import RegionLayer

ANCHORS = [1.5, 0.7, 0.6, 2.2]          # two anchors (w, h) in grid cells


def torch_region_forward(x, num, classes, softmax):
    """The region activations written independently with torch reshapes (Darknet's entry_index)."""
    n, c, h, w = x.shape
    v = x.view(n, num, 5 + classes, h, w)
    cls = torch.softmax(v[:, :, 5:], dim=2) if softmax else torch.sigmoid(v[:, :, 5:])
    out = torch.cat([torch.sigmoid(v[:, :, 0:2]), v[:, :, 2:4], torch.sigmoid(v[:, :, 4:5]), cls], dim=2)
    return out.reshape(n, c, h, w)


@pytest.mark.parametrize("softmax", [1, 0])
def test_forward_and_backward_match_torch_autograd(softmax):
    """Truth: torch.sigmoid / torch.softmax on the layout built with torch reshapes, and autograd (float64)."""
    rng = np.random.default_rng(1)
    layer = RegionLayer(anchors=ANCHORS, num=2, classes=3, softmax=softmax)
    x = rng.normal(scale=3.0, size=(2, 16, 3, 5))
    dout = rng.normal(size=x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_region_forward(xt, 2, 3, softmax)
    yt.backward(torch.tensor(dout))
    y = layer.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_forward_keeps_float32():
    """Truth: the same torch layout in float32 (the network's working dtype)."""
    x = np.random.default_rng(2).normal(size=(1, 16, 2, 2)).astype(np.float32)
    y = RegionLayer(anchors=ANCHORS, num=2, classes=3, softmax=1).forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, torch_region_forward(torch.tensor(x), 2, 3, 1).numpy(), rtol=1e-6, atol=1e-7)


def test_decoded_output_matches_opencv_region_layer(tmp_path):
    """Truth: OpenCV's Darknet importer (cv2.dnn Region layer), which outputs per (row, col, anchor)
    the decoded box (x, y, w, h), the objectness and objectness * class probability.

    [net] -> 1x1 identity convolution (weights written by hand in Darknet's format,
    refquant.testing.identity_head_files) -> [region].
    Square grid (OpenCV divides w by the row count); w, h raw near -5 so the boxes are small and
    OpenCV's built-in NMS (threshold 0.4) suppresses nothing; cfg thresh=0 keeps every probability.
    """
    num, classes, size = 2, 3, 4
    channels = num * (5 + classes)
    section = (f"[region]\nanchors={','.join(map(str, ANCHORS))}\nclasses={classes}\ncoords=4\n"
               f"num={num}\nsoftmax=1\nthresh=0\n")
    net = cv2.dnn.readNetFromDarknet(*identity_head_files(tmp_path, section, channels, size))
    x = np.random.default_rng(3).normal(size=(1, channels, size, size)).astype(np.float32)
    x.reshape(num, 5 + classes, size, size)[:, 2:4] -= 5
    net.setInput(x)
    expected = net.forward()                                   # (H*W*num, 5 + classes)

    layer = RegionLayer(anchors=ANCHORS, num=num, classes=classes, softmax=1)
    y = layer.forward(x.astype(np.float64)).reshape(num, 5 + classes, size, size)
    boxes = layer.predicted_boxes()[0]                         # (num, H, W, 4)
    objectness = y[:, 4, :, :, None]
    class_prob = np.moveaxis(y[:, 5:], 1, -1) * objectness
    ours = np.concatenate([boxes, objectness, class_prob], axis=-1)      # (num, H, W, 5 + classes)
    ours = ours.transpose(1, 2, 0, 3).reshape(-1, 5 + classes)          # rows in (row, col, anchor) order
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the loss, worked by hand

def hand_layer(**options):
    """1 image, 2x2 grid, anchors a0 = (1, 1) and a1 = (2, 1) cells, 2 classes, thresh 0.4."""
    defaults = dict(anchors=[1, 1, 2, 1], num=2, classes=2, softmax=1, rescore=1, bias_match=1,
                    thresh=0.4, object_scale=5, noobject_scale=1, class_scale=1, coord_scale=1)
    defaults.update(options)
    return RegionLayer(**defaults)


def hand_input(layer):
    """Raw input: all zeros (sigmoid 0.5, box = anchor centred in its cell, p = 1/2), except
    x of (col 1, row 0, a0) = ln 3 (sigmoid 3/4) and w of (col 1, row 0, a1) = 0.5."""
    x = np.zeros((1, layer.num * (5 + layer.classes), 2, 2))
    v = x.reshape(layer.num, 5 + layer.classes, 2, 2)
    v[0, 0, 0, 1] = math.log(3)
    v[1, 2, 0, 1] = 0.5
    return x


TRUTH_A = [0.3, 0.3, 0.5, 0.5, 1]       # cell (0, 0); shape IoU 1 with a0, 1/2 with a1 -> a0
TRUTH_B = [0.8, 0.7, 0.9, 0.4, 0]       # cell (col 1, row 1); shape IoU .2/.41 with a0, .36/.5 with a1 -> a1


def hand_deltas(seen):
    """Darknet's deltas (output space) for TRUTH_A and TRUTH_B, by hand. Index [anchor, entry, row, col].

    Predicted boxes (relative): centre ((col + .5)/2, (row + .5)/2), a0: .5 x .5, a1: 1 x .5, except
    (row 0, col 1, a0) centred at x = (1 + .75)/2 and (row 0, col 1, a1) of width e^.5.
    IoU with a truth > 0.4 -> objectness ignored:
      (row 0, col 0, a0) vs A: [0,.5]^2 vs [.05,.55]^2: .45^2 / (.25 + .25 - .2025) = .2025/.2975
      (row 0, col 0, a1) vs A: [-.25,.75]x[0,.5]: .5*.45 / (.5 + .25 - .225) = .225/.525 = .4286
      (row 1, col 1, a0) vs B: [.5,1]^2 vs [.35,1.25]x[.5,.9]: .5*.4 / (.25 + .36 - .2) = .2/.41 = .4878
      (row 1, col 1, a1) vs B: [.25,1.25]x[.5,1]: .9*.4 / (.5 + .36 - .36) = .72
    every other prediction has IoU < .4 with both truths (at most .2649), so objectness delta 0 - .5.
    """
    d = np.zeros((2, 7, 2, 2))
    d[:, 4] = -0.5                                              # no-object: 1 * (0 - sigmoid(0))
    d[0, 4, 0, 0] = d[1, 4, 0, 0] = d[0, 4, 1, 1] = d[1, 4, 1, 1] = 0.0   # ignored (IoU > .4)
    if seen < 12800:                                            # pull to anchor centre, scale .01
        d[0, 0, 0, 1] = 0.01 * (0.5 - 0.75)                     # x target .5, sigmoid(ln 3) = .75
        d[1, 2, 0, 1] = 0.01 * (0.0 - 0.5)                      # w target log(1) = 0, raw .5
    # truth A -> (row 0, col 0, a0); scale 2 - .5*.5 = 1.75; tx = .6, ty = .6, tw = th = log(.5*2/1) = 0
    d[0, 0:4, 0, 0] = [1.75 * 0.1, 1.75 * 0.1, 0.0, 0.0]
    d[0, 4, 0, 0] = 5 * (0.2025 / 0.2975 - 0.5)                 # rescore: IoU(pred, A)
    d[0, 5:, 0, 0] = [0 - 0.5, 1 - 0.5]                         # class 1
    # truth B -> (row 1, col 1, a1); scale 2 - .9*.4 = 1.64; tx = 1.6 - 1, ty = 1.4 - 1,
    # tw = log(.9*2/2), th = log(.4*2/1)
    d[1, 0:4, 1, 1] = [1.64 * 0.1, 1.64 * -0.1, 1.64 * math.log(0.9), 1.64 * math.log(0.8)]
    d[1, 4, 1, 1] = 5 * (0.72 - 0.5)
    d[1, 5:, 1, 1] = [1 - 0.5, 0 - 0.5]                         # class 0
    return d


@pytest.mark.parametrize("seen", [0, 12799, 12800])
def test_deltas_and_cost_match_hand_worked_case(seen):
    """Truth: Darknet's forward_region_layer worked by hand (hand_deltas): ignore threshold, rescore,
    best anchor by shape (bias_match), coord scale 2 - wh, the seen < 12800 prior, and the printed cost."""
    layer = hand_layer()
    layer.forward(hand_input(layer))
    loss, dout = layer.loss([np.array([TRUTH_A, TRUTH_B])], seen=seen)
    expected = hand_deltas(seen)
    np.testing.assert_allclose(layer.delta.reshape(2, 7, 2, 2), expected, atol=1e-12)
    assert layer.cost == pytest.approx(np.sum(expected ** 2), rel=1e-12)
    assert layer.stats["count"] == 2
    assert layer.stats["avg_iou"] == pytest.approx((0.2025 / 0.2975 + 0.72) / 2)
    assert layer.stats["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize("seen", [0, 12800])
def test_loss_and_input_gradient_match_hand_worked_case(seen):
    """Truth: L by hand, 1/2 S (T - y)^2 per coordinate/objectness entry plus class_scale * CE; and
    -dL/d(raw input) equal to Darknet's delta times y (1 - y) on x, y, objectness (its logistic
    gradient step), the delta itself on w, h and the softmax classes."""
    layer = hand_layer()
    x = hand_input(layer)
    y = layer.forward(x).reshape(2, 7, 2, 2).copy()
    loss, dout = layer.loss([np.array([TRUTH_A, TRUTH_B])], seen=seen)
    half_squares = 0.5 * (1.75 * (0.1 ** 2 + 0.1 ** 2)
                          + 1.64 * (0.1 ** 2 + 0.1 ** 2 + math.log(0.9) ** 2 + math.log(0.8) ** 2)
                          + 5 * (0.2025 / 0.2975 - 0.5) ** 2 + 5 * (0.72 - 0.5) ** 2
                          + 4 * 0.5 ** 2)                        # four un-ignored no-object entries
    if seen < 12800:
        half_squares += 0.5 * 0.01 * (0.25 ** 2 + 0.5 ** 2)
    cross_entropy = 2 * math.log(2)                             # -log(1/2) for each truth
    assert loss == pytest.approx(half_squares + cross_entropy, rel=1e-12)

    expected = hand_deltas(seen)
    slope = y * (1 - y)
    expected[:, [0, 1, 4]] *= slope[:, [0, 1, 4]]
    np.testing.assert_allclose(-layer.backward(dout).reshape(2, 7, 2, 2), expected, atol=1e-12)


@pytest.mark.parametrize("softmax, class_deltas", [(1, [-0.5, 0.5]), (0, [0.5, 0.5])])
def test_two_truths_in_one_anchor(softmax, class_deltas):
    """Truth: delta_region_class worked by hand. Two truths in cell (0, 0), both best matched by a0:
    the later one overwrites the box and objectness targets; with softmax its one-hot replaces the
    classes, with logistic classes (tag = !softmax, class-0 delta already non-zero) it only adds its class."""
    layer = hand_layer(softmax=softmax, rescore=0)
    layer.forward(np.zeros((1, 14, 2, 2)))
    first, second = [0.3, 0.3, 0.5, 0.5, 0], [0.2, 0.4, 0.4, 0.6, 1]
    layer.loss([np.array([first, second])], seen=20000)
    d = layer.delta.reshape(2, 7, 2, 2)[0, :, 0, 0]
    scale = 2 - 0.4 * 0.6
    expected_box = [scale * (0.4 - 0.5), scale * (0.8 - 0.5), scale * math.log(0.4 * 2), scale * math.log(0.6 * 2)]
    np.testing.assert_allclose(d[0:4], expected_box, atol=1e-12)
    assert d[4] == pytest.approx(5 * (1 - 0.5))                # rescore=0: target 1
    np.testing.assert_allclose(d[5:], class_deltas, atol=1e-12)


def test_bias_match_off_uses_predicted_shapes():
    """Truth: by hand. Without bias_match the best anchor compares the truth's shape with the
    *predicted* w, h: a1's raw w = log(1/2) makes its box .5 x .5, identical to truth A's shape."""
    layer = hand_layer(bias_match=0, rescore=0)
    x = np.zeros((1, 14, 2, 2))
    x.reshape(2, 7, 2, 2)[1, 2, 0, 0] = math.log(0.5)          # a1 predicted width 2*.5/2 = .5
    x.reshape(2, 7, 2, 2)[0, 2, 0, 0] = math.log(3.0)          # a0 predicted width 1.5: IoU 1/3
    layer.forward(x)
    layer.loss([np.array([TRUTH_A])], seen=20000)
    d = layer.delta.reshape(2, 7, 2, 2)
    assert d[1, 4, 0, 0] == pytest.approx(5 * 0.5)              # objectness target 1 on a1
    assert d[1, 2, 0, 0] == pytest.approx(1.75 * (math.log(0.5 * 2 / 2) - math.log(0.5)))
    assert np.all(d[0, 0:4, 0, 0] == 0)                         # a0 got no box delta


# ---------------------------------------------------------------- the loss against finite differences

def random_case(rng, softmax, batch=2, size=(2, 3)):
    layer = RegionLayer(anchors=ANCHORS, num=2, classes=3, softmax=softmax, rescore=1, bias_match=1,
                        thresh=0.3, object_scale=5, noobject_scale=1, class_scale=1.5, coord_scale=2)
    x = rng.normal(size=(batch, 16) + size)
    truths = [np.column_stack([rng.uniform(0.05, 0.95, (m, 2)), rng.uniform(0.1, 0.6, (m, 2)),
                               rng.integers(0, 3, m)]) for m in (3, 1)[:batch]]
    return layer, x, truths


@pytest.mark.parametrize("softmax", [1, 0])
def test_loss_gradient_matches_finite_differences_with_frozen_targets(softmax):
    """Truth: central finite differences (float64) of L with Darknet's masks and targets (rescore IoU,
    ignore mask, anchor assignment) frozen at the unperturbed input, over every input entry."""
    rng = np.random.default_rng(4)
    layer, x, truths = random_case(rng, softmax)
    layer.forward(x)
    scale, target = layer.targets(truths, seen=0)
    assert np.count_nonzero(scale[:, 4::8]) > 0 and np.count_nonzero(scale[:, 0:4]) > 0
    _, dout = layer.loss_with_targets(scale, target)
    grad = layer.backward(dout)
    step = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[index] += step
        layer.forward(shifted)
        plus = layer.loss_with_targets(scale, target)[0]
        shifted[index] -= 2 * step
        layer.forward(shifted)
        minus = layer.loss_with_targets(scale, target)[0]
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_loss_gradient_matches_finite_differences_of_full_loss_without_rescore():
    """Truth: central finite differences (float64) of ``loss`` itself. With rescore=0 and bias_match=1
    the targets do not depend on the input, so L is differentiable as is (away from the ignore
    threshold, which the test checks it does not cross)."""
    rng = np.random.default_rng(5)
    layer, x, truths = random_case(rng, softmax=1)
    layer.rescore = 0
    layer.forward(x)
    _, dout = layer.loss(truths, seen=100)
    mask = layer.targets(truths, seen=100)[0]
    grad = layer.backward(dout)
    step = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        values = []
        for sign in (1, -1):
            shifted = x.copy()
            shifted[index] += sign * step
            layer.forward(shifted)
            values.append(layer.loss(truths, seen=100)[0])
            assert np.array_equal(layer.targets(truths, seen=100)[0], mask)
        numeric[index] = (values[0] - values[1]) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_float32_network_gets_float32_gradient():
    """Truth: the float64 computation of the same case (float32 within its precision)."""
    rng = np.random.default_rng(6)
    layer, x, truths = random_case(rng, softmax=1)
    layer.forward(x)
    loss64, dout64 = layer.loss(truths)
    grad64 = layer.backward(dout64)
    layer.forward(x.astype(np.float32))
    loss32, dout32 = layer.loss(truths)
    grad32 = layer.backward(dout32)
    assert dout32.dtype == np.float32 and grad32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(grad32, grad64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- cfg keys and bad input

def region_section(name):
    """key -> value of the [region] section of a shipped cfg, read with a regex (not refquant's parser)."""
    text = resources.files("refquant").joinpath("cfg", name).read_text()
    section = text.split("[region]")[1]
    return dict((k.strip(), v.strip()) for k, v in re.findall(r"^\s*([a-z_]+)\s*=\s*(.+)$", section, re.M))


@pytest.mark.parametrize("name", ["yolov2-voc.cfg", "yolov2-tiny-voc.cfg", "yolov2-tiny.cfg"])
def test_every_cfg_key_is_known_and_builds(name):
    """Truth: the shipped Darknet cfgs' [region] sections."""
    options = region_section(name)
    assert set(options) <= set(RegionLayer.cfg_keys)
    converters = {"int": int, "float": float, "floats": lambda v: [float(a) for a in v.split(",")]}
    typed = {k: converters[RegionLayer.cfg_keys[k][0]](v) for k, v in options.items()}
    layer = RegionLayer(**typed)
    assert layer.anchors.shape == (int(options["num"]), 2)
    assert layer.anchors[1, 0] == float(options["anchors"].split(",")[2])
    channels = int(options["num"]) * (5 + int(options["classes"]))       # 125 for VOC, 425 for COCO
    assert layer.output_shape((channels, 13, 19)) == (channels, 13, 19)


def test_bad_options_and_inputs_raise_clear_errors():
    """Truth: the contract (a ValueError naming the key, layer or argument)."""
    with pytest.raises(ValueError, match=r"\[region\] anchors"):
        RegionLayer(anchors=[1, 2, 3], num=2)
    with pytest.raises(ValueError, match=r"\[region\] coords"):
        RegionLayer(coords=5)
    with pytest.raises(ValueError, match=r"\[region\] tree"):
        RegionLayer(tree="data/9k.tree")
    layer = RegionLayer(anchors=ANCHORS, num=2, classes=3, softmax=1)
    with pytest.raises(ValueError, match="expected num"):
        layer.output_shape((15, 4, 4))
    with pytest.raises(ValueError, match="call forward first"):
        layer.loss([np.zeros((0, 5))])
    layer.forward(np.zeros((1, 16, 2, 2)))
    with pytest.raises(ValueError, match="truths has 2 images"):
        layer.loss([np.zeros((0, 5))] * 2)
    with pytest.raises(ValueError, match=r"truths\[0\].*class ids"):
        layer.loss([np.array([[0.5, 0.5, 0.2, 0.2, 3]])])
    with pytest.raises(ValueError, match=r"truths\[0\].*0 < x, y < 1"):
        layer.loss([np.array([[1.0, 0.5, 0.2, 0.2, 0]])])
    with pytest.raises(ValueError, match=r"truths\[0\].*at most 30"):
        layer.loss([np.tile([0.5, 0.5, 0.2, 0.2, 0], (31, 1))])
    with pytest.raises(ValueError, match=r"truths\[0\].*\(M, 5\)"):
        layer.loss([np.zeros((2, 4))])


def test_no_truth_image_only_pushes_objectness_down():
    """Truth: Darknet with an empty label file and seen >= 12800: only no-object deltas 0 - sigmoid."""
    layer = RegionLayer(anchors=ANCHORS, num=2, classes=3, softmax=1, noobject_scale=2)
    x = np.random.default_rng(7).normal(size=(1, 16, 2, 3))
    y = layer.forward(x).reshape(2, 8, 2, 3)
    loss, _ = layer.loss([np.zeros((0, 5))], seen=12800)
    expected = np.zeros_like(y)
    expected[:, 4] = 2 * (0 - y[:, 4])
    np.testing.assert_allclose(layer.delta.reshape(2, 8, 2, 3), expected, atol=1e-14)
    assert loss == pytest.approx(0.5 * 2 * np.sum(y[:, 4] ** 2))
