"""Requantization: an int32 accumulator to the next layer's codes by an integer multiplier and a
rounding right shift (docs/SPECIFICATION.md, section 11.4), as in gemmlowp and TFLite but rounding half to even
with a 22-bit multiplier, so that a float64 simulation computes exactly the same codes.
Also the int32 bias, the leaky ReLU's second multiplier and a route's rescaling.
"""
import math

import numba
import numpy as np

from refquant.integer.conv import INT32_MAX, INT32_MIN, _check_integer, accumulator_chunks, parallel_worth, value_range
from refquant.rounding import round_half_even, rounding_right_shift

MULTIPLIER_BITS = 22
"""Largest multiplier width keeping ``|acc * multiplier| < 2**53`` for every int32 ``acc``
(2**31 * (2**22 - 1) < 2**53), so float64 simulates the requantization exactly."""


MAX_SHIFT = 62
"""``rounding_right_shift`` is exact for shifts 0..62 (int64 arithmetic)."""


LEAKY_SLOPE = 0.1
"""Darknet's leaky ReLU: ``(x > 0) ? x : .1*x`` (pjreddie/darknet, src/activations.h, leaky_activate)."""


def quantize_multiplier(real_multiplier, bits=MULTIPLIER_BITS):
    """``(multiplier, shift)`` integers with ``multiplier * 2**-shift`` nearest to ``real_multiplier``.

    ``real_multiplier`` > 0 is typically ``step_x * step_w / step_y``. The
    multiplier is normalised to ``bits`` bits, ``2**(bits-1) <= multiplier < 2**bits``
    (gemmlowp's QuantizeMultiplier with 22 instead of 31 bits), rounded half to
    even, so the relative error is at most ``2**-bits``. ``bits <= 22`` keeps
    ``|acc * multiplier| < 2**31 * 2**22 <= 2**53`` for any int32 ``acc``: the float64
    product is then exact and a float simulation ``round_half_even(acc * multiplier * 2.0**-shift)``
    equals the integer ``rounding_right_shift(acc * multiplier, shift)`` bit for bit.
    ``shift`` lies in [0, 62]; multipliers below ``2**(bits-63)`` use fewer bits (shift capped at 62).
    """
    bits = _check_integer("bits", bits)
    if not 1 <= bits <= MULTIPLIER_BITS:
        raise ValueError(f"bits must be in [1, {MULTIPLIER_BITS}] so that |acc*multiplier| < 2**53 "
                         f"for int32 acc, got {bits}")
    real = float(real_multiplier)
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"real_multiplier must be finite and > 0, got {real_multiplier!r}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, 0.5 <= mantissa < 1
    shift = bits - exponent
    if shift < 0:
        raise ValueError(f"real_multiplier={real!r} is too large for a right shift: it must be "
                         f"below 2**{bits} (bits={bits})")
    shift = min(shift, MAX_SHIFT)
    multiplier = int(round_half_even(math.ldexp(real, shift)))  # exact scaling by a power of two
    if multiplier == 2**bits:  # rounding carried into a new bit: renormalise
        multiplier, shift = multiplier // 2, shift - 1
    if multiplier == 0:
        raise ValueError(f"real_multiplier={real!r} is below 2**-63, too small to represent")
    return multiplier, shift


def multiplier_value(multiplier, shift):
    """The real number ``multiplier * 2**-shift`` (exact in float64) that a float simulation multiplies by."""
    return math.ldexp(float(multiplier), -int(shift))


def quantize_shift(real_multiplier):
    """``shift`` with ``2**-shift == real_multiplier`` exactly: the pure fixed-point case of power-of-two steps.

    Requantize with ``multiplier=1`` (see :func:`requantize_shift`). Raises
    ValueError unless ``real_multiplier`` is ``2**-s`` for an integer s in [0, 62].
    """
    real = float(real_multiplier)
    mantissa, exponent = math.frexp(real) if math.isfinite(real) and real > 0 else (0.0, 0)
    if mantissa != 0.5 or not 0 <= 1 - exponent <= MAX_SHIFT:
        raise ValueError(f"real_multiplier={real_multiplier!r} is not 2**-s for an integer s in "
                         f"[0, {MAX_SHIFT}]; use quantize_multiplier for other steps")
    return 1 - exponent


