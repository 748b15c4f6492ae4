"""Plots and per-layer statistics of refquant.yolo.plots.

The statistics are checked against OpenCV's Darknet importer (the same network's layer
outputs computed by cv2.dnn, statistics taken with numpy), and the gradient statistics
against hand truths: the head's gradient is the dout given, and a route's inputs receive
exactly the slices of its gradient. Plots run on the Agg backend and are checked for
what they draw.
"""
import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from refquant import darknet  # noqa: E402
from refquant.yolo import plots  # noqa: E402


def test_activation_statistics_match_opencv(tmp_path):
    """Mean, std, min, max of every layer of yolov2-tiny-voc equal those of OpenCV's layer outputs."""
    cfg = "refquant/cfg/yolov2-tiny-voc.cfg"
    net = darknet.load(cfg, seed=0)
    darknet.save_weights(net, tmp_path / "n.weights")
    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    stats = plots.layer_statistics(net, x)
    cvnet = cv2.dnn.readNetFromDarknet(cfg, str(tmp_path / "n.weights"))
    cvnet.enableFusion(False)
    cvnet.setInput(x)
    names = ["leaky_1", "pool_1", "leaky_3", "pool_3", "leaky_5", "pool_5", "leaky_7", "pool_7", "leaky_9",
             "pool_9", "leaky_11", "pool_11", "leaky_13", "leaky_14", "conv_14"]
    outputs = cvnet.forward(names)
    for key, reduce in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        theirs = np.array([reduce(o.astype(np.float64)) for o in outputs])
        scale = np.array([np.max(np.abs(o)) for o in outputs])
        assert np.all(np.abs(stats[key][:15] - theirs) <= 1e-4 * scale), key
    assert stats["types"][15] == "region" and len(stats["mean"]) == 16


def test_gradient_statistics_hand_truths():
    """The last layer's gradient RMS is the RMS of dout; route 28 of yolov2-voc passes its gradient
    slices on unchanged, so the RMS of its inputs' gradients recombine to its own."""
    net = darknet.load("refquant/cfg/yolov2-voc.cfg", seed=0)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    dout = np.random.default_rng(2).normal(size=(1, 125, 2, 2)).astype(np.float32)
    stats = plots.layer_statistics(net, x, dout)
    rms = stats["gradient_rms"]
    assert np.isclose(rms[31], np.sqrt(np.mean(dout.astype(np.float64) ** 2)), rtol=1e-6)
    # layer 28 concatenates 27 (256 channels) and 24 (1024 channels), each read by 28 only,
    # so their mean squares recombine with the channel shares.
    combined = (256 * rms[27] ** 2 + 1024 * rms[24] ** 2) / 1280
    assert np.isclose(np.sqrt(combined), rms[28], rtol=1e-5)


def test_plots_draw_what_they_say():
    net = darknet.load("refquant/cfg/yolov3-tiny.cfg", seed=0)
    x = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    outputs = net.forward(x, return_all=True)
    ax = plots.plot_activation_maps(outputs[0], image=1, channels=range(6))
    assert isinstance(ax, plt.Axes) and ax.images[0].get_array().shape == (2 * 65 - 1, 3 * 65 - 1)
    heads = {16: np.ones((2, 255, 2, 2), np.float32), 23: np.ones((2, 255, 4, 4), np.float32)}
    stats = plots.layer_statistics(net, x, heads)
    fig, (a, b, c) = plt.subplots(1, 3)
    assert plots.plot_activation_statistics(stats, ax=a) is a and len(a.lines) >= 2
    assert plots.plot_gradient_statistics(stats, ax=b) is b and b.get_yscale() == "log"
    assert plots.plot_layer_table(net, ax=c) is c
    rows = plots.layer_table_rows(net)
    assert len(rows) == 24 and rows[20][3] == "from 19,8" and rows[19][5] == "128x26x26"
    plt.close("all")
