"""Tests of refquant.integer_network: the integer network against its float64 simulation (code for
code), each layer against a direct real-valued computation in torch, the float network (SQNR),
the accumulator check, model size and operation counts. Each docstring names its truth."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from refquant import darknet, ptq
from refquant import plan as plan_module
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_image, load_voc, read_names
from refquant.detection.decode import network_input
from refquant.detection.evaluate import shipped_model
from refquant.integer import lowering, vnni
from refquant.integer import simulation as integer_simulation
from refquant.integer.measures import cost_totals, layer_costs, layer_sqnr, saturation_rates, sqnr_db
from refquant.integer.network import IntegerNetwork
from refquant.quantizers.uniform import UniformQuantizer
from refquant.testing import load_cfg, numpy_correlation, passthrough_cfg, quiet_plan, randomize_batchnorm

CFG_DIR = "refquant/cfg"
plan_of = quiet_plan


def pow2_plan(plan, net):
    """The plan with every step rounded up to a power of two (zero points kept): hand-made fixed point."""
    def snapped(q):
        return UniformQuantizer(2.0 ** math.ceil(math.log2(q.step)), q.zero_point, q.qmin, q.qmax)
    return plan_module.QuantizationPlan.for_network(net, {i: snapped(q) for i, q in plan.weights.items()},
                                            {i: snapped(q) for i, q in plan.activations.items()},
                                            method="minmax-pow2", options=plan.options)


def calibrated(net, seed, images, **options):
    """``net`` with random batch norm (``seed``), random float32 images of shape ``images`` (seed + 1)
    and their calibration statistics."""
    randomize_batchnorm(net, seed)
    images = np.random.default_rng(seed + 1).random(images).astype(np.float32)
    return net, images, ptq.calibration_statistics(net, images, baseline_samples=4096, progress=False, **options)


@pytest.fixture(scope="module")
def tiny_voc():
    """yolov2-tiny-voc (float32, random weights and batch norm), 2 images at 64x64, its statistics."""
    return calibrated(darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", seed=1), 1, (2, 3, 64, 64), batch_size=2)


@pytest.fixture(scope="module")
def voc():
    """yolov2-voc (route and reorg), float32, random weights and batch norm, one image at 64x64."""
    return calibrated(darknet.load(f"{CFG_DIR}/yolov2-voc.cfg", seed=2), 2, (1, 3, 64, 64), batch_size=1)


@pytest.fixture(scope="module")
def tiny():
    """The tiny passthrough network (refquant.testing.passthrough_cfg; float32, random weights and
    batch norm), 3 images at 32x32, its statistics."""
    return calibrated(load_cfg(passthrough_cfg(), "tiny.cfg", seed=3), 3, (3, 3, 32, 32))


def assert_code_for_code(integer_network, images):
    """Every layer of the integer network equals the float64 simulation's (codes, then the head)."""
    integer = integer_network.run(images)
    simulated = integer_network.simulation().run(images)
    for index, (a, b) in enumerate(zip(integer, simulated)):
        layer = integer_network.layers[index]
        if layer.type != "region":
            assert a.dtype.kind in "iu" and b.dtype == np.float64, index
        assert a.shape == b.shape, index
        mismatched = int(np.count_nonzero(a != b))
        assert mismatched == 0, f"layer {index} [{layer.type}]: {mismatched} of {a.size} codes differ"
    return integer


# ------------------------------------------------------------------------------------------------
# Integer network = simulation, code for code
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("bits, method, pow2", [(8, "pgm", False), (4, "pgm", False), (4, "pgm", True),
                                                (8, "minmax", False)])
def test_tiny_yolo_integer_equals_simulation(tiny_voc, bits, method, pow2):
    """Truth: the float64 simulation (SimulatedNetwork: im2col + GEMM in float64, round_half_even of
    acc * multiplier * 2**-shift), an arithmetic independent of the integer path (Numba int32
    conv2d, requantization by integer multiply and rounding right shift). yolov2-tiny-voc, random
    weights, 2 images at 64x64: every layer's codes and the region output are identical. With
    power-of-two steps every layer after the first requantizes by a shift alone (multiplier 1)."""
    net, images, statistics = tiny_voc
    plan = plan_of(statistics, bits, bits, method, pow2_step=pow2)
    integer_network = IntegerNetwork(statistics.net, plan)  # statistics.net: net folded once
    assert_code_for_code(integer_network, images)
    if pow2:
        convs = [f for f in integer_network.fixed if isinstance(f, lowering.FixedPointConvolution)]
        assert convs[0].multiplier != 1  # the input step is 1/255
        assert all(f.multiplier == 1 for f in convs[1:])


