"""Integer convolution and requantization (refquant.intconv) against independent truths.

Truths used (each test names its own):
* NumPy int64 arithmetic on a zero-padded array (sliding_window_view + einsum:
  refquant.testing.numpy_correlation), and
  scipy.signal.correlate, for the convolution's definition;
* Python's unbounded integers and the int32 limits, for the overflow check;
* Python's exact rationals (fractions.Fraction) with the built-in round, which rounds
  half to even, for requantization;
* PyTorch's quantized convolution on the fbgemm engine, for the whole quantized layer.
"""
import warnings
from fractions import Fraction

import numba
import numpy as np
import pytest
import scipy.signal
import torch

from refquant.integer import conv as integer_conv
from refquant.integer.conv import check_accumulator_range, conv2d, conv2d_reference, value_range
from refquant.integer.requantize import (
    MULTIPLIER_BITS,
    code_dtype,
    leaky_multipliers,
    multiplier_value,
    quantize_bias,
    quantize_multiplier,
    quantize_shift,
    requantize,
    requantize_code,
    requantize_leaky,
    requantize_leaky_code,
    requantize_shift,
    rescale_codes,
    route_codes,
)
from refquant.testing import numpy_correlation

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def random_codes(rng, shape, dtype, bits=None, signed=None):
    """Integer codes of ``bits`` bits (signed or not) stored in ``dtype``; all of dtype's range by default."""
    if bits is None:
        lo, hi = value_range(dtype)
    elif signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    return rng.integers(lo, hi + 1, shape, dtype=np.int64).astype(dtype)


# (N, C, H, W, O, k, stride, pad): odd shapes, O and K not multiples of 4, strides 1-2, pads 0-2
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 7, 5, 5, 3, 1, 1),
    (1, 5, 9, 11, 7, 3, 2, 1),
    (2, 4, 8, 6, 4, 1, 2, 0),
    (1, 6, 5, 5, 3, 3, 1, 2),
    (1, 2, 10, 7, 9, 3, 2, 2),
    (1, 3, 3, 3, 2, 3, 1, 0),
    (1, 7, 6, 9, 6, 1, 1, 2),
    (3, 1, 13, 4, 1, 3, 2, 0),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16])
def test_reference_is_the_correlation_numpy_computes(dtype):
    """Truth: NumPy int64 correlation on an explicitly zero-padded array (sliding windows + einsum)."""
    rng = np.random.default_rng(1)
    for n, c, h, w_, o, k, stride, pad in CONV_CASES:
        x = random_codes(rng, (n, c, h, w_), dtype)
        if dtype is np.int16:  # keep K * |x| * |w| within int32 at full int16 range
            x = (x // 64).astype(np.int16)
        w = random_codes(rng, (o, c, k, k), np.int8)
        got = conv2d_reference(x, w, stride, pad, x_range=(int(x.min()), int(x.max())))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, numpy_correlation(x, w, stride, pad))


def test_reference_agrees_with_scipy_correlate():
    """Truth: scipy.signal.correlate (mode 'valid', int64) on the zero-padded image, summed over channels."""
    rng = np.random.default_rng(2)
    x = random_codes(rng, (1, 3, 9, 8), np.int8)
    w = random_codes(rng, (2, 3, 3, 3), np.int8)
    padded = np.pad(x[0].astype(np.int64), ((0, 0), (1, 1), (1, 1)))
    expected = np.stack([scipy.signal.correlate(padded, w[o].astype(np.int64), mode="valid")[0]
                         for o in range(2)])
    np.testing.assert_array_equal(conv2d_reference(x, w, 1, 1)[0], expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_fast_kernel_equals_reference_bit_for_bit(bits):
    """Truth: the reference loops (themselves checked against NumPy above), over sizes, strides 1-2,
    pads 0-2, kernels 1 and 3, unsigned and signed codes of ``bits`` bits."""
    rng = np.random.default_rng(bits)
    for index, (n, c, h, w_, o, k, stride, pad) in enumerate(CONV_CASES):
        signed = index % 2 == 1
        x = random_codes(rng, (n, c, h, w_), np.int8 if signed else np.uint8, bits, signed)
        w = random_codes(rng, (o, c, k, k), np.int8, bits, signed=True)
        np.testing.assert_array_equal(conv2d(x, w, stride, pad), conv2d_reference(x, w, stride, pad))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16])
