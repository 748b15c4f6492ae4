"""Helpers for testing refquant, as ``numpy.testing`` is for NumPy: the small Darknet networks, the
random batch-norm statistics and the exact oracles that the test suite (``tests/``), the golden
vectors (``refquant.golden``) and the benchmarks (``benchmarks/``) would otherwise each write again.

* Small cfgs, built from :func:`cfg_section` so that each one is written once:
  :func:`passthrough_cfg` (every layer kind of the integer network, shaped like yolov2-voc's
  passthrough), :func:`tiny_yolo_cfg` (a trainable tiny-YOLO for the 7 shapes classes) and
  :func:`two_input_route_cfg`; :func:`write_cfg` and :func:`load_cfg` put one on disk or build its
  network; :func:`identity_head_files` writes a [net] -> 1x1 identity convolution -> head pair of
  cfg and .weights by hand (Darknet's weights format), for OpenCV's importer.
* Parameters of a trained-looking network (a fresh one has trivial batch-norm statistics):
  :func:`randomize_batchnorm`, :func:`randomize_layer`, :func:`randomize_parameters`.
* Exact oracles, independent of refquant's kernels: :func:`numpy_correlation` (int64 correlation
  by NumPy).
* :func:`quiet_plan`: a quantization plan with the PGM fits' convergence notes silenced.

This module ships with the package, so it imports only NumPy and refquant (never pytest, torch or
OpenCV). Nothing here is refquant's own code path: each helper is a fixture or a plain restatement
of a definition, so that a test using it keeps an independent truth.
"""
import tempfile
import warnings
from pathlib import Path

import numpy as np

from refquant import darknet, ptq
from refquant.density.em import ConvergenceWarning

# ---------------------------------------------------------------- small Darknet cfgs


def cfg_section(kind, **options):
    """``[kind]`` followed by one ``key=value`` line per option, in the order given."""
    return "".join([f"[{kind}]\n"] + [f"{key}={value}\n" for key, value in options.items()])


def cfg_text(*sections, comment=None):
    """The sections of a cfg, a blank line between two, after an optional ``# comment`` line."""
    return (f"# {comment}\n" if comment else "") + "\n".join(sections)


def convolutional(filters, size=3, activation="leaky", batch_normalize=True):
    """A stride-1, padded ``[convolutional]`` section (batch-normalised unless told)."""
    options = {"batch_normalize": 1} if batch_normalize else {}
    return cfg_section("convolutional", **options, filters=filters, size=size, stride=1, pad=1,
                       activation=activation)


def maxpool(size=2, stride=2):
    """A ``[maxpool]`` section."""
    return cfg_section("maxpool", size=size, stride=stride)


def net_section(size=32, channels=3, height=None, **options):
    """``[net]`` with an input ``size`` pixels wide and ``height`` (default ``size``) high, then ``options``."""
    return cfg_section("net", width=size, height=size if height is None else height, channels=channels, **options)


TRAINING_OPTIONS = dict(batch=4, subdivisions=1, momentum=0.9, decay=0.0005, learning_rate=0.01, max_batches=10,
                        policy="constant", hue=".1", saturation=1.5, exposure=1.5)
"""The [net] training options of :func:`tiny_yolo_cfg` (Darknet's tiny-yolo-voc values, a short run)."""

REGION_OPTIONS = dict(bias_match=1, classes=7, coords=4, num=2, softmax=1, jitter=".2", rescore=1, object_scale=5,
                      noobject_scale=1, class_scale=1, coord_scale=1, thresh=".6")
"""The [region] options of :func:`tiny_yolo_cfg` (Darknet's tiny-yolo-voc values, 2 anchors, 7 classes)."""


def passthrough_cfg(classes=3, region=True, head_activation="linear"):
    """A 32x32 network with every layer kind the integer network supports, shaped like yolov2-voc's
    passthrough: leaky batch-normalised convolutions and max pools, a single-input route, a reorg,
    a two-input route and a linear 1x1 head convolution of 2 * (5 + classes) filters (layers 0 to
    10: convolutions 0, 2, 4, 6, 9, 10; routes 5 and 8; reorg 7), then a [region] of 2 anchors."""
    sections = [net_section(32), convolutional(8), maxpool(), convolutional(16), maxpool(), convolutional(32),
                cfg_section("route", layers=-3), convolutional(4, size=1), cfg_section("reorg", stride=2),
                cfg_section("route", layers="-1,-4"), convolutional(32),
                convolutional(2 * (5 + classes), size=1, activation=head_activation, batch_normalize=False)]
    if region:
        sections.append(cfg_section("region", anchors="1,1,2,2", classes=classes, num=2, softmax=1))
    return cfg_text(*sections)


def tiny_yolo_cfg(anchors, size=32, filters=(8, 16, 16), pools=2, **net_options):
    """A trainable tiny-YOLO for the 7 shapes classes: [net] with :data:`TRAINING_OPTIONS` (then
    ``net_options``), leaky batch-normalised 3x3 convolutions of ``filters``, the first ``pools`` of
    them followed by a 2x2 max pool, a linear 1x1 convolution of 24 filters and a [region] with
    :data:`REGION_OPTIONS` and ``anchors`` (two)."""
    sections = [net_section(size, **{**TRAINING_OPTIONS, **net_options})]
    for index, count in enumerate(filters):
        sections.append(convolutional(count))
        if index < pools:
            sections.append(maxpool())
    sections.append(convolutional(24, size=1, activation="linear", batch_normalize=False))
    sections.append(cfg_section("region", anchors=anchors, **REGION_OPTIONS))
    return cfg_text(*sections)


