"""The ``gemmlowp`` and ``gemmlowp-single`` arithmetic profiles: TFLite's integer requantization
(docs/SPECIFICATION.md, section 11.8).

Sources followed (read at google/gemmlowp 16e8662c34917be0065110bfcd9cc27d30f52fdf and
tensorflow/tensorflow 02145c25ee765c25924a75251cb2d564e2752002):

- gemmlowp fixedpoint/fixedpoint.h, ``SaturatingRoundingDoublingHighMul`` (the high 32 bits of
  ``2 a b``: ``(a b + nudge) / 2**31`` with C's truncating division and ``nudge = 2**30`` or
  ``1 - 2**30`` by the product's sign, which is ``floor((a b + 2**30) / 2**31)``, i.e. rounded half
  *up*, toward +infinity, for either sign; INT32_MIN * INT32_MIN saturated) and
  ``RoundingDivideByPOT`` (a right shift rounded half away from zero);
- TFLite tensorflow/lite/kernels/internal/common.h / common.cc, ``MultiplyByQuantizedMultiplier``:
  ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**left, m), right)`` (two roundings),
  and under ``TFLITE_SINGLE_ROUNDING`` ``(x * m + 2**(30 - shift)) >> (31 - shift)`` (one rounding,
  half up); quantization_util.cc ``QuantizeMultiplier``: ``q, shift = frexp(M)``,
  ``m = round(q * 2**31)`` half away from zero (``TfLiteRound``), ``m == 2**31`` renormalised,
  ``shift < -31`` flushed to ``(0, 0)``, under single rounding ``shift > 30`` saturated to
  ``(2**31 - 1, 30)``; kernel_util.cc ``PopulateConvolutionQuantizationParams``: per output channel
  ``M = double(s_in) * double(s_w[o]) / double(s_out)`` from the float32 scales;
- TFLite ``LEAKY_RELU`` (kernels/activations.cc ``LeakyReluPrepare``,
  reference_ops ``QuantizeLeakyRelu``): two multipliers computed from float32 scales,
  ``identity = s_in / s_out`` and ``alpha = s_in * alpha / s_out`` (float32 arithmetic), then
  ``z_out + MultiplyByQuantizedMultiplier(c - z_in, identity or alpha)`` by the sign of ``c - z_in``;
- TFLite ``CONCATENATION`` of uint8 inputs on other grids (reference_ops ``ConcatenationWithScaling``):
  in float32, ``scale = s_in * (1.f / s_out)``, ``bias = -z_in * scale``,
  ``round(c * scale + bias) + z_out`` (``TfLiteRound``, half away from zero), clamped.

The decomposition of a Darknet layer: a convolution with a linear or relu activation is one TFLite
``CONV_2D`` (relu as its fused activation range, a clamp at the zero point's code); a leaky
convolution is ``CONV_2D`` without activation onto the pre-activation grid
(``refquant.integer.profiles.float_scale.preactivation_grid``), then ``LEAKY_RELU`` to the output
grid. Every grid's step enters as the float32 TFLite stores (``engine_step``). Where TFLite clamps to
the type's range (0..255 for uint8) refquant clamps to the grid's ``[qmin, qmax]``, which is the same
for 8-bit grids and what a narrower grid needs.

The float64 simulation cannot hold ``acc * m`` (up to 62 bits) exactly, so the simulation computes
this profile's requantization in int64 NumPy arithmetic, written from the rounding's definition
(sign and magnitude) rather than transcribed; the integer network runs the transcription in Numba.
"""
import math

import numba
import numpy as np

from refquant.integer import lowering
from refquant.integer.conv import INT32_MAX, INT32_MIN
from refquant.integer.profiles.float_scale import engine_step, same_engine_grid, separate_activation_layout
from refquant.integer.profiles.lowered import (
    ProfileConvolution,
    accumulator_bound,
    requantized_accumulators,
    simulated_accumulators,
)
from refquant.integer.requantize import LEAKY_SLOPE, code_dtype