@numba.njit(cache=True, inline="always")
def requantize_code(acc, multiplier, shift, zero_point, qmin, qmax):
    """The requantization rule, once: ``clip(rounding_right_shift(acc*multiplier, shift) + zero_point, qmin, qmax)``.

    Scalar integers in, the code out (int64); a Numba function, so integer
    kernels call it directly. No argument checks here (see :func:`requantize`):
    ``|acc| <= 2**31``, ``0 <= multiplier < 2**22``, ``0 <= shift <= 62``.
    """
    code = rounding_right_shift(np.int64(acc) * np.int64(multiplier), shift) + zero_point
    return min(max(code, qmin), qmax)


@numba.njit(cache=True, inline="always")
def requantize_leaky_code(acc, multiplier, shift, negative_multiplier, negative_shift,
                          zero_point, qmin, qmax):
    """Requantization with Darknet's leaky ReLU fused in, on integers (scalar, Numba).

    ``y = requantize_code(acc, multiplier, shift, ...)`` if ``acc >= 0``, else
    ``requantize_code(acc, negative_multiplier, negative_shift, ...)``, where the
    negative side's pair approximates ``LEAKY_SLOPE`` (0.1) times the positive
    side's real multiplier (:func:`leaky_multipliers`). The sign of the
    accumulator (bias included) is the sign of the real pre-activation, so this
    is ``round(leaky(acc * M)) + zero_point`` with each side's M quantized.
    """
    negative = acc < 0
    return requantize_code(acc, negative_multiplier if negative else multiplier,
                           negative_shift if negative else shift, zero_point, qmin, qmax)


def leaky_multipliers(real_multiplier, slope=LEAKY_SLOPE, bits=MULTIPLIER_BITS):
    """``(multiplier, shift, negative_multiplier, negative_shift)`` for :func:`requantize_leaky`.

    Each side quantized separately by :func:`quantize_multiplier`: the positive
    side from ``real_multiplier``, the negative from ``slope * real_multiplier``
    (computed in float64, as Darknet's ``.1*x`` is a double product).
    """
    multiplier, shift = quantize_multiplier(real_multiplier, bits)
    negative_multiplier, negative_shift = quantize_multiplier(slope * float(real_multiplier), bits)
    return multiplier, shift, negative_multiplier, negative_shift


def code_dtype(qmin, qmax):
    """Smallest of uint8, int8, uint16, int16, int32 holding every code in [qmin, qmax]."""
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        lo, hi = value_range(dtype)
        if lo <= qmin and qmax <= hi:
            return np.dtype(dtype)
    raise ValueError(f"codes [{qmin}, {qmax}] do not fit in int32")


def _check_requantize_arguments(acc, multipliers_and_shifts, zero_point, qmin, qmax):
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"acc must be an integer array (int32 accumulators), got dtype {acc.dtype}")
    # a dtype within int32 needs no look at the values (two passes saved per layer)
    if acc.size and not np.can_cast(acc.dtype, np.int32) and (int(acc.min()) < INT32_MIN
                                                               or int(acc.max()) > INT32_MAX):
        raise ValueError(f"acc has values in [{acc.min()}, {acc.max()}], outside int32: the float64 "
                         f"simulation would no longer be exact")
    for name, value, limit in multipliers_and_shifts:
        value = _check_integer(name, value, lo=0)
        if value > limit:
            raise ValueError(f"{name} must be in [0, {limit}], got {value}")
    zero_point = _check_integer("zero_point", zero_point)
    qmin, qmax = _check_integer("qmin", qmin), _check_integer("qmax", qmax)
    if qmin > qmax:
        raise ValueError(f"qmin={qmin} must be <= qmax={qmax}")
    return acc, code_dtype(qmin, qmax)


@numba.njit(cache=True, parallel=True)
def _requantize_flat_reference(acc, multiplier, shift, negative_multiplier, negative_shift,
                               zero_point, qmin, qmax, codes):
    """:func:`requantize_leaky_code` on every element of ``acc`` (1-D) into ``codes``: the definition."""
    for index in numba.prange(acc.size):
        codes[index] = requantize_leaky_code(np.int64(acc[index]), multiplier, shift, negative_multiplier,
                                             negative_shift, zero_point, qmin, qmax)


