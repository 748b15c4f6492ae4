"""Tests of refquant.integer.profiles: each arithmetic profile against an engine refquant did not
write, and the integer network against its simulation under every profile.

Truths: a line-for-line Python transcription of gemmlowp's fixedpoint.h and of TFLite's
quantization_util.cc (``gemmlowp``, ``gemmlowp-single``); torch's fbgemm quantized convolution
(``float-scale``); the exact rationals of ``fractions.Fraction``; the float64 simulation against the
integer network (two implementations of each profile: Numba transcriptions and tables against
NumPy formulas from the definitions). Each docstring names its truth.
"""
import math
import types
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from refquant import darknet, ptq
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc
from refquant.demo.experiment import letterboxed_inputs, mean_average_precision
from refquant.demo.profiles import profile_lines, profile_rows
from refquant.integer import lowering
from refquant.integer.conv import pack_weights
from refquant.integer.network import IntegerNetwork
from refquant.integer.profiles import PROFILES, exact, float_scale, gemmlowp, get_profile
from refquant.integer.profiles.lowered import ProfileConvolution
from refquant.integer.simulation import gemm_weight_codes
from refquant.plan import QuantizationPlan, per_channel_plan
from refquant.quantizers.uniform import UniformQuantizer

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


# ------------------------------------------------------------------------------------------------
# gemmlowp: a line-for-line transcription of the reference functions
# ------------------------------------------------------------------------------------------------
# From https://github.com/google/gemmlowp/blob/16e8662c34917be0065110bfcd9cc27d30f52fdf/fixedpoint/fixedpoint.h
# (SaturatingRoundingDoublingHighMul for std::int32_t, RoundingDivideByPOT) and
# https://github.com/tensorflow/tensorflow/blob/02145c25ee765c25924a75251cb2d564e2752002/
# tensorflow/lite/kernels/internal/quantization_util.cc (QuantizeMultiplier) and common.h / common.cc
# (MultiplyByQuantizedMultiplier, both forms). C's integer semantics written out: '/' truncates toward
# zero, '>>' on a signed value is arithmetic, static_cast<int32_t> of an in-range value is the value.

def _c_divide(a, b):
    """C's ``a / b`` on integers: the quotient truncated toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b > 0) else -quotient


def _int32(value):
    """Two's complement wrap of ``value`` to int32 (what a C cast of a 64-bit value does on every target)."""
    return (value + 2**31) % 2**32 - 2**31


def SaturatingRoundingDoublingHighMul(a, b):  # noqa: N802 (gemmlowp's name)
    overflow = a == b and a == INT32_MIN
    a_64 = a
    b_64 = b
    ab_64 = a_64 * b_64
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = _int32(_c_divide(ab_64 + nudge, 1 << 31))
    return INT32_MAX if overflow else ab_x2_high32


def RoundingDivideByPOT(x, exponent):  # noqa: N802
    assert 0 <= exponent <= 31
    mask = _int32((1 << exponent) - 1)
    zero = 0
    one = 1
    remainder = x & mask
    threshold = (mask >> 1) + (one if x < zero else 0)  # BitAnd(MaskIfLessThan(x, zero), one)
    return (x >> exponent) + (one if remainder > threshold else 0)  # BitAnd(MaskIfGreaterThan(...), one)


def MultiplyByQuantizedMultiplier(x, quantized_multiplier, shift):  # noqa: N802 (common.h, double rounding)
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    return RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(_int32(x * (1 << left_shift)), quantized_multiplier),
                               right_shift)


def MultiplyByQuantizedMultiplierSingleRounding(x, quantized_multiplier, shift):  # noqa: N802 (common.cc)
    assert quantized_multiplier >= 0 and -31 <= shift <= 30
    total_shift = 31 - shift
    round_ = 1 << (total_shift - 1)
    result = x * quantized_multiplier + round_
    result = result >> total_shift
    return result


def TfLiteRound(x):  # noqa: N802 (std::round: half away from zero)
    return math.copysign(math.floor(abs(x) + 0.5) if abs(x) % 1 != 0.5 else math.floor(abs(x)) + 1.0, x)


