"""Tests of refquant.qat: batch-norm folding, histograms, calibration, the plan and its JSON form,
and the fake-quantized training network. Each test's docstring names its independent truth."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from refquant import darknet, folding, ptq, qat, train
from refquant import plan as plan_module
from refquant.density.em import ConvergenceWarning
from refquant.integer import simulation
from refquant.quantizers import baselines, error
from refquant.quantizers.uniform import UniformQuantizer
from refquant.testing import (
    cfg_section,
    cfg_text,
    convolutional,
    load_cfg,
    net_section,
    passthrough_cfg,
    quiet_plan,
    randomize_batchnorm,
    write_cfg,
)
from refquant.train import sgd_update, trainable

CFG_DIR = "refquant/cfg"


def tiny_network(dtype=np.float64, region=True, seed=0):
    """The passthrough network of refquant.testing (every layer kind the quantized network supports,
    shaped like yolov2-voc's passthrough), random weights and batch norm."""
    name = "tiny.cfg" if region else "tiny_headless.cfg"
    return randomize_batchnorm(load_cfg(passthrough_cfg(region=region), name, dtype=dtype, seed=seed), seed)


@pytest.fixture(scope="module")
def tiny():
    """The tiny network (float64), 8 calibration images and its calibration statistics."""
    net = tiny_network()
    images = np.random.default_rng(1).random((8, 3, 32, 32))
    statistics = ptq.calibration_statistics(net, images, batch_size=3, baseline_samples=4096, progress=False)
    return net, images, statistics


# ------------------------------------------------------------------------------------------------
# Folding batch norm
# ------------------------------------------------------------------------------------------------

def test_folded_network_reproduces_the_batchnorm_network():
    """Truth: the float engine's own inference-mode forward with batch norm (checked against OpenCV's
    Darknet importer elsewhere). yolov2-tiny-voc in float64 with random batch-norm statistics: every
    layer of the folded network matches within 1e-12 relative; the original is left unchanged."""
    net = randomize_batchnorm(darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", dtype=np.float64, seed=3), 3)
    before = {(i, k): v.copy() for i, k, v in net.parameters()}
    folded = folding.fold_batchnorm(net)
    x = np.random.default_rng(0).random((2, 3, 64, 64))
    expected = net.forward(x, return_all=True)
    got = folded.forward(x, return_all=True)
    for index, (a, b) in enumerate(zip(expected, got)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max(), err_msg=f"layer {index}")
    assert folding.is_folded(folded) and not folding.is_folded(net)
    assert all(np.array_equal(v, before[(i, k)]) for i, k, v in net.parameters())
    assert all(set(layer.params) == {"biases", "weights"} for layer in folded.layers if layer.type == "convolutional")


def test_folded_parameters_match_torch_conv_bn_fusion():
    """Truth: torch.nn.utils.fusion.fuse_conv_bn_eval on a bias-free Conv2d + BatchNorm2d with
    eps = 1e-5 (Darknet's GPU / the engine's ``sqrt(variance + .00001)``; Darknet's CPU forward uses
    ``sqrt(variance) + .000001`` instead), float64: the folded weights and biases of every layer
    agree within 1e-13 relative."""
    net = tiny_network()
    folded = folding.fold_batchnorm(net)
    for index in plan_module.conv_indices(net):
        layer = net.layers[index]
        if not layer.batch_normalize:
            np.testing.assert_array_equal(folded.layers[index].params["weights"], layer.params["weights"])
            continue
        p = {k: torch.from_numpy(v.copy()) for k, v in layer.params.items()}
        conv = torch.nn.Conv2d(p["weights"].shape[1], layer.filters, layer.size, bias=False).double().eval()
        conv.weight.data = p["weights"]
        bn = torch.nn.BatchNorm2d(layer.filters, eps=1e-5).double().eval()
        bn.weight.data, bn.bias.data = p["scales"], p["biases"]
        bn.running_mean.data, bn.running_var.data = p["rolling_mean"], p["rolling_variance"]
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        np.testing.assert_allclose(folded.layers[index].params["weights"], fused.weight.detach().numpy(),
                                   rtol=1e-13, atol=0)
        np.testing.assert_allclose(folded.layers[index].params["biases"], fused.bias.detach().numpy(),
                                   rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# Histograms
# ------------------------------------------------------------------------------------------------

def test_histogram_counts_equal_numpy_histogram_over_its_edges():
    """Truth: numpy.histogram of all the values at once, on the final edges; numpy's min, max, sum
    and sum of squares. Later batches widen the range 1000-fold (forcing the bin width to double
    many times); the bins stay within max_bins, the width a power of two, 0 an edge."""
    rng = np.random.default_rng(5)
    batches = [rng.normal(0.0, 0.01, 5000), np.abs(rng.normal(0.0, 3.0, 5000)), -rng.exponential(10.0, 3000),
               np.array([0.0, 2.0**-20, -2.0**-20])]
    histogram = ptq.ActivationHistogram(max_bins=64)
    for batch in batches:
        histogram.add(batch.reshape(10, -1) if batch.size % 10 == 0 else batch)
    values = np.concatenate(batches)
    edges = histogram.edges
    assert histogram.counts.size <= 64
    assert math.log2(histogram.bin_width).is_integer()
    assert 0.0 in edges
    expected, _ = np.histogram(values, bins=edges)
    # numpy's last bin is closed on the right; ours is [edge, edge + width): move the values on the
    # last edge, if any, back to where numpy counts them before comparing.
    on_last_edge = int(np.sum(values == edges[-1]))
    counts = histogram.counts.copy()
    counts[-1] += on_last_edge
    np.testing.assert_array_equal(counts, expected)
    assert histogram.count == values.size and histogram.min == values.min() and histogram.max == values.max()
    assert histogram.sum == pytest.approx(values.sum(), rel=1e-12)
    assert histogram.sum_squares == pytest.approx(np.dot(values, values), rel=1e-12)


def test_histogram_rejects_nan_and_bad_bins():
    """Truth: the documented errors (ValueError naming the problem)."""
    with pytest.raises(ValueError, match="NaN or infinite"):
        ptq.ActivationHistogram().add(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="max_bins"):
        ptq.ActivationHistogram(max_bins=4)


def test_histogram_sample_follows_the_data():
    """Truth: the data's own quantiles (numpy.quantile) and exact extremes: the baselines' sample
    holds the exact min and max and its quartiles lie within one bin width plus sampling noise."""
    rng = np.random.default_rng(2)
    values = np.where((x := rng.normal(0.0, 1.0, 200000)) > 0, x, 0.1 * x)
    histogram = ptq.ActivationHistogram().add(values)
    sample = histogram.sample(50000, rng=1)
    assert sample[-2] == values.min() and sample[-1] == values.max()
    assert sample.min() >= values.min() and sample.max() <= values.max()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(sample, q) - np.quantile(values, q)) < histogram.bin_width + 0.02


# ------------------------------------------------------------------------------------------------
# Calibration and the plan
# ------------------------------------------------------------------------------------------------

def collected_outputs(net, images):
    """Every layer's float output of the folded network on all images at once."""
    return folding.fold_batchnorm(net).forward(images, return_all=True)


@pytest.mark.parametrize("method", baselines.METHODS)
def test_every_method_gives_a_valid_plan(tiny, method):
    """Truth: the plan's documented constraints, checked directly: signed zero-point-0 weight codes
    of the requested width (narrow-range for TensorRT's KL), activation codes of the requested width
    with an integer zero point inside them, first and last convolutions at 8 bits, every
    convolution and the two-input route covered, the single-input route not."""
    net, _, statistics = tiny
    plan = quiet_plan(statistics, 4, 3, method)
    plan.check(net)
    convs = plan_module.conv_indices(net)
    assert sorted(plan.weights) == convs
    assert sorted(plan.activations) == sorted(convs + [8]) and 8 not in plan.weights and 5 not in plan.activations
    narrow = int(method == "kl")
    for index in convs:
        w, a = plan.weights[index], plan.activations[index]
        bits = 8 if index in (convs[0], convs[-1]) else None
        assert (w.zero_point, w.qmin, w.qmax) == (0, -2**((bits or 4) - 1) + narrow, 2**((bits or 4) - 1) - 1)
        levels = 2**(bits or 3) - (narrow if method == "kl" else 0)
        assert a.num_levels == levels and isinstance(a.zero_point, int) and a.qmin <= a.zero_point <= a.qmax
    assert plan.activations[8].num_levels == 2**3 - narrow
    assert plan.method == method and plan.options["weight_bits"] == 4 and plan.options["activation_bits"] == 3


def test_minmax_plan_is_exact_on_the_calibration_set(tiny):
    """Truth: intervals.minmax_quantizer on ALL the float activations of the calibration images at
    once (numpy min/max): the histogram's exact extremes give the identical quantizer. A
    convolution that only a maxpool reads is calibrated on the pooled values (the maxpool layer's
    own float output), the ones that travel on."""
    net, images, statistics = tiny
    plan = quiet_plan(statistics, 4, 4, "minmax", first_bits=None, last_bits=None)
    outputs = collected_outputs(net, images)
    folded = statistics.net
    readers = {j: [k for k, sources in enumerate(folded.inputs) if j in sources] for j in range(len(folded.layers))}
    pooled = {j: r[0] for j, r in readers.items() if folded.layers[j].type == "convolutional" and len(r) == 1
              and folded.layers[r[0]].type == "maxpool"}
    assert pooled, "the tiny network has a convolution read by a maxpool alone"
    for index, quantizer in plan.activations.items():
        values = outputs[pooled.get(index, index)]
        assert quantizer == baselines.minmax_quantizer(values, 4), index
    for index, quantizer in plan.weights.items():
        assert quantizer == baselines.minmax_quantizer(statistics.weights(index), 4, symmetric=True), index


def test_pgm_plan_beats_minmax_at_4_bits_on_the_data(tiny):
    """Truth: the empirical mean squared error (intervals.empirical_mse) on the actual float
    activations and weights: the PGM-optimal 4-bit quantizers are at least as good as min-max on
    every tensor of at least 200 values (within 1 %), strictly better on most; the activations'
    densities have breakpoints chosen by BIC (the default "auto" policy, at most
    ptq.ACTIVATION_MAX_PIECES pieces), recorded in the plan's options. (Layer
    6's 64 weights are left out: one weight at 3.7 sigma dominates their empirical error, which
    then favours the interval that holds it.)"""
    net, images, statistics = tiny
    pgm = quiet_plan(statistics, 4, 4, "pgm", first_bits=None, last_bits=None)
    minmax = quiet_plan(statistics, 4, 4, "minmax", first_bits=None, last_bits=None)
    outputs = collected_outputs(net, images)
    better = 0
    for index in pgm.activations:
        ours = error.empirical_mse(outputs[index], pgm.activations[index])
        theirs = error.empirical_mse(outputs[index], minmax.activations[index])
        assert ours <= 1.01 * theirs, index
        better += ours < 0.95 * theirs
    for index in pgm.weights:
        w = statistics.weights(index)
        if w.size < 200:
            continue
        ours, theirs = (error.empirical_mse(w, plan.weights[index]) for plan in (pgm, minmax))
        assert ours <= 1.01 * theirs, index
    assert better >= 4
    assert all(d.n_pieces <= ptq.ACTIVATION_MAX_PIECES for (kind, _), d in pgm.densities.items() if kind == "activations")
    assert pgm.options["activation_breakpoints"] == "auto"
    assert pgm.options["activation_max_pieces"] == ptq.ACTIVATION_MAX_PIECES
    assert ("activations", 10) in pgm.densities and ("weights", 0) in pgm.densities


def test_layer_bits_first_and_last(tiny):
    """Truth: the documented rule, by hand for the tiny network (convs 0, 2, 4, 6, 9, 10; route 8)."""
    net = tiny[0]
    assert plan_module.layer_bits(net, 3, 5) == {0: (8, 8), 2: (3, 5), 4: (3, 5), 6: (3, 5), 8: (None, 5),
                                         9: (3, 5), 10: (8, 8)}
    assert plan_module.layer_bits(net, 3, 5, first_bits=None, last_bits=6)[0] == (3, 5)
    assert plan_module.layer_bits(net, 3, 5, first_bits=None, last_bits=6)[10] == (6, 6)
    for bad in (1, 9, 4.0, True):
        with pytest.raises(ValueError, match="weight_bits"):
            plan_module.layer_bits(net, bad, 4)


def test_pow2_steps_are_powers_of_two_and_only_for_pgm(tiny):
    """Truth: math.frexp (a power of two has mantissa 0.5); the documented refusal for baselines."""
    _, _, statistics = tiny
    plan = quiet_plan(statistics, 4, 4, "pgm", pow2_step=True)
    for quantizer in list(plan.weights.values()) + list(plan.activations.values()):
        assert math.frexp(quantizer.step)[0] == 0.5
    with pytest.raises(ValueError, match="pow2_step"):
        ptq.quantization_plan(statistics, 4, 4, "minmax", pow2_step=True)
    with pytest.raises(ValueError, match="method must be one of"):
        ptq.quantization_plan(statistics, 4, 4, "magic")


def test_plan_json_round_trip(tiny, tmp_path):
    """Truth: json (standard library) reading the file back: every quantizer, density and option
    equal after save/load; the file holds no pickle, only JSON."""
    net, _, statistics = tiny
    plan = quiet_plan(statistics, 4, 4, "pgm")
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == plan_module.PLAN_FORMAT and len(data["layers"]) == len(net.layers)
    loaded = plan_module.QuantizationPlan.load(path)
    assert loaded.input == plan.input and loaded.weights == plan.weights
    assert loaded.activations == plan.activations and loaded.options == plan.options
    assert loaded.layer_types == plan.layer_types and loaded.weight_shapes == plan.weight_shapes
    assert loaded.to_dict() == plan.to_dict()
    assert {k: d.to_dict() for k, d in loaded.densities.items()} == {k: d.to_dict() for k, d in plan.densities.items()}
    loaded.check(net)


def test_plan_errors_name_the_file_and_layer(tiny, tmp_path):
    """Truth: the documented errors: a malformed file names itself and the line, a plan for another
    network or with an unusable quantizer names the layer."""
    net, _, statistics = tiny
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "refquant-quantization-plan",\n "version": 1,\n "layers": [}')
    with pytest.raises(ValueError, match="bad.json:3"):
        plan_module.QuantizationPlan.load(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="bad.json: not a refquant quantization plan"):
        plan_module.QuantizationPlan.load(bad)
    plan = quiet_plan(statistics, 4, 4, "minmax")
    other = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg")
    with pytest.raises(ValueError, match="plan for"):
        plan.check(other)
    weights = dict(plan.weights)
    weights[2] = UniformQuantizer(0.1, 3, -8, 7)
    with pytest.raises(ValueError, match="layer 2 .convolutional. weights"):
        plan_module.QuantizationPlan.for_network(net, weights, plan.activations)
    activations = dict(plan.activations)
    activations[4] = UniformQuantizer(0.1, 20, 0, 15)
    with pytest.raises(ValueError, match="layer 4 .convolutional. outputs"):
        plan_module.QuantizationPlan.for_network(net, plan.weights, activations)
    activations = dict(plan.activations)
    del activations[8]
    with pytest.raises(ValueError, match="layer 8 .route. has no output quantizer"):
        plan_module.QuantizationPlan.for_network(net, plan.weights, activations)


def test_unsupported_layers_are_refused_by_name(tmp_path):
    """Truth: the documented support list; errors name the network, the layer and what is wrong."""
    logistic = write_cfg(tmp_path, passthrough_cfg(region=False, head_activation="logistic"), "logistic.cfg")
    with pytest.raises(ValueError, match="layer 10 .convolutional.: activation 'logistic'"):
        plan_module.check_supported(darknet.load(logistic))
    residual = cfg_text(net_section(32), convolutional(8), convolutional(8, size=1, batch_normalize=False),
                        cfg_section("shortcut", **{"from": -2}))
    residual = write_cfg(tmp_path, residual, "residual.cfg")
    with pytest.raises(ValueError, match="residual.cfg: layer 2 .shortcut.: not supported"):
        plan_module.check_supported(darknet.load(residual))
    with pytest.raises(ValueError, match="layer 2 .shortcut."):
        ptq.calibrate(darknet.load(residual), np.zeros((1, 3, 32, 32)), 4, 4, progress=False)


# ------------------------------------------------------------------------------------------------
# The fake-quantized network (quantization-aware training)
# ------------------------------------------------------------------------------------------------

def torch_fake_quant(x, quantizer):
    """Straight-through fake quantization in torch: forward torch.fake_quantize_per_tensor_affine,
    gradient that of torch.clamp to the closed interval [lo, hi] (rounding passed straight through)."""
    clipped = torch.clamp(x, quantizer.lo, quantizer.hi)
    rounded = torch.fake_quantize_per_tensor_affine(x, quantizer.step, int(quantizer.zero_point),
                                                    quantizer.qmin, quantizer.qmax)
    return clipped + (rounded - clipped).detach()


def torch_forward(folded, plan, x, params):
    """The fake-quantized tiny network written directly in torch (float32)."""
    grids = plan_module.output_grids(folded, plan)
    outputs = []
    source = torch_fake_quant(x, plan.input)
    for index, layer in enumerate(folded.layers):
        inputs = [source if j == -1 else outputs[j] for j in folded.inputs[index]]
        if layer.type == "convolutional":
            j = folded.inputs[index][0]
            step_in = plan.input.step if j == -1 else grids[j].step
            bias_step = step_in * plan.weights[index].step
            w = torch_fake_quant(params[index]["weights"], plan.weights[index])
            b = params[index]["biases"]
            b = b + (torch.round(b.detach() / bias_step) * bias_step - b.detach()).detach()
            y = torch.nn.functional.conv2d(inputs[0], w, b, stride=layer.stride, padding=layer.padding)
            if layer.activation == "leaky":
                y = torch.nn.functional.leaky_relu(y, 0.1)
            out = torch_fake_quant(y, grids[index])
        elif layer.type == "maxpool":
            out = torch.nn.functional.max_pool2d(inputs[0], layer.size, layer.stride)
        elif layer.type == "reorg":
            out = darknet_reorg(inputs[0], layer.stride)
        elif layer.type == "route":
            out = inputs[0] if len(inputs) == 1 else torch_fake_quant(torch.cat(inputs, 1), grids[index])
        outputs.append(out)
    return outputs[-1]


def darknet_reorg(x, s):
    """Darknet's reorg_cpu(forward=0) index map, in torch (the refquant.yolo.reorg docstring's formula)."""
    n, c, h, w = x.shape
    c2 = c // (s * s)
    grid = x.reshape(n, c2, h, s, w, s)
    return grid.permute(0, 3, 5, 1, 2, 4).reshape(n, c * s * s, h // s, w // s)


def test_fake_quant_backward_matches_torch_straight_through():
    """Truth: torch autograd through the same network written in torch, with torch's
    fake_quantize_per_tensor_affine for the forward values and torch.clamp's derivative for the
    straight-through rule (Bengio et al.: rounding passed through, clipping differentiated).
    Checked: the output, dL/dx, and dL/dW, dL/db of every convolution, for a random dout.

    Power-of-two steps everywhere (a PGM pow2 plan, input step 2**-8) in float64 make every value
    a short dyadic number, so both sides compute exactly, whatever their summation order. (With
    other steps a pre-activation that is exactly 0 in exact arithmetic -- common, since it is an
    integer multiple of s_in * s_w -- comes out as +-1e-7 and the two sides can take different
    sides of the leaky ReLU's kink.) Two grids have their step halved so that they clip."""
    net = tiny_network(dtype=np.float64, region=False, seed=4)
    images = np.random.default_rng(3).random((4, 3, 32, 32))
    statistics = ptq.calibration_statistics(net, images, progress=False)
    plan = quiet_plan(statistics, 4, 4, "pgm", pow2_step=True)
    halved = {i: UniformQuantizer(q.step / 2, q.zero_point, q.qmin, q.qmax) for i, q in plan.activations.items()
              if i in (2, 8)}
    plan = plan_module.QuantizationPlan.for_network(statistics.net, plan.weights, {**plan.activations, **halved},
                                            input=UniformQuantizer(2.0**-8, 0, 0, 255), method="pgm",
                                            options=plan.options)
    folded = statistics.net
    network = qat.FakeQuantNetwork(folded, plan)
    x = images[:2]
    y = network.forward(x, training=True)
    dout = np.random.default_rng(9).standard_normal(y.shape)
    dx = network.backward(dout)

    params = {i: {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in layer.params.items()}
              for i, layer in enumerate(folded.layers) if layer.type == "convolutional"}
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch_forward(folded, plan, tx, params)
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    for index, p in params.items():
        for name in ("weights", "biases"):
            np.testing.assert_allclose(folded.layers[index].grads[name], p[name].grad.numpy(), rtol=1e-12,
                                       atol=1e-12, err_msg=f"layer {index} {name}")
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    clipped = ~plan.activations[2].straight_through_mask(network.layers[2]._unquantized)
    assert clipped.any()
    outside = ~plan.weights[9].straight_through_mask(folded.layers[9].params["weights"])
    assert np.all(folded.layers[9].grads["weights"][outside] == 0)


def test_fake_quant_forward_lies_on_the_grids_and_tracks_the_simulation(tiny):
    """Truth: the grids' definition (every fake-quantized output is step * (integer - zero point)
    within float rounding) and the exact simulation (SimulatedNetwork): at 8 bits, the float32
    training network's codes equal the simulation's for at least 99 % of the values of the first
    convolution, and the head outputs agree to 2 % of their range."""
    net, images, statistics = tiny
    plan = quiet_plan(statistics, 8, 8, "pgm")
    folded32 = folding.fold_batchnorm(net)
    for layer in folded32.layers:
        for key in layer.params:
            layer.params[key] = layer.params[key].astype(np.float32)
    folded32.dtype = np.dtype(np.float32)
    network = qat.FakeQuantNetwork(folded32, plan)
    x = images[:2].astype(np.float32)
    outputs = network.forward(x, return_all=True)
    simulated = simulation.SimulatedNetwork.build(net, plan).run(images[:2])
    for index, grid in plan.activations.items():
        codes = outputs[index] / grid.step + grid.zero_point
        assert np.abs(codes - np.round(codes)).max() < 1e-2, index
    first = np.round(outputs[0] / plan.activations[0].step + plan.activations[0].zero_point)
    assert np.mean(first == simulated[0]) > 0.99
    head = outputs[-1]
    assert np.abs(head - simulated[-1]).max() < 0.02 * (simulated[-1].max() - simulated[-1].min())


def test_fake_quant_network_trains_the_folded_network(tiny):
    """Truth: refquant.train's own update (sgd_update over train.trainable) applied to the
    fake-quantized network moves the folded network's weights (the arrays are shared), the
    weights' gradient is zero outside the weight interval (the straight-through rule) and the same
    without the input gradient (Darknet's training skips it), and FakeQuantNetwork refuses a
    network that still has batch norm."""
    net, images, statistics = tiny
    plan = quiet_plan(statistics, 4, 4, "minmax")
    folded = folding.fold_batchnorm(net)
    network = qat.FakeQuantNetwork(folded, plan)
    y = network.forward(images[:2], training=True)
    network.backward(np.ones_like(y))
    gradients = {(i, name): network.layers[i].grads[name].copy() for i, name, _ in trainable(network)}
    assert network.backward(np.ones_like(y), input_gradient=False) is None  # as train.py calls it
    for (i, name), gradient in gradients.items():
        np.testing.assert_array_equal(network.layers[i].grads[name], gradient)
    assert {key[0] for key in gradients} == set(plan_module.conv_indices(net))
    weights = folded.layers[2].params["weights"]
    outside = ~plan.weights[2].straight_through_mask(weights)
    assert np.all(gradients[(2, "weights")][outside] == 0)
    before = weights.copy()
    updates = {key: np.zeros_like(v) for key, v in gradients.items()}
    sgd_update(network, gradients, updates, rate=0.1, momentum=0.9, decay=0.0005, batch=2)
    assert not np.array_equal(folded.layers[2].params["weights"], before)
    with pytest.raises(ValueError, match="fold_batchnorm"):
        qat.FakeQuantNetwork(net, plan)


def test_refit_follows_the_weights(tiny):
    """Truth: scale equivariance of the method: the PGM of 2W is the PGM of W stretched by 2, so
    the optimal step of a layer whose weights are doubled doubles (within 1 %); the refitted plan
    keeps its widths and method, and the other layers' weight steps stay (same tensors, same fits)."""
    net, images, statistics = tiny
    plan = quiet_plan(statistics, 4, 4, "pgm")
    folded = folding.fold_batchnorm(net)
    network = qat.FakeQuantNetwork(folded, plan)
    folded.layers[4].params["weights"] *= 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EM limits and merged one-bin pieces, reported by refquant.pgm
        refitted = network.refit(images[:4], progress=False)
    assert network.plan is refitted and refitted.options == plan.options and refitted.method == "pgm"
    assert refitted.weights[4].step / plan.weights[4].step == pytest.approx(2.0, rel=0.01)
    assert refitted.weights[2].step == plan.weights[2].step


def test_train_iteration_runs_on_the_fake_quant_network(tmp_path):
    """Truth: refquant.train.train_iteration (Darknet's train_network: augmentation, region loss,
    backward, SGD update), called unchanged on a FakeQuantNetwork over 4 generated shapes images:
    a finite loss, the folded network's weights moved, its ``seen`` counts the images."""
    from refquant.data.shapes import shapes_dataset
    from refquant.data.voc import load_voc, read_names
    root = shapes_dataset(tmp_path / "shapes", size=64, train=4, val=0, test=0, progress=False)
    names = read_names(root / "shapes.names")
    net = randomize_batchnorm(load_cfg(passthrough_cfg(classes=7), "tiny7.cfg", seed=5), 5)
    calibration = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plan = ptq.calibrate(net, calibration, 4, 4, method="minmax", progress=False)
    network = qat.FakeQuantNetwork(folding.fold_batchnorm(net), plan)
    options = train.training_options(network, {"batch": 2, "subdivisions": 1, "max_batches": 1})
    before = network.folded.layers[2].params["weights"].copy()
    loss = train.train_iteration(network, load_voc(root, "train", names), options, train.zero_updates(network), 1, 0)
    assert math.isfinite(loss) and loss > 0
    assert not np.array_equal(network.folded.layers[2].params["weights"], before)
    assert network.folded.seen == network.seen == 2