RULES = {
    "gemmlowp": "gemmlowp: acc in int32; M = double(f32(s_in)) * double(f32(s_w[o])) / double(f32(s_out)); "
                "(m, shift) = TFLite QuantizeMultiplier(M), Q31, half away from zero; code = clip(z_out + "
                "RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2**max(shift, 0), m), max(-shift, 0)), "
                "qmin, qmax) (two roundings: half up, then half away from zero); relu: clamp at z_out; leaky: CONV_2D onto the "
                "pre-activation grid, then LEAKY_RELU (identity and alpha multipliers from float32 scales); routes: "
                "ConcatenationWithScaling in float32, round half away from zero.",
    "gemmlowp-single": "gemmlowp-single: as gemmlowp with TFLITE_SINGLE_ROUNDING: code = clip(z_out + ((acc * m + "
                       "2**(30 - shift)) >> (31 - shift)), qmin, qmax) (one rounding, half up); QuantizeMultiplier "
                       "saturates shift > 30 to (2**31 - 1, 30).",
}

SOURCES = ("gemmlowp fixedpoint/fixedpoint.h: SaturatingRoundingDoublingHighMul, RoundingDivideByPOT",
           "TFLite kernels/internal/common.h: MultiplyByQuantizedMultiplier (and TFLITE_SINGLE_ROUNDING)",
           "TFLite kernels/internal/quantization_util.cc: QuantizeMultiplier",
           "TFLite reference_ops: QuantizeLeakyRelu, ConcatenationWithScaling")

Q31_BITS = 31
"""TFLite's multiplier: a Q0.31 fixed-point number in [2**30, 2**31)."""


@numba.extending.register_jitable
def round_half_away(value):
    """C's ``round`` (TFLite's ``TfLiteRound``) on a float scalar: the nearest integer, ties away from
    zero, as a float. Exact: ``|v| - floor(|v|)`` is a float's fraction, held exactly (no ``+ 0.5``
    that would round 0.49999997 up). A plain function in Python, and callable from Numba kernels."""
    magnitude = np.abs(value)
    whole = np.floor(magnitude)
    rounded = whole + (1.0 if magnitude - whole >= 0.5 else 0.0)
    return -rounded if value < 0 else rounded


def quantize_multiplier(real_multiplier, single_rounding=False):
    """TFLite's ``QuantizeMultiplier``: ``(m, shift)`` with ``m * 2**(shift - 31)`` nearest to
    ``real_multiplier``, ``2**30 <= m < 2**31``, ``shift > 0`` a left shift.

    ``q, shift = frexp(M)``; ``m = round(q * 2**31)`` half away from zero (exact scaling);
    ``m == 2**31``: ``m /= 2, shift += 1``; ``shift < -31``: ``(0, 0)`` (every code the zero point's);
    with ``single_rounding``, ``shift > 30``: ``(2**31 - 1, 30)``. ``real_multiplier`` > 0, finite.
    """
    real = float(real_multiplier)
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"real_multiplier must be finite and > 0, got {real_multiplier!r}")
    fraction, shift = math.frexp(real)
    fixed = int(round_half_away(fraction * 2.0**Q31_BITS))  # exact scaling by a power of two
    if fixed == 2**Q31_BITS:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        fixed, shift = 0, 0
    if single_rounding and shift > 30:
        fixed, shift = 2**Q31_BITS - 1, 30
    return fixed, shift


def convolution_multiplier(input_step, weight_step, output_step):
    """``M = double(s_in) * double(s_w) / double(s_out)`` from the float32 steps (TFLite's
    ``PopulateConvolutionQuantizationParams``): a Python float."""
    return float(engine_step(input_step)) * float(engine_step(weight_step)) / float(engine_step(output_step))


def leaky_multipliers(input_grid, output_grid, slope=LEAKY_SLOPE):
    """``(identity, alpha)`` real multipliers of TFLite's LEAKY_RELU, as its Prepare computes them in
    float32 (``input->params.scale / output->params.scale`` and ``input->params.scale *
    params->alpha / output->params.scale``), widened to float64."""
    s_in, s_out, alpha = engine_step(input_grid.step), engine_step(output_grid.step), engine_step(slope)
    return float(s_in / s_out), float((s_in * alpha) / s_out)


# -- the integer side: gemmlowp's and TFLite's functions, transcribed (Numba, int64 holding int32 values) --