def test_fast_kernel_equals_reference_on_full_dtype_ranges(dtype):
    """Truth: the reference loops, with codes over the whole dtype (int16 uses the two-byte path)
    and with uint8 codes minus a zero point stored as int16 (the network's case)."""
    rng = np.random.default_rng(3)
    for n, c, h, w_, o, k, stride, pad in CONV_CASES:
        x = random_codes(rng, (n, c, h, w_), dtype)
        w = random_codes(rng, (o, c, k, k), np.int8)
        np.testing.assert_array_equal(conv2d(x, w, stride, pad), conv2d_reference(x, w, stride, pad))
    x = (random_codes(rng, (2, 5, 7, 6), np.uint8).astype(np.int16) - 37).astype(np.int16)
    w = random_codes(rng, (6, 5, 3, 3), np.int8)
    x_range = (-37, 255 - 37)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1, x_range=x_range),
                                  conv2d_reference(x, w, 1, 1, x_range=x_range))


def test_fast_kernel_across_its_blocks():
    """Truth: NumPy int64 correlation, on shapes larger than one K block (K = 1800 > 1536)
    and one pixel block, so that the blocked loops and their edges all run."""
    rng = np.random.default_rng(4)
    x = random_codes(rng, (1, 200, 9, 8), np.int8)
    w = random_codes(rng, (6, 200, 3, 3), np.int8)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1), numpy_correlation(x, w, 1, 1))
    x = random_codes(rng, (1, 3, 61, 47), np.uint8)
    w = random_codes(rng, (5, 3, 3, 3), np.int8)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1), numpy_correlation(x, w, 1, 1))


def test_fast_kernel_batches_images_into_panels_and_chunks(monkeypatch):
    """Truth: NumPy int64 correlation. Small maps put several images in one panel (a panel then
    holds the end of one image and the start of the next: 5x5 outputs, 25 pixels, against panels
    of 8-pixel multiples) and ``_CHUNK_PIXELS`` cuts the batch into GEMMs of several images, the
    last one short; the images have different ranges (one needs the two-byte path, one is all
    negative), so each chunk's offset and byte count differ from its neighbours'."""
    monkeypatch.setattr(integer_conv, "_CHUNK_PIXELS", 60)  # 2 images of 25 pixels per GEMM
    rng = np.random.default_rng(6)
    x = random_codes(rng, (7, 4, 5, 5), np.int16) // 300
    x[2] = random_codes(rng, (4, 5, 5), np.int16)      # the two-byte path in the second chunk
    x[5] = -np.abs(x[5]) - 1                             # all negative
    w = random_codes(rng, (9, 4, 3, 3), np.int8)
    bias = rng.integers(-1000, 1000, 9).astype(np.int32)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1, bias=bias), numpy_correlation(x, w, 1, 1) + bias[:, None, None])
    monkeypatch.setattr(integer_conv, "_CHUNK_PIXELS", 10 ** 6)  # the whole batch in one GEMM
    np.testing.assert_array_equal(conv2d(x, w, 2, 0), numpy_correlation(x, w, 2, 0))


def test_bias_starts_the_accumulators():
    """Truth: NumPy int64 correlation plus the int32 bias broadcast over pixels, for both kernels,
    on non-contiguous input too (a strided view of a larger array)."""
    rng = np.random.default_rng(11)
    x = random_codes(rng, (2, 4, 9, 14), np.int8)[:, :, :, ::2]
    w = random_codes(rng, (5, 4, 3, 3), np.int8)
    bias = rng.integers(-10**6, 10**6, 5).astype(np.int32)
    expected = numpy_correlation(x, w, 2, 1) + bias[None, :, None, None]
    np.testing.assert_array_equal(conv2d_reference(x, w, 2, 1, bias=bias), expected)
    np.testing.assert_array_equal(conv2d(x, w, 2, 1, bias=bias), expected)
    with pytest.raises(TypeError, match="bias must be an int32"):
        conv2d(x, w, 2, 1, bias=bias.astype(np.int64))
    with pytest.raises(ValueError, match=r"bias must have shape \(O,\)"):
        conv2d(x, w, 2, 1, bias=bias[:3])