@pytest.mark.slow
@pytest.mark.parametrize("bits, pow2", [(8, False), (4, False), (4, True)])
def test_yolo_voc_integer_equals_simulation(voc, bits, pow2):
    """Truth: the float64 simulation, as above. yolov2-voc (a single-input route, reorg, and a
    two-input route whose inputs are requantized to its grid: min-max gives it the grid of its wider
    input, so the other one is rescaled), random weights, 64x64, min-max plans at 4 and 8 bits and a
    power-of-two plan (min-max steps rounded up to powers of two)."""
    net, images, statistics = voc
    plan = plan_of(statistics, bits, bits, "minmax")
    if pow2:
        plan = pow2_plan(plan, net)
    integer_network = IntegerNetwork(statistics.net, plan)  # statistics.net: net folded once
    route = integer_network.fixed[28]
    assert isinstance(route, lowering.FixedPointRoute) and any(r is not None for r in route.rescalings)
    assert integer_network.fixed[25] is None and integer_network.grids[25] is integer_network.grids[16]
    assert_code_for_code(integer_network, images)


def signed_plan(plan, net):
    """The plan with every activation grid made symmetric and signed (narrow range, zero point 0,
    as TensorRT's int8): the next convolution then reads int8 codes instead of shifted uint8."""
    def signed(q):
        bound = 2 ** (q.num_levels.bit_length() - 2) - 1
        return UniformQuantizer(max(-q.lo, q.hi) / bound, 0, -bound, bound)
    return plan_module.QuantizationPlan.for_network(net, plan.weights, {i: signed(q) for i, q in plan.activations.items()},
                                            method="signed", options=plan.options)


@pytest.mark.parametrize("method", ["aciq", "signed"])
def test_tiny_network_integer_equals_simulation_at_3_bits(tiny, method):
    """Truth: the float64 simulation. The tiny passthrough network at 3-bit weights and activations
    (first and last at 8), 3 images, for an ACIQ plan and for signed symmetric activation grids
    (TensorRT's form, the one the "kl" method gives: int8 codes into the next convolution)."""
    net, images, statistics = tiny
    plan = plan_of(statistics, 3, 3, "aciq" if method == "aciq" else "minmax")
    if method == "signed":
        plan = signed_plan(plan, net)
        assert all(q.qmin < 0 for q in plan.activations.values())
    integer_network = IntegerNetwork.build(net, plan)
    assert isinstance(integer_network.fixed[8], lowering.FixedPointRoute)
    assert_code_for_code(integer_network, images)


@pytest.mark.parametrize("gemm", ["portable", "vnni"])
def test_both_gemms_run_the_network_code_for_code(tiny, gemm, monkeypatch):
    """Truth: the float64 simulation. The tiny passthrough network at 8 and 4 bits with the portable
    int32 GEMM (what runs on a CPU without AVX-512 VNNI) and with the VNNI one where this CPU has
    it: every layer's codes equal."""
    if gemm == "portable":
        monkeypatch.setattr(vnni, "vnni_available", lambda: False)
    net, images, statistics = tiny
    for bits in (8, 4):
        integer_network = IntegerNetwork.build(net, plan_of(statistics, bits, bits, "minmax"))
        assert_code_for_code(integer_network, images)
        packed = list(integer_network._packed_weights.values())
        assert packed and all(p.vnni == (gemm == "vnni" and vnni.vnni_available()) for p in packed)