@numba.njit(cache=True, inline="always")
def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's ``SaturatingRoundingDoublingHighMul(int32 a, int32 b)``: ``(a*b + nudge) / 2**31``
    truncated toward zero (C's ``/``), nudge ``2**30`` or ``1 - 2**30`` by the product's sign;
    ``a == b == INT32_MIN`` saturates to INT32_MAX."""
    overflow = a == b and a == INT32_MIN
    product = np.int64(a) * np.int64(b)
    nudged = product + (np.int64(1 << 30) if product >= 0 else np.int64(1 - (1 << 30)))
    high = nudged // np.int64(1 << 31) if nudged >= 0 else -((-nudged) // np.int64(1 << 31))
    return np.int64(INT32_MAX) if overflow else high


@numba.njit(cache=True, inline="always")
def rounding_divide_by_pot(x, exponent):
    """gemmlowp's ``RoundingDivideByPOT(int32 x, exponent)``, 0 <= exponent <= 31:
    ``(x >> exponent) + (remainder > threshold)``, ``remainder = x & mask``,
    ``threshold = (mask >> 1) + (x < 0)``, ``mask = 2**exponent - 1``."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@numba.njit(cache=True, inline="always")
def multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding):
    """TFLite's ``MultiplyByQuantizedMultiplier(int32 x, m, shift)``: two roundings (gemmlowp), or with
    ``single_rounding`` TFLite's ``TFLITE_SINGLE_ROUNDING`` form. ``x * 2**left`` must lie in int32
    (the lowering checks it: :func:`lower`)."""
    if single_rounding:
        total_shift = 31 - shift
        return (np.int64(x) * np.int64(multiplier) + (np.int64(1) << (total_shift - 1))) >> total_shift
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(np.int64(x) << left, multiplier), right)


@numba.njit(cache=True, parallel=True)
def _requantize_channels(acc, multiplier, shift, single_rounding, zero_point, qmin, qmax, out):
    """out[i, o] = clip(z + MultiplyByQuantizedMultiplier(acc[o, i], m[o], shift[o]), qmin, qmax):
    acc (O, n, H, W) int32, out (n, O, H, W)."""
    n_outputs, n_images, height, width = acc.shape
    for o in numba.prange(n_outputs):
        for i in range(n_images):
            for y in range(height):
                for x in range(width):
                    value = multiply_by_quantized_multiplier(np.int64(acc[o, i, y, x]), multiplier[o], shift[o],
                                                             single_rounding) + zero_point
                    out[i, o, y, x] = min(max(value, qmin), qmax)


@numba.njit(cache=True, parallel=True)
def _leaky_relu(codes, input_zero_point, identity, identity_shift, alpha, alpha_shift, single_rounding,
                zero_point, qmin, qmax, out):
    """TFLite's ``QuantizeLeakyRelu`` on flat codes: ``v = c - z_in``; ``z_out + MBQM(v, identity)`` for
    ``v >= 0``, else with alpha; clamped."""
    for index in numba.prange(codes.size):
        value = np.int64(codes[index]) - input_zero_point
        if value >= 0:
            result = multiply_by_quantized_multiplier(value, identity, identity_shift, single_rounding)
        else:
            result = multiply_by_quantized_multiplier(value, alpha, alpha_shift, single_rounding)
        out[index] = min(max(result + zero_point, qmin), qmax)


@numba.njit(cache=True, parallel=True)
def _concatenation_rescale(codes, scale, bias, zero_point, qmin, qmax, out):
    """ConcatenationWithScaling on flat codes: ``round(float32(c) * scale + bias) + z_out``, float32,
    ``round`` half away from zero (C's ``round``), clamped."""
    for index in numba.prange(codes.size):
        value = np.float32(codes[index]) * scale + bias  # float32 product, then float32 sum
        out[index] = min(max(np.int64(round_half_away(value)) + zero_point, qmin), qmax)


# -- the simulation: the same rules from their definitions, vectorised (int64 and float32 NumPy) --

def _half_up_divide(value, exponent):
    """Exact ``value / 2**exponent`` rounded half up: ``floor((value + 2**(e-1)) / 2**e)`` (int64 arrays).
    ``SaturatingRoundingDoublingHighMul`` is this with e = 31: for ``a b >= 0`` it adds ``2**30`` and
    truncates (= floors); for ``a b < 0`` it adds ``1 - 2**30`` and truncates toward zero, i.e. takes
    ``ceil((a b + 1 - 2**30) / 2**31) = floor((a b + 2**30) / 2**31)``."""
    return (value + (np.int64(1) << (exponent - 1))) >> exponent


