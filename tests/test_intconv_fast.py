"""The integer convolution's fast paths against the definitions, bit for bit, at the bounds that make
them exact: the VNNI GEMM (``refquant.integer.vnni``, where the CPU has AVX-512 VNNI) and the
portable int32 GEMM of ``refquant.integer.conv.conv2d``, the branch-free requantization and the
fused ``conv2d_requantized``.

Truths: NumPy int64 correlation (``refquant.testing.numpy_correlation``) and Python's unbounded
integers for the convolution; the scalar requantization rule (``requantize_leaky_code``, itself
checked against exact rationals in test_intconv.py) for the requantization.

On a CPU without AVX-512 VNNI the "vnni" cases check that the portable GEMM is the one chosen and
run it instead (nothing is skipped).
"""
import numpy as np
import pytest

from refquant.integer import conv as integer_conv
from refquant.integer import requantize as integer_requantize
from refquant.integer import vnni
from refquant.integer.conv import check_accumulator_range, conv2d, conv2d_reference, pack_weights, value_range
from refquant.integer.requantize import conv2d_requantized, requantize_leaky
from refquant.testing import numpy_correlation

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
VNNI_HERE = vnni.vnni_available()


@pytest.fixture(params=["vnni", "portable"])
def gemm(request, monkeypatch):
    """Which GEMM conv2d packs for: "vnni" (where the CPU has it) or the portable int32 one."""
    if request.param == "portable":
        monkeypatch.setattr(vnni, "vnni_available", lambda: False)
    return request.param


def check_path(w, gemm):
    """The packed layout is the one the case asks for (the portable one where VNNI is absent)."""
    assert pack_weights(w).vnni == (gemm == "vnni" and VNNI_HERE)


def random_codes(rng, shape, lo, hi, dtype):
    return rng.integers(lo, hi + 1, shape, dtype=np.int64).astype(dtype)


# (N, C, H, W, O, k, stride, pad): the GEMMs' edges. O not a multiple of 8; K not a multiple of 4;
# 13x13 (169 pixels: the last 32-pixel tile used in its first half only); a long K (60*9 = 540);
# several images per tile, a tile straddling two images; stride 2; 1x1. Maps wide enough (14 for 3x3)
# and every 1x1, with stride 1, take the VNNI path without im2col (columns read from the padded input): batches
# of 2 and 3, channels not a multiple of 4, pads 0 to 2, a 1x1 kernel.
FAST_CASES = [
    (1, 3, 13, 13, 5, 3, 1, 1),
    (1, 60, 13, 13, 12, 3, 1, 1),
    (3, 7, 5, 6, 9, 3, 1, 1),
    (2, 5, 11, 9, 17, 3, 2, 1),
    (1, 130, 6, 7, 8, 1, 1, 0),
    (2, 4, 20, 19, 3, 3, 1, 0),
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 5, 17, 33, 9, 3, 1, 1),
    (3, 3, 18, 16, 7, 3, 1, 2),
    (1, 9, 16, 16, 10, 1, 1, 0),
]


@pytest.mark.parametrize("dtype, lo, hi", [(np.uint8, 0, 255), (np.int8, -128, 127), (np.int16, -700, 900)])
def test_fast_gemms_equal_the_correlation(gemm, dtype, lo, hi):
    """Truth: NumPy int64 correlation, with a bias, on the shapes that reach every edge of both GEMMs'
    blocking, for one-byte and two-byte inputs (int16 spans two byte planes)."""
    rng = np.random.default_rng(21)
    for n, c, h, w_, o, k, stride, pad in FAST_CASES:
        x = random_codes(rng, (n, c, h, w_), lo, hi, dtype)
        w = random_codes(rng, (o, c, k, k), -128, 127, np.int8)
        check_path(w, gemm)
        bias = rng.integers(-10**6, 10**6, o).astype(np.int32)
        expected = numpy_correlation(x, w, stride, pad) + bias[None, :, None, None]
        np.testing.assert_array_equal(conv2d(x, w, stride, pad, bias=bias, x_range=(lo, hi)), expected)
        np.testing.assert_array_equal(conv2d(x, pack_weights(w), stride, pad, bias=bias, x_range=(lo, hi)), expected)


