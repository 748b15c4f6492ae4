"""Whole networks against OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet).

OpenCV 4.x reimplements Darknet's layers in C++ independently of refquant. Each test
writes random parameters to a Darknet .weights file with refquant, reads the cfg and
that file with both refquant and OpenCV, runs both at an input size other than the
cfg's 416x416 (non-square, batch 2 for the tiny networks) and compares the output of
EVERY layer: max|ours - opencv| / max|opencv| < 1e-4.

What is compared per layer type:
- convolutional, maxpool, route, reorg, upsample: the layer's output tensor itself.
- region / yolo heads: OpenCV's head outputs decoded detections, one row per
  (image, row, col, anchor): x, y, w, h relative to the image, objectness, then
  class probabilities times objectness, zeroed below OpenCV's threshold. The test
  decodes refquant's head activations with Darknet's formulas (get_region_box,
  get_yolo_box) and compares x, y, w, h and objectness everywhere, and the class
  probabilities wherever OpenCV kept them (non-zero).

The one documented convention difference: OpenCV normalises with sqrt(var + 1e-6)
where refquant follows Darknet's sqrt(var + 1e-5) (refquant.yolo.batchnorm). The file
given to OpenCV therefore holds rolling variances raised by 9e-6, which makes the two
formulas identical, so the comparison checks everything else at float32 precision.
(Without that shift the networks still agree to about 1e-4; the shift keeps the test
sharp.)
"""
import cv2
import numpy as np
import pytest

from refquant import darknet, testing

pytestmark = pytest.mark.slow  # whole networks

CFG_DIR = "refquant/cfg"


def randomize_parameters(net, rng):
    """Give every batch-norm vector and bias a random value (refquant.testing.randomize_parameters;
    conv weights keep their random init).

    The linear convolutions that feed the heads get 4x larger weights, so that some class
    probabilities pass OpenCV's detection threshold and are compared too.
    """
    for layer in net.layers:
        if layer.type == "convolutional" and layer.activation == "linear":
            layer.params["weights"] *= 4
    testing.randomize_parameters(net, rng)


def opencv_layer_name(layer, index):
    """The OpenCV layer holding Darknet layer ``index``'s output.

    OpenCV's importer (modules/dnn/src/darknet/darknet_io.cpp) splits a convolutional
    section into conv_i, bn_i and an activation that it names with the NEXT index
    (leaky_{i+1}); the other sections keep their index.
    """
    kind = layer.type
    if kind == "convolutional":
        if layer.activation == "leaky":
            return f"leaky_{index + 1}"
        assert layer.activation == "linear"
        return f"bn_{index}" if layer.batch_normalize else f"conv_{index}"
    if kind == "connected":
        assert layer.activation == "linear" and not layer.batch_normalize
        return f"fullyConnected_{index}"
    if kind == "route":
        return f"identity_{index}" if len(layer.inputs) == 1 else f"concat_{index}"
    return {"maxpool": f"pool_{index}", "reorg": f"reorg_{index}", "upsample": f"upsample_{index}",
            "region": "detection_out", "yolo": f"yolo_{index}"}[kind]


def undecoded_head(layer, rows, output_shape, input_hw):
    """Invert OpenCV's head rows back to Darknet's head activations (N, A*K, H, W).

    OpenCV's row (image n, row r, col c, anchor a) holds bx = (c + x)/W, by = (r + y)/H,
    bw = exp(w) anchor_w / S_w, bh = exp(h) anchor_h / S_h (S = the grid W, H for region,
    the input size for yolo, whose anchors are in pixels: get_region_box, get_yolo_box),
    objectness, then objectness * class probability. Returns (activations, kept) where
    kept marks the class entries OpenCV did not zero.
    """
    n_batch, channels, height, width = output_shape
    entries = layer.entries
    anchors_used = channels // entries
    o = np.asarray(rows, np.float64).reshape(n_batch, height, width, anchors_used, entries)
    col = np.arange(width)[None, None, :, None]
    row = np.arange(height)[None, :, None, None]
    if layer.type == "region":
        anchors, scale_w, scale_h = layer.anchors, width, height
    else:
        anchors, scale_w, scale_h = layer.anchors[layer.mask], input_hw[1], input_hw[0]
    v = np.empty(o.shape)
    v[..., 0] = o[..., 0] * width - col
    v[..., 1] = o[..., 1] * height - row
    v[..., 2] = np.log(o[..., 2] * scale_w / anchors[:, 0])
    v[..., 3] = np.log(o[..., 3] * scale_h / anchors[:, 1])
    v[..., 4] = o[..., 4]
    v[..., 5:] = o[..., 5:] / o[..., 4:5]
    kept = np.zeros(o.shape, bool)
    kept[..., :5] = True
    kept[..., 5:] = o[..., 5:] != 0
    to_darknet = (0, 3, 4, 1, 2)  # (n, row, col, a, k) -> (n, a, k, row, col)
    return (v.transpose(to_darknet).reshape(output_shape),
            kept.transpose(to_darknet).reshape(output_shape))