def _half_away_divide(value, exponent):
    """Exact ``value / 2**exponent`` rounded half away from zero: sign times ``(|value| + 2**(e-1)) >> e``
    (int64 arrays; exponent >= 1 scalar or array). ``RoundingDivideByPOT`` is this (for ``x >= 0`` it adds
    1 when the remainder is at least half; for ``x < 0`` only above half, so a tie goes down, away from 0)."""
    magnitude = (np.abs(value) + (np.int64(1) << (exponent - 1))) >> exponent
    return np.where(value < 0, -magnitude, magnitude)


def simulated_multiply(x, multiplier, shift, single_rounding):
    """``MultiplyByQuantizedMultiplier`` on int64 arrays by its definition: double rounding is
    ``round_away(round_up(x 2**left m / 2**31) / 2**right)`` (:func:`_half_up_divide`,
    :func:`_half_away_divide`; the saturating case of ``SaturatingRoundingDoublingHighMul`` needs
    ``m = INT32_MIN``, never a multiplier); single rounding is ``floor((x m + 2**(30 - shift)) /
    2**(31 - shift))``, half up. Exact in int64: ``|x m| < 2**62``."""
    x, multiplier, shift = (np.asarray(v, np.int64) for v in (x, multiplier, shift))
    if single_rounding:
        total = 31 - shift
        return np.floor_divide(x * multiplier + (np.int64(1) << (total - 1)), np.int64(1) << total)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    high = _half_up_divide((x << left) * multiplier, np.int64(31))
    return np.where(right > 0, _half_away_divide(high, np.maximum(right, 1)), high)


def _simulated_leaky(codes, stage, single_rounding):
    input_zero_point, identity, identity_shift, alpha, alpha_shift, zero_point, qmin, qmax = stage
    value = codes.astype(np.int64) - input_zero_point
    result = np.where(value >= 0, simulated_multiply(value, identity, identity_shift, single_rounding),
                      simulated_multiply(value, alpha, alpha_shift, single_rounding))
    return np.clip(result + zero_point, qmin, qmax)


def _simulated_rescale(codes, scale, bias):
    """ConcatenationWithScaling's value before the zero point, in float32 NumPy: ``round_away(c * scale + bias)``."""
    value = codes.astype(np.float32) * scale + bias
    magnitude = np.abs(value)
    whole = np.floor(magnitude)
    rounded = whole + (magnitude - whole >= np.float32(0.5))
    return np.where(value < 0, -rounded, rounded).astype(np.int64)


# -- lowering and the profile's five functions --

def lower(folded, plan, single_rounding=False):
    """Per layer: ``ProfileConvolution`` (requantization ``(m, shift, single_rounding, lo, hi)``, (M,)
    arrays m and shift, ``lo, hi`` the clamp; a leaky layer's ``activation_stage`` is LEAKY_RELU's
    ``(z_pre, identity, identity_shift, alpha, alpha_shift, z_out, qmin, qmax)``), a route's
    rescalings (per input None or ``(scale, bias)`` float32) or None."""
    def convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where):
        return lower_convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where,
                                 single_rounding)
    return lowering.lower_layers(folded, plan, convolution, lower_route)