def QuantizeMultiplier(double_multiplier, single_rounding):  # noqa: N802
    if double_multiplier == 0.:
        return 0, 0
    q, shift = math.frexp(double_multiplier)
    q_fixed = int(TfLiteRound(q * (1 << 31)))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    assert q_fixed <= INT32_MAX
    if shift < -31:
        shift = 0
        q_fixed = 0
    if single_rounding and shift > 30:  # #if TFLITE_SINGLE_ROUNDING
        shift = 30
        q_fixed = (1 << 31) - 1
    return q_fixed, shift


def _tie_cases():
    """x at every tie of a shift 0..31 (``k 2**e +- 2**(e-1)``), both signs, and the int32 extremes."""
    cases = {INT32_MIN, INT32_MIN + 1, INT32_MAX, -1, 0, 1}
    for exponent in range(32):
        half = (1 << exponent) >> 1
        for k in (-(1 << (31 - exponent)) + 1, -3, -2, -1, 0, 1, 2, 3, (1 << (31 - exponent)) - 2):
            for offset in (-half - 1, -half, half, half + 1, 0):
                value = k * (1 << exponent) + offset
                if INT32_MIN <= value <= INT32_MAX:
                    cases.add(value)
    return sorted(cases)


def test_gemmlowp_functions_equal_the_transcription_on_edge_cases():
    """Truth: the transcription of fixedpoint.h above. refquant's Numba SaturatingRoundingDoublingHighMul
    on INT32_MIN x INT32_MIN (the saturating case), INT32_MIN and INT32_MAX against every multiplier edge,
    and RoundingDivideByPOT on every tie of every shift 0..31, both signs, and the int32 extremes."""
    multipliers = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, (1 << 30) + 1, INT32_MAX - 1, INT32_MAX]
    values = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -3, -1, 0, 1, 3, (1 << 30), INT32_MAX - 1, INT32_MAX]
    for a in values:
        for b in multipliers:
            assert gemmlowp.saturating_rounding_doubling_high_mul(a, b) == SaturatingRoundingDoublingHighMul(a, b), (a, b)
    assert gemmlowp.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX
    ties = _tie_cases()
    checked = 0
    for exponent in range(32):
        for x in ties:
            assert gemmlowp.rounding_divide_by_pot(x, exponent) == RoundingDivideByPOT(x, exponent), (x, exponent)
            checked += 1
    assert checked > 5000