@pytest.mark.parametrize("w_code, w_range, k, bias_value, expected", [
    # uint8 x int8: 255 * -128 = -32640 per product; K = 65793 is the longest reduction the range check
    # allows, and a bias of -128 brings the sum to exactly -2**31.
    (-128, (-128, 127), 65793, -128, INT32_MIN),
    # weights declared non-negative: 255 * 127 = 32385 per product, K = 66311 the longest, and a bias of
    # 1912 brings the sum to exactly 2**31 - 1.
    (127, (0, 127), 66311, 1912, INT32_MAX),
])
def test_fast_gemms_exact_at_the_longest_reduction_of_the_largest_codes(gemm, w_code, w_range, k, bias_value,
                                                                         expected):
    """Truth: Python integers. Every code at its largest (x = 255), K at the largest the int32 check
    admits, plus a bias reaching the int32 limit itself: VPDPBUSD's four-product sums and the
    accumulators' int32 additions must carry the exact value to the end (one more product would
    be refused)."""
    assert k * 255 * w_code + bias_value == expected
    check_accumulator_range((0, 255), w_range, k, (bias_value, bias_value))
    with pytest.raises(ValueError, match="could overflow"):
        check_accumulator_range((0, 255), w_range, k + 1, (bias_value, bias_value))
    w = np.full((9, k, 1, 1), w_code, np.int8)
    check_path(w, gemm)
    bias = np.full(9, bias_value, np.int32)
    for shape in ((1, k, 2, 3), (1, k, 1, 17)):  # im2col; and 17 wide: the columns read from the input
        x = np.full(shape, 255, np.uint8)
        got = conv2d(x, w, bias=bias, w_range=w_range)
        assert got.dtype == np.int32 and np.all(got == expected)
        np.testing.assert_array_equal(got, conv2d_reference(x, w, bias=bias, w_range=w_range))


def test_fast_gemms_exact_on_random_codes_at_the_longest_reduction(gemm):
    """Truth: NumPy int64 correlation. Random uint8 codes and int8 weights, K = 65793 (the longest
    reduction the check admits for uint8 x int8), and int16 codes at their K limit of 511 with
    values of both signs, whose byte planes' partial sums leave int32 and wrap back."""
    rng = np.random.default_rng(22)
    w = random_codes(rng, (10, 65793, 1, 1), -128, 127, np.int8)
    check_path(w, gemm)
    for shape in ((1, 65793, 1, 3), (1, 65793, 1, 18)):  # im2col; the columns read from the input
        x = random_codes(rng, shape, 0, 255, np.uint8)
        np.testing.assert_array_equal(conv2d(x, w), numpy_correlation(x, w, 1, 0))
    w = random_codes(rng, (9, 511, 1, 1), -128, 127, np.int8)
    w[0] = -128
    for shape in ((2, 511, 2, 2), (2, 511, 2, 16)):
        x = random_codes(rng, shape, -32768, 32767, np.int16)
        x[0] = -32768  # the most negative code everywhere in one image
        np.testing.assert_array_equal(conv2d(x, w), numpy_correlation(x, w, 1, 0))
        assert conv2d(x, w)[0, 0, 0, 0] == 511 * (-32768) * (-128)