def test_accumulator_check_counts_the_bias():
    """Truth: Python integers: 131071 * 16384 = 2147467264 leaves room for a bias of at most 16383
    below 2**31 - 1; one more overflows."""
    room = INT32_MAX - 131071 * 16384
    assert room == 16383
    check_accumulator_range(value_range(np.int8), value_range(np.int8), 131071, bias_range=(0, room))
    with pytest.raises(ValueError, match="bias"):
        check_accumulator_range(value_range(np.int8), value_range(np.int8), 131071, bias_range=(0, room + 1))


def test_both_kernels_exact_at_the_int32_extreme():
    """Truth: Python integers: 511 products (-32768) * (-128) sum to 511 * 2**22 = 2143289344,
    just below 2**31; intermediate sums of the fast kernel wrap around and must still end exact."""
    x = np.full((1, 511, 2, 3), -32768, np.int16)
    w = np.full((2, 511, 1, 1), -128, np.int8)
    expected = 511 * (-32768) * (-128)
    assert expected <= INT32_MAX
    assert np.all(conv2d_reference(x, w) == expected)
    assert np.all(conv2d(x, w) == expected)


@pytest.mark.parametrize("x_dtype, k_max", [(np.int8, 131071), (np.uint8, 65793), (np.int16, 511)])
def test_accumulator_check_triggers_exactly_at_the_boundary(x_dtype, k_max):
    """Truth: Python's unbounded integers: K extreme products summed exactly, against the int32 limits.
    (uint8 x int8 is bound by its negative side, 255 * -128; the others by their positive side.)"""
    x_range, w_range = value_range(x_dtype), value_range(np.int8)
    corners = [a * b for a in x_range for b in w_range]

    def fits(k):
        return INT32_MIN <= k * min(corners) and k * max(corners) <= INT32_MAX

    assert fits(k_max) and not fits(k_max + 1)
    check_accumulator_range(x_range, w_range, k_max)
    with pytest.raises(ValueError, match=f"K={k_max + 1}.*at most {k_max}"):
        check_accumulator_range(x_range, w_range, k_max + 1)


def test_conv2d_checks_the_accumulator_before_computing():
    """Truth: the int16 x int8 bound K <= 511 (Python integers above): K = 57*3*3 = 513 must be refused
    by both kernels, and accepted once the caller declares the real range of x (zero point removed)."""
    x = np.zeros((1, 57, 4, 4), np.int16)
    w = np.zeros((1, 57, 3, 3), np.int8)
    for kernel in (conv2d, conv2d_reference):
        with pytest.raises(ValueError, match="K=513"):
            kernel(x, w, 1, 1)
    rng = np.random.default_rng(5)
    x = (random_codes(rng, (1, 57, 4, 4), np.uint8).astype(np.int16) - 100).astype(np.int16)
    w = random_codes(rng, (3, 57, 3, 3), np.int8)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1, x_range=(-100, 155)), numpy_correlation(x, w, 1, 1))
    with pytest.raises(ValueError, match="x_range"):
        conv2d(x, w, 1, 1, x_range=(-10, 155))


def test_bad_arguments_name_the_argument():
    """Truth: the documented contract (dtypes, shapes, stride >= 1, pad >= 0)."""
    x = np.zeros((1, 2, 5, 5), np.uint8)
    w = np.zeros((3, 2, 3, 3), np.int8)
    with pytest.raises(TypeError, match="x must have dtype"):
        conv2d(x.astype(np.float32), w)
    with pytest.raises(TypeError, match="w must have dtype"):
        conv2d(x, w.astype(np.int16))
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\)"):
        conv2d(x[0], w)
    with pytest.raises(ValueError, match="input channels"):
        conv2d(x, np.zeros((3, 4, 3, 3), np.int8))
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="pad"):
        conv2d_reference(x, w, pad=-1)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d(x, np.zeros((1, 2, 7, 7), np.int8))


# ---------------------------------------------------------------------------
# Requantization
# ---------------------------------------------------------------------------

def exact_requantize(acc, multiplier, shift, zero_point, qmin, qmax):
    """Python's exact rationals: clip(round(acc * multiplier / 2**shift) + zero_point), round half to even."""
    return [min(max(round(Fraction(int(a) * multiplier, 2**shift)) + zero_point, qmin), qmax) for a in acc]