def lower_convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where,
                      single_rounding=False):
    """TFLite's CONV_2D parameters (and LEAKY_RELU's for a leaky layer); see the module docstring."""
    steps, weight_codes, bias, linear_grid, lo = separate_activation_layout(layer, input_grid, weight_grid,
                                                                            channel_steps, output_grid, where)
    pairs = [quantize_multiplier(convolution_multiplier(input_grid.step, step, linear_grid.step), single_rounding)
             for step in steps]
    multiplier, shift = (np.array(column, np.int64) for column in zip(*pairs))
    stage = None
    if layer.activation == "leaky":
        identity, alpha = leaky_multipliers(linear_grid, output_grid)
        stage = ((linear_grid.zero_point,) + quantize_multiplier(identity, single_rounding)
                 + quantize_multiplier(alpha, single_rounding)
                 + (output_grid.zero_point, output_grid.qmin, output_grid.qmax))
    conv = ProfileConvolution(index, weight_codes, bias, input_grid, weight_grid, steps, output_grid, linear_grid,
                              (multiplier, shift, single_rounding, lo, linear_grid.qmax), stage, layer.activation,
                              layer.size, layer.stride, layer.padding)
    largest_left = int(shift.max())
    if not single_rounding and largest_left > 0 and accumulator_bound(conv) << largest_left > INT32_MAX:
        raise ValueError(f"{where}: a multiplier >= 1 (left shift {largest_left}) could move an accumulator out "
                         f"of int32 before SaturatingRoundingDoublingHighMul (undefined in TFLite)")
    return conv


def lower_route(index, sources, grid):
    """Per input: None when its float32 step and zero point are the route's (TFLite copies it), else
    ``(scale, bias)`` float32: ``scale = s_in * (1.f / s_out)``, ``bias = -z_in * scale``."""
    inverse = np.float32(1.0) / engine_step(grid.step)
    rescalings = []
    for source in sources:
        if same_engine_grid(source, grid):
            rescalings.append(None)
            continue
        scale = engine_step(source.step) * inverse
        rescalings.append((scale, np.float32(-source.zero_point) * scale))
    return lowering.FixedPointRoute(index, tuple(rescalings), grid)


def integer_convolution(conv, codes, packed_weights):
    """CONV_2D (int32 accumulators of the fast kernel, then MultiplyByQuantizedMultiplier per channel),
    then LEAKY_RELU for a leaky layer."""
    multiplier, shift, single_rounding, lo, hi = conv.requantization
    zero_point = conv.linear_grid.zero_point

    def requantize_block(acc, out):
        _requantize_channels(acc, multiplier, shift, single_rounding, zero_point, lo, hi, out)
    codes = requantized_accumulators(conv, codes, packed_weights, requantize_block)
    if conv.activation_stage is None:
        return codes
    grid = conv.output_grid
    out = np.empty(codes.shape, code_dtype(grid.qmin, grid.qmax))
    _leaky_relu(codes.reshape(-1), *conv.activation_stage[:5], single_rounding, *conv.activation_stage[5:],
                out.reshape(-1))
    return out


def simulated_convolution(conv, codes, weight_codes):
    """The same codes from the simulation's exact float64 accumulators, requantized in int64 NumPy
    (:func:`simulated_multiply`; float64 cannot hold ``acc * m``)."""
    acc = simulated_accumulators(conv, codes, weight_codes).astype(np.int64)
    multiplier, shift, single_rounding, lo, hi = conv.requantization
    scaled = simulated_multiply(acc, multiplier[:, None, None], shift[:, None, None], single_rounding)
    out = np.clip(scaled + conv.linear_grid.zero_point, lo, hi)
    if conv.activation_stage is not None:
        out = _simulated_leaky(out, conv.activation_stage, single_rounding)
    return out.astype(np.float64)


def integer_route(route, inputs):
    """TFLite's CONCATENATION: inputs on the route's grid copied, others by ConcatenationWithScaling."""
    grid = route.output_grid
    dtype = code_dtype(grid.qmin, grid.qmax)
    parts = []
    for codes, rescaling in zip(inputs, route.rescalings):
        codes = np.ascontiguousarray(codes)
        if rescaling is None:
            parts.append(codes.astype(dtype))
            continue
        out = np.empty(codes.shape, dtype)
        _concatenation_rescale(codes.reshape(-1), rescaling[0], rescaling[1], grid.zero_point, grid.qmin, grid.qmax,
                               out.reshape(-1))
        parts.append(out)
    return np.concatenate(parts, axis=1)


def simulated_route(route, inputs):
    """The same route on float64 codes (float32 NumPy arithmetic, :func:`_simulated_rescale`)."""
    grid = route.output_grid
    parts = [codes if rescaling is None else
             np.clip(_simulated_rescale(codes, *rescaling) + grid.zero_point, grid.qmin, grid.qmax).astype(np.float64)
             for codes, rescaling in zip(inputs, route.rescalings)]
    return np.concatenate(parts, axis=1)