@numba.njit(cache=True, inline="always")
def _requantize_branch_free(value, multiplier, shift, negative_multiplier, negative_shift, zero_point, qmin, qmax):
    """:func:`requantize_leaky_code` of ``value`` (int64), equal bit for bit, without a branch: loops
    over it vectorise (the rule's branches keep a loop to one element at a time, about 5x slower).

    With ``v = value * multiplier`` and ``s = shift`` of the accumulator's side,
    ``rounding_right_shift(v, s) = (v + 2**(s-1) - 1 + ((v >> s) & 1)) >> s`` for s >= 1: writing
    ``v = q 2**s + r`` (0 <= r < 2**s, q = v >> s), the sum adds 1 to q exactly when
    ``r + 2**(s-1) - 1 + (q & 1) >= 2**s``, i.e. r above the half, or r at the half and q odd:
    round half to even. ``g = min(s, 1)`` folds s = 0 in: the sum is then v. No overflow:
    |v| < 2**31 * 2**22 and 2**(s-1) <= 2**61, so the sum stays below 2**63.
    """
    negative = value < 0
    product = value * (negative_multiplier if negative else multiplier)
    bits = negative_shift if negative else shift
    g = min(bits, 1)
    rounded = (product + ((np.int64(1) << bits) >> 1) - g + ((product >> bits) & g)) >> bits
    return min(max(rounded + zero_point, qmin), qmax)


@numba.njit(cache=True, parallel=True)
def _requantize_flat(acc, multiplier, shift, negative_multiplier, negative_shift,
                     zero_point, qmin, qmax, codes):
    """:func:`_requantize_flat_reference`, equal bit for bit, by :func:`_requantize_branch_free`."""
    for index in numba.prange(acc.size):
        codes[index] = _requantize_branch_free(np.int64(acc[index]), multiplier, shift, negative_multiplier,
                                               negative_shift, zero_point, qmin, qmax)


@numba.njit(cache=True, inline="always")
def _requantize_image_output(acc, image_size, row_size, multiplier, shift, negative_multiplier, negative_shift,
                             zero_point, qmin, qmax, codes, task):
    """codes (n, O, Ho, Wo)[i, o] from acc (O', P')[o, i*image_size + y*row_size + x], task = i*O + o,
    by :func:`_requantize_branch_free`."""
    n_outputs, out_height, out_width = codes.shape[1], codes.shape[2], codes.shape[3]
    image, output = task // n_outputs, task % n_outputs
    # rows one after another (im2col's layout): the image is one run, not Ho short ones
    runs, run_size, run_stride = (1, out_height * out_width, 0) if row_size == out_width else (out_height, out_width,
                                                                                                row_size)
    plane = codes[image, output].reshape(-1)
    for run in range(runs):
        start = image * image_size + run * run_stride
        source, destination = acc[output, start:start + run_size], plane[run * run_size:(run + 1) * run_size]
        for x in range(np.uint64(run_size)):  # unsigned: no wrap-around test, which blocks vectorising
            destination[x] = _requantize_branch_free(np.int64(source[x]), multiplier, shift, negative_multiplier,
                                                     negative_shift, zero_point, qmin, qmax)


@numba.njit(cache=True, parallel=True)
def _requantize_pixels_parallel(acc, image_size, row_size, multiplier, shift, negative_multiplier, negative_shift,
                                zero_point, qmin, qmax, codes):
    for task in numba.prange(codes.shape[0] * codes.shape[1]):
        _requantize_image_output(acc, image_size, row_size, multiplier, shift, negative_multiplier, negative_shift,
                                 zero_point, qmin, qmax, codes, task)


@numba.njit(cache=True)
def _requantize_pixels_serial(acc, image_size, row_size, multiplier, shift, negative_multiplier, negative_shift,
                              zero_point, qmin, qmax, codes):
    for task in range(codes.shape[0] * codes.shape[1]):
        _requantize_image_output(acc, image_size, row_size, multiplier, shift, negative_multiplier, negative_shift,
                                 zero_point, qmin, qmax, codes, task)


