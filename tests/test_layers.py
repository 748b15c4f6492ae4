"""Each layer's forward and backward against PyTorch autograd (float64) and OpenCV.

The independent truths: torch's conv2d / max_pool2d / interpolate / cat and its autograd
for the derivatives; the batch-norm formulas written out here from Darknet's sources
(unbiased batch variance, sqrt(var + .00001), rolling = .99 rolling + .01 batch);
OpenCV's Darknet importer (cv2.dnn) on one-layer cfgs for maxpool and reorg; a
line-by-line transcription of Darknet's reorg_cpu loop.
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refquant.testing import randomize_layer
from refquant.yolo import activations
from refquant.yolo.connected import ConnectedLayer
from refquant.yolo.convolutional import ConvolutionalLayer, col2im, im2col
from refquant.yolo.detection import DetectionLayer
from refquant.yolo.maxpool import MaxpoolLayer, maxpool_forward
from refquant.yolo.reorg import ReorgLayer, reorg_forward
from refquant.yolo.route import RouteLayer
from refquant.yolo.shortcut import ShortcutLayer
from refquant.yolo.upsample import UpsampleLayer, upsample_forward

TORCH_ACTIVATIONS = {
    "linear": lambda t: t,
    "leaky": lambda t: F.leaky_relu(t, 0.1),
    "relu": F.relu,
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
}


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def assert_close(ours, theirs, rtol=1e-10):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    scale = max(np.max(np.abs(theirs)), 1e-300)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) / scale < rtol


# ---------------------------------------------------------------- activations

@pytest.mark.parametrize("name", sorted(TORCH_ACTIVATIONS))
def test_activation_and_gradient_match_torch(name):
    """Darknet's activations (activations.h) and their output-based derivatives equal torch's autograd."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (4, 5, 6))
    x[0, 0, :3] = [0.0, 1e-12, -1e-12]
    xt = t64(x, grad=True)
    yt = TORCH_ACTIVATIONS[name](xt)
    dout = rng.normal(size=x.shape)
    yt.backward(t64(dout))
    y = activations.activate(x, name)
    assert_close(y, yt)
    grad = activations.backward(y, dout, name)
    expected = xt.grad.numpy().copy()
    if name in ("leaky", "relu"):
        expected[0, 0, 0] = dout[0, 0, 0] * (0.1 if name == "leaky" else 0.0)  # Darknet: left derivative at 0
    assert_close(grad, expected)


def test_activation_rejects_unknown_name():
    """An unknown activation name is a ValueError that lists the supported ones."""
    with pytest.raises(ValueError, match="supported: linear, leaky"):
        activations.activate(np.zeros(3), "swish")


# ---------------------------------------------------------------- convolutional

def torch_convolution(layer, x, training):
    """The layer's forward written with torch ops from Darknet's formulas, on float64 leaves."""
    p = {k: t64(v, grad=k in ("weights", "biases", "scales")) for k, v in layer.params.items()}
    xt = t64(x, grad=True)
    z = F.conv2d(xt, p["weights"], stride=layer.stride, padding=layer.padding)
    if layer.batch_normalize:
        if training:
            mean = z.mean(dim=(0, 2, 3))
            variance = z.var(dim=(0, 2, 3), unbiased=True)  # variance_cpu: / (m - 1)
        else:
            mean, variance = p["rolling_mean"], p["rolling_variance"]
        xhat = (z - mean[None, :, None, None]) / torch.sqrt(variance[None, :, None, None] + 1e-5)
        a = xhat * p["scales"][None, :, None, None] + p["biases"][None, :, None, None]
    else:
        a = z + p["biases"][None, :, None, None]
        mean = variance = None
    return xt, p, TORCH_ACTIVATIONS[layer.activation](a), (mean, variance)


def random_convolution(options, channels, rng, dtype=np.float64):
    layer = ConvolutionalLayer(**options)
    layer.build((channels, 1, 1), dtype=dtype, rng=rng)
    return randomize_layer(layer, rng, bias_sd=0.5, mean_sd=0.5)