def two_input_route_cfg():
    """A 32x32 network: leaky batch-normalised convolutions (3x3, 8), a max pool, (3x3, 16) and
    (1x1, 8), a two-input route of the last two, a linear 1x1 convolution of 12 filters."""
    return cfg_text(net_section(32), convolutional(8), maxpool(), convolutional(16), convolutional(8, size=1),
                    cfg_section("route", layers="-1,-2"),
                    convolutional(12, size=1, activation="linear", batch_normalize=False))


def write_cfg(folder, text, name="tiny.cfg"):
    """Write ``text`` to ``folder / name`` and return the path."""
    path = Path(folder) / name
    path.write_text(text)
    return path


def load_cfg(text, name="network.cfg", dtype=np.float32, seed=0):
    """The network of the cfg ``text`` (``darknet.load`` of a temporary file named ``name``)."""
    with tempfile.TemporaryDirectory() as folder:
        return darknet.load(write_cfg(folder, text, name), dtype=dtype, seed=seed)


def identity_head_files(folder, head_section, channels, size, name="head", height=None):
    """A cfg [net] (``size`` wide, ``height`` high, default square) -> 1x1 identity convolution ->
    ``head_section``, and its .weights written by hand.

    Darknet weights format: int32 major, minor, revision, uint64 seen (major*10+minor >= 2), then
    the convolution's biases (float32, zero) and weights (the identity, (channels, channels, 1, 1)).
    Returns the two paths as strings (``folder/name.cfg``, ``folder/name.weights``).
    """
    cfg = write_cfg(folder, cfg_text(net_section(size, channels, height),
                                     cfg_section("convolutional", filters=channels, size=1, stride=1, pad=0,
                                                 activation="linear"),
                                     head_section), f"{name}.cfg")
    weights = Path(folder) / f"{name}.weights"
    with open(weights, "wb") as f:
        np.array([0, 2, 0], np.int32).tofile(f)
        np.array([0], np.uint64).tofile(f)
        np.zeros(channels, np.float32).tofile(f)
        np.eye(channels, dtype=np.float32).tofile(f)
    return str(cfg), str(weights)


# ---------------------------------------------------------------- random parameters


def randomize_layer(layer, rng, bias_sd=0.2, mean_sd=0.3, biases=True):
    """Random parameters of a trained-looking convolutional or connected layer, drawn from ``rng``
    in this order: biases ~ N(0, bias_sd) (unless ``biases`` is false), and with batch norm
    scales ~ U(0.5, 1.5), rolling means ~ N(0, mean_sd), rolling variances ~ U(0.5, 2)."""
    params = layer.params
    shape = params["biases"].shape
    if biases:
        params["biases"][...] = rng.normal(0.0, bias_sd, shape)
    if layer.batch_normalize:
        params["scales"][...] = rng.uniform(0.5, 1.5, shape)
        params["rolling_mean"][...] = rng.normal(0.0, mean_sd, shape)
        params["rolling_variance"][...] = rng.uniform(0.5, 2.0, shape)
    return layer


def randomize_batchnorm(net, seed=0, biases=True):
    """Random batch-norm scales, means, variances and biases (a fresh network has trivial ones):
    :func:`randomize_layer` on every convolution in order, from ``numpy.random.default_rng(seed)``
    (``seed`` may be a Generator). With ``biases=False`` only the batch-normalised convolutions
    are drawn, their biases kept. Returns ``net``."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "convolutional" and (biases or layer.batch_normalize):
            randomize_layer(layer, rng, biases=biases)
    return net


def randomize_parameters(net, rng, spread=0.1):
    """Every batch-norm vector and bias of every layer, in each layer's parameter order: rolling
    variances ~ U(0.5, 2), scales ~ U(0.5, 1.5), rolling means and biases ~ N(0, spread); the
    weights keep their values. Returns ``net``."""
    for layer in net.layers:
        for name, value in layer.params.items():
            if name == "rolling_variance":
                value[...] = rng.uniform(0.5, 2.0, value.shape)
            elif name == "scales":
                value[...] = rng.uniform(0.5, 1.5, value.shape)
            elif name in ("rolling_mean", "biases"):
                value[...] = rng.normal(0.0, spread, value.shape)
    return net


# ---------------------------------------------------------------- exact oracles


def numpy_correlation(x, w, stride=1, pad=0):
    """Exact int64 correlation by NumPy, (N, C, H, W) * (O, C, kh, kw) -> (N, O, Ho, Wo): zero-pad,
    take every window (sliding_window_view), keep every ``stride``-th, contract with einsum."""
    kh, kw = w.shape[2:]
    padded = np.pad(np.asarray(x).astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
    return np.einsum("ncyxij,ocij->noyx", windows, np.asarray(w).astype(np.int64))


# ---------------------------------------------------------------- plans


def quiet_plan(statistics, *args, **kwargs):
    """``ptq.quantization_plan`` with the PGM fits' ConvergenceWarning silenced (reported elsewhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ptq.quantization_plan(statistics, *args, **kwargs)
