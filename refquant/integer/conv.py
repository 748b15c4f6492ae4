"""Integer convolution: codes in, int32 accumulators out (docs/SPECIFICATION.md, section 11.5).

Two kernels side by side, as TFLite keeps reference and optimized kernels:
:func:`conv2d_reference`, a plain loop that reads as the definition, and :func:`conv2d`, the fast
kernel, equal bit for bit: the input cut into non-negative byte planes, a GEMM per plane with
int32 sums (AMX-INT8's ``TDPBSUD`` where the CPU has it and the layer suits it,
:mod:`refquant.integer.amx`; else AVX-512 VNNI's ``VPDPBUSD`` where the CPU has it,
:mod:`refquant.integer.vnni`; else a blocked int32 GEMM that LLVM vectorises, here), parallel
over pixels and output channels. Both compute the exact correlation (Darknet's and
PyTorch's convolutions do not flip the kernel), zero padding, after the caller removed the zero points.
"""
import dataclasses

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from refquant.integer import amx, vnni

INT32_MIN = -(2**31)


INT32_MAX = 2**31 - 1


ACTIVATION_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16))


WEIGHT_DTYPES = (np.dtype(np.int8),)


def value_range(dtype):
    """``(lo, hi)``: the inclusive range of an integer dtype, e.g. int8 -> (-128, 127)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def check_accumulator_range(x_range, w_range, k, bias_range=(0, 0)):
    """Raise ValueError unless every ``bias + sum of k products x*w`` fits in int32.

    ``x_range``, ``w_range``: inclusive ``(lo, hi)`` bounds of the activation and
    weight values (e.g. ``value_range(np.int8)`` or ``(qmin - zero_point, qmax - zero_point)``);
    ``k`` = C * kh * kw, the number of products in one output.

    One product lies in [p_lo, p_hi], the extremes of the four corner products;
    the worst sums are k*min(p_lo, 0) and k*max(p_hi, 0), reached when every
    input sits at the same corner, so the bound is exact: it passes at the
    largest safe k and fails at the next. ``bias_range``: bounds of an int32
    bias the accumulator starts from (0 without bias). Returns ``(sum_lo, sum_hi)``.
    """
    x_lo, x_hi = (int(v) for v in x_range)
    w_lo, w_hi = (int(v) for v in w_range)
    bias_lo, bias_hi = (int(v) for v in bias_range)
    k = int(k)
    if x_lo > x_hi or w_lo > w_hi or bias_lo > bias_hi:
        raise ValueError(f"x_range={x_range}, w_range={w_range} and bias_range={bias_range} "
                         f"must be (lo, hi) with lo <= hi")
    if k < 1:
        raise ValueError(f"k (products per output, C*kh*kw) must be >= 1, got {k}")
    corners = [x_lo * w_lo, x_lo * w_hi, x_hi * w_lo, x_hi * w_hi]
    product_lo, product_hi = min(corners), max(corners)
    sum_lo = bias_lo + k * min(product_lo, 0)
    sum_hi = bias_hi + k * max(product_hi, 0)
    if sum_lo < INT32_MIN or sum_hi > INT32_MAX:
        k_max = min((INT32_MAX - bias_hi) // product_hi if product_hi > 0 else k,
                    (bias_lo - INT32_MIN) // -product_lo if product_lo < 0 else k)
        bias_text = f" plus a bias in [{bias_lo}, {bias_hi}]" if bias_range != (0, 0) else ""
        raise ValueError(
            f"int32 accumulator could overflow: K={k} products of x in [{x_lo}, {x_hi}] and "
            f"w in [{w_lo}, {w_hi}] (each in [{product_lo}, {product_hi}]){bias_text} can sum to "
            f"[{sum_lo}, {sum_hi}], outside int32 [{INT32_MIN}, {INT32_MAX}]; "
            f"at these ranges K must be at most {max(k_max, 0)}")
    return sum_lo, sum_hi


def _check_integer(name, value, lo=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def conv2d_output_shape(x_shape, w_shape, stride=1, pad=0):
    """(N, O, Ho, Wo) with Ho = (H + 2*pad - kh)//stride + 1 (Darknet's convolutional_out_height)."""
    n, _, h, w = x_shape
    o, _, kh, kw = w_shape
    return n, o, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1