def test_multiply_by_quantized_multiplier_equals_the_transcription():
    """Truth: TFLite's MultiplyByQuantizedMultiplier (both forms) transcribed above, and the exact
    rationals: ties of every right shift 0..31 with the largest multipliers (2**31 - 1, 2**30) and random
    ones, accumulators up to the int32 extremes; refquant's Numba kernel (the integer network) and its
    NumPy form from the definition (the simulation) agree with the transcription on every case."""
    rng = np.random.default_rng(17)
    multipliers = [INT32_MAX, 1 << 30, (1 << 30) + 1] + [int(m) for m in rng.integers(1 << 30, 1 << 31, 6)]
    for multiplier in multipliers:
        for shift in range(-31, 1):
            xs = np.array([v for v in _tie_cases()[::7]] + [INT32_MIN, INT32_MAX], np.int64)
            expected = [MultiplyByQuantizedMultiplier(int(x), multiplier, shift) for x in xs]
            expected_single = [MultiplyByQuantizedMultiplierSingleRounding(int(x), multiplier, shift) for x in xs]
            for x, want, want_single in zip(xs, expected, expected_single):
                assert gemmlowp.multiply_by_quantized_multiplier(int(x), multiplier, shift, False) == want
                assert gemmlowp.multiply_by_quantized_multiplier(int(x), multiplier, shift, True) == want_single
                # the single rounding is the exact rational rounded half up
                assert want_single == math.floor(Fraction(int(x) * multiplier, 2**(31 - shift)) + Fraction(1, 2))
            np.testing.assert_array_equal(gemmlowp.simulated_multiply(xs, multiplier, shift, False), expected)
            np.testing.assert_array_equal(gemmlowp.simulated_multiply(xs, multiplier, shift, True), expected_single)
    # left shifts (multipliers >= 1) on accumulators that stay in int32 after the shift
    for shift in range(1, 8):
        xs = np.arange(-(2**(31 - shift)) + 1, 2**(31 - shift), 2**(31 - shift) // 97, dtype=np.int64)
        want = [MultiplyByQuantizedMultiplier(int(x), INT32_MAX, shift) for x in xs]
        assert [gemmlowp.multiply_by_quantized_multiplier(int(x), INT32_MAX, shift, False) for x in xs] == want
        np.testing.assert_array_equal(gemmlowp.simulated_multiply(xs, INT32_MAX, shift, False), want)


def test_gemmlowp_double_rounding_differs_from_single_rounding_by_one():
    """Truth: the transcriptions. The known TFLite difference: double rounding (gemmlowp) and single
    rounding (TFLITE_SINGLE_ROUNDING) differ by exactly one code where the first rounding lands on a
    tie of the second, e.g. x = 3, m = 2**30 + 2**29 (M = 0.75 * 2**-1), right shift 1: x m / 2**31 =
    1.125 rounds to 1 then 1/2 to 1 (away), single rounding 0.5625 -> 1; and x = 5, m = 3 * 2**28, shift -2:
    double round(0.9375) = 1 then 1/4 -> 0, single round(0.234375) = 0; a real difference:
    x = 1, m = 3 * 2**29, shift -1: double round(0.75)=1, 1/2 -> 1; single 0.375 -> 0."""
    assert MultiplyByQuantizedMultiplier(1, 3 << 29, -1) == 1
    assert MultiplyByQuantizedMultiplierSingleRounding(1, 3 << 29, -1) == 0
    assert gemmlowp.multiply_by_quantized_multiplier(1, 3 << 29, -1, False) == 1
    assert gemmlowp.multiply_by_quantized_multiplier(1, 3 << 29, -1, True) == 0


def test_quantize_multiplier_equals_tflite():
    """Truth: TFLite's QuantizeMultiplier transcribed above: the renormalised carry (1 - 2**-40 rounds to
    2**31), the flush below 2**-32, the single-rounding saturation of shifts above 30, ties of the Q31
    rounding (half away from zero), and random multipliers over 2**-40..2**40."""
    rng = np.random.default_rng(3)
    reals = [1 - 2**-40, 0.5, 0.75, 2**-31, 2**-32, 2**-33, 2**-40, 2.0**30, 2.0**31, 2.0**35,
             (2**31 - 0.5) / 2**31, (2**30 + 0.5) / 2**31] + list(2.0 ** rng.uniform(-40, 40, 200))
    for real in reals:
        for single in (False, True):
            assert gemmlowp.quantize_multiplier(real, single) == QuantizeMultiplier(real, single), (real, single)
    assert gemmlowp.quantize_multiplier(1 - 2**-40) == (1 << 30, 1)
    assert gemmlowp.quantize_multiplier((2**30 + 0.5) / 2**31) == (2**30 + 1, 0)  # the tie away from zero


# ------------------------------------------------------------------------------------------------
# float-scale against torch's fbgemm quantized convolution
# ------------------------------------------------------------------------------------------------

def _layer(weights, biases, activation="linear", stride=1, padding=1):
    """A float convolution as the lowering reads it (params, activation, size, stride, padding)."""
    return types.SimpleNamespace(params={"weights": weights, "biases": biases}, activation=activation,
                                 size=weights.shape[2], stride=stride, padding=padding)


def _fbgemm_convolution(codes, input_grid, weight_codes, weight_steps, bias, output_grid, per_channel, stride, padding):
    """torch.ao.nn.quantized.Conv2d on the fbgemm engine: quint8 input codes, qint8 weights (per tensor or
    torch.quantize_per_channel's layout), float bias; returns the quint8 output codes."""
    torch.backends.quantized.engine = "fbgemm"
    out_channels, in_channels, kernel = weight_codes.shape[0], weight_codes.shape[1], weight_codes.shape[2]
    conv = torch.ao.nn.quantized.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    w = torch.from_numpy(weight_codes.astype(np.int8))
    if per_channel:
        weight = torch._make_per_channel_quantized_tensor(w, torch.tensor(weight_steps, dtype=torch.float64),
                                                          torch.zeros(out_channels, dtype=torch.int64), 0)
    else:
        weight = torch._make_per_tensor_quantized_tensor(w, float(weight_steps[0]), 0)
    conv.set_weight_bias(weight, torch.from_numpy(bias).float())
    conv.scale, conv.zero_point = float(output_grid.step), int(output_grid.zero_point)
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes.astype(np.uint8)), float(input_grid.step),
                                                int(input_grid.zero_point))
    return conv(x).int_repr().numpy()


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("power_of_two_product", [True, False])
def test_float_scale_equals_fbgemm(per_channel, power_of_two_product):
    """Truth: torch's fbgemm quantized convolution (``torch.ao.nn.quantized.Conv2d``), which requantizes
    by ``lrintf(float(acc) * float(s_x s_w[o]) / s_y) + z_y`` in float32. Activations of 7 bits (codes
    0..127, so fbgemm's vpmaddubsw pairs cannot saturate int16), random int8 weights, per tensor and
    per channel (torch's per-channel qint8). fbgemm adds a float bias as ``bias / (s_x s_w[o])`` in
    float32: with ``s_x s_w[o]`` a power of two and the bias an integer multiple of it that is exact and
    equals refquant's int32 bias; otherwise the bias is 0. refquant's float-scale profile (integer
    network and simulation) gives fbgemm's codes, every one, over several scales."""
    rng = np.random.default_rng(11 + per_channel + 2 * power_of_two_product)
    mismatches = 0
    for trial in range(6):
        out_channels, in_channels = 8, 5
        input_grid = UniformQuantizer(2.0**-7 if power_of_two_product else float(rng.uniform(0.002, 0.05)),
                                      int(rng.integers(0, 40)), 0, 127)
        if power_of_two_product:
            weight_steps = 2.0 ** rng.integers(-9, -4, out_channels if per_channel else 1).astype(np.float64)
        else:
            weight_steps = rng.uniform(0.001, 0.02, out_channels if per_channel else 1)
        weight_steps = np.broadcast_to(weight_steps, (out_channels,)).copy()
        weight_grid = UniformQuantizer(float(weight_steps[0]), 0, -128, 127)
        weight_codes = rng.integers(-128, 128, (out_channels, in_channels, 3, 3))
        weights = weight_codes * weight_steps[:, None, None, None]
        bias_codes = rng.integers(-3000, 3000, out_channels) if power_of_two_product else np.zeros(out_channels, int)
        biases = bias_codes * input_grid.step * weight_steps
        output_grid = UniformQuantizer(float(rng.uniform(0.01, 0.2)), int(rng.integers(0, 256)), 0, 255)
        layer = _layer(weights, biases)
        conv = float_scale.lower_convolution(0, layer, input_grid, weight_grid,
                                             weight_steps if per_channel else None, output_grid, "test layer")
        np.testing.assert_array_equal(conv.weight_codes, weight_codes)
        np.testing.assert_array_equal(conv.bias, bias_codes)
        codes = rng.integers(0, 128, (2, in_channels, 9, 11)).astype(np.uint8)
        expected = _fbgemm_convolution(codes, input_grid, weight_codes, weight_steps, biases, output_grid,
                                       per_channel, 1, 1)
        got = float_scale.integer_convolution(conv, codes, pack_weights(conv.weight_codes))
        simulated = float_scale.simulated_convolution(conv, codes.astype(np.float64), gemm_weight_codes(conv))
        np.testing.assert_array_equal(got, simulated)
        mismatches += int(np.count_nonzero(got != expected))
        assert len(np.unique(expected)) > 20  # not a saturated, trivially equal output
    assert mismatches == 0