CONV_CASES = [
    dict(filters=4, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky"),
    dict(filters=3, size=3, stride=2, pad=1, batch_normalize=1, activation="relu"),
    dict(filters=5, size=1, stride=1, pad=1, batch_normalize=0, activation="linear"),
    dict(filters=2, size=5, stride=2, pad=0, padding=1, batch_normalize=0, activation="logistic"),
    dict(filters=3, size=2, stride=1, pad=0, batch_normalize=1, activation="tanh"),
]


@pytest.mark.parametrize("options", CONV_CASES, ids=lambda o: f"{o['size']}x{o['size']}s{o['stride']}bn{o['batch_normalize']}{o['activation']}")
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "rolling-stats"])
def test_convolution_forward_backward_match_torch(options, training):
    """Convolution (+ Darknet batch norm) + activation: output and dL/dx, dL/dweights,
    dL/dbiases, dL/dscales equal torch autograd of the same formulas, in float64."""
    rng = np.random.default_rng(1)
    layer = random_convolution(options, channels=3, rng=rng)
    x = rng.normal(size=(2, 3, 9, 7))
    xt, p, yt, _ = torch_convolution(layer, x, training)
    y = layer.forward(x, training=training)
    assert_close(y, yt)
    dout = rng.normal(size=y.shape)
    yt.backward(t64(dout))
    layer.zero_grads()
    dx = layer.backward(dout)
    assert_close(dx, xt.grad)
    for name, grad in layer.grads.items():
        assert_close(grad, p[name].grad)
    assert set(layer.grads) == ({"weights", "biases", "scales"} if layer.batch_normalize else {"weights", "biases"})


def test_training_forward_updates_rolling_statistics_like_darknet():
    """rolling = .99 rolling + .01 batch, with the unbiased batch variance (forward_batchnorm_layer,
    variance_cpu), batch statistics computed by torch."""
    rng = np.random.default_rng(2)
    layer = random_convolution(CONV_CASES[0], channels=3, rng=rng)
    before = {k: layer.params[k].copy() for k in ("rolling_mean", "rolling_variance")}
    x = rng.normal(size=(3, 3, 6, 5))
    _, _, _, (mean, variance) = torch_convolution(layer, x, training=True)
    layer.forward(x, training=True)
    assert_close(layer.params["rolling_mean"], 0.99 * before["rolling_mean"] + 0.01 * mean.detach().numpy())
    assert_close(layer.params["rolling_variance"],
                 0.99 * before["rolling_variance"] + 0.01 * variance.detach().numpy())
    layer.forward(x, training=False)  # inference leaves them alone
    assert_close(layer.params["rolling_mean"], 0.99 * before["rolling_mean"] + 0.01 * mean.detach().numpy())


def test_convolution_float32_close_to_float64_torch():
    """The float32 path (BLAS sgemm, fused kernels) agrees with torch float64 to float32 precision."""
    rng = np.random.default_rng(3)
    layer = random_convolution(CONV_CASES[0], channels=16, rng=rng, dtype=np.float32)
    x = rng.normal(size=(2, 16, 20, 24)).astype(np.float32)
    _, _, yt, _ = torch_convolution(layer, x, training=False)
    assert_close(layer.forward(x), yt, rtol=1e-5)


def test_im2col_col2im_match_torch_unfold_fold():
    """im2col is torch's unfold (same row order c, ky, kx) and col2im its adjoint fold."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 7, 6))
    cols = im2col(x, 3, 2, 1)
    assert_close(cols, F.unfold(t64(x), 3, padding=1, stride=2))
    g = rng.normal(size=cols.shape)
    assert_close(col2im(g, x.shape, 3, 2, 1), F.fold(t64(g), (7, 6), 3, padding=1, stride=2))
    codes = rng.integers(-128, 128, size=(1, 2, 5, 5)).astype(np.int8)
    assert_close(im2col(codes, 3, 1, 1, pad_value=-3).astype(np.float64),
                 F.unfold(F.pad(t64(codes), (1, 1, 1, 1), value=-3.0), 3))


# ---------------------------------------------------------------- maxpool

def torch_maxpool(x, size, stride, padding):
    """Darknet's window placement: padding//2 before, the rest after, -inf outside."""
    before = padding // 2
    padded = F.pad(x, (before, padding - before, before, padding - before), value=-float("inf"))
    return F.max_pool2d(padded, size, stride)