def relative_error(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("cfg, input_hw, batch", [
    ("yolov2-tiny-voc", (288, 352), 2),
    ("yolov2-voc", (256, 320), 1),
    ("yolov3-tiny", (352, 288), 2),
    ("yolov1-tiny-no-detection", (448, 448), 2),
])
def test_every_layer_matches_opencv(cfg, input_hw, batch, tmp_path):
    """Every layer's output equals OpenCV's Darknet importer within 1e-4 relative (see module).

    yolov1-tiny: OpenCV has no [detection] layer, so the cfg is cut before it (the detection
    head is checked against torch in test_layers); its [connected] layer fixes the input at
    the cfg's 448x448."""
    rng = np.random.default_rng(7)
    cfg_path = f"{CFG_DIR}/{cfg}.cfg"
    if cfg == "yolov1-tiny-no-detection":
        text = open(f"{CFG_DIR}/yolov1-tiny.cfg").read()
        cfg_path = str(tmp_path / f"{cfg}.cfg")
        with open(cfg_path, "w") as f:
            f.write(text[:text.index("[detection]")])
    weights_path = str(tmp_path / f"{cfg}.weights")
    randomized = darknet.load(cfg_path, seed=3)
    randomize_parameters(randomized, rng)
    darknet.save_weights(randomized, weights_path)
    opencv_weights_path = str(tmp_path / f"{cfg}-opencv.weights")
    for layer in randomized.layers:
        if "rolling_variance" in layer.params:
            layer.params["rolling_variance"] += np.float32(1e-5 - 1e-6)  # see the module docstring
    darknet.save_weights(randomized, opencv_weights_path)

    net = darknet.load(cfg_path, weights_path)
    x = rng.random((batch, 3) + input_hw, dtype=np.float32)
    ours = net.forward(x, return_all=True)

    cvnet = cv2.dnn.readNetFromDarknet(cfg_path, opencv_weights_path)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.enableFusion(False)  # keep every intermediate blob (fusion writes concat inputs in place)
    names = [opencv_layer_name(layer, i) for i, layer in enumerate(net.layers)]
    assert set(names) <= set(cvnet.getLayerNames()), "a layer has no OpenCV counterpart"
    cvnet.setInput(x)
    theirs = cvnet.forward(names)

    assert len(theirs) == len(net.layers)
    for index, (layer, ours_i, theirs_i) in enumerate(zip(net.layers, ours, theirs)):
        if layer.type in ("region", "yolo"):
            theirs_i, kept = undecoded_head(layer, theirs_i, ours_i.shape, input_hw)
            assert kept.sum() > kept.size * 5 / layer.entries, f"layer {index}: OpenCV kept no class entry"
            error = relative_error(ours_i[kept], theirs_i[kept])
            assert error < 1e-4, f"layer {index} [{layer.type}]: relative error {error:.2e}"
        else:
            if layer.type == "connected":  # OpenCV's fully connected output is (N, outputs)
                theirs_i = theirs_i.reshape(ours_i.shape)
            assert ours_i.shape == theirs_i.shape, f"layer {index} [{layer.type}] shape"
            error = relative_error(ours_i, theirs_i)
            assert error < 1e-4, f"layer {index} [{layer.type}]: relative error {error:.2e}"