def test_requantization_scale_is_float32_product_then_quotient():
    """Truth: the order onnxruntime writes (``X_scale_value * W_scale_data[i] / Y_scale_value`` on floats)
    evaluated with torch's float32 tensors, one operation at a time."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        sx, sy = rng.uniform(1e-4, 1, 2)
        sw = rng.uniform(1e-4, 1, 7)
        expected = (torch.tensor(sx, dtype=torch.float32) * torch.tensor(sw, dtype=torch.float32)) \
            / torch.tensor(sy, dtype=torch.float32)
        np.testing.assert_array_equal(float_scale.requantization_scale(sx, sw, sy), expected.numpy())


def test_preactivation_grid_covers_the_leaky_preimage():
    """Truth: arithmetic on the definition. The pre-activation grid has the output grid's codes; its range
    covers [lo / 0.1, hi] to within half a step at each end; 0 is a code; with no negative values it is the
    output grid itself."""
    for step, zero_point, qmin, qmax in [(0.05, 12, 0, 255), (0.3, 3, 0, 15), (0.01, 200, 0, 255), (0.2, 0, 0, 15)]:
        grid = UniformQuantizer(step, zero_point, qmin, qmax)
        pre = float_scale.preactivation_grid(grid, 0.1)
        assert (pre.qmin, pre.qmax) == (qmin, qmax) and qmin <= pre.zero_point <= qmax
        assert abs(pre.lo - grid.lo / 0.1) <= pre.step / 2 + 1e-12
        assert abs(pre.hi - grid.hi) <= pre.step / 2 + 1e-12
        if zero_point == qmin:
            assert pre == grid
    with pytest.raises(ValueError, match="slope"):
        float_scale.preactivation_grid(UniformQuantizer(0.1, 3, 0, 15), 0.0)


def test_leaky_table_equals_onnxruntime_rule_in_torch_float32():
    """Truth: QLinearLeakyRelu's table rule (QlinearBuildLookupTable then MlasQuantizeLinear) evaluated with
    torch float32 tensors: ``clamp(round(leaky(s_x * (c - z_x)) / s_y) + z_y)``, torch.round being half
    to even like nearbyintf."""
    pre, out = UniformQuantizer(0.0713, 84, 0, 255), UniformQuantizer(0.0477, 12, 0, 255)
    table = float_scale.lookup_table(pre, out, float_scale.leaky)
    x = torch.tensor(np.float32(pre.step)) * (torch.arange(256) - 84).float()
    y = torch.where(x >= 0, x, torch.tensor(np.float32(0.1)) * x)
    expected = torch.clamp(torch.round(y / torch.tensor(np.float32(out.step))) + 12, 0, 255)
    np.testing.assert_array_equal(table, expected.numpy().astype(np.int64))


# ------------------------------------------------------------------------------------------------
# Integer network = simulation under every profile
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("activation", ["linear", "leaky", "relu"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_random_layer_integer_equals_simulation(profile, activation, per_channel):
    """Truth: the profile's simulation (NumPy from the definitions) against its integer kernel (Numba
    transcriptions, tables) on random layers: 4-bit and 8-bit input and output grids, odd zero points,
    strides 1 and 2, per-tensor and per-channel weights."""
    rng = np.random.default_rng([list(PROFILES).index(profile), ["linear", "leaky", "relu"].index(activation),
                                 int(per_channel)])  # a fixed seed per case (str hashes vary per process)
    lower = {"exact": exact.lower_convolution,
             "gemmlowp": gemmlowp.lower_convolution,
             "gemmlowp-single": lambda *a: gemmlowp.lower_convolution(*a, single_rounding=True),
             "float-scale": float_scale.lower_convolution}[profile]
    chosen = get_profile(profile)
    for bits, stride in ((8, 1), (4, 2), (8, 2)):
        qmax = 2**bits - 1
        input_grid = UniformQuantizer(float(rng.uniform(0.01, 0.1)), int(rng.integers(0, qmax // 2)), 0, qmax)
        output_grid = UniformQuantizer(float(rng.uniform(0.02, 0.2)), int(rng.integers(1, qmax // 3)), 0, qmax)
        weights = rng.normal(0, 0.1, (6, 4, 3, 3)) * rng.uniform(0.2, 2, (6, 1, 1, 1))
        weight_grid = UniformQuantizer(float(np.abs(weights).max() / 127), 0, -127, 127)
        steps = np.abs(weights).reshape(6, -1).max(1) / 127 if per_channel else None
        conv = lower(0, _layer(weights, rng.normal(0, 0.3, 6), activation, stride), input_grid, weight_grid, steps,
                     output_grid, "test layer")
        codes = rng.integers(0, qmax + 1, (2, 4, 10, 9)).astype(np.uint8)
        integer = chosen.integer_convolution(conv, codes, pack_weights(conv.weight_codes, (-127, 127)))
        simulated = chosen.simulated_convolution(conv, codes.astype(np.float64), gemm_weight_codes(conv))
        assert integer.dtype.kind in "iu" and simulated.dtype == np.float64
        np.testing.assert_array_equal(integer, simulated)
        assert len(np.unique(integer)) > 1  # not one saturated code


@pytest.mark.parametrize("profile", list(PROFILES))
def test_route_integer_equals_simulation(profile):
    """Truth: the profile's simulated route against its integer route: two inputs on other grids (one
    with a coarser step, one finer), one on the route's grid, every code of each."""
    grid = UniformQuantizer(0.05, 20, 0, 255)
    sources = [UniformQuantizer(0.11, 7, 0, 255), UniformQuantizer(0.02, 100, 0, 255), grid]
    route = {"exact": lowering.fixed_point_route, "gemmlowp": gemmlowp.lower_route,
             "gemmlowp-single": gemmlowp.lower_route, "float-scale": float_scale.lower_route}[profile](5, sources, grid)
    assert route.rescalings[2] is None and route.rescalings[0] is not None
    inputs = [np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)] * 3
    chosen = get_profile(profile)
    integer = chosen.integer_route(route, inputs)
    simulated = chosen.simulated_route(route, [codes.astype(np.float64) for codes in inputs])
    np.testing.assert_array_equal(integer, simulated)
    real = sources[0].dequantize(np.arange(256))
    # every rule lands within one code of the nearest code of the route's grid
    assert np.abs(integer[0, 0].reshape(-1).astype(np.int64) - grid.quantize(real)).max() <= 1


