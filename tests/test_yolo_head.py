"""Tests of the YOLOv3 detection head (refquant/yolo/yolo_head.py)."""
import re
from importlib import resources

import cv2
import numpy as np
import pytest
import torch

from refquant.testing import identity_head_files
from refquant.yolo.yolo_head import YoloLayer

ANCHORS = [10, 14, 23, 27, 37, 58]        # three anchors (w, h) in input pixels


def torch_yolo_forward(x, n, classes):
    """The yolo activations written independently with torch reshapes (Darknet's entry_index)."""
    batch, c, h, w = x.shape
    v = x.view(batch, n, 5 + classes, h, w)
    out = torch.cat([torch.sigmoid(v[:, :, 0:2]), v[:, :, 2:4], torch.sigmoid(v[:, :, 4:])], dim=2)
    return out.reshape(batch, c, h, w)


def test_forward_and_backward_match_torch_autograd():
    """Truth: torch.sigmoid on the layout built with torch reshapes, and autograd (float64)."""
    rng = np.random.default_rng(1)
    layer = YoloLayer(mask=[1, 2], anchors=ANCHORS, num=3, classes=4)
    x = rng.normal(scale=3.0, size=(2, 18, 3, 5))
    dout = rng.normal(size=x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_yolo_forward(xt, 2, 4)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_forward_keeps_float32():
    """Truth: the same torch layout in float32."""
    x = np.random.default_rng(2).normal(size=(1, 27, 2, 2)).astype(np.float32)
    y = YoloLayer(anchors=ANCHORS, num=3, classes=4).forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, torch_yolo_forward(torch.tensor(x), 3, 4).numpy(), rtol=1e-6, atol=1e-7)


def test_decoded_output_matches_opencv_yolo_layer(tmp_path):
    """Truth: OpenCV's Darknet importer (its [yolo] layer), which outputs per (row, col, anchor) the
    decoded box (x, y, w, h relative to the input), objectness and objectness * sigmoid(class).

    [net] -> 1x1 identity convolution (weights written by hand in Darknet's format: int32 major,
    minor, revision, uint64 seen, biases, weights; refquant.testing.identity_head_files) -> [yolo]
    with mask 1,2 of 3 anchors.
    Square input (OpenCV divides w by the input's height); nms_threshold=0 and thresh=0 switch
    off OpenCV's NMS and probability threshold.
    """
    n, classes, size = 2, 3, 4
    channels = n * (5 + classes)
    section = (f"[yolo]\nmask=1,2\nanchors=1.5,0.7, 0.6,2.2, 2,1\nclasses={classes}\nnum=3\n"
               f"thresh=0\nnms_threshold=0\n")
    net = cv2.dnn.readNetFromDarknet(*identity_head_files(tmp_path, section, channels, size, "yolo"))
    x = np.random.default_rng(3).normal(size=(1, channels, size, size)).astype(np.float32)
    net.setInput(x)
    expected = net.forward()                                   # (H*W*n, 5 + classes)

    layer = YoloLayer(mask=[1, 2], anchors=[1.5, 0.7, 0.6, 2.2, 2, 1], num=3, classes=classes)
    y = layer.forward(x.astype(np.float64)).reshape(n, 5 + classes, size, size)
    boxes = layer.predicted_boxes((size, size))[0]            # (n, H, W, 4)
    objectness = y[:, 4, :, :, None]
    ours = np.concatenate([boxes, objectness, np.moveaxis(y[:, 5:], 1, -1) * objectness], axis=-1)
    ours = ours.transpose(1, 2, 0, 3).reshape(-1, 5 + classes)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def yolo_sections(name):
    """key -> value of every [yolo] section of a shipped cfg, read with a regex (not refquant's parser)."""
    text = resources.files("refquant").joinpath("cfg", name).read_text()
    sections = [part.split("\n[")[0] for part in text.split("[yolo]")[1:]]
    return [dict((k.strip(), v.strip()) for k, v in re.findall(r"^\s*([a-z_]+)\s*=\s*(.+)$", s, re.M))
            for s in sections]


def test_yolov3_tiny_sections_are_known_and_build():
    """Truth: the shipped yolov3-tiny.cfg: two [yolo] heads, masks 3,4,5 and 0,1,2 of six anchors,
    each taking 3*(5+80) = 255 channels."""
    sections = yolo_sections("yolov3-tiny.cfg")
    assert len(sections) == 2
    converters = {"int": int, "float": float,
                  "ints": lambda v: [int(a) for a in v.split(",")],
                  "floats": lambda v: [float(a) for a in v.split(",")]}
    for options, mask in zip(sections, ([3, 4, 5], [0, 1, 2])):
        assert set(options) <= set(YoloLayer.cfg_keys)
        layer = YoloLayer(**{k: converters[YoloLayer.cfg_keys[k][0]](v) for k, v in options.items()})
        assert layer.mask.tolist() == mask
        assert layer.anchors.shape == (6, 2) and layer.anchors[5].tolist() == [344, 319]
        assert layer.output_shape((255, 13, 13)) == (255, 13, 13)


def test_defaults_follow_darknet_parse_yolo():
    """Truth: Darknet's parse_yolo / make_yolo_layer: no mask means every anchor (0..num-1),
    no anchors means 0.5 for each."""
    layer = YoloLayer(num=2, classes=1)
    assert layer.mask.tolist() == [0, 1]
    assert layer.anchors.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert layer.output_shape((12, 1, 1)) == (12, 1, 1)


def test_bad_options_and_inputs_raise_clear_errors():
    """Truth: the contract (a ValueError naming the key, layer or argument)."""
    with pytest.raises(ValueError, match=r"\[yolo\] mask"):
        YoloLayer(mask=[0, 3], anchors=ANCHORS, num=3)
    with pytest.raises(ValueError, match=r"\[yolo\] anchors"):
        YoloLayer(anchors=ANCHORS[:5], num=3)
    with pytest.raises(ValueError, match=r"\[yolo\] map"):
        YoloLayer(map="data/coco9k.map")
    layer = YoloLayer(mask=[0], anchors=ANCHORS, num=3, classes=2)
    with pytest.raises(ValueError, match=r"\[yolo\] layer: input has 8 channels"):
        layer.output_shape((8, 4, 4))
    with pytest.raises(ValueError, match=r"\[yolo\] layer: expected input"):
        layer.forward(np.zeros((7, 4, 4)))
    layer.forward(np.zeros((1, 7, 2, 2)))
    with pytest.raises(ValueError, match=r"\[yolo\] layer: backward"):
        layer.backward(np.zeros((1, 7, 2, 3)))