def boundary_convolution(statistics, last_weight):
    """A 1x1 convolution of k = 519 weights on a 0..255 input grid with zero point 0: 518 of 127
    and ``last_weight`` (the second output negated), bias (3, -5); its (M, K) int64 weights and
    input codes, the first image at the extreme (255 everywhere), three random."""
    plan = plan_of(statistics, 8, 8, "minmax")
    conv = next(f for f in IntegerNetwork(statistics.net, plan).fixed if isinstance(f, lowering.FixedPointConvolution))
    k = 519
    weights = np.full((2, k), 127, dtype=np.int64)
    weights[:, -1] = last_weight
    weights[1] *= -1
    conv = dataclasses.replace(conv, weight_codes=weights.astype(np.int8).reshape(2, k, 1, 1),
                               bias=np.array([3, -5], dtype=np.int32), size=1, stride=1, padding=0,
                               input_grid=UniformQuantizer(step=0.01, zero_point=0, qmin=0, qmax=255))
    codes = np.concatenate([np.full((1, k, 2, 2), 255.0),
                            np.random.default_rng(5).integers(0, 256, (3, k, 2, 2)).astype(np.float64)])
    return conv, weights, codes


@pytest.mark.parametrize("last_weight, dtype", [(7, np.float32), (8, np.float64)])
def test_simulation_float32_gemm_only_where_exact(tiny, last_weight, dtype):
    """Truth: NumPy int64 arithmetic (refquant.testing.numpy_correlation, an einsum). Inputs on a
    0..255 grid with zero point 0, a 1x1 convolution of k = 519 weights: 518 of 127 and a last one
    of 7 make the worst sum 65793 * 255 = 2**24 - 1, the largest every partial sum of which float32
    holds exactly, so the GEMM runs in float32; a last weight of 8 passes 2**24 and sends it to
    float64. Either way each accumulator, on inputs at the extreme (the worst sum itself) and random
    ones, is the int64 one."""
    net, images, statistics = tiny
    conv, weights, codes = boundary_convolution(statistics, last_weight)
    k = weights.shape[1]
    assert (int(np.abs(weights).sum(axis=1).max()) * 255 < 2 ** 24) == (dtype is np.float32)
    assert integer_simulation.simulation_gemm_dtype(weights, conv.input_grid) is dtype
    acc = integer_simulation.simulated_accumulator(conv, codes)
    expected = numpy_correlation(codes, weights.reshape(2, k, 1, 1)) + np.array([3, -5])[:, None, None]
    expected = expected.reshape(4, 2, 4)
    assert acc.dtype == np.float64
    np.testing.assert_array_equal(acc, expected.astype(np.float64))
    assert expected[0, 0, 0] == 255 * (518 * 127 + last_weight) + 3


@pytest.mark.parametrize("bits, method", [(8, "pgm"), (6, "minmax"), (4, "aciq"), (3, "percentile")])
def test_fused_simulated_convolution_is_the_reference_bit_for_bit(tiny, bits, method):
    """Truth: the reference ``simulated_convolution_reference`` (NumPy, formula in its docstring; itself
    equal to the integer network code for code above). The fused Numba kernel must give the same
    float64 codes at all six convolutions of the tiny network (leaky and linear pairs, 3x3 and 1x1,
    negative and positive accumulators), on codes the network produced and on random codes over
    the whole input grid, and on the 2**24 boundary cases of both GEMM dtypes."""
    net, images, statistics = tiny
    plan = plan_of(statistics, bits, bits, method)
    simulation = IntegerNetwork.build(net, plan).simulation()
    outputs = simulation.run(images)
    rng = np.random.default_rng(bits)
    checked = 0
    for conv in simulation.fixed:
        if not isinstance(conv, lowering.FixedPointConvolution):
            continue
        j = simulation.inputs[conv.index][0]
        produced = simulation.input_codes(images).astype(np.float64) if j < 0 else outputs[j]
        spread = rng.integers(conv.input_grid.qmin, conv.input_grid.qmax + 1, produced.shape).astype(np.float64)
        for codes in (produced, spread):
            reference = integer_simulation.simulated_convolution_reference(conv, codes)
            fused = integer_simulation.simulated_convolution(conv, codes)
            assert fused.dtype == reference.dtype == np.float64
            np.testing.assert_array_equal(fused, reference)
            assert len(np.unique(reference)) > 1
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("last_weight", [7, 8])
def test_fused_simulated_convolution_on_both_gemm_dtypes(tiny, last_weight):
    """Truth: the reference ``simulated_convolution_reference`` on the 2**24 boundary convolution of
    ``test_simulation_float32_gemm_only_where_exact`` (float32 GEMM with 7, float64 with 8), with
    accumulators of both signs near +-2**24 and a leaky pair."""
    net, images, statistics = tiny
    conv, _, codes = boundary_convolution(statistics, last_weight)
    np.testing.assert_array_equal(integer_simulation.simulated_convolution(conv, codes), integer_simulation.simulated_convolution_reference(conv, codes))