def _requantize_pixels(acc, layout, multiplier, shift, negative_multiplier, negative_shift, zero_point, qmin, qmax,
                       codes):
    """codes (n, O, Ho, Wo) = :func:`_requantize_branch_free` of the GEMM's (output, pixel)
    accumulators ``acc`` in their ``layout`` (``refquant.integer.conv.accumulator_chunks``), in one
    pass (on Numba's threads when the work is worth their wake-up, ``refquant.integer.conv.parallel_worth``)."""
    run = _requantize_pixels_parallel if parallel_worth(0.45 * codes.size) else _requantize_pixels_serial
    run(acc, int(layout[0]), int(layout[1]), int(multiplier), int(shift), int(negative_multiplier),
        int(negative_shift), int(zero_point), int(qmin), int(qmax), codes)


def _requantize_array(acc, multiplier, shift, negative_multiplier, negative_shift,
                      zero_point, qmin, qmax, dtype):
    """Apply :func:`requantize_leaky_code` to every element, in parallel; codes in ``dtype``."""
    acc = np.ascontiguousarray(acc)
    codes = np.empty(acc.shape, dtype)
    _requantize_flat(acc.reshape(-1), int(multiplier), int(shift), int(negative_multiplier),
                     int(negative_shift), int(zero_point), int(qmin), int(qmax), codes.reshape(-1))
    return codes


def requantize(acc, multiplier, shift, zero_point, qmin, qmax):
    """Codes ``clip(rounding_right_shift(acc * multiplier, shift) + zero_point, qmin, qmax)``.

    acc: integer array within int32 (accumulators with the int32 bias added);
    multiplier, shift from :func:`quantize_multiplier`. Returns the codes in
    :func:`code_dtype` ``(qmin, qmax)`` (uint8 for [0, 255]). Exactly
    ``clip(round_half_even(acc * multiplier_value(multiplier, shift)) + zero_point, qmin, qmax)``
    computed in float64.
    """
    acc, dtype = _check_requantize_arguments(
        acc, [("multiplier", multiplier, 2**MULTIPLIER_BITS - 1), ("shift", shift, MAX_SHIFT)],
        zero_point, qmin, qmax)
    # The leaky rule with the same pair on both sides is this rule (one parallel driver for both).
    return _requantize_array(acc, multiplier, shift, multiplier, shift, zero_point, qmin, qmax, dtype)


def requantize_shift(acc, shift, zero_point, qmin, qmax):
    """Requantization by a shift alone (power-of-two steps, :func:`quantize_shift`): multiplier 1."""
    return requantize(acc, 1, shift, zero_point, qmin, qmax)


def requantize_leaky(acc, multiplier, shift, negative_multiplier, negative_shift, zero_point, qmin, qmax):
    """Codes of leaky ReLU fused into requantization (:func:`requantize_leaky_code`, the definition).

    ``acc >= 0``: ``clip(rounding_right_shift(acc*multiplier, shift) + zero_point, qmin, qmax)``;
    ``acc < 0``: the same with ``negative_multiplier, negative_shift`` (:func:`leaky_multipliers`).
    """
    limit = 2**MULTIPLIER_BITS - 1
    acc, dtype = _check_requantize_arguments(
        acc, [("multiplier", multiplier, limit), ("shift", shift, MAX_SHIFT),
              ("negative_multiplier", negative_multiplier, limit),
              ("negative_shift", negative_shift, MAX_SHIFT)], zero_point, qmin, qmax)
    return _requantize_array(acc, multiplier, shift, negative_multiplier, negative_shift,
                             zero_point, qmin, qmax, dtype)


