"""Whole networks' backward pass against central finite differences, in float64.

The independent truth is the definition of the derivative: for a loss
L = sum_k <w_k, output_k> over the network's heads (w random, so dL/doutput = w), and a
random unit direction v (||v|| = 1) in the input or in the trainable parameters of one
layer (weights, biases and batch-norm scales together),

    (L(theta + eps v) - L(theta - eps v)) / (2 eps)   ~   <dL/dtheta, v>,

with eps = 1e-6 (truncation error ~eps^2, rounding ~1e-16/eps; a unit direction keeps
the perturbation too small to cross the kinks of leaky ReLU and max pooling). Required:
relative error below 1e-4. Directions are probed for the input and for every
convolution of yolov2-tiny-voc and yolov3-tiny, and for the layers of yolov2-voc around
its route/reorg passthrough. Both modes: training (batch statistics, which couple the images of a batch) and
inference (rolling statistics). Small inputs (64x64 or 96x96, batch 2) keep it fast.
"""
import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from refquant import darknet
from refquant.testing import randomize_parameters

pytestmark = pytest.mark.slow  # whole networks, many passes

EPS = 1e-6
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def single_thread():
    """One BLAS and one Numba thread: these many tiny float64 passes only lose time to thread
    hand-offs on a shared 2-core machine (the parallel kernels are exercised by the other tests)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    numba.set_num_threads(threads)


def loss_and_gradient(net, x, head_weights, training):
    """L = sum over heads of <w, output>; returns (L, dL/dx) and fills the parameter grads."""
    outputs = net.forward(x, training=training, return_all=True)
    loss = sum(float(np.vdot(w, outputs[i])) for i, w in head_weights.items())
    dx = net.backward(dict(head_weights))
    return loss, dx


def loss_only(net, x, head_weights, training):
    outputs = net.forward(x, training=training, return_all=True)
    return sum(float(np.vdot(w, outputs[i])) for i, w in head_weights.items())


def directional_difference(net, x, head_weights, training, targets, directions):
    """Central difference of L along ``directions`` added to the arrays ``targets`` (restored after)."""
    saved = [t.copy() for t in targets]
    for t, d in zip(targets, directions):
        t += EPS * d
    plus = loss_only(net, x, head_weights, training)
    for t, s, d in zip(targets, saved, directions):
        t[...] = s - EPS * d
    minus = loss_only(net, x, head_weights, training)
    for t, s in zip(targets, saved):
        t[...] = s
    return (plus - minus) / (2 * EPS)


def unit_directions(shapes, rng):
    """Random directions for several arrays, jointly of unit Euclidean norm."""
    directions = [rng.normal(size=shape) for shape in shapes]
    norm = np.sqrt(sum(float(np.vdot(d, d)) for d in directions))
    return [d / norm for d in directions]


def check_network(cfg, size, layers_to_probe, training, seed=0):
    rng = np.random.default_rng(seed)
    cfg = cfg if cfg.endswith(".cfg") else f"refquant/cfg/{cfg}.cfg"
    net = darknet.load(cfg, dtype=np.float64, seed=seed)
    randomize_parameters(net, rng)
    x = rng.uniform(0, 1, (2, 3, size, size))
    shapes = net.output_shapes(x.shape[1:])
    head_weights = {i: rng.normal(size=(2,) + shapes[i]) for i in net.output_layers()}
    rolling = [(p, p.copy()) for _, name, p in net.parameters() if name.startswith("rolling")]

    _, dx = loss_and_gradient(net, x, head_weights, training)
    grads = {(i, name): g.copy() for i, layer in enumerate(net.layers) for name, g in layer.grads.items()}
    probes = [("input", [x], [dx])]
    for i in layers_to_probe:
        names = sorted(net.layers[i].grads)
        probes.append((f"layer {i} ({', '.join(names)})", [net.layers[i].params[n] for n in names],
                       [grads[(i, n)] for n in names]))

    failures = []
    for label, targets, analytic in probes:
        directions = unit_directions([t.shape for t in targets], rng)
        numeric = directional_difference(net, x, head_weights, training, targets, directions)
        predicted = sum(float(np.vdot(a, d)) for a, d in zip(analytic, directions))
        error = abs(numeric - predicted) / max(abs(numeric), abs(predicted))
        if not error < TOLERANCE:
            failures.append(f"{label}: finite difference {numeric:.8g}, backward {predicted:.8g}, "
                            f"relative error {error:.2e}")
    for p, before in rolling:  # keep later tests independent of this one's training passes
        p[...] = before
    assert not failures, "\n".join(failures)
    return len(probes)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_yolov2_tiny_voc_gradients(training):
    """yolov2-tiny-voc (conv+BN+leaky, maxpool incl. size 2 stride 1, region head), every conv layer."""
    net_layers = [0, 2, 4, 6, 8, 10, 12, 13, 14]
    assert check_network("yolov2-tiny-voc", 64, net_layers, training) == 1 + 9


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_yolov3_tiny_gradients(training):
    """yolov3-tiny (two yolo heads, route, upsample): every conv layer, both heads' gradients summed."""
    convs = [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21, 22]
    check_network("yolov3-tiny", 64, convs, training)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_yolov2_voc_gradients(training):
    """yolov2-voc: first conv, the passthrough (route -9, 1x1 conv, reorg, route -1,-4) and the head."""
    check_network("yolov2-voc", 64, [0, 16, 24, 26, 29, 30], training)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_yolov1_style_gradients(training, tmp_path):
    """A small YOLOv1-style network (conv, maxpool, connected with batch norm, connected,
    [detection] with softmax): every layer with parameters."""
    cfg = tmp_path / "v1.cfg"
    cfg.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
                   "[maxpool]\nsize=2\nstride=2\n"
                   "[connected]\noutput=20\nbatch_normalize=1\nactivation=leaky\n"
                   "[connected]\noutput=" + str(2 * 2 * (5 * 2 + 3)) + "\nactivation=linear\n"
                   "[detection]\nclasses=3\ncoords=4\nnum=2\nside=2\nsoftmax=1\n")
    check_network(str(cfg), 16, [0, 2, 3], training)


def test_skipping_the_input_gradient_leaves_parameter_gradients_unchanged():
    """backward(input_gradient=False) (Darknet's training) gives the same parameter gradients."""
    rng = np.random.default_rng(4)
    net = darknet.load("refquant/cfg/yolov2-tiny-voc.cfg", dtype=np.float64, seed=4)
    x = rng.uniform(0, 1, (2, 3, 64, 64))
    dout = rng.normal(size=(2, 125, 2, 2))
    net.forward(x, training=True)
    net.backward(dout)
    full = {(i, n): g.copy() for i, layer in enumerate(net.layers) for n, g in layer.grads.items()}
    net.forward(x, training=True)
    assert net.backward(dout, input_gradient=False) is None
    for (i, n), g in full.items():
        assert np.array_equal(net.layers[i].grads[n], g)