def _check_conv_arguments(x, w, stride, pad):
    """Validate conv2d's arguments; return (output shape (N, O, Ho, Wo), stride, pad) as ints."""
    for name, array, dtypes in (("x", x, ACTIVATION_DTYPES), ("w", w, WEIGHT_DTYPES)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {array.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must have shape (O, C, kh, kw), got shape {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input channels (w.shape={w.shape}) "
                         f"but x has {x.shape[1]} (x.shape={x.shape})")
    if min(w.shape) < 1 or min(x.shape[1:]) < 1:
        raise ValueError(f"empty channel or spatial size: x.shape={x.shape}, w.shape={w.shape}")
    stride = _check_integer("stride", stride, lo=1)
    pad = _check_integer("pad", pad, lo=0)
    shape = conv2d_output_shape(x.shape, w.shape, stride, pad)
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"kernel {w.shape[2]}x{w.shape[3]} larger than the padded input "
                         f"{x.shape[2] + 2 * pad}x{x.shape[3] + 2 * pad} (x.shape={x.shape}, pad={pad})")
    return shape, stride, pad


def _declared_range(name, array, declared):
    """The value range the caller declares for ``array`` (default: its dtype's), checked against the data."""
    if declared is None:
        return value_range(array.dtype)
    lo, hi = (_check_integer(f"{name}_range", v) for v in declared)
    if array.size and (int(array.min()) < lo or int(array.max()) > hi):
        raise ValueError(f"{name} has values in [{array.min()}, {array.max()}], "
                         f"outside the declared {name}_range=({lo}, {hi})")
    return lo, hi


def _declared_value_range(x, declared, zero_point):
    """The range of ``x - zero_point`` the caller declares (default: x's dtype's, shifted), checked
    against the data unless every value of x's dtype lies in it (then no pass over x is needed)."""
    dtype_lo, dtype_hi = value_range(x.dtype)
    if declared is None:
        return dtype_lo - zero_point, dtype_hi - zero_point
    lo, hi = (_check_integer("x_range", v) for v in declared)
    if lo <= dtype_lo - zero_point and dtype_hi - zero_point <= hi:
        return lo, hi
    if x.size and (int(x.min()) - zero_point < lo or int(x.max()) - zero_point > hi):
        shifted = f" - x_zero_point ({zero_point})" if zero_point else ""
        raise ValueError(f"x{shifted} has values in [{int(x.min()) - zero_point}, {int(x.max()) - zero_point}], "
                         f"outside the declared x_range=({lo}, {hi})")
    return lo, hi


def _check_bias(bias, n_outputs):
    """The int32 bias as an (O,) int64 array of zeros when None; its range for the overflow check."""
    if bias is None:
        return np.zeros(n_outputs, np.int64), (0, 0)
    if not isinstance(bias, np.ndarray) or bias.dtype != np.int32:
        raise TypeError(f"bias must be an int32 numpy array (quantize_bias), got "
                        f"{getattr(bias, 'dtype', type(bias).__name__)}")
    if bias.shape != (n_outputs,):
        raise ValueError(f"bias must have shape (O,) = ({n_outputs},), got {bias.shape}")
    return bias.astype(np.int64), (int(bias.min()), int(bias.max()))


def _prepare(x, w, stride, pad, bias, x_range, w_range):
    shape, stride, pad = _check_conv_arguments(x, w, stride, pad)
    bias, bias_range = _check_bias(bias, w.shape[0])
    check_accumulator_range(_declared_range("x", x, x_range), _declared_range("w", w, w_range),
                            w.shape[1] * w.shape[2] * w.shape[3], bias_range)
    return shape, stride, pad, bias


@numba.njit(cache=True)
def _correlate_reference(x, w, bias, stride, pad, out):
    n_images, channels, height, width = x.shape
    n_outputs, _, kh, kw = w.shape
    for n in range(n_images):
        for o in range(n_outputs):
            for y in range(out.shape[2]):
                for x_out in range(out.shape[3]):
                    acc = bias[o]  # exact (int64); check_accumulator_range guarantees it fits int32
                    for c in range(channels):
                        for i in range(kh):
                            row = y * stride + i - pad
                            if row < 0 or row >= height:
                                continue  # zero padding
                            for j in range(kw):
                                col = x_out * stride + j - pad
                                if col < 0 or col >= width:
                                    continue
                                acc += np.int64(x[n, c, row, col]) * np.int64(w[o, c, i, j])
                    out[n, o, y, x_out] = acc


def conv2d_reference(x, w, stride=1, pad=0, bias=None, x_range=None, w_range=None):
    """Exact integer correlation, plain loops: the definition the fast kernel must match.

    x: (N, C, H, W) uint8, int8 or int16 values (zero points already removed);
    w: (O, C, kh, kw) int8; stride >= 1; pad >= 0 zeros on each side;
    bias: optional (O,) int32 (:func:`quantize_bias`) the accumulators start from.
    Returns int32 (N, O, (H+2pad-kh)//stride+1, (W+2pad-kw)//stride+1).
    ``x_range``/``w_range`` optionally declare tighter value bounds than the
    dtypes' (checked against the data) for the int32 overflow check.
    """
    shape, stride, pad, bias = _prepare(x, w, stride, pad, bias, x_range, w_range)
    out = np.empty(shape, np.int32)
    _correlate_reference(x, w, bias, stride, pad, out)
    return out


_RANK = 4                 # output channels and K steps per micro-kernel call (K, O padded to it)


_MAX_PANEL = 256          # pixels per panel of im2col columns


_MAX_K_BLOCK = 1152       # K rows of a panel swept by all output channels before the next


@intrinsic
def _multiply_accumulate_int32(typingctx, acc, a, b):
    """``acc + a * b`` in wrap-around int32, as C's ``int32_t acc += (int32_t)a * (int32_t)b``.

    Numba promotes integer arithmetic to int64, which would vectorise as
    64-bit lanes; this keeps the int32 lanes (and PMADDWD) of a C compiler.
    ``a``, ``b``: integers of at most 16 bits, sign- or zero-extended by their signedness.
    """
    ok = (isinstance(acc, types.Integer) and acc.bitwidth == 32 and acc.signed
          and all(isinstance(t, types.Integer) and t.bitwidth <= 16 for t in (a, b)))
    if not ok:
        return None

    def codegen(context, builder, signature, args):
        acc_value, a_value, b_value = args
        int32 = ir.IntType(32)
        a32 = builder.sext(a_value, int32) if a.signed else builder.zext(a_value, int32)
        b32 = builder.sext(b_value, int32) if b.signed else builder.zext(b_value, int32)
        return builder.add(acc_value, builder.mul(a32, b32))

    return types.int32(acc, a, b), codegen


_mac = _multiply_accumulate_int32


SERIAL_BELOW_NS = 200_000
"""Work estimated below this many nanoseconds of one core runs in the calling thread: starting a
Numba parallel loop wakes its worker threads, 15 to 130 microseconds on a shared 2-core virtual
machine once they sleep (the work-queue layer always sleeps between loops; OpenMP, refquant's
choice where Numba has it, spins a few tens of microseconds first, see ``refquant/__init__.py``),
and two threads at best halve the work, so the loop must take about twice that alone.
The estimates per unit of work below were measured on one core of the machine in docs/benchmarks.md."""


def parallel_worth(estimated_ns, n_threads=None):
    """Whether work estimated at ``estimated_ns`` nanoseconds of one core should run on Numba's threads
    (``n_threads``: ``numba.get_num_threads()`` if the caller has it, a few microseconds saved)."""
    return (numba.get_num_threads() if n_threads is None else n_threads) > 1 and estimated_ns >= SERIAL_BELOW_NS


def _padded_byte_planes(x, offset, byte_index, pad, zero_point=0, n_threads=None):
    """(N, C, H, W) -> (N, C, H + 2pad, W + 2pad) uint8: byte ``byte_index`` of the values
    ``x - zero_point - offset``, zero padded.

    The border holds the byte of 0 - offset: the padded zero, offset like the rest. (With uint8
    codes x, their zero point and offset = -zero_point, the planes are the codes themselves,
    padded with the zero point.)
    """
    n_images, channels, height, width = x.shape
    planes = np.empty((n_images, channels, height + 2 * pad, width + 2 * pad), np.uint8)
    fill = _fill_byte_planes_parallel if parallel_worth(0.1 * planes.size, n_threads) else _fill_byte_planes_serial
    fill(x, zero_point + offset, offset, byte_index, pad, planes)
    return planes


@numba.njit(cache=True, inline="always")
def _fill_byte_plane(x, shift_in, offset, byte_index, pad, planes, task):
    """Plane ``task`` = (n, c) of :func:`_padded_byte_planes`, border included (one loop writes it
    all: every array expression in a parallel function would be a parallel loop of its own)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    shift = 8 * byte_index
    border = np.uint8(((0 - offset) >> shift) & 255)  # the value 0, offset
    n, c = task // channels, task % channels
    plane = planes[n, c]
    for row in range(plane.shape[0]):
        if row < pad or row >= height + pad:
            for col in range(plane.shape[1]):
                plane[row, col] = border
            continue
        for col in range(pad):
            plane[row, col] = border
            plane[row, width + pad + col] = border
        for col in range(width):
            value = np.int64(x[n, c, row - pad, col]) - shift_in  # x - zero_point - offset
            plane[row, col + pad] = np.uint8((value >> shift) & 255)


@numba.njit(cache=True, parallel=True)
def _fill_byte_planes_parallel(x, shift_in, offset, byte_index, pad, planes):
    for task in numba.prange(x.shape[0] * x.shape[1]):
        _fill_byte_plane(x, shift_in, offset, byte_index, pad, planes, task)


@numba.njit(cache=True)
def _fill_byte_planes_serial(x, shift_in, offset, byte_index, pad, planes):
    for task in range(x.shape[0] * x.shape[1]):
        _fill_byte_plane(x, shift_in, offset, byte_index, pad, planes, task)


@numba.njit(cache=True, parallel=True)
def _im2col_panels(planes, kh, kw, stride, out_height, out_width, k_padded, p_block):
    """Padded (N, C, Hp, Wp) bytes -> columns (n_panels, k_padded, p_block), pixels cut into panels.

    Pixel p = (n*Ho + y)*Wo + x (the images' output pixels one after another) is column
    p % p_block of panel p // p_block. Row k = (c*kh + i)*kw + j of a panel holds the padded
    input at (n, c, y*stride + i, x*stride + j): the factor multiplying w[o, c, i, j] in output
    pixel p. Each panel is contiguous, so the GEMM streams it from cache; a panel may hold the
    end of one image and the start of the next, so small feature maps still fill whole panels.
    Rows past K and pixels past N*Ho*Wo stay 0 (their weights or outputs are dropped).
    """
    n_images, channels = planes.shape[0], planes.shape[1]
    n_pixels = n_images * out_height * out_width
    n_panels = (n_pixels + p_block - 1) // p_block
    columns = np.zeros((n_panels, k_padded, p_block), np.uint8)
    for k in numba.prange(channels * kh * kw):
        c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
        panel, column = 0, 0  # where pixel p goes, counted rather than divided
        for n in range(n_images):
            for y in range(out_height):
                source = planes[n, c, y * stride + i, j:]
                x = 0
                while x < out_width:  # copy the run of row y that falls in the current panel
                    run = min(out_width - x, p_block - column)
                    columns[panel, k, column:column + run] = source[x * stride:(x + run - 1) * stride + 1:stride]
                    x += run
                    column += run
                    if column == p_block:
                        panel, column = panel + 1, 0
    return columns


@numba.njit(cache=True, inline="always")
def _rank4_update(w_packed, o, k, panel, acc_panel):
    """acc_panel[o:o+4, :] += w_packed[o:o+4, k:k+4] @ panel[k:k+4, :] (int32, wrap-around).

    The pixel loop is the one LLVM vectorises: 4 byte loads, 16 multiply-adds
    and 4 int32 loads/stores of the accumulators per vector of pixels.
    """
    w00, w01, w02, w03 = w_packed[o, k], w_packed[o, k + 1], w_packed[o, k + 2], w_packed[o, k + 3]
    w10, w11, w12, w13 = w_packed[o + 1, k], w_packed[o + 1, k + 1], w_packed[o + 1, k + 2], w_packed[o + 1, k + 3]
    w20, w21, w22, w23 = w_packed[o + 2, k], w_packed[o + 2, k + 1], w_packed[o + 2, k + 2], w_packed[o + 2, k + 3]
    w30, w31, w32, w33 = w_packed[o + 3, k], w_packed[o + 3, k + 1], w_packed[o + 3, k + 2], w_packed[o + 3, k + 3]
    x0, x1, x2, x3 = panel[k], panel[k + 1], panel[k + 2], panel[k + 3]
    acc0, acc1, acc2, acc3 = acc_panel[o], acc_panel[o + 1], acc_panel[o + 2], acc_panel[o + 3]
    # Unsigned p: Numba then skips its negative-index wrap-around test, which
    # otherwise blocks vectorisation of this loop (about 4x slower).
    for p in range(np.uint64(panel.shape[1])):
        a, b, c, d = x0[p], x1[p], x2[p], x3[p]
        acc0[p] = _mac(_mac(_mac(_mac(acc0[p], w00, a), w01, b), w02, c), w03, d)
        acc1[p] = _mac(_mac(_mac(_mac(acc1[p], w10, a), w11, b), w12, c), w13, d)
        acc2[p] = _mac(_mac(_mac(_mac(acc2[p], w20, a), w21, b), w22, c), w23, d)
        acc3[p] = _mac(_mac(_mac(_mac(acc3[p], w30, a), w31, b), w32, c), w33, d)


@numba.njit(cache=True, parallel=True)
def _gemm_accumulate(w_packed, columns, acc, k_block, o_group):
    """acc[b] (Op, p_block) int32 += w_packed (Op, Kp) int8 @ columns[b] (Kp, p_block) uint8, every panel b.

    Op, Kp multiples of 4; int32 wrap-around. Work is split into tasks (one
    panel x a group of output channels) run in parallel; within a task a K block
    of the panel (k_block x p_block bytes) stays in L2 while every output
    channel of the group sweeps it, and the 4 accumulator rows being updated stay in L1.
    """
    n_outputs, k_padded = w_packed.shape
    n_panels = columns.shape[0]
    n_o_groups = (n_outputs + o_group - 1) // o_group
    for task in numba.prange(n_panels * n_o_groups):
        panel, acc_panel = columns[task // n_o_groups], acc[task // n_o_groups]
        o_start = (task % n_o_groups) * o_group
        o_stop = min(o_start + o_group, n_outputs)
        for k_start in range(0, k_padded, k_block):
            k_stop = min(k_start + k_block, k_padded)
            for o in range(o_start, o_stop, _RANK):
                for k in range(k_start, k_stop, _RANK):
                    _rank4_update(w_packed, o, k, panel, acc_panel)


def _blocking(n_outputs, n_pixels, k_padded, n_threads):
    """(p_block, k_block, o_group): the fewest panels of at most _MAX_PANEL pixels, K blocks of at
    most _MAX_K_BLOCK, and groups of output channels giving at least 4 tasks per thread when possible.

    Sizes measured on the benchmark's layers (a panel's K block then stays in L2).
    """
    n_k_blocks = -(-k_padded // _MAX_K_BLOCK)
    k_block = _round_up(-(-k_padded // n_k_blocks), _RANK)
    n_panels = -(-n_pixels // _MAX_PANEL)
    p_block = _round_up(-(-n_pixels // n_panels), 8)  # even panels, whole vectors
    groups_wanted = max(1, -(-4 * n_threads // n_panels))
    o_group = max(_RANK, -(-n_outputs // groups_wanted // _RANK) * _RANK)
    return p_block, k_block, o_group


def _wrap_int32(values):
    """int64 -> int32 modulo 2**32: the true sum, congruent mod 2**32 to ``values``, fits int32."""
    return ((values - INT32_MIN) % 2**32 + INT32_MIN).astype(np.int32)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True, eq=False)
class PackedWeights:
    """Weights laid out once for :func:`conv2d`'s GEMM (what fbgemm and TFLite call prepacking).

    ``codes`` (O, C, kh, kw) int8, as given; ``w_range`` their declared (checked) value range;
    ``sums`` (O,) int64, each output's sum of weights; ``matrix`` the GEMM's layout:
    :func:`refquant.integer.vnni.pack_weights`' (O/8, K/4, 8, 4) when ``vnni``, else
    (O padded to 4, K padded to 4), row o = codes[o] flattened (c, i, j), zero-padded;
    ``direct_matrix`` with ``vnni``, the layout of stride-1 convolutions without im2col
    (:func:`refquant.integer.vnni.pack_direct_weights`), else None; ``amx_matrix`` and
    ``amx_direct_matrix``, where the AMX GEMM runs this layer (:func:`use_amx`), the same two for
    :mod:`refquant.integer.amx` (:func:`refquant.integer.amx.pack_weights`, ``pack_direct_weights``;
    the direct one only when C is a multiple of 64), else None.
    """

    codes: np.ndarray
    w_range: tuple
    sums: np.ndarray
    matrix: np.ndarray
    vnni: bool
    direct_matrix: np.ndarray = None
    amx_matrix: np.ndarray = None
    amx_direct_matrix: np.ndarray = None


AMX_MIN_K = 256
"""Products per output (C*kh*kw) from which a layer is packed for AMX as well as VNNI: below it,
K padded to whole 64-byte tile rows wastes up to half of the tiles' work (e.g. 144 -> 192,
72 -> 128) on layers whose GEMM is small anyway. (yolov2-tiny-voc's layers with K < 256, the
first two, would not take AMX in any case: their channels, 3 and 16, do not fill whole tiles
and VNNI reads their columns from the padded input, faster than AMX after im2col, as at 32->64
@ 104x104, K = 288: 1.05 against 1.3 to 1.5 ms.)"""


def use_amx(w_shape):
    """Whether :func:`pack_weights` lays weights of shape (O, C, kh, kw) out for the AMX GEMM: AMX
    (:func:`refquant.integer.amx.amx_available`, which implies VNNI here: the VNNI path runs the
    shapes AMX does not take) and K at least :data:`AMX_MIN_K`."""
    _, channels, kh, kw = w_shape
    return channels * kh * kw >= AMX_MIN_K and amx.amx_available()


def pack_weights(w, w_range=None):
    """:class:`PackedWeights` of ``w`` (O, C, kh, kw) int8: pass it to :func:`conv2d` in place of ``w``
    when the same weights convolve many inputs (a network's layer), to pack them once.

    ``w_range`` optionally declares tighter bounds than int8's, checked against ``w``.
    Which layout is made (AMX, VNNI or portable) is decided here, by :func:`use_amx` and
    :func:`refquant.integer.vnni.vnni_available`.
    """
    if not isinstance(w, np.ndarray) or w.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"w must be an int8 numpy array, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim != 4 or min(w.shape) < 1:
        raise ValueError(f"w must have shape (O, C, kh, kw) with no empty axis, got shape {w.shape}")
    w_range = _declared_range("w", w, w_range)
    n_outputs = w.shape[0]
    flat = w.reshape(n_outputs, -1)
    use_vnni = vnni.vnni_available()
    direct = amx_matrix = amx_direct = None
    if use_vnni:
        matrix, direct = vnni.pack_weights(flat), vnni.pack_direct_weights(w)
        if use_amx(w.shape):
            amx_matrix = amx.pack_weights(flat)
            if w.shape[1] % (amx.K_STEP * amx.K_BLOCK) == 0:  # whole blocks of channels: one tile load each
                amx_direct = amx.pack_direct_weights(w)
    else:
        matrix = np.zeros((_round_up(n_outputs, _RANK), _round_up(flat.shape[1], _RANK)), np.int8)
        matrix[:n_outputs, :flat.shape[1]] = flat
    return PackedWeights(w, w_range, flat.sum(1, dtype=np.int64), matrix, use_vnni, direct, amx_matrix, amx_direct)


def conv2d(x, w, stride=1, pad=0, bias=None, x_range=None, w_range=None, x_zero_point=0):
    """Exact integer correlation, fast: bit-identical to :func:`conv2d_reference`.

    x: (N, C, H, W) uint8, int8 or int16 values (zero points already removed);
    w: (O, C, kh, kw) int8, or its :func:`pack_weights` (then ``w_range`` is the packed one);
    bias: optional (O,) int32 the accumulators start from;
    returns int32 (N, O, Ho, Wo), Ho = (H+2pad-kh)//stride+1.
    Raises ValueError before computing if the int32 accumulator could overflow
    (:func:`check_accumulator_range`, with the dtypes' ranges unless
    ``x_range``/``w_range`` declare tighter ones, which are checked against the data).

    Method: x - offset (offset = min(x, 0)) is made non-negative and cut into
    bytes, laid out as the GEMM's columns (im2col, or the padded input itself for stride-1
    convolutions on the VNNI path); an int32 GEMM with the packed weights accumulates each byte
    plane, and ``256**b`` and ``offset * sum(w)`` are added back (see the comment above ``_RANK``).
    The GEMM is :mod:`refquant.integer.amx`'s (TDPBSUD) for the layers :func:`pack_weights` lays
    out for it, else :mod:`refquant.integer.vnni`'s (VPDPBUSD) where the CPU has AVX-512 VNNI, else
    :func:`_gemm_accumulate`; all sum products in wrap-around int32, so all give the exact sums
    whenever the range check passes. Parallel with Numba's threads.

    ``x_zero_point``: the correlation is of ``x - x_zero_point`` (``x_range`` then bounds those
    values): pass uint8 codes and their zero point as they are, as fbgemm takes them, and
    ``conv2d(codes, w, x_zero_point=z)`` equals ``conv2d_reference(codes.astype(np.int16) - z, w)``.
    """
    shape, chunks = accumulator_chunks(x, w, stride, pad, bias, x_range, w_range, x_zero_point)
    out = np.empty(shape, np.int32)
    for images, acc, (image_size, row_size) in chunks:
        out[images] = pixel_view(acc, shape[1], images.stop - images.start, shape[2], shape[3], image_size,
                                 row_size).transpose(1, 0, 2, 3)
    return out


def pixel_view(acc, n_outputs, n_images, out_height, out_width, image_size, row_size):
    """acc (O', P') -> the view (O, n, Ho, Wo) of its accumulators (see :func:`accumulator_chunks`)."""
    images = acc[:n_outputs, :n_images * image_size].reshape(n_outputs, n_images, image_size)
    return images[:, :, :out_height * row_size].reshape(n_outputs, n_images, out_height, row_size)[..., :out_width]


def accumulator_chunks(x, w, stride=1, pad=0, bias=None, x_range=None, w_range=None, x_zero_point=0):
    """:func:`conv2d`'s accumulators a few images at a time, for a caller that consumes them in place
    (``refquant.integer.requantize.conv2d_requantized`` requantizes them without an int32 copy).

    Arguments and checks as :func:`conv2d` (all done before this returns). Returns
    ``(shape, chunks)``: the output shape (N, O, Ho, Wo) and an iterator of ``(images, acc,
    (image_size, row_size))``, a slice of the batch, its accumulators ``acc`` (O', P') int32,
    C-contiguous, the GEMM's own output, and their layout: ``acc[o, i*image_size + y*row_size + x]``
    is output o at pixel (y, x) of image ``images.start + i`` (image_size = Ho*Wo and row_size = Wo
    after im2col; the padded image's sizes on the direct path). Every other row and column is
    padding (garbage). A kernel reading it whole avoids slicing it: Numba's loops over a strided
    slice run many times slower. :func:`pixel_view` gives the (O, n, Ho, Wo) view.
    """
    if isinstance(w, PackedWeights):
        if w_range is not None:
            raise ValueError("w_range is declared by pack_weights when w is packed; pass it there")
        packed = w
    else:
        _check_conv_arguments(x, w, stride, pad)  # argument errors before packing
        packed = pack_weights(w, w_range)
    shape, stride, pad = _check_conv_arguments(x, packed.codes, stride, pad)
    bias, bias_range = _check_bias(bias, shape[1])
    zero_point = _check_integer("x_zero_point", x_zero_point)
    x_lo, x_hi = _declared_value_range(x, x_range, zero_point)
    check_accumulator_range((x_lo, x_hi), packed.w_range, packed.codes[0].size, bias_range)
    n_images, n_outputs, out_height, out_width = shape

    def chunks():
        chunk = max(1, _CHUNK_PIXELS // (out_height * out_width))
        for first in range(0, n_images, chunk):
            images = slice(first, min(first + chunk, n_images))
            part = x[images]
            if zero_point:  # codes and their zero point: the declared range, with no pass over x
                bounds = (x_lo, x_hi)
            else:  # x's own range when it is the whole batch: one pass over x fewer
                bounds = (x_lo, x_hi) if x_range is None and part.shape[0] == n_images else (part.min(), part.max())
            yield (images,) + _accumulators(part, packed, bias, stride, pad, (n_outputs, out_height, out_width),
                                            bounds, zero_point)

    return shape, chunks()


_CHUNK_PIXELS = 8192
"""Output pixels per GEMM: small feature maps are batched, several images to a panel (the 128x128
shapes detector's integer network about 10 % faster than one image at a time), and at most this
many pixels' columns and accumulators are live at once."""


_AMX_NS_PER_MAC = 1 / 1500
"""One core's AMX GEMM time per product, for :func:`parallel_worth`: 1500 GMAC/s, the fast end of
the 900 to 1500 measured on the benchmark's layers (about 4x the VNNI kernel's 300), so that
a GEMM goes to the threads only from 300 M products. Below, one thread was faster here: 64->128 @
52x52, 128->256 @ 26x26 and 256->512 @ 13x13 (200 to 230 M) took 0.59, 0.46 and 0.47 ms a layer in
the calling thread against 0.90, 0.70 and 0.65 ms on two (the threads' wake-up and the second
core's share of a GEMM this short); 512->1024 @ 13x13 (900 M) 1.2 ms on two against 1.5 on one."""


_AMX_DIRECT_WASTE = 8
"""On AMX, stride-1 convolutions read their columns from the padded input (no im2col) when the
padded grid's extra columns are at most 1 / this of the GEMM's work: VNNI's rule, measured right
for AMX too (at 13 x 13, 2/15 wasted, im2col was faster: the direct layout's 15-wide rows also
slow the requantization's runs)."""


def _accumulators(x, packed, bias, stride, pad, out_shape, x_bounds, zero_point=0):
    """:func:`conv2d`'s work on a few images at once: x (n, C, H, W) -> ``(acc, (image_size, row_size))``,
    acc int32 (O', P') with O' >= O (see :func:`accumulator_chunks`).

    ``x_bounds``: (min, max) of ``x - zero_point`` (or bounds containing them, for the byte count).
    Stride-1 convolutions skip im2col where the VNNI GEMM runs
    (:func:`refquant.integer.vnni.direct_columns`) unless the map is so narrow that the padded
    grid's extra columns would cost more than im2col. The AMX GEMM runs where the weights were
    packed for it, on the same two kinds of columns (which: the comment in the code).
    """
    n_images = x.shape[0]
    n_outputs, out_height, out_width = out_shape
    kernel_shape = packed.codes.shape[2:]
    n_pixels = n_images * out_height * out_width
    offset = min(int(x_bounds[0]), 0)
    n_bytes = 1 if max(int(x_bounds[1]), 0) - offset < 256 else 2
    # without im2col, (kw - 1) / Wp of the GEMM's work is wasted on the padded grid's extra columns:
    # taken when that is at most 1/8 (every 1x1 convolution, 3x3 ones on maps 14 or more wide)
    direct = packed.vnni and stride == 1 and 8 * (kernel_shape[1] - 1) <= out_width + kernel_shape[1] - 1
    # AMX reads its columns from the padded input when the channels fill whole tiles (C a multiple of
    # 64) and, like VNNI, when the wasted columns are few; it takes im2col's columns (K padded to 64)
    # only where VNNI would too: VNNI without im2col was faster than AMX with it (32->64 @ 104x104).
    amx_direct = (packed.amx_direct_matrix is not None and stride == 1
                  and _AMX_DIRECT_WASTE * (kernel_shape[1] - 1) <= out_width + kernel_shape[1] - 1)
    on_amx = packed.amx_matrix is not None and (amx_direct or not direct)
    if on_amx:
        direct = amx_direct
    layout = (out_height * out_width, out_width)
    threads = numba.get_num_threads()
    if on_amx:
        o_padded = packed.amx_matrix.shape[0] * amx.OUTPUT_BLOCK
    elif packed.vnni:
        o_padded = packed.matrix.shape[0] * vnni.OUTPUT_BLOCK
    else:
        o_padded, k_padded = packed.matrix.shape
        p_block, k_block, o_group = _blocking(o_padded, n_pixels, k_padded, threads)
    # bias + offset * sum(w) starts every accumulator; wrapped, as all the int32 sums below.
    start = np.zeros(o_padded, np.int32)
    start[:n_outputs] = _wrap_int32(bias + offset * packed.sums)
    acc = None
    for byte_index in range(n_bytes):
        first = start if byte_index == 0 else np.zeros_like(start)
        if on_amx and direct:
            matrix = packed.amx_direct_matrix
            words, gemm_layout, image_size, row_size = vnni.direct_columns(
                x, zero_point + offset, offset, byte_index, pad, *kernel_shape, parallel_worth(0.1 * x.size, threads))
            macs = o_padded * matrix.shape[1] * 64 * gemm_layout[0] * amx.TILE_PIXELS
            part = amx.gemm(matrix, words, first, threads, parallel_worth(macs * _AMX_NS_PER_MAC, threads),
                            layout=gemm_layout, acc_columns=n_images * image_size)
            layout = (image_size, row_size)
        elif on_amx:
            matrix = packed.amx_matrix
            planes = _padded_byte_planes(x, offset, byte_index, pad, zero_point, threads)
            k_steps = matrix.shape[1] * amx.K_BLOCK
            columns = vnni.im2col_tiles(planes, *kernel_shape, stride, out_height, out_width, k_steps,
                                        parallel_worth(0.4 * k_steps * n_pixels, threads))  # about 0.4 ns a word
            macs = o_padded * k_steps * 4 * columns.shape[0] * amx.TILE_PIXELS
            part = amx.gemm(matrix, columns, first, threads, parallel_worth(macs * _AMX_NS_PER_MAC, threads))
        elif direct:
            k_steps = packed.direct_matrix.shape[1]
            words, gemm_layout, image_size, row_size = vnni.direct_columns(
                x, zero_point + offset, offset, byte_index, pad, *kernel_shape, parallel_worth(0.1 * x.size, threads))
            n_computed = ((n_images - 1) * image_size // row_size + out_height) * row_size
            part = vnni.gemm(packed.direct_matrix, words, first, threads, n_computed,
                             parallel_worth(o_padded * k_steps * n_computed / 75, threads),  # 300 GMAC/s a core
                             layout=gemm_layout, acc_columns=n_images * image_size)
            layout = (image_size, row_size)
        elif packed.vnni:
            planes = _padded_byte_planes(x, offset, byte_index, pad, zero_point, threads)
            k_steps = packed.matrix.shape[1]
            columns = vnni.im2col_tiles(planes, *kernel_shape, stride, out_height, out_width, k_steps,
                                        parallel_worth(0.4 * k_steps * n_pixels, threads))  # about 0.4 ns a word
            part = vnni.gemm(packed.matrix, columns, first, threads, n_pixels,
                             parallel_worth(o_padded * k_steps * n_pixels / 75, threads))  # 300 GMAC/s a core
        else:
            planes = _padded_byte_planes(x, offset, byte_index, pad, zero_point)
            columns = _im2col_panels(planes, *kernel_shape, stride, out_height, out_width, k_padded, p_block)
            part = np.empty((columns.shape[0], o_padded, p_block), np.int32)
            part[:] = first[None, :, None]
            _gemm_accumulate(packed.matrix, columns, part, k_block, o_group)
            # (panels, Op, p_block) -> (Op, panels * p_block): undo the panel layout
            part = part.transpose(1, 0, 2).reshape(o_padded, -1)
        if byte_index == 0:
            acc = part
        else:  # NumPy's int32 arithmetic wraps, as intended here
            acc += part << np.int32(8 * byte_index)
    return acc, layout
