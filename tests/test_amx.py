"""The AMX-INT8 GEMM (``refquant.integer.amx``, TDPBSUD) against the portable int32 GEMM and the
definitions, bit for bit: on random inputs, at the bounds of uint8 x int8, with wrap-around, on
blockings that end mid-tile, and inside the convolution on every yolov2-tiny-voc layer shape.

Truths: the portable kernel ``refquant.integer.conv._gemm_accumulate`` (itself checked against
NumPy in test_intconv_fast.py), NumPy int64 products reduced modulo 2**32, Python integers at the
bounds, and ``conv2d_reference`` (plain loops) for the convolution.

The AMX cases run where ``amx_available()`` (this machine, where CI runs); elsewhere they are skipped
and the fallback test checks that the other kernels are the ones chosen.
"""
import numpy as np
import pytest

from refquant.integer import amx, vnni
from refquant.integer import conv as integer_conv
from refquant.integer.conv import conv2d, conv2d_reference, pack_weights
from refquant.integer.requantize import conv2d_requantized, requantize_leaky

AMX_HERE = amx.amx_available()
needs_amx = pytest.mark.skipif(not AMX_HERE, reason="no AMX-INT8 here (CPU features or Linux's tile permission)")


def random_codes(rng, shape, lo, hi, dtype):
    return rng.integers(lo, hi + 1, shape, dtype=np.int64).astype(dtype)