def accumulators(rng):
    """int32 accumulators: extremes, small values, random ones."""
    return np.concatenate([[INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX],
                           np.arange(-600, 600),
                           rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True)]).astype(np.int64)


def test_quantize_multiplier_is_the_nearest_22_bit_multiplier():
    """Truth: exact rationals: the multiplier is round(real * 2**shift) (half to even) and its
    relative error is at most 2**-22; |acc * multiplier| < 2**53 for every int32 acc."""
    rng = np.random.default_rng(6)
    reals = np.concatenate([10.0 ** rng.uniform(-9, 5, 300), [1.0, 0.5, 2.0**-20, 3.0, 0.1, 0.999999999]])
    for real in reals:
        multiplier, shift = quantize_multiplier(real)
        assert 2 ** (MULTIPLIER_BITS - 1) <= multiplier < 2**MULTIPLIER_BITS
        assert multiplier == round(Fraction(real) * 2**shift)
        assert abs(Fraction(multiplier, 2**shift) - Fraction(real)) <= Fraction(real) * Fraction(1, 2**22)
        assert 2**31 * multiplier < 2**53
        assert multiplier_value(multiplier, shift) == multiplier / 2.0**shift
    with pytest.raises(ValueError, match="real_multiplier"):
        quantize_multiplier(0.0)
    with pytest.raises(ValueError, match="bits"):
        quantize_multiplier(0.5, bits=23)


def test_requantize_matches_exact_rational_arithmetic():
    """Truth: Python's exact rationals with round (half to even), on int32 extremes and exact ties."""
    rng = np.random.default_rng(7)
    acc = accumulators(rng)
    for real in [0.00123, 0.5, 1.0, 0.0371, 7.5e-6, 1.7]:
        multiplier, shift = quantize_multiplier(real)
        for zero_point, qmin, qmax in [(0, 0, 255), (128, 0, 255), (0, -8, 7), (-3, -128, 127)]:
            got = requantize(acc, multiplier, shift, zero_point, qmin, qmax)
            assert got.dtype == code_dtype(qmin, qmax)
            assert got.tolist() == exact_requantize(acc, multiplier, shift, zero_point, qmin, qmax)
    ties = np.arange(-40, 41) * 2 + 1  # odd accumulators: acc / 2 is always a tie
    assert requantize(ties, 1, 1, 0, -100, 100).tolist() == [round(Fraction(int(a), 2)) for a in ties]


def test_float64_simulation_reproduces_requantize_exactly():
    """Truth: NumPy float64 arithmetic: round_half_even(acc * multiplier * 2**-shift) computed in
    float64 (np.rint) gives the same codes, since |acc * multiplier| < 2**53 keeps it exact."""
    rng = np.random.default_rng(8)
    acc = accumulators(rng)
    for real in 10.0 ** rng.uniform(-7, 0.5, 30):
        multiplier, shift = quantize_multiplier(real)
        simulated = np.clip(np.rint(acc.astype(np.float64) * multiplier_value(multiplier, shift)) + 5, -128, 127)
        np.testing.assert_array_equal(requantize(acc, multiplier, shift, 5, -128, 127), simulated)


def test_shift_only_requantization_for_power_of_two_steps():
    """Truth: exact rationals: codes round(acc / 2**shift) + zero_point, clipped."""
    rng = np.random.default_rng(9)
    acc = accumulators(rng)
    assert quantize_shift(2.0**-13) == 13 and quantize_shift(1.0) == 0
    for bad in (0.3, 2.0, 0.0):
        with pytest.raises(ValueError, match="not 2\\*\\*-s"):
            quantize_shift(bad)
    got = requantize_shift(acc, 13, 3, -128, 127)
    assert got.tolist() == exact_requantize(acc, 1, 13, 3, -128, 127)