# ------------------------------------------------------------------------------------------------
# Each layer against its real-valued definition
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_each_layer_matches_its_real_valued_definition_in_torch(tiny_voc):
    """Truth: the quantized layer written with real numbers and computed by torch (float64
    conv2d): given the integer network's input codes of a convolution, x = s_in (codes - z_in),
    w = s_w * weight codes, b = s_in s_w * bias codes, the output codes are
    Q_out(f(conv(x, w) + b)) with Q_out the plan's quantizer. No multiplier, shift or integer
    kernel is involved. Within one code everywhere (the 22-bit multipliers move values by 2**-22
    relative, which matters only next to a rounding tie), equal for 99.9 % of the values."""
    net, images, statistics = tiny_voc
    plan = plan_of(statistics, 4, 4, "pgm")
    integer_network = IntegerNetwork(statistics.net, plan)
    outputs = integer_network.run(images)
    differing = 0
    total = 0
    for conv in integer_network.fixed:
        if not isinstance(conv, lowering.FixedPointConvolution):
            continue
        j = integer_network.inputs[conv.index][0]
        codes = integer_network.plan.input.quantize(images) if j == -1 else outputs[j]
        x = torch.from_numpy(conv.input_grid.dequantize(np.asarray(codes).astype(np.int64)))
        w = torch.from_numpy(conv.weight_codes.astype(np.float64) * conv.weight_grid.step)
        b = torch.from_numpy(conv.bias.astype(np.float64) * conv.input_grid.step * conv.weight_grid.step)
        z = torch.nn.functional.conv2d(x, w, b, stride=conv.stride, padding=conv.padding)
        if conv.activation == "leaky":
            z = torch.nn.functional.leaky_relu(z, 0.1)
        expected = conv.output_grid.quantize(z.numpy())
        got = outputs[conv.index].astype(np.int64)
        assert np.abs(got - expected).max() <= 1, conv.index
        differing += int(np.count_nonzero(got != expected))
        total += got.size
    assert differing <= 1e-3 * total


# ------------------------------------------------------------------------------------------------
# Against the float network
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_8_bit_network_is_close_to_the_float_network(tiny_voc):
    """Truth: the float network itself (inference mode, batch norm unfolded). At 8 bits every
    layer's dequantized output has an SQNR of at least 20 dB against the float output (25 dB on
    average); at 4 bits (first and last layers 8) the SQNR is lower on average by more than 10 dB.
    A sanity check of the whole pipeline, random weights on random images."""
    net, images, statistics = tiny_voc
    sqnr8 = layer_sqnr(net, IntegerNetwork.build(net, plan_of(statistics, 8, 8, "pgm")), images)
    sqnr4 = layer_sqnr(net, IntegerNetwork.build(net, plan_of(statistics, 4, 4, "pgm")), images)
    assert [index for index, _, _ in sqnr8] == list(range(len(net.layers)))
    values8 = np.array([db for _, _, db in sqnr8])
    values4 = np.array([db for _, _, db in sqnr4])
    assert values8.min() >= 20.0 and values8.mean() >= 25.0, values8
    assert values8.mean() - values4.mean() > 10.0


def test_sqnr_and_saturation_rates(tiny):
    """Truth: the definitions computed by hand with numpy: 10 log10(sum x^2 / sum (x - y)^2) for a
    hand-picked pair; codes at qmin/qmax counted with numpy for every quantized layer."""
    assert sqnr_db([3.0, 4.0], [3.0, 4.0]) == math.inf
    assert sqnr_db([3.0, 4.0], [3.0, 3.0]) == pytest.approx(10 * math.log10(25.0))
    net, images, statistics = tiny
    plan = plan_of(statistics, 3, 3, "aciq")
    integer_network = IntegerNetwork.build(net, plan)
    outputs = integer_network.run(images)
    rates = saturation_rates(integer_network, outputs)
    assert [r[0] for r in rates] == sorted(plan.activations)
    for index, kind, low, high in rates:
        grid = plan.activations[index]
        assert kind == net.layers[index].type
        assert low == np.count_nonzero(outputs[index] == grid.qmin) / outputs[index].size
        assert high == np.count_nonzero(outputs[index] == grid.qmax) / outputs[index].size
    assert any(high > 0 for _, _, _, high in rates)  # ACIQ clips at 3 bits