def wrap32(values):
    return ((values.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def amx_gemm(w_matrix, x_matrix, start, parallel=True):
    """W (O, K) int8 . X (K, P) uint8 + start by :func:`refquant.integer.amx.gemm` on im2col tiles:
    the (O, P) int32 result."""
    n_outputs, k = w_matrix.shape
    n_pixels = x_matrix.shape[1]
    weights = amx.pack_weights(w_matrix)
    k_steps = weights.shape[1] * amx.K_BLOCK
    n_tiles = -(-n_pixels // amx.TILE_PIXELS)
    padded = np.zeros((k_steps * amx.K_STEP, n_tiles * amx.TILE_PIXELS), np.uint8)
    padded[:k, :n_pixels] = x_matrix
    # (K, P) -> (tile, step, pixel, byte): X[4s + b, 32t + q] = columns[t, s, q, b]
    columns = np.ascontiguousarray(padded.reshape(k_steps, amx.K_STEP, n_tiles, amx.TILE_PIXELS).transpose(2, 0, 3, 1))
    start_padded = np.zeros(weights.shape[0] * amx.OUTPUT_BLOCK, np.int32)
    start_padded[:n_outputs] = start
    acc = amx.gemm(weights, columns, start_padded, 2, parallel)
    return acc[:n_outputs, :n_pixels]


def portable_gemm(w_matrix, x_matrix, start):
    """The same product by the portable kernel ``_gemm_accumulate`` (one panel of all the pixels)."""
    n_outputs, k = w_matrix.shape
    o_padded, k_padded = -(-n_outputs // 4) * 4, -(-k // 4) * 4
    w_packed = np.zeros((o_padded, k_padded), np.int8)
    w_packed[:n_outputs, :k] = w_matrix
    panel = np.zeros((1, k_padded, x_matrix.shape[1]), np.uint8)
    panel[0, :k] = x_matrix
    acc = np.zeros((1, o_padded, x_matrix.shape[1]), np.int32)
    acc[0, :n_outputs] = start[:, None]
    integer_conv._gemm_accumulate(w_packed, panel, acc, 1152, o_padded)
    return acc[0, :n_outputs]


# (O, K, P): outputs not a multiple of 16 or 32, K not a multiple of 4 or 64, pixels not a multiple of
# 16 or 32, one of everything, and the yolov2-tiny-voc GEMMs' K (576 ... 9216).
GEMM_SHAPES = [(1, 1, 1), (5, 3, 7), (17, 65, 33), (31, 63, 15), (33, 64, 16), (40, 100, 70), (125, 1024, 49),
               (128, 576, 96), (64, 9216, 40), (48, 2304, 100)]


@needs_amx
@pytest.mark.parametrize("o, k, p", GEMM_SHAPES)
def test_amx_gemm_is_the_portable_gemm_on_random_codes(o, k, p):
    """Truth: the portable int32 GEMM ``_gemm_accumulate``, and NumPy int64 products reduced modulo
    2**32. Random uint8 codes, int8 weights and int32 starts anywhere in int32, so that most sums
    leave int32 and wrap: the two kernels agree bit for bit, in parallel and in one thread."""
    rng = np.random.default_rng(31)
    w = random_codes(rng, (o, k), -128, 127, np.int8)
    x = random_codes(rng, (k, p), 0, 255, np.uint8)
    start = random_codes(rng, (o,), -(2**31), 2**31 - 1, np.int32)
    expected = wrap32(start[:, None].astype(np.int64) + w.astype(np.int64) @ x.astype(np.int64))
    np.testing.assert_array_equal(portable_gemm(w, x, start), expected)
    np.testing.assert_array_equal(amx_gemm(w, x, start), expected)
    np.testing.assert_array_equal(amx_gemm(w, x, start, parallel=False), expected)


@needs_amx
@pytest.mark.parametrize("w_code", [-128, 127])
def test_amx_gemm_exact_and_wrapping_at_the_largest_products(w_code):
    """Truth: Python integers. Every code 255 and every weight -128 (or 127): each four-product sum
    at its extreme (4 * 255 * -128 = -130560), K = 65793 (the longest uint8 x int8 reduction the
    int32 check admits) reaching exactly -2**31 with a start of -128, and starts that push the sum
    past int32 so that it must wrap exactly once (no saturation, unlike VPDPBUSDS or VPMADDUBSW)."""
    k = 65793 if w_code == -128 else 66311
    w = np.full((33, k), w_code, np.int8)
    x = np.full((k, 17), 255, np.uint8)
    total = k * 255 * w_code
    starts = np.array([-128, 1912, 0, -(2**31), 2**31 - 1] + [7] * 28, np.int64)
    expected = [((int(s) + total + 2**31) % 2**32) - 2**31 for s in starts]
    if w_code == -128:
        assert total + starts[0] == -(2**31)
    else:
        assert total + starts[1] == 2**31 - 1
    got = amx_gemm(w, x, starts.astype(np.int32))
    np.testing.assert_array_equal(got, np.repeat(np.array(expected, np.int64)[:, None], 17, 1))
    np.testing.assert_array_equal(got, portable_gemm(w, x, starts.astype(np.int32)))


@needs_amx
def test_amx_gemm_signedness_of_its_operands():
    """Truth: Python integers. TDPBSUD takes its first source (the weights) signed and its second
    (the columns) unsigned: a weight -1 against the codes 200 and 255 gives -200 and -255 (not 56 or
    -1 * -56), and 127 x 255 + -128 x 128 in one four-byte group gives 16001."""
    w = np.zeros((16, 64), np.int8)
    x = np.zeros((64, 16), np.uint8)
    w[0, 0], w[1, 0], w[1, 1] = -1, 127, -128
    x[0, 0], x[0, 1], x[1, 1] = 200, 255, 128
    got = amx_gemm(w, x, np.zeros(16, np.int32))
    np.testing.assert_array_equal(got[:2, :2], [[-200, -255], [127 * 200, 127 * 255 - 128 * 128]])
    assert np.count_nonzero(got) == 4


TINY_YOLO_LAYERS = [(3, 16, 3), (16, 32, 3), (32, 64, 3), (64, 128, 3), (128, 256, 3), (256, 512, 3), (512, 1024, 3),
                    (1024, 1024, 3), (1024, 125, 1)]
"""yolov2-tiny-voc's convolutions (C, O, k): stride 1, pad k // 2."""


@pytest.fixture
def amx_on(monkeypatch):
    """The AMX path taken for every layer with K >= 64 (``AMX_MIN_K`` lowered), so that small
    shapes run through it too."""
    monkeypatch.setattr(integer_conv, "AMX_MIN_K", 64)


@needs_amx
@pytest.mark.parametrize("channels, outputs, kernel", TINY_YOLO_LAYERS)
def test_amx_convolution_is_the_reference_on_every_yolov2_tiny_layer(amx_on, channels, outputs, kernel):
    """Truth: ``conv2d_reference``. Every yolov2-tiny-voc layer's channels, outputs and kernel on small
    maps (both column layouts: the padded input itself at 16x16, im2col at 5x5), with a bias and uint8
    codes minus their zero point; and the requantized layer against the two definitions composed."""
    rng = np.random.default_rng(32)
    w = random_codes(rng, (outputs, channels, kernel, kernel), -128, 127, np.int8)
    packed = pack_weights(w)
    assert packed.amx_matrix is not None or channels * kernel * kernel < 64
    assert (packed.amx_direct_matrix is not None) == (channels % 64 == 0 and channels * kernel * kernel >= 64)
    bias = random_codes(rng, (outputs,), -10**6, 10**6, np.int32)
    for size in (16, 5):
        codes = random_codes(rng, (1, channels, size, size), 0, 255, np.uint8)
        values = codes.astype(np.int16) - 9
        expected = conv2d_reference(values, w, 1, kernel // 2, bias=bias, x_range=(-9, 246))
        got = conv2d(codes, packed, 1, kernel // 2, bias=bias, x_range=(-9, 246), x_zero_point=9)
        np.testing.assert_array_equal(got, expected)
        pairs = (3_000_001, 31, 300_001, 34)
        np.testing.assert_array_equal(
            conv2d_requantized(codes, packed, 1, kernel // 2, bias, *pairs, 3, 0, 255, x_range=(-9, 246), x_zero_point=9),
            requantize_leaky(expected, *pairs, 3, 0, 255))


# (N, C, H, W, O, k, stride, pad): batches, strides 2, pads 0 and 2, channels 64 and 128 (the padded
# input read directly) and 70 (im2col, K not a multiple of 64), maps ending mid-tile.
ODD_CASES = [(2, 64, 9, 11, 33, 3, 1, 1), (3, 70, 7, 6, 17, 3, 1, 0), (1, 128, 19, 17, 50, 3, 2, 1),
             (2, 64, 20, 18, 16, 3, 1, 2), (1, 64, 3, 20, 40, 1, 1, 0), (1, 40, 11, 13, 9, 5, 1, 2)]


@needs_amx
@pytest.mark.parametrize("dtype, lo, hi", [(np.uint8, 0, 255), (np.int8, -128, 127), (np.int16, -700, 900)])
def test_amx_convolution_is_the_reference_on_odd_shapes(amx_on, dtype, lo, hi):
    """Truth: ``conv2d_reference``. Shapes off every block size (batches, strides, pads, channels
    that fill whole tiles or not), one-byte inputs of both signs and two-byte ones (two byte planes,
    the second's partial sums shifted and wrapped)."""
    rng = np.random.default_rng(33)
    for n, c, h, w_, o, k, stride, pad in ODD_CASES:
        x = random_codes(rng, (n, c, h, w_), lo, hi, dtype)
        w = random_codes(rng, (o, c, k, k), -128, 127, np.int8)
        assert pack_weights(w).amx_matrix is not None
        bias = random_codes(rng, (o,), -10**5, 10**5, np.int32)
        np.testing.assert_array_equal(conv2d(x, w, stride, pad, bias=bias, x_range=(lo, hi)),
                                      conv2d_reference(x, w, stride, pad, bias=bias, x_range=(lo, hi)))


@needs_amx
def test_amx_convolution_exact_at_the_longest_reduction(amx_on):
    """Truth: Python integers. Every code 255 and every weight -128 at the longest reductions the
    int32 check admits, with a bias bringing each output to exactly -2**31: K = 65793 through im2col
    (stride 2; K padded to whole tiles with zeros) and K = 65792 = 1028 x 64 channels read from the
    input itself (1 x 17 map)."""
    for channels, shape, stride in ((65793, (1, 65793, 3, 3), 2), (65792, (1, 65792, 1, 17), 1)):
        bias_value = -(2**31) - channels * 255 * -128
        w = np.full((9, channels, 1, 1), -128, np.int8)
        packed = pack_weights(w)
        assert packed.amx_matrix is not None and (packed.amx_direct_matrix is not None) == (channels % 64 == 0)
        got = conv2d(np.full(shape, 255, np.uint8), packed, stride, bias=np.full(9, bias_value, np.int32))
        assert got.dtype == np.int32 and got.size >= 9 * 4 and np.all(got == -(2**31))


def test_amx_switch_and_fallback(monkeypatch):
    """Truth: the CPU features LLVM reports and the environment. AMX is used exactly where the CPU
    has amx-tile and amx-int8 (and Linux grants the tile state); ``REFQUANT_AMX=0`` turns it off
    and the convolution then runs on VNNI (or the portable kernel), with the same result;
    a NUMBA_CPU_NAME other than the host counts only the features NUMBA_CPU_FEATURES lists; where
    Linux refused the tile state, nothing is packed for AMX and its GEMM raises rather than run
    a tile instruction (SIGILL)."""
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    if not (features.get("amx-tile", False) and features.get("amx-int8", False)):
        assert not AMX_HERE
    rng = np.random.default_rng(34)
    x = random_codes(rng, (1, 64, 16, 16), 0, 255, np.uint8)
    w = random_codes(rng, (40, 64, 3, 3), -128, 127, np.int8)
    expected = conv2d_reference(x, w, 1, 1)
    on = pack_weights(w)
    assert (on.amx_matrix is not None) == AMX_HERE
    monkeypatch.setenv("REFQUANT_AMX", "0")
    assert not amx.amx_available()
    off = pack_weights(w)
    assert off.amx_matrix is None and off.amx_direct_matrix is None and off.vnni == vnni.vnni_available()
    np.testing.assert_array_equal(conv2d(x, off, 1, 1), expected)
    np.testing.assert_array_equal(conv2d(x, on, 1, 1), expected)
    monkeypatch.delenv("REFQUANT_AMX")
    monkeypatch.setattr(amx.numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(amx.numba.config, "CPU_FEATURES", "+avx512f")
    assert not amx.amx_available()
    monkeypatch.setattr(amx.numba.config, "CPU_FEATURES", "+amx-tile,+amx-int8")
    assert amx.amx_available() == amx._cpu_ready()  # listed, and still the tile permission
    monkeypatch.setattr(amx, "_permission", False)  # Linux refused the tile state: no AMX, and no tile instruction
    assert not amx.amx_available() and pack_weights(w).amx_matrix is None
    weights = amx.pack_weights(w.reshape(40, -1))
    columns = np.zeros((1, weights.shape[1] * amx.K_BLOCK, amx.TILE_PIXELS, amx.K_STEP), np.uint8)
    with pytest.raises(RuntimeError, match="not available"):
        amx.gemm(weights, columns, np.zeros(64, np.int32), 1)
    monkeypatch.setattr(vnni, "vnni_available", lambda: False)  # no VNNI: neither AMX (the portable kernel)
    portable = pack_weights(w)
    assert not portable.vnni and portable.amx_matrix is None
    np.testing.assert_array_equal(conv2d(x, portable, 1, 1), expected)


def test_block_layout_needs_evenly_spaced_steps():
    """Truth: the definition of a strided tile load. 16 steps a fixed stride apart are one block;
    a break in the spacing, or steps that are not whole blocks, are refused."""
    offsets, stride = amx.block_layout(128 * np.arange(32))
    assert stride == 128 and list(offsets) == [0, 2048]
    with pytest.raises(ValueError, match="evenly spaced"):
        amx.block_layout(np.r_[128 * np.arange(15), 5000])
    with pytest.raises(ValueError, match="whole blocks"):
        amx.block_layout(128 * np.arange(20))