def test_leaky_requantization_matches_its_exact_definition():
    """Truth: exact rationals applying Darknet's leaky ReLU (slope 0.1, src/activations.h) side by side:
    acc >= 0 uses (multiplier, shift), acc < 0 the pair quantized from 0.1 * real; each pair within
    2**-22 of its real value; and within one code of round(leaky(acc * real)) computed exactly."""
    rng = np.random.default_rng(10)
    acc = accumulators(rng)
    real = 0.000731
    multiplier, shift, negative_multiplier, negative_shift = leaky_multipliers(real)
    slope_real = Fraction(real) * Fraction(0.1)
    assert abs(Fraction(negative_multiplier, 2**negative_shift) - slope_real) <= slope_real / 2**22
    got = requantize_leaky(acc, multiplier, shift, negative_multiplier, negative_shift, 20, 0, 255)
    positive = exact_requantize(acc, multiplier, shift, 20, 0, 255)
    negative = exact_requantize(acc, negative_multiplier, negative_shift, 20, 0, 255)
    assert got.tolist() == [p if a >= 0 else q for a, p, q in zip(acc, positive, negative)]
    ideal = [min(max(round(int(a) * (Fraction(real) if a >= 0 else slope_real)) + 20, 0), 255) for a in acc]
    assert np.max(np.abs(got.astype(np.int64) - ideal)) <= 1


def test_requantization_rule_is_callable_inside_numba_kernels():
    """Truth: exact rationals, for the scalar rules an integer kernel calls (requantize_code,
    requantize_leaky_code) compiled inside a Numba function."""
    @numba.njit
    def kernel(acc, multiplier, shift, negative_multiplier, negative_shift):
        codes = np.empty((2, acc.size), np.int64)
        for index in range(acc.size):
            codes[0, index] = requantize_code(acc[index], multiplier, shift, 4, -128, 127)
            codes[1, index] = requantize_leaky_code(acc[index], multiplier, shift, negative_multiplier,
                                                    negative_shift, 4, -128, 127)
        return codes

    acc = accumulators(np.random.default_rng(12))
    pairs = leaky_multipliers(0.0042)
    codes = kernel(acc, *pairs)
    assert codes[0].tolist() == exact_requantize(acc, pairs[0], pairs[1], 4, -128, 127)
    negative = exact_requantize(acc, pairs[2], pairs[3], 4, -128, 127)
    assert codes[1].tolist() == [p if a >= 0 else q for a, p, q in zip(acc, codes[0].tolist(), negative)]


def test_requantize_refuses_bad_arguments():
    """Truth: the documented contract (int32 accumulators, 22-bit multipliers, shifts 0..62, qmin <= qmax)."""
    acc = np.array([1, 2, 3], np.int64)
    with pytest.raises(ValueError, match="outside int32"):
        requantize(np.array([2**31]), 1, 0, 0, 0, 255)
    with pytest.raises(TypeError, match="acc"):
        requantize(acc.astype(float), 1, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="multiplier"):
        requantize(acc, 2**22, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="shift"):
        requantize(acc, 1, 63, 0, 0, 255)
    with pytest.raises(ValueError, match="qmin"):
        requantize(acc, 1, 0, 0, 10, 5)


def test_quantize_bias_rounds_half_to_even_at_the_accumulator_scale():
    """Truth: exact rationals: bias / (step_x * step_w) rounded half to even (steps powers of two,
    so the ties are exact); an out-of-range bias is refused, not clipped."""
    step_x, step_w = 2.0**-4, 2.0**-6
    bias = np.array([2.5, 3.5, -2.5, 0.1, 100.0]) * step_x * step_w
    expected = [round(Fraction(b) / (Fraction(step_x) * Fraction(step_w))) for b in bias]
    got = quantize_bias(bias, step_x, step_w)
    assert got.dtype == np.int32 and got.tolist() == expected == [2, 4, -2, 0, 100]
    with pytest.raises(ValueError, match="exceed int32"):
        quantize_bias([1.0], 2.0**-16, 2.0**-16)