MAXPOOL_CASES = [(2, 2, None, 13, 13), (2, 2, None, 12, 10), (2, 1, None, 13, 13),
                 (3, 1, None, 7, 8), (3, 2, 0, 9, 8), (3, 2, 3, 9, 8)]


@pytest.mark.parametrize("size, stride, padding, h, w", MAXPOOL_CASES)
def test_maxpool_matches_torch_and_its_gradient(size, stride, padding, h, w):
    """Darknet's maxpool (implicit padding size-1) equals torch max_pool2d on the padded input,
    and routes the gradient to the same maxima as torch's autograd."""
    rng = np.random.default_rng(5)
    layer = MaxpoolLayer(stride=stride, size=size, padding=padding)
    x = rng.normal(size=(2, 3, h, w))
    xt = t64(x, grad=True)
    yt = torch_maxpool(xt, size, stride, layer.padding)
    y = layer.forward(x)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])
    assert_close(y, yt)
    dout = rng.normal(size=y.shape)
    yt.backward(t64(dout))
    assert_close(layer.backward(dout), xt.grad)


def test_maxpool_size2_stride1_keeps_size_and_matches_opencv():
    """size=2 stride=1 keeps H x W (Darknet's implicit padding), as OpenCV's importer computes."""
    rng = np.random.default_rng(6)
    path = "/tmp/refquant_maxpool_test.cfg"
    x = rng.normal(size=(2, 4, 13, 11)).astype(np.float32)
    for size, stride in ((2, 1), (2, 2), (3, 1)):
        with open(path, "w") as f:
            f.write(f"[net]\nwidth=11\nheight=13\nchannels=4\n\n[maxpool]\nsize={size}\nstride={stride}\n")
        cvnet = cv2.dnn.readNetFromDarknet(path)
        cvnet.setInput(x)
        y = MaxpoolLayer(stride=stride, size=size).forward(x)
        assert np.array_equal(y, cvnet.forward())
        if (size, stride) == (2, 1):
            assert y.shape == x.shape


def darknet_forward_maxpool(x, size, stride, pad):
    """Line-by-line transcription of forward_maxpool_layer (pjreddie/darknet src/maxpool_layer.c)
    for one (N, C, H, W) array; returns (output, indexes as flat positions in each plane)."""
    batch, c, h_in, w_in = x.shape
    out_h = (h_in + pad - size) // stride + 1
    out_w = (w_in + pad - size) // stride + 1
    w_offset = h_offset = int(-pad / 2)  # C's -l.pad/2 truncates towards zero
    out = np.zeros((batch, c, out_h, out_w), x.dtype)
    indexes = np.zeros(out.shape, np.int64)
    flt_max = np.finfo(np.float32).max
    flat = x.reshape(-1)
    for b in range(batch):
        for k in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    best, max_i = -flt_max, -1
                    for n in range(size):
                        for m in range(size):
                            cur_h = h_offset + i * stride + n
                            cur_w = w_offset + j * stride + m
                            index = cur_w + w_in * (cur_h + h_in * (k + b * c))
                            valid = 0 <= cur_h < h_in and 0 <= cur_w < w_in
                            val = flat[index] if valid else -flt_max
                            max_i = index if val > best else max_i
                            best = val if val > best else best
                    out[b, k, i, j] = best
                    indexes[b, k, i, j] = max_i - h_in * w_in * (k + b * c)
    return out, indexes


@pytest.mark.parametrize("size, stride, h, w", [(2, 2, 7, 6), (2, 1, 5, 5), (3, 1, 4, 5), (3, 2, 7, 7)])
def test_maxpool_ties_and_indexes_follow_darknets_loop(size, stride, h, w):
    """With many ties (values in 0..2), outputs and argmax positions equal Darknet's loop, whose
    strict '>' keeps the first maximum in window order; so does the routed gradient."""
    rng = np.random.default_rng(15)
    x = rng.integers(0, 3, size=(2, 3, h, w)).astype(np.float32)
    padding = size - 1
    out, indexes = maxpool_forward(x, size, stride, padding)
    expected, expected_indexes = darknet_forward_maxpool(x, size, stride, padding)
    assert np.array_equal(out, expected) and np.array_equal(indexes, expected_indexes)