def test_get_profile_names_the_known_profiles():
    """Truth: the registry. An unknown name is refused with the list of known ones."""
    assert get_profile("exact") is PROFILES["exact"] and get_profile(PROFILES["gemmlowp"]) is PROFILES["gemmlowp"]
    with pytest.raises(ValueError, match="exact, gemmlowp, gemmlowp-single, float-scale"):
        get_profile("tflite")


@pytest.fixture(scope="module")
def shipped(shipped_calibration):
    """The shipped detector, calibrated on 8 training images of the shapes data set (conftest's
    ``shipped_calibration``); its 8-bit and 4-bit PGM plans (as ``refquant.ptq`` makes them for the
    demo) and 4 validation images."""
    statistics, tree, names = shipped_calibration
    records = load_voc(tree, "val", names)[:4]
    images = letterboxed_inputs(records, 128, 128, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plans = {bits: ptq.quantization_plan(statistics, bits, bits, "pgm") for bits in (8, 4)}
    return statistics, plans, images, records, names


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_shipped_model_integer_equals_simulation_under_every_profile(shipped, bits, per_channel):
    """Truth: the float64 simulation of each profile (SimulatedNetwork) against the integer network, every
    layer's codes and the head's output, on the shipped model's 8-bit and 4-bit PGM plans, per tensor and
    per channel (``per_channel_plan``). The exact profile of a per-tensor plan is today's network, bit for bit."""
    statistics, plans, images, _, _ = shipped
    plan = per_channel_plan(statistics.net, plans[bits]) if per_channel else plans[bits]
    outputs = {}
    for name in PROFILES:
        integer = IntegerNetwork(statistics.net, plan, name)
        got, simulated = integer.run(images), integer.simulation().run(images)
        for index, (a, b) in enumerate(zip(got, simulated)):
            assert np.count_nonzero(a != b) == 0, f"{name}: layer {index} differs"
        outputs[name] = got
    if not per_channel:
        today = IntegerNetwork(statistics.net, plan).run(images)
        for a, b in zip(today, outputs["exact"]):
            np.testing.assert_array_equal(a, b)
    # the profiles are different arithmetics: some codes differ from exact's at the first leaky layer
    assert np.count_nonzero(outputs["gemmlowp"][0] != outputs["exact"][0]) > 0


def test_per_channel_plan_round_trips_and_old_plans_load(tmp_path):
    """Truth: the JSON schema of section 11.2. A per-channel plan saved and loaded keeps its steps; the
    JSON of a per-tensor plan has no ``weight_channel_steps`` key (today's files are unchanged), and a
    wrong number of steps is refused naming the layer."""
    net = darknet.load("refquant/cfg/yolov2-tiny-voc.cfg", seed=1)
    weights = {i: UniformQuantizer(0.01, 0, -127, 127) for i, layer in enumerate(net.layers)
               if layer.type == "convolutional"}
    activations = {i: UniformQuantizer(0.1, 3, 0, 255) for i in weights}
    plan = QuantizationPlan.for_network(net, weights, activations)
    assert "weight_channel_steps" not in str(plan.to_dict())
    channel = per_channel_plan(net, plan)
    channel.save(tmp_path / "plan.json")
    loaded = QuantizationPlan.load(tmp_path / "plan.json", net=net)
    assert loaded.channel_steps == channel.channel_steps and loaded.to_dict() == channel.to_dict()
    first = min(weights)
    np.testing.assert_allclose(loaded.weight_steps(first),
                               np.abs(net.layers[first].params["weights"].astype(np.float64)).reshape(
                                   net.layers[first].params["weights"].shape[0], -1).max(1) / 127)
    data = channel.to_dict()
    data["layers"][first]["weight_channel_steps"] = data["layers"][first]["weight_channel_steps"][:-1]
    with pytest.raises(ValueError, match=r"layers\[0\]\.weight_channel_steps"):
        QuantizationPlan.from_dict(data)


def test_profile_convolution_fields():
    """Truth: the dataclass itself: a lowered convolution of every non-exact profile is a ProfileConvolution
    whose linear grid is the output grid, or for a leaky layer its pre-activation grid."""
    grid = UniformQuantizer(0.05, 12, 0, 255)
    layer = _layer(np.full((2, 1, 1, 1), 0.1), np.zeros(2), "leaky", padding=0)
    for lower in (gemmlowp.lower_convolution, float_scale.lower_convolution):
        conv = lower(0, layer, UniformQuantizer(1 / 255, 0, 0, 255), UniformQuantizer(0.001, 0, -127, 127), None,
                     grid, "layer 0")
        assert isinstance(conv, ProfileConvolution) and conv.linear_grid == float_scale.preactivation_grid(grid)


@pytest.mark.slow
def test_demo_profile_rows(shipped):
    """Truth: the exact profile's row is today's integer network's mAP (IntegerNetwork without a profile,
    scored by the demo's own mean_average_precision), its head differs from itself nowhere; every profile
    has a row at 8 and 4 bits; the report's section lists them."""
    statistics, plans, images, records, names = shipped
    rows = profile_rows(statistics.net, plans, images, records, names, 2, progress=False)
    assert [(r["bits"], r["profile"]) for r in rows] == [(b, p) for b in (8, 4) for p in PROFILES]
    for bits in (8, 4):
        today = IntegerNetwork(statistics.net, plans[bits]).forward(images)
        exact = next(r for r in rows if r["bits"] == bits and r["profile"] == "exact")
        assert exact["mAP"] == mean_average_precision(today, records, statistics.net, names)[0]
        assert exact["head_outputs_differing_from_exact"] == 0.0
    assert any(r["head_outputs_differing_from_exact"] > 0 for r in rows)
    lines = profile_lines(rows)
    assert len(lines) == 1 + len(PROFILES) and lines[1].startswith("exact")


@pytest.mark.slow
def test_golden_export_under_a_profile_checks(tmp_path, golden_export):
    """Truth: ``refquant golden check`` recomputing the vectors. An export under the float-scale profile
    names the profile and its rules in the manifest and checks without a mismatch; the same files read
    as the gemmlowp profile's (the manifest's profile changed) mismatch in the integer_network vector;
    the default export (exact) names no profile, as before profiles existed."""
    import json

    from refquant.golden.check import check
    from refquant.golden.export import export
    manifest = export(tmp_path, progress=False, profile="float-scale")
    assert manifest["profile"]["name"] == "float-scale" and "nearbyintf" in manifest["profile"]["rules"]
    assert manifest["vectors"]["integer_network"]["parameters"]["profile"] == "float-scale"
    assert check(tmp_path, vectors=["integer_network"], progress=False) == []
    manifest["profile"]["name"] = "gemmlowp"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert any(m.vector == "integer_network" for m in check(tmp_path, vectors=["integer_network"], progress=False))
    assert "profile" not in json.loads((golden_export / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_with_equal_steps_is_per_tensor(shipped, bits):
    """Truth: the per-tensor arithmetic (for exact, today's kernels). A plan whose per-channel steps all
    equal the layer's step goes through every profile's per-channel path (one multiplier or scale per
    channel, the exact profile's per-channel Numba kernel) and must give the per-tensor plan's codes at
    every layer."""
    import dataclasses
    statistics, plans, images, _, _ = shipped
    plan = plans[bits]
    equal = dataclasses.replace(plan, channel_steps={index: tuple(plan.weight_steps(index)) for index in plan.weights})
    for name in PROFILES:
        per_channel = IntegerNetwork(statistics.net, equal, name)
        assert any(isinstance(fixed, ProfileConvolution) for fixed in per_channel.fixed)
        for index, (a, b) in enumerate(zip(per_channel.run(images), IntegerNetwork(statistics.net, plan, name).run(images))):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: layer {index}")


def test_qat_refuses_a_per_channel_plan():
    """Truth: the QAT network's contract (one fake-quantized weight step per layer). A per-channel plan
    is refused by name rather than trained with its per-tensor steps silently."""
    from refquant.folding import fold_batchnorm
    from refquant.qat import FakeQuantNetwork
    net = fold_batchnorm(darknet.load("refquant/cfg/yolov2-tiny-voc.cfg", seed=1))
    weights = {i: UniformQuantizer(0.01, 0, -127, 127) for i, layer in enumerate(net.layers)
               if layer.type == "convolutional"}
    plan = QuantizationPlan.for_network(net, weights, {i: UniformQuantizer(0.1, 3, 0, 255) for i in weights})
    FakeQuantNetwork(net, plan)  # per tensor: accepted
    with pytest.raises(ValueError, match="per channel"):
        FakeQuantNetwork(net, per_channel_plan(net, plan))


@pytest.mark.slow
def test_demo_profiles_option_end_to_end(tmp_path):
    """Truth: the demo's own PTQ rows. ``refquant demo --quick --profiles`` on a tiny configuration (random
    weights, a few generated shapes images): results.json has a row per profile and width, the exact
    profile's mAP equals the PGM PTQ row's of the same width (computed by the demo's main path), and
    report.md has the section."""
    import contextlib
    import io
    import json

    from refquant import cli
    from refquant.testing import randomize_batchnorm, tiny_yolo_cfg, write_cfg
    root = shapes_dataset(tmp_path / "shapes", size=64, train=8, val=0, test=6, progress=False)
    cfg = write_cfg(tmp_path, tiny_yolo_cfg(anchors="2,2,3.5,3.5"))
    weights = tmp_path / "tiny.weights"
    darknet.save_weights(randomize_batchnorm(darknet.load(cfg, seed=4), 4), weights)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["demo", "--cfg", str(cfg), "--weights", str(weights), "--data", str(root), "--quick",
                         "--bits", "8,4", "--methods", "pgm", "--qat-bits", "none", "--profiles",
                         "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["bits"], r["profile"]) for r in results["profiles"]] == [(b, p) for b in (8, 4) for p in PROFILES]
    for bits in (8, 4):
        ptq_row = next(r for r in results["rows"] if r["method"] == "pgm" and r["weight_bits"] == bits)
        exact = next(r for r in results["profiles"] if r["bits"] == bits and r["profile"] == "exact")
        assert exact["mAP"] == ptq_row["mAP"]
    assert "## Arithmetic profiles" in (tmp_path / "out" / "report.md").read_text()


def test_sensitivity_refuses_a_per_channel_plan():
    """Truth: the diagnosis' contract (one step per weight tensor): a per-channel plan is refused by name,
    before any pass runs."""
    from refquant.diagnosis.sensitivity import sensitivity
    net = darknet.load("refquant/cfg/yolov2-tiny-voc.cfg", seed=1)
    weights = {i: UniformQuantizer(0.01, 0, -127, 127) for i, layer in enumerate(net.layers)
               if layer.type == "convolutional"}
    plan = per_channel_plan(net, QuantizationPlan.for_network(net, weights,
                                                              {i: UniformQuantizer(0.1, 3, 0, 255) for i in weights}))
    with pytest.raises(ValueError, match="per channel"):
        sensitivity(types.SimpleNamespace(net=net), plan, np.zeros((1, 3, 64, 64), np.float32), lambda heads: 0.0)