def test_route_rescales_codes_to_the_common_grid():
    """Truth: exact rationals: a code q on (step_in, zero_point) moves to
    round((q - zero_point) * multiplier / 2**shift) + out_zero_point, clipped; and within one code of
    round(step_in * (q - zero_point) / step_out), the real value re-quantized; same-grid inputs pass unchanged."""
    codes_a = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8)
    codes_b = np.arange(128, dtype=np.uint8).reshape(1, 2, 8, 8)
    step_in, zero_point, step_out, out_zero_point = 0.037, 11, 0.05, 3
    multiplier, shift = quantize_multiplier(step_in / step_out)
    routed = route_codes([codes_a, codes_b], [(zero_point, multiplier, shift), None], out_zero_point, 0, 255)
    assert routed.shape == (1, 6, 8, 8) and routed.dtype == np.uint8
    np.testing.assert_array_equal(routed[:, 4:], codes_b)
    flat = codes_a.ravel().astype(np.int64) - zero_point
    assert routed[:, :4].ravel().tolist() == exact_requantize(flat, multiplier, shift, out_zero_point, 0, 255)
    ideal = np.clip([round(Fraction(step_in) * int(q) / Fraction(step_out)) + out_zero_point for q in flat], 0, 255)
    assert np.max(np.abs(routed[:, :4].ravel().astype(np.int64) - ideal)) <= 1
    same = rescale_codes(codes_a, 7, *quantize_multiplier(1.0), 7, 0, 255)
    np.testing.assert_array_equal(same, codes_a)
    with pytest.raises(ValueError, match="route input 1"):
        route_codes([codes_a, codes_b[:, :, :4]], [None, None], 0, 0, 255)


# ---------------------------------------------------------------------------
# A whole quantized layer against PyTorch / fbgemm
# ---------------------------------------------------------------------------

def fbgemm_conv(x_codes, step_x, zero_point_x, w_codes, step_w, bias, stride, pad, step_y, zero_point_y):
    """torch.ao.nn.quantized.Conv2d on fbgemm: quint8 activations, qint8 weights (zero point 0)."""
    torch.backends.quantized.engine = "fbgemm"
    out_channels, in_channels, kernel = w_codes.shape[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the quantized dtypes, not the kernel
        conv = torch.ao.nn.quantized.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=pad)
        weight = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w_codes), step_w, 0)
        conv.set_weight_bias(weight, torch.from_numpy(bias).float())
        conv.scale, conv.zero_point = step_y, zero_point_y
        x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_codes), step_x, zero_point_x)
        return conv(x).int_repr().numpy()


@pytest.mark.parametrize("c, o, size, kernel, stride, pad", [
    (16, 8, 11, 3, 1, 1), (8, 6, 9, 3, 2, 0), (32, 16, 7, 1, 1, 0), (3, 16, 13, 3, 2, 2)])
def test_quantized_layer_matches_fbgemm_within_one_code(c, o, size, kernel, stride, pad):
    """Truth: PyTorch's fbgemm quantized Conv2d with the same codes, steps, zero points and bias.

    Expected differences: fbgemm adds the float bias and multiplies by a float32
    step_x*step_w/step_y, rounding with nearbyint; we add round(bias/(step_x*step_w)) and multiply
    by a 22-bit integer multiplier. The two agree except next to a rounding tie: at most one code.
    Activation codes are 7-bit (0..127), PyTorch's reduce_range default for fbgemm: with full
    8-bit codes fbgemm's AVX2 kernel (vpmaddubsw) saturates its 16-bit pair sums and can be off
    by tens of codes, while refquant stays exact.
    """
    rng = np.random.default_rng(c * size + o)
    x_codes = rng.integers(0, 128, (2, c, size, size), dtype=np.int64).astype(np.uint8)
    w_codes = rng.integers(-127, 128, (o, c, kernel, kernel), dtype=np.int64).astype(np.int8)
    step_x, zero_point_x, step_w, step_y, zero_point_y = 0.03, 9, 0.004, 0.05, 100
    bias = rng.normal(0, 0.3, o)
    expected = fbgemm_conv(x_codes, step_x, zero_point_x, w_codes, step_w, bias, stride, pad,
                           step_y, zero_point_y)
    x = x_codes.astype(np.int16) - np.int16(zero_point_x)
    acc = conv2d(x, w_codes, stride, pad, bias=quantize_bias(bias, step_x, step_w),
                 x_range=(-zero_point_x, 255 - zero_point_x))
    got = requantize(acc, *quantize_multiplier(step_x * step_w / step_y), zero_point_y, 0, 255)
    assert got.shape == expected.shape
    difference = np.abs(got.astype(np.int64) - expected)
    assert difference.max() <= 1
    assert np.mean(difference > 0) < 0.01