# ------------------------------------------------------------------------------------------------
# Checks before computing, the evaluation interface
# ------------------------------------------------------------------------------------------------

def test_accumulator_overflow_and_bias_overflow_are_refused_at_build(tmp_path):
    """Truth: the int32 bound, by hand: 8000 channels x 3 x 3 = 72000 products of 8-bit input codes
    (0..255) and int8 weights (-128..127) reach 72000 * 32640 > 2**31 - 1, so building must fail
    before anything runs, naming the layer; so must a bias that exceeds int32 at scale s_in s_w."""
    cfg = tmp_path / "wide.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=8000\n\n[convolutional]\nfilters=1\nsize=3\npad=1\n"
                   "activation=linear\n")
    net = darknet.load(cfg)
    plan = plan_module.QuantizationPlan.for_network(net, {0: UniformQuantizer(0.01, 0, -128, 127)},
                                            {0: UniformQuantizer(0.1, 128, 0, 255)})
    with pytest.raises(ValueError, match=r"layer 0 \[convolutional\]: int32 accumulator could overflow"):
        IntegerNetwork.build(net, plan)
    narrow = tmp_path / "narrow.cfg"
    narrow.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=2\nsize=3\npad=1\n"
                      "activation=leaky\n")
    net = darknet.load(narrow)
    net.layers[0].params["biases"][:] = 1e6
    plan = plan_module.QuantizationPlan.for_network(net, {0: UniformQuantizer(1e-4, 0, -128, 127)},
                                            {0: UniformQuantizer(0.1, 10, 0, 255)})
    with pytest.raises(ValueError, match=r"layer 0 \[convolutional\]: .*exceed int32"):
        IntegerNetwork.build(net, plan)