def conv2d_requantized(x, w, stride, pad, bias, multiplier, shift, negative_multiplier, negative_shift,
                       zero_point, qmin, qmax, x_range=None, x_zero_point=0):
    """``requantize_leaky(conv2d(x, w, stride, pad, bias, x_range), multiplier, ...)``, bit for bit, with
    the requantization reading the GEMM's accumulators in place: no int32 (N, O, Ho, Wo) array
    is written and read again. A convolution layer of the integer network in one call.

    ``w``: (O, C, kh, kw) int8 or its ``refquant.integer.conv.pack_weights``; ``x_zero_point``: as
    ``conv2d``'s (the input's codes as they are, their zero point removed inside). Returns codes
    (N, O, Ho, Wo) in :func:`code_dtype` ``(qmin, qmax)``.
    """
    limit = 2**MULTIPLIER_BITS - 1
    _, dtype = _check_requantize_arguments(
        np.zeros(0, np.int32), [("multiplier", multiplier, limit), ("shift", shift, MAX_SHIFT),
                                ("negative_multiplier", negative_multiplier, limit),
                                ("negative_shift", negative_shift, MAX_SHIFT)], zero_point, qmin, qmax)
    shape, chunks = accumulator_chunks(x, w, stride, pad, bias, x_range, x_zero_point=x_zero_point)
    codes = np.empty(shape, dtype)
    for images, acc, layout in chunks:
        _requantize_pixels(acc, layout, multiplier, shift, negative_multiplier, negative_shift, zero_point, qmin, qmax,
                           codes[images])
    return codes


def quantize_bias(bias, step_x, step_w):
    """int32 bias at the accumulator's scale: ``round_half_even(bias / (step_x * step_w))``.

    bias: (O,) float; step_w a scalar or (O,) per-channel steps. Raises
    ValueError if a quantized bias falls outside int32 (no silent clipping).
    """
    bias = np.asarray(bias, np.float64)
    scale = np.asarray(step_x, np.float64) * np.asarray(step_w, np.float64)
    if not np.all(np.isfinite(bias)):
        raise ValueError("bias must be finite")
    if not np.all(scale > 0):
        raise ValueError(f"step_x and step_w must be > 0, got step_x={step_x}, step_w={step_w}")
    quantized = round_half_even(bias / scale)
    outside = (quantized < INT32_MIN) | (quantized > INT32_MAX)
    if np.any(outside):
        raise ValueError(f"{int(outside.sum())} biases exceed int32 at scale step_x*step_w "
                         f"(largest |bias/scale| = {np.abs(quantized).max():.4g})")
    return quantized.astype(np.int32)


def rescale_codes(codes, zero_point, multiplier, shift, out_zero_point, qmin, qmax):
    """Codes on grid (step_in, zero_point) -> codes on grid (step_out, out_zero_point).

    ``(codes - zero_point)`` is an exact integer accumulator at scale step_in,
    requantized with ``quantize_multiplier(step_in / step_out)``: the same rule
    as after a convolution. With equal grids (multiplier * 2**-shift == 1 and
    equal zero points) the codes come back unchanged.
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    return requantize(codes.astype(np.int64) - _check_integer("zero_point", zero_point),
                      multiplier, shift, out_zero_point, qmin, qmax)


def route_codes(inputs, rescalings, out_zero_point, qmin, qmax):
    """Darknet's route on codes: concatenate (N, C_i, H, W) inputs along channels on one grid.

    ``rescalings[i]`` is ``(zero_point_i, multiplier_i, shift_i)`` moving input i
    to the output grid (:func:`rescale_codes`), or None if input i is already
    on it. Returns (N, sum C_i, H, W) codes in ``code_dtype(qmin, qmax)``.
    """
    if len(inputs) != len(rescalings) or not inputs:
        raise ValueError(f"need one rescaling per input: got {len(inputs)} inputs, "
                         f"{len(rescalings)} rescalings")
    dtype = code_dtype(qmin, qmax)
    parts = []
    for index, (codes, rescaling) in enumerate(zip(inputs, rescalings)):
        codes = np.asarray(codes)
        if codes.ndim != 4 or codes.shape[:1] + codes.shape[2:] != np.shape(inputs[0])[:1] + np.shape(inputs[0])[2:]:
            raise ValueError(f"route input {index} has shape {codes.shape}; every input must be "
                             f"(N, C_i, H, W) with the N, H, W of input 0 {np.shape(inputs[0])}")
        if rescaling is None:
            if codes.size and (int(codes.min()) < qmin or int(codes.max()) > qmax):
                raise ValueError(f"route input {index} has codes outside [{qmin}, {qmax}] but no rescaling")
            parts.append(codes.astype(dtype))
        else:
            parts.append(rescale_codes(codes, *rescaling, out_zero_point, qmin, qmax))
    return np.concatenate(parts, axis=1)