def test_vnni_kernel_chosen_by_the_cpu_and_the_environment(monkeypatch):
    """Truth: the CPU features LLVM reports. VNNI is used exactly where the CPU has avx512f, avx512bw
    and avx512vnni; REFQUANT_VNNI=0 turns it off; a NUMBA_CPU_NAME other than the host counts only
    the features NUMBA_CPU_FEATURES lists (code compiled for another CPU must not use it otherwise)."""
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    assert VNNI_HERE == all(features.get(name, False) for name in ("avx512f", "avx512bw", "avx512vnni"))
    monkeypatch.setenv("REFQUANT_VNNI", "0")
    assert not vnni.vnni_available()
    monkeypatch.delenv("REFQUANT_VNNI")
    monkeypatch.setattr(vnni.numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(vnni.numba.config, "CPU_FEATURES", "")
    assert not vnni.vnni_available()
    monkeypatch.setattr(vnni.numba.config, "CPU_FEATURES", "+avx512f,+avx512bw,+avx512vnni")
    assert vnni.vnni_available()


def test_parallel_and_serial_runs_agree(gemm, monkeypatch):
    """Truth: NumPy int64 correlation, with every kernel forced onto Numba's threads and then forced
    into the calling thread (``parallel_worth``), so that both drivers of each kernel run."""
    rng = np.random.default_rng(23)
    x = random_codes(rng, (2, 9, 10, 11), 0, 255, np.uint8)
    w = random_codes(rng, (11, 9, 3, 3), -128, 127, np.int8)
    check_path(w, gemm)
    expected = numpy_correlation(x, w, 1, 1)
    for threshold in (0, 10**18):
        monkeypatch.setattr(integer_conv, "SERIAL_BELOW_NS", threshold)
        np.testing.assert_array_equal(conv2d(x, w, 1, 1), expected)
        codes = conv2d_requantized(x, w, 1, 1, None, 3_000_001, 28, 300_001, 28, 7, 0, 255)
        np.testing.assert_array_equal(codes, requantize_leaky(expected, 3_000_001, 28, 300_001, 28, 7, 0, 255))


def requantization_cases():
    """(multiplier, shift, negative_multiplier, negative_shift): the largest 22-bit multiplier, shifts 0,
    1 (every odd accumulator a tie), 31 and 62 (the largest), a pair differing by side."""
    largest = 2**22 - 1
    return [(largest, 0, largest, 0), (1, 1, 1, 1), (largest, 62, 1, 62), (3_000_001, 31, 300_001, 34),
            (largest, 40, 2**21, 1), (1, 0, largest, 31)]


def test_branch_free_requantization_is_the_rule_at_its_bounds():
    """Truth: the scalar rule (requantize_leaky_code, applied element by element). Accumulators at the
    int32 extremes, around 0, and at exact ties of every shift used; codes clipped to uint8 and
    kept wide (int32 codes: no clipping hides a wrong rounding)."""
    rng = np.random.default_rng(24)
    ties = np.array([(2 * k + 1) << (s - 1) for s in (1, 2, 31) for k in range(-3, 3)], np.int64)
    ties = ties[(ties >= INT32_MIN) & (ties <= INT32_MAX)]
    acc = np.concatenate([[INT32_MIN, INT32_MIN + 1, -2, -1, 0, 1, 2, INT32_MAX - 1, INT32_MAX], ties,
                          rng.integers(INT32_MIN, INT32_MAX, 5000, endpoint=True)]).astype(np.int32)
    for pairs in requantization_cases():
        for zero_point, qmin, qmax, dtype in [(7, 0, 255, np.uint8), (-5, INT32_MIN, INT32_MAX, np.int32)]:
            fast, reference = np.empty(acc.size, dtype), np.empty(acc.size, dtype)
            integer_requantize._requantize_flat(acc, *pairs, zero_point, qmin, qmax, fast)
            integer_requantize._requantize_flat_reference(acc, *pairs, zero_point, qmin, qmax, reference)
            np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize("pairs", requantization_cases()[:4])
def test_fused_convolution_and_requantization_is_the_two_definitions(gemm, pairs):
    """Truth: the definitions composed: requantize_leaky (the scalar rule) of conv2d_reference, on
    uint8 codes minus a zero point (the integer network's input), batches that span several chunks,
    a bias, leaky pairs and the extreme shifts."""
    rng = np.random.default_rng(25)
    for n, c, h, w_, o, k, stride, pad in FAST_CASES[:5]:
        x = (random_codes(rng, (n, c, h, w_), 0, 255, np.int16) - 37).astype(np.int16)
        w = random_codes(rng, (o, c, k, k), -127, 127, np.int8)
        check_path(w, gemm)
        bias = rng.integers(-10**5, 10**5, o).astype(np.int32)
        x_range = (-37, 255 - 37)
        expected = requantize_leaky(conv2d_reference(x, w, stride, pad, bias=bias, x_range=x_range), *pairs,
                                    3, 0, 255)
        got = conv2d_requantized(x, pack_weights(w), stride, pad, bias, *pairs, 3, 0, 255, x_range=x_range)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_value_ranges_of_the_bounds():
    """Truth: NumPy's iinfo, for the ranges the bound tests above start from."""
    assert value_range(np.uint8) == (0, 255) and value_range(np.int8) == (-128, 127)


@pytest.mark.parametrize("dtype, lo, hi, zero_point", [(np.uint8, 0, 255, 37), (np.uint8, 0, 255, 0),
                                                       (np.uint8, 3, 250, 300), (np.int8, -128, 127, -5),
                                                       (np.int16, -300, 4000, 1000)])
def test_codes_with_their_zero_point_are_the_shifted_values(gemm, dtype, lo, hi, zero_point):
    """Truth: NumPy int64 correlation of ``codes - zero_point`` (and the reference kernel on them):
    codes passed as they are with ``x_zero_point``, padding being the zero point in code space;
    with and without a declared range, plain and requantized."""
    rng = np.random.default_rng(26)
    for n, c, h, w_, o, k, stride, pad in FAST_CASES[:5]:
        codes = random_codes(rng, (n, c, h, w_), lo, hi, dtype)
        values = (codes.astype(np.int64) - zero_point).astype(np.int16)
        w = random_codes(rng, (o, c, k, k), -128, 127, np.int8)
        check_path(w, gemm)
        bias = rng.integers(-10**4, 10**4, o).astype(np.int32)
        x_range = (lo - zero_point, hi - zero_point)
        expected = numpy_correlation(values, w, stride, pad) + bias[None, :, None, None]
        for declared in (None, x_range) if dtype != np.int16 else (x_range,):  # int16's full range: K too long
            got = conv2d(codes, pack_weights(w), stride, pad, bias=bias, x_range=declared, x_zero_point=zero_point)
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(conv2d_reference(values, w, stride, pad, bias=bias, x_range=x_range), expected)
        pairs = requantization_cases()[3]
        np.testing.assert_array_equal(
            conv2d_requantized(codes, w, stride, pad, bias, *pairs, 3, 0, 255, x_range=x_range, x_zero_point=zero_point),
            requantize_leaky(expected, *pairs, 3, 0, 255))
    with pytest.raises(ValueError, match="x_range"):
        conv2d(codes, w, 1, 1, x_range=(x_range[0] + 1, x_range[1]), x_zero_point=zero_point)


def test_strided_input_views(gemm):
    """Truth: NumPy int64 correlation, on inputs that are views with strides (every other column
    of a larger array, a channel slice), through both column layouts."""
    rng = np.random.default_rng(27)
    base = random_codes(rng, (2, 10, 20, 40), 0, 255, np.uint8)
    w = random_codes(rng, (6, 4, 3, 3), -128, 127, np.int8)
    check_path(w, gemm)
    for x in (base[:, 2:6, :, ::2], base[:, 3:7, ::2, ::3]):
        for stride, pad in ((1, 1), (2, 1), (1, 0)):
            np.testing.assert_array_equal(conv2d(x, w, stride, pad), numpy_correlation(x, w, stride, pad))