def test_forward_is_the_head_output_and_checks_its_input(tiny):
    """Truth: the documented interface (what refquant.evaluate calls): forward(x) is run(x)[-1],
    with the float network's layers, input_shape and name; training mode, integer images and a
    wrong channel count are refused by name."""
    net, images, statistics = tiny
    integer_network = IntegerNetwork.build(net, plan_of(statistics, 4, 4, "minmax"))
    head = integer_network.forward(images)
    np.testing.assert_array_equal(head, integer_network.run(images)[-1])
    assert head.shape == net.forward(images).shape and head.dtype == np.float64
    assert integer_network.layers[-1].type == "region" and integer_network.input_shape == net.input_shape
    with pytest.raises(ValueError, match="no training mode"):
        integer_network.forward(images, training=True)
    with pytest.raises(TypeError, match="float numpy array"):
        integer_network.run((images * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="channels"):
        integer_network.run(images[:, :2])


# ------------------------------------------------------------------------------------------------
# Model size and operation counts
# ------------------------------------------------------------------------------------------------

def test_layer_costs_by_hand(tiny):
    """Truth: hand-computed counts for the tiny network at 32x32, 4-bit weights and activations,
    first and last convolutions 8-bit (macs = M * C*k*k * OH*OW; bops = macs * weight bits * bits of
    the INPUT codes; bytes = ceil(weights * bits / 8) + 4 * biases; float = 4 bytes per stored value)."""
    net, _, statistics = tiny
    costs = layer_costs(net, plan_of(statistics, 4, 4, "minmax"))
    by_hand = [
        # index, weights, biases, w bits, a bits, macs, bops, bytes, float bytes
        (0, 216, 8, 8, 8, 8 * 27 * 32 * 32, 221184 * 64, 216 + 32, 4 * (216 + 4 * 8)),
        (2, 1152, 16, 4, 8, 16 * 72 * 16 * 16, 294912 * 32, 576 + 64, 4 * (1152 + 4 * 16)),
        (4, 4608, 32, 4, 4, 32 * 144 * 8 * 8, 294912 * 16, 2304 + 128, 4 * (4608 + 4 * 32)),
        (6, 64, 4, 4, 4, 4 * 16 * 16 * 16, 16384 * 16, 32 + 16, 4 * (64 + 4 * 4)),
        (9, 13824, 32, 4, 4, 32 * 432 * 8 * 8, 884736 * 16, 6912 + 128, 4 * (13824 + 4 * 32)),
        (10, 512, 16, 8, 4, 16 * 32 * 8 * 8, 32768 * 32, 512 + 64, 4 * (512 + 16)),
    ]
    keys = ("index", "weights", "biases", "weight_bits", "activation_bits", "macs", "bops", "bytes", "float_bytes")
    assert [tuple(c[k] for k in keys) for c in costs] == by_hand
    assert all(c["float_bops"] == c["macs"] * 1024 for c in costs)
    totals = cost_totals(costs)
    assert totals["bytes"] == sum(row[7] for row in by_hand)
    assert totals["macs"] == sum(row[5] for row in by_hand)
    assert 4 * net.parameter_count() == totals["float_bytes"]
    # at another input size only the spatial factor changes
    assert layer_costs(net, plan_of(statistics, 4, 4, "minmax"), (3, 64, 64))[0]["macs"] == 4 * 221184


# ------------------------------------------------------------------------------------------------
# Evaluation: integer mAP = simulated mAP
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_scores_integer_and_simulated_networks_identically(tmp_path):
    """Truth: refquant.evaluate (letterbox, region decoding, NMS, the VOC devkit's AP) run on the
    integer network and on its float64 simulation as on any float network: the same detections,
    hence the same AP and mAP, on 6 generated shapes images (the tiny network with 7 classes and
    random weights; the mAP itself is meaningless, the equality is the point). The float network
    finds about as many detections (within 20 %), a sanity check of the 8-bit network."""
    from refquant.data.shapes import SHAPE_NAMES, shapes_dataset
    from refquant.data.voc import load_voc, read_names
    from refquant.detection.evaluate import evaluate
    root = shapes_dataset(tmp_path / "shapes", size=64, train=0, val=0, test=6, progress=False)
    names = read_names(root / "shapes.names")
    assert tuple(names) == SHAPE_NAMES
    net = randomize_batchnorm(load_cfg(passthrough_cfg(classes=7), "tiny7.cfg", seed=5), 5)
    records = load_voc(root, "test", names)
    calibration = np.random.default_rng(6).random((4, 3, 32, 32)).astype(np.float32)
    plan = plan_of(ptq.calibration_statistics(net, calibration, progress=False, baseline_samples=4096),
                   8, 8, "minmax")
    integer_network = IntegerNetwork.build(net, plan)
    results = [evaluate(model, records, names, batch_size=4, progress=False)
               for model in (integer_network, integer_network.simulation(), net)]
    (ap_int, found_int), (ap_sim, found_sim), (_, found_float) = results
    assert found_int == found_sim and len(found_int) > 0
    assert ap_int == pytest.approx(ap_sim, nan_ok=True) and ap_int["mAP"] == ap_sim["mAP"]
    assert abs(len(found_int) - len(found_float)) <= 0.2 * len(found_float)


@pytest.mark.slow
def test_shipped_model_integer_equals_simulation():
    """Truth: the float64 simulation, as above, now for the shipped shapes detector
    (data/models/shapes-tiny-yolo, trained weights) calibrated on 4 of its training images and run
    on 4 of its test images at 128x128, at 4 bits: every layer's codes and the region output are identical."""
    net = darknet.load(shipped_model(".cfg"), shipped_model(".weights"))
    names = read_names(shipped_model(".names"))
    root = shapes_dataset(progress=False)
    _, height, width = net.input_shape

    def batch(split):
        records = load_voc(root, split, names)[:4]
        return np.stack([network_input(load_image(r["image_path"]), width, height)
                         for r in records]).astype(np.float32)

    statistics = ptq.calibration_statistics(net, batch("train"), batch_size=4, baseline_samples=4096,
                                            progress=False)
    plan = plan_of(statistics, 4, 4, "pgm")  # 4 bits inside, the first and last layers at 8
    assert_code_for_code(IntegerNetwork(statistics.net, plan), batch("test"))