def test_maxpool_is_dtype_generic():
    """On integer codes the max pool gives exactly the float result (the integer network reuses it)."""
    rng = np.random.default_rng(7)
    codes = rng.integers(-128, 128, size=(1, 3, 9, 9))
    for dtype in (np.int8, np.uint8, np.int32):
        c = (codes % 256).astype(dtype) if dtype == np.uint8 else codes.astype(dtype)
        out, _ = maxpool_forward(c, 2, 1, 1)
        expected, _ = maxpool_forward(c.astype(np.float64), 2, 1, 1)
        assert out.dtype == dtype and np.array_equal(out, expected)


# ---------------------------------------------------------------- reorg

def darknet_reorg_cpu(x, w, h, c, batch, stride, forward):
    """Line-by-line transcription of reorg_cpu (pjreddie/darknet src/blas.c) on flat arrays."""
    out = np.zeros_like(x)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


def test_reorg_matches_darknet_loop_and_opencv():
    """reorg equals Darknet's reorg_cpu(..., forward=0) as forward_reorg_layer calls it, and OpenCV."""
    rng = np.random.default_rng(8)
    n, c, h, w = 2, 8, 6, 4
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    y = ReorgLayer(stride=2).forward(x)
    assert y.shape == (n, 32, 3, 2)
    assert np.array_equal(y.reshape(-1), darknet_reorg_cpu(x.reshape(-1), w, h, c, n, 2, forward=0))
    path = "/tmp/refquant_reorg_test.cfg"
    with open(path, "w") as f:
        f.write(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n[reorg]\nstride=2\n")
    cvnet = cv2.dnn.readNetFromDarknet(path)
    cvnet.setInput(x)
    assert np.array_equal(y, cvnet.forward())


def test_reorg_backward_is_darknet_inverse_and_adjoint():
    """backward is reorg_cpu(..., forward=1) (backward_reorg_layer) and the adjoint of forward."""
    rng = np.random.default_rng(9)
    layer = ReorgLayer(stride=2)
    x = rng.normal(size=(2, 8, 6, 4))
    y = layer.forward(x)
    g = rng.normal(size=y.shape)
    dx = layer.backward(g)
    assert np.array_equal(dx.reshape(-1), darknet_reorg_cpu(g.reshape(-1), 4, 6, 8, 2, 2, forward=1))
    assert np.isclose(np.vdot(y, g), np.vdot(x, dx), rtol=1e-12)
    codes = rng.integers(0, 255, size=(1, 4, 4, 4)).astype(np.uint8)
    assert np.array_equal(reorg_forward(codes, 2), reorg_forward(codes.astype(np.float64), 2))


# ---------------------------------------------------------------- upsample, route, shortcut

def test_upsample_matches_torch_nearest():
    """upsample_cpu equals torch's nearest interpolation; backward equals its autograd (scale 1 and 0.5)."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 4, 5))
    for scale in (1.0, 0.5):
        layer = UpsampleLayer(stride=2, scale=scale)
        xt = t64(x, grad=True)
        yt = scale * F.interpolate(xt, scale_factor=2, mode="nearest")
        y = layer.forward(x)
        assert_close(y, yt)
        dout = rng.normal(size=y.shape)
        yt.backward(t64(dout))
        assert_close(layer.backward(dout), xt.grad)
    codes = rng.integers(-8, 8, size=(1, 2, 3, 3)).astype(np.int8)
    assert np.array_equal(upsample_forward(codes, 2), upsample_forward(codes.astype(float), 2))


def assert_two_inputs_match_torch(layer, torch_function, a, b, rng):
    """The layer's forward of [a, b] equals ``torch_function``'s, and its backward of a random dout
    the gradients torch autograd gives both inputs."""
    at, bt = t64(a, grad=True), t64(b, grad=True)
    yt = torch_function(at, bt)
    y = layer.forward([a, b])
    assert_close(y, yt)
    dout = rng.normal(size=y.shape)
    yt.backward(t64(dout))
    da, db = layer.backward(dout)
    assert_close(da, at.grad)
    assert_close(db, bt.grad)


def test_route_matches_torch_cat():
    """route = torch.cat along channels; backward splits the gradient back (autograd)."""
    rng = np.random.default_rng(11)
    layer = RouteLayer(layers=[-1, 2])
    layer.resolve(5)
    assert layer.inputs == [4, 2]
    a, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))
    assert_two_inputs_match_torch(layer, lambda at, bt: torch.cat([at, bt], dim=1), a, b, rng)


def test_shortcut_matches_torch():
    """shortcut: activation(alpha x + beta from) with torch autograd for both inputs' gradients."""
    rng = np.random.default_rng(12)
    layer = ShortcutLayer(**{"from": -3, "activation": "leaky", "alpha": 0.5, "beta": 2.0})
    assert layer.resolve(6) == [5, 3]
    a, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    assert_two_inputs_match_torch(layer, lambda at, bt: F.leaky_relu(0.5 * at + 2.0 * bt, 0.1), a, b, rng)


# ---------------------------------------------------------------- connected, detection (YOLOv1)

@pytest.mark.parametrize("batch_normalize", [0, 1])
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "rolling-stats"])
def test_connected_matches_torch(batch_normalize, training):
    """[connected]: f(BN(x W^T)) or f(x W^T + b) on the flattened (C, H, W) input, with torch
    autograd for dL/dx, dL/dweights, dL/dbiases, dL/dscales (batch statistics over the batch)."""
    rng = np.random.default_rng(13)
    layer = ConnectedLayer(output=5, activation="leaky", batch_normalize=batch_normalize)
    layer.build((2, 3, 2), dtype=np.float64, rng=rng)
    p = randomize_layer(layer, rng, bias_sd=1.0, mean_sd=1.0).params
    pt = {k: t64(v, grad=k in ("weights", "biases", "scales")) for k, v in p.items()}
    x = rng.normal(size=(4, 2, 3, 2))
    xt = t64(x, grad=True)
    z = xt.reshape(4, -1) @ pt["weights"].T
    if batch_normalize:
        mean, var = (z.mean(0), z.var(0, unbiased=True)) if training else (pt["rolling_mean"], pt["rolling_variance"])
        a = (z - mean) / torch.sqrt(var + 1e-5) * pt["scales"] + pt["biases"]
    else:
        a = z + pt["biases"]
    yt = F.leaky_relu(a, 0.1).reshape(4, 5, 1, 1)
    y = layer.forward(x, training=training)
    assert_close(y, yt)
    dout = rng.normal(size=y.shape)
    yt.backward(t64(dout))
    assert_close(layer.backward(dout), xt.grad)
    for name, grad in layer.grads.items():
        assert_close(grad, pt[name].grad)


def test_detection_softmax_matches_torch():
    """[detection] softmax=1: softmax over the classes of each cell (the first side*side*classes
    entries), the rest copied; backward equals torch autograd. softmax=0 is the identity."""
    rng = np.random.default_rng(14)
    layer = DetectionLayer(classes=3, coords=4, num=2, side=2, softmax=1)
    x = rng.normal(size=(2, 2 * 2 * (5 * 2 + 3), 1, 1))
    xt = t64(x, grad=True)
    flat = xt.reshape(2, -1)
    classes = torch.softmax(flat[:, :12].reshape(2, 4, 3), dim=2).reshape(2, 12)
    yt = torch.cat([classes, flat[:, 12:]], dim=1).reshape(x.shape)
    y = layer.forward(x)
    assert_close(y, yt)
    dout = rng.normal(size=x.shape)
    yt.backward(t64(dout))
    assert_close(layer.backward(dout), xt.grad)
    plain = DetectionLayer(classes=3, coords=4, num=2, side=2)
    assert np.array_equal(plain.forward(x), x) and np.array_equal(plain.backward(dout), dout)
