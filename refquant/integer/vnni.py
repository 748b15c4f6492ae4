"""The integer convolution's GEMM on AVX-512 VNNI: unsigned bytes times signed bytes, int32 sums.

One instruction, ``VPDPBUSD``, does what the GEMM needs 64 times at once: for each of its 16 int32
lanes, ``acc += x[0]*w[0] + x[1]*w[1] + x[2]*w[2] + x[3]*w[3]`` with four uint8 ``x`` and four
int8 ``w``. Each product is exact (|255 * -128| < 2**15), the four-product sum is exact (< 2**17)
and the addition to ``acc`` wraps around modulo 2**32 with no saturation (unlike ``VPMADDUBSW``,
whose 16-bit pair sums saturate, or ``VPDPBUSDS``). So the kernel computes exactly the wrap-around
int32 sums of :func:`refquant.integer.conv._gemm_accumulate`, the portable kernel, in a different
order, and modular addition does not depend on the order: the two are equal bit for bit on every
input, and equal to the true sum whenever it fits int32, which
:func:`refquant.integer.conv.check_accumulator_range` proves before anything runs.

Layouts (K = C*kh*kw padded to ``4 * k4``; a *tile* is ``TILE_PIXELS`` = 32 output pixels):

* weights ``(O/8, k4, 8, 4)`` int8: for output block b and step s, the 8 outputs' 4 weights
  ``w[8b + r, 4s:4s+4]``, 32 contiguous bytes that the micro-kernel broadcasts one int32 at a time;
* columns ``(n_tiles, k4, 32, 4)`` uint8: im2col, for tile t and step s, the 32 pixels' 4 input bytes
  ``x[4s:4s+4, 32t + q]``, 128 contiguous bytes: two 64-byte vector loads;
* or, for stride-1 convolutions, no columns at all: the padded input with its channels
  interleaved by four, where the same 128 bytes already lie side by side
  (:func:`direct_columns`, whose K order is (i, j, c): :func:`pack_direct_weights`);
* accumulators ``(O_padded, n_tiles * 32)`` int32, output channel by pixel.

The micro-kernel keeps an 8 x 32 block of accumulators in 16 vector registers (two per output) over
all of K, streaming one 128-byte column step and one 32-byte weight step per 16 ``VPDPBUSD``.
The vectors are LLVM's ``<16 x i32>``, given to Numba as a type of its own with a few intrinsics
(zero-cost wrappers of one LLVM instruction each: load, store, broadcast, VPDPBUSD; and an atomic
add for the threads' shared task counter). LLVM refuses an intrinsic the CPU lacks, so
nothing here is compiled unless :func:`vnni_available` says the CPU has AVX-512 VNNI.
"""
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from refquant.cpu import compiles_for

TILE_PIXELS = 32
"""Output pixels per micro-kernel tile: two vectors of 16 int32 lanes."""

OUTPUT_BLOCK = 8
"""Output channels per micro-kernel tile (8 x 2 accumulator vectors of the 32 registers)."""

K_STEP = 4
"""Products summed per lane by one VPDPBUSD: K is padded to a multiple of it."""

_REQUIRED_FEATURES = ("avx512f", "avx512bw", "avx512vnni")


def vnni_available():
    """Whether :func:`gemm` may run here: the CPU Numba compiles for has AVX-512 VNNI.

    By :func:`refquant.cpu.compiles_for`: the host's CPU unless ``NUMBA_CPU_NAME`` names another
    (a portable cache, e.g. ``generic``), in which case only features ``NUMBA_CPU_FEATURES`` lists count.
    ``REFQUANT_VNNI=0`` in the environment turns this path off (the portable kernel runs instead).
    """
    if os.environ.get("REFQUANT_VNNI", "1") == "0":
        return False
    return compiles_for(*_REQUIRED_FEATURES)


class _Int32x16(types.Type):
    """Numba's name for LLVM's ``<16 x i32>``: one 512-bit register of 16 int32 lanes."""

    def __init__(self):
        super().__init__(name="int32x16")


int32x16 = _Int32x16()
_VECTOR = ir.VectorType(ir.IntType(32), 16)
_BYTES = ir.VectorType(ir.IntType(8), 64)


@register_model(_Int32x16)
class _Int32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def byte_pointer(context, builder, array_type, array, byte_offset):
    """Pointer to byte ``byte_offset`` of a C-contiguous array's data (no bounds check: callers index
    inside arrays they sized)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [byte_offset])


@intrinsic
def _load(typingctx, array, byte_offset):
    """The 64 bytes of ``array`` from ``byte_offset`` as an int32x16 (unaligned load)."""
    def codegen(context, builder, signature, args):
        pointer = byte_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=1)
    return int32x16(array, byte_offset), codegen


@intrinsic
def _store(typingctx, array, byte_offset, vector):
    """Write an int32x16 to the 64 bytes of ``array`` from ``byte_offset``."""
    def codegen(context, builder, signature, args):
        pointer = byte_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _VECTOR.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(array, byte_offset, vector), codegen


@intrinsic
def _broadcast(typingctx, array, byte_offset):
    """The 4 bytes of ``array`` at ``byte_offset`` as one int32, copied to all 16 lanes."""
    def codegen(context, builder, signature, args):
        pointer = byte_pointer(context, builder, signature.args[0], *args)
        word = builder.load(builder.bitcast(pointer, ir.IntType(32).as_pointer()), align=1)
        vector = builder.insert_element(ir.Constant(_VECTOR, None), word, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(vector, vector, ir.Constant(_VECTOR, None))
    return int32x16(array, byte_offset), codegen


@intrinsic
def _dot_accumulate(typingctx, acc, x, w):
    """VPDPBUSD: per lane, ``acc + sum_j uint8(x byte j) * int8(w byte j)``, j = 0..3, wrapping int32."""
    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR, _BYTES, _BYTES])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(function, [args[0], builder.bitcast(args[1], _BYTES), builder.bitcast(args[2], _BYTES)])
    return int32x16(acc, x, w), codegen


@intrinsic
def _fetch_add(typingctx, counter, value):
    """Atomically ``counter[0] += value`` (a 1-element int64 array); returns the value before."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = context.make_array(signature.args[0])(context, builder, args[0]).data
        addend = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", pointer, addend, "seq_cst")
    return types.int64(counter, value), codegen


@numba.njit(cache=True, inline="always")
def _store_pair(acc, byte_offset, first, second):
    _store(acc, byte_offset, first)
    _store(acc, byte_offset + 64, second)


@numba.njit(cache=True, inline="always")
def _tile_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, step_offsets):
    """acc[8b:8b+8, 32t:32t+32] = start[8b:8b+8, None] + weights[b] . columns[t], over all of K.

    ``pixel_bytes`` = 4 * acc.shape[1], the byte stride between two outputs' accumulator rows; the
    columns of step s of tile t start at byte ``t * tile_bytes + step_offsets[s]`` of ``columns``
    (:func:`gemm`'s layouts). The whole reduction stays in the 16 registers: no accumulator goes to memory before the end
    (blocking K, with the accumulators stored and reloaded between blocks, measured slower here:
    the column tile streams from L2 well enough).
    """
    k_steps = weights.shape[1]
    w_base = (block * k_steps) * 32            # 8 outputs x 4 bytes per K step
    x_base = tile * tile_bytes
    o = 8 * block
    a0 = b0 = _broadcast(start, 4 * o)
    a1 = b1 = _broadcast(start, 4 * (o + 1))
    a2 = b2 = _broadcast(start, 4 * (o + 2))
    a3 = b3 = _broadcast(start, 4 * (o + 3))
    a4 = b4 = _broadcast(start, 4 * (o + 4))
    a5 = b5 = _broadcast(start, 4 * (o + 5))
    a6 = b6 = _broadcast(start, 4 * (o + 6))
    a7 = b7 = _broadcast(start, 4 * (o + 7))
    for step in range(k_steps):
        x = x_base + step_offsets[step]
        xa, xb = _load(columns, x), _load(columns, x + 64)
        w = w_base + 32 * step
        w0, w1, w2, w3 = _broadcast(weights, w), _broadcast(weights, w + 4), _broadcast(weights, w + 8), _broadcast(weights, w + 12)
        a0, b0 = _dot_accumulate(a0, xa, w0), _dot_accumulate(b0, xb, w0)
        a1, b1 = _dot_accumulate(a1, xa, w1), _dot_accumulate(b1, xb, w1)
        a2, b2 = _dot_accumulate(a2, xa, w2), _dot_accumulate(b2, xb, w2)
        a3, b3 = _dot_accumulate(a3, xa, w3), _dot_accumulate(b3, xb, w3)
        w4, w5, w6, w7 = _broadcast(weights, w + 16), _broadcast(weights, w + 20), _broadcast(weights, w + 24), _broadcast(weights, w + 28)
        a4, b4 = _dot_accumulate(a4, xa, w4), _dot_accumulate(b4, xb, w4)
        a5, b5 = _dot_accumulate(a5, xa, w5), _dot_accumulate(b5, xb, w5)
        a6, b6 = _dot_accumulate(a6, xa, w6), _dot_accumulate(b6, xb, w6)
        a7, b7 = _dot_accumulate(a7, xa, w7), _dot_accumulate(b7, xb, w7)
    row = o * pixel_bytes + tile * 128  # acc[8b, 32t] in bytes
    _store_pair(acc, row, a0, b0)
    _store_pair(acc, row + pixel_bytes, a1, b1)
    _store_pair(acc, row + 2 * pixel_bytes, a2, b2)
    _store_pair(acc, row + 3 * pixel_bytes, a3, b3)
    _store_pair(acc, row + 4 * pixel_bytes, a4, b4)
    _store_pair(acc, row + 5 * pixel_bytes, a5, b5)
    _store_pair(acc, row + 6 * pixel_bytes, a6, b6)
    _store_pair(acc, row + 7 * pixel_bytes, a7, b7)


@numba.njit(cache=True, inline="always")
def _half_tile_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, step_offsets):
    """:func:`_tile_update` on the first 16 pixels of the tile alone: the last tile, when the
    pixels end within its first half (13x13 maps: 169 = 5 x 32 + 9 pixels, 176 computed, not 192)."""
    k_steps = weights.shape[1]
    w_base, x_base = (block * k_steps) * 32, tile * tile_bytes
    o = 8 * block
    a0, a1 = _broadcast(start, 4 * o), _broadcast(start, 4 * (o + 1))
    a2, a3 = _broadcast(start, 4 * (o + 2)), _broadcast(start, 4 * (o + 3))
    a4, a5 = _broadcast(start, 4 * (o + 4)), _broadcast(start, 4 * (o + 5))
    a6, a7 = _broadcast(start, 4 * (o + 6)), _broadcast(start, 4 * (o + 7))
    for step in range(k_steps):
        xa, w = _load(columns, x_base + step_offsets[step]), w_base + 32 * step
        a0, a1 = _dot_accumulate(a0, xa, _broadcast(weights, w)), _dot_accumulate(a1, xa, _broadcast(weights, w + 4))
        a2, a3 = _dot_accumulate(a2, xa, _broadcast(weights, w + 8)), _dot_accumulate(a3, xa, _broadcast(weights, w + 12))
        a4, a5 = _dot_accumulate(a4, xa, _broadcast(weights, w + 16)), _dot_accumulate(a5, xa, _broadcast(weights, w + 20))
        a6, a7 = _dot_accumulate(a6, xa, _broadcast(weights, w + 24)), _dot_accumulate(a7, xa, _broadcast(weights, w + 28))
    row = o * pixel_bytes + tile * 128
    _store(acc, row, a0)
    _store(acc, row + pixel_bytes, a1)
    _store(acc, row + 2 * pixel_bytes, a2)
    _store(acc, row + 3 * pixel_bytes, a3)
    _store(acc, row + 4 * pixel_bytes, a4)
    _store(acc, row + 5 * pixel_bytes, a5)
    _store(acc, row + 6 * pixel_bytes, a6)
    _store(acc, row + 7 * pixel_bytes, a7)


@numba.njit(cache=True, parallel=True)
def _gemm_parallel(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, n_tasks,
                   n_tiles, tile_bytes, step_offsets, n_threads, counter):
    # Each thread takes the next task from a shared counter (``counter``, [0], made by the caller:
    # an array made here would be a parallel loop of its own) until none is left, rather than an
    # equal share fixed in advance: a thread that starts late (its core busy with another job,
    # or slow to wake) then does fewer tasks instead of holding up the others at the end.
    for _ in numba.prange(n_threads):
        task = _fetch_add(counter, 1)
        while task < n_tasks:
            _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, task,
                       n_tiles, tile_bytes, step_offsets)
            task = _fetch_add(counter, 1)


@numba.njit(cache=True)
def _gemm_serial(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, n_tasks,
                 n_tiles, tile_bytes, step_offsets, n_threads, counter):
    for task in range(n_tasks):
        _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, task,
                   n_tiles, tile_bytes, step_offsets)


@numba.njit(cache=True, inline="always")
def _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, task,
               n_tiles, tile_bytes, step_offsets):
    """Task ``task``: a group of ``tiles_per_task`` tiles by a group of ``blocks_per_task`` output
    blocks, tile by tile (a tile's columns, read by every block of the group, stay in L2)."""
    n_blocks = weights.shape[0]
    pixel_bytes = 4 * acc.shape[1]
    n_block_groups = (n_blocks + blocks_per_task - 1) // blocks_per_task
    tile_start = (task // n_block_groups) * tiles_per_task
    block_start = (task % n_block_groups) * blocks_per_task
    for tile in range(tile_start, min(tile_start + tiles_per_task, n_tiles)):
        half = half_last_tile and tile == n_tiles - 1
        for block in range(block_start, min(block_start + blocks_per_task, n_blocks)):
            if half:
                _half_tile_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, step_offsets)
            else:
                _tile_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, step_offsets)


def gemm(weights, columns, start, n_threads, n_pixels=None, parallel=True, layout=None, acc_columns=0):
    """acc (8B, >= 32T) int32 = start[:, None] + W . X, wrapping modulo 2**32, by VPDPBUSD.

    ``weights`` (B, k4, 8, 4) int8 from :func:`pack_weights`: W[o, k] = weights[o // 8, k // 4, o % 8,
    k % 4]; ``start`` (8B,) int32, each output's first value. The columns X, by ``layout``:

    * None: ``columns`` (T, k4, 32, 4) uint8 from :func:`im2col_tiles`, X[k, p] =
      columns[p // 32, k // 4, p % 32, k % 4];
    * ``(T, tile_bytes, step_offsets)``: the 4 bytes of X[4s:4s+4, p] are the word at byte
      ``(p // 32) * tile_bytes + step_offsets[s] + 4 * (p % 32)`` of ``columns`` (any C-contiguous
      array): :func:`direct_columns`' layout, where the columns are the input itself.

    ``parallel``: on Numba's threads (else in the calling thread: small work).
    ``n_pixels``: the pixels that matter (default all); when they end in the first half of the
    last tile, its second half is not computed (left as garbage: the caller reads ``acc[:, :n_pixels]``).
    ``acc_columns``: the least width of acc (a caller that views it as images with padding).

    Work is cut into tasks of a few tiles by a group of output blocks, several per thread, that
    the threads take one at a time as they come free.
    """
    n_blocks = weights.shape[0]
    if layout is None:
        assert weights.shape[1:] == (columns.shape[1], OUTPUT_BLOCK, K_STEP) and columns.shape[2:] == (TILE_PIXELS, K_STEP)
        n_tiles = columns.shape[0]
        layout = (n_tiles, columns.shape[1] * TILE_PIXELS * K_STEP, TILE_PIXELS * K_STEP * np.arange(columns.shape[1]))
    n_tiles, tile_bytes, step_offsets = layout
    assert step_offsets.shape == (weights.shape[1],) and weights.shape[2:] == (OUTPUT_BLOCK, K_STEP)
    assert start.shape == (OUTPUT_BLOCK * n_blocks,) and start.dtype == np.int32
    assert weights.flags.c_contiguous and columns.flags.c_contiguous
    tile_groups, block_groups = _task_grid(n_tiles, n_blocks, n_threads)
    acc = np.empty((OUTPUT_BLOCK * n_blocks, max(TILE_PIXELS * n_tiles, acc_columns)), np.int32)
    half_last_tile = n_pixels is not None and n_pixels <= TILE_PIXELS * (n_tiles - 1) + TILE_PIXELS // 2
    tiles_per_task, blocks_per_task = -(-n_tiles // tile_groups), -(-n_blocks // block_groups)
    n_tasks = -(-n_tiles // tiles_per_task) * -(-n_blocks // blocks_per_task)
    run = _gemm_parallel if parallel else _gemm_serial
    run(weights, columns, start, acc, tiles_per_task, blocks_per_task, half_last_tile, n_tasks, n_tiles, tile_bytes,
        np.ascontiguousarray(step_offsets, np.int64), n_threads, np.zeros(1, np.int64))
    return acc


def _task_grid(n_tiles, n_blocks, n_threads):
    """(tile groups, block groups): tiles in groups of at most 8 (256 pixels), output blocks split
    until there are about 8 tasks per thread (so that a thread starting late finds work left)."""
    tile_groups = -(-n_tiles // 8)
    block_groups = max(1, min(n_blocks, -(-8 * n_threads // tile_groups)))
    return tile_groups, block_groups


def pack_weights(w_matrix):
    """(O, K) int8 -> (ceil(O/8), ceil(K/4), 8, 4) int8, zero-padded: the layout of :func:`gemm`."""
    n_outputs, k = w_matrix.shape
    packed = np.zeros((-(-n_outputs // OUTPUT_BLOCK), -(-k // K_STEP), OUTPUT_BLOCK, K_STEP), np.int8)
    _pack_weights_into(np.ascontiguousarray(w_matrix), packed)
    return packed


@numba.njit(cache=True, parallel=True)
def _pack_weights_into(w_matrix, packed):
    n_outputs, k_total = w_matrix.shape
    for o in numba.prange(n_outputs):
        block, row = o // OUTPUT_BLOCK, o % OUTPUT_BLOCK
        for k in range(k_total):
            packed[block, k // K_STEP, row, k % K_STEP] = w_matrix[o, k]


def im2col_tiles(planes, kh, kw, stride, out_height, out_width, k_steps, parallel=True):
    """Padded (N, C, Hp, Wp) uint8 -> columns (n_tiles, k_steps, 32, 4) uint8 for :func:`gemm`.

    Pixel p = (n*Ho + y)*Wo + x (the images' output pixels one after another) goes to tile p // 32,
    lane p % 32; K row k = (c*kh + i)*kw + j to step k // 4, byte k % 4, and holds the padded input
    at (n, c, y*stride + i, x*stride + j). Rows past K and pixels past N*Ho*Wo are 0.

    The four bytes of a lane are one little-endian uint32, ``row0 | row1 << 8 | row2 << 16 | row3 << 24``,
    built from four input rows read in step and stored as words: a loop LLVM vectorises, where
    byte stores four apart are not. One task per K step, so no two threads write the same block.
    """
    n_pixels = planes.shape[0] * out_height * out_width
    n_tiles = -(-n_pixels // TILE_PIXELS)
    words = np.empty((n_tiles, k_steps, TILE_PIXELS), np.uint32)
    words[n_tiles - 1, :, n_pixels - (n_tiles - 1) * TILE_PIXELS:] = 0  # pixels past N*Ho*Wo
    fill = _fill_tiles_parallel if parallel else _fill_tiles_serial
    fill(planes, kh, kw, stride, out_height, out_width, words)
    return words.view(np.uint8).reshape(n_tiles, k_steps, TILE_PIXELS, K_STEP)


@numba.njit(cache=True, parallel=True)
def _fill_tiles_parallel(planes, kh, kw, stride, out_height, out_width, words):
    for step in numba.prange(words.shape[1]):
        _fill_step(planes, kh, kw, stride, out_height, out_width, words, step)


@numba.njit(cache=True)
def _fill_tiles_serial(planes, kh, kw, stride, out_height, out_width, words):
    for step in range(words.shape[1]):
        _fill_step(planes, kh, kw, stride, out_height, out_width, words, step)


@numba.njit(cache=True, inline="always")
def _fill_step(planes, kh, kw, stride, out_height, out_width, words, step):
    """K step ``step`` of :func:`im2col_tiles`: its 4 rows of every tile (no array expression here:
    in a parallel function each would be a parallel loop of its own)."""
    n_images, channels, padded_height, padded_width = planes.shape
    k_steps = words.shape[1]
    # flat views with unsigned offsets: Numba then skips its negative-index test in the inner loop
    source, destination = planes.reshape(-1), words.reshape(-1)
    image_size, plane_size = np.uint64(channels * padded_height * padded_width), np.uint64(padded_height * padded_width)
    row_step, k_total = np.uint64(stride * padded_width), channels * kh * kw
    # offset of the input that row k reads for output (n, y, x) = offset_k + n*image + y*row_step + x*stride
    offsets = np.empty(K_STEP, np.uint64)
    valid = 0
    for byte in range(K_STEP):
        k = K_STEP * step + byte
        offsets[byte] = 0
        if k < k_total:
            c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
            offsets[byte] = c * plane_size + np.uint64(i * padded_width + j)
            valid += 1
    tile, lane = 0, 0  # where pixel p goes, counted rather than divided
    for n in range(n_images):
        for y in range(out_height):
            row = np.uint64(n) * image_size + np.uint64(y) * row_step
            x = 0
            while x < out_width:  # the run of row y that falls in the current tile
                run = min(out_width - x, TILE_PIXELS - lane)
                start = np.uint64((tile * k_steps + step) * TILE_PIXELS + lane)
                first = row + np.uint64(x * stride)
                if valid == K_STEP:
                    _interleave(destination, start, np.uint64(run), source, first + offsets[0],
                                first + offsets[1], first + offsets[2], first + offsets[3], stride)
                else:  # the last step, partly past K: the missing bytes are 0
                    for q in range(run):
                        word = np.uint32(0)
                        for byte in range(valid):
                            word |= np.uint32(source[first + offsets[byte] + np.uint64(q * stride)]) << (8 * byte)
                        destination[start + np.uint64(q)] = word
                x += run
                lane += run
                if lane == TILE_PIXELS:
                    tile, lane = tile + 1, 0


@numba.njit(cache=True, inline="always")
def _interleave(destination, start, count, source, s0, s1, s2, s3, stride):
    """destination[start + q] = the uint32 of bytes source[s0 + q*stride], [s1 + ...], [s2 + ...], [s3 + ...]."""
    if stride == 1:  # contiguous reads: the loop LLVM vectorises
        for q in range(count):
            destination[start + q] = (np.uint32(source[s0 + q]) | (np.uint32(source[s1 + q]) << 8)
                                      | (np.uint32(source[s2 + q]) << 16) | (np.uint32(source[s3 + q]) << 24))
    else:
        step = np.uint64(stride)
        for q in range(count):
            at = q * step
            destination[start + q] = (np.uint32(source[s0 + at]) | (np.uint32(source[s1 + at]) << 8)
                                      | (np.uint32(source[s2 + at]) << 16) | (np.uint32(source[s3 + at]) << 24))


def pack_direct_weights(w):
    """(O, C, kh, kw) int8 -> :func:`pack_weights` of the (O, kh*kw*C4*4) matrix whose K order is
    (i, j, c), channels padded to C4*4 with zeros: the weights of :func:`direct_columns`' steps."""
    n_outputs, channels, kh, kw = w.shape
    padded = np.zeros((n_outputs, kh, kw, -(-channels // K_STEP) * K_STEP), np.int8)
    padded[..., :channels] = w.transpose(0, 2, 3, 1)
    return pack_weights(padded.reshape(n_outputs, -1))


def direct_columns(x, shift_in, offset, byte_index, pad, kh, kw, parallel=True):
    """The columns of a stride-1 convolution without im2col: ``(words, layout, image_size, row_size)``.

    x (N, C, H, W) integers; the bytes are byte ``byte_index`` of ``x - shift_in`` (as
    ``refquant.integer.conv._padded_byte_planes``: ``shift_in`` = zero point + offset), the
    padding the byte of ``0 - offset``. ``words`` (C4, L) uint32 holds the padded images one
    above the other, channels interleaved by four: word ``(n*Hp + row)*Wp + col`` of group c4 has
    channel 4*c4 + b of (n, row, col) in byte b (0 past C).

    Output pixels are counted on the padded grid, p = (n*Hp + y)*Wp + x: the input of K step
    s = (i*kw + j)*C4 + c4 for pixel p is then word ``p + i*Wp + j`` of group c4, so 32
    consecutive pixels read 128 consecutive bytes and a tile is two plain loads from the input
    (``gemm``'s ``layout``, with the K order of :func:`pack_direct_weights`). Pixels with
    x >= Wo or y >= Ho are computed from wrapped-around positions and dropped: (Wp - Wo) / Wp of
    the work (4 % at 52 x 52 with 3 x 3 kernels), where im2col would write K bytes per pixel.
    """
    x = np.ascontiguousarray(x)  # a plane of x is then one run in memory
    n_images, channels, height, width = x.shape
    padded_height, padded_width = height + 2 * pad, width + 2 * pad
    out_height = padded_height - kh + 1
    n_computed = ((n_images - 1) * padded_height + out_height) * padded_width
    n_tiles = -(-n_computed // TILE_PIXELS)
    groups = -(-channels // K_STEP)
    # every word a tile can read: the last tile's end plus the farthest kernel offset
    length = max(n_tiles * TILE_PIXELS + (kh - 1) * padded_width + kw - 1, n_images * padded_height * padded_width)
    words = np.zeros((groups, length), np.uint32)
    fill = _fill_direct_parallel if parallel else _fill_direct_serial
    fill(x, shift_in, offset, byte_index, pad, words)
    # step (i*kw + j)*C4 + c4 at byte 4 * (c4*length + i*Wp + j) (NumPy: a Python loop over the
    # steps took longer than the fill itself with 1024 channels)
    i, j, group = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(groups), indexing="ij")
    step_offsets = (4 * (group * length + i * padded_width + j)).reshape(-1).astype(np.int64)
    layout = (n_tiles, TILE_PIXELS * K_STEP, step_offsets)
    return words, layout, padded_height * padded_width, padded_width


@numba.njit(cache=True, parallel=True)
def _fill_direct_parallel(x, shift_in, offset, byte_index, pad, words):
    for task in numba.prange(words.shape[0] * x.shape[0]):
        _fill_direct_task(x, shift_in, offset, byte_index, pad, words, task)


@numba.njit(cache=True)
def _fill_direct_serial(x, shift_in, offset, byte_index, pad, words):
    for task in range(words.shape[0] * x.shape[0]):
        _fill_direct_task(x, shift_in, offset, byte_index, pad, words, task)


@numba.njit(cache=True, inline="always")
def _fill_direct_task(x, shift_in, offset, byte_index, pad, words, task):
    """Image n, channel group c4 (task = c4 * N + n) of :func:`direct_columns`' words."""
    n_images, channels, height, width = x.shape
    padded_height, padded_width = height + 2 * pad, width + 2 * pad
    group, n = task // n_images, task % n_images
    shift = 8 * byte_index
    valid = min(K_STEP, channels - K_STEP * group)  # channels past C stay 0 (their weights are 0)
    border = np.uint32(0)
    for byte in range(valid):
        border |= np.uint32(((0 - offset) >> shift) & 255) << (8 * byte)
    base = n * padded_height * padded_width
    image = words[group, base:base + padded_height * padded_width]
    if pad == 0 and valid == K_STEP:  # the plane is one run: one loop over it, four channels a word
        c = K_STEP * group
        _interleave_bytes(image, x[n, c].reshape(-1), x[n, c + 1].reshape(-1), x[n, c + 2].reshape(-1),
                          x[n, c + 3].reshape(-1), shift_in, shift)
        return
    for row in range(padded_height):
        destination = image[row * padded_width:(row + 1) * padded_width]
        if row < pad or row >= height + pad:
            for col in range(padded_width):
                destination[col] = border
            continue
        for col in range(pad):
            destination[col] = border
            destination[width + pad + col] = border
        inner = destination[pad:pad + width]
        if valid == K_STEP:
            c = K_STEP * group
            _interleave_bytes(inner, x[n, c, row - pad], x[n, c + 1, row - pad], x[n, c + 2, row - pad],
                              x[n, c + 3, row - pad], shift_in, shift)
        else:
            for byte in range(valid):
                source = x[n, K_STEP * group + byte, row - pad]
                for col in range(np.uint64(width)):  # unsigned: no wrap-around test, which blocks vectorising
                    value = (np.int64(source[col]) - shift_in) >> shift
                    inner[col] |= np.uint32(value & 255) << (8 * byte)


@numba.njit(cache=True, inline="always")
def _interleave_bytes(destination, s0, s1, s2, s3, shift_in, shift):
    """destination[q] = the word whose byte b is byte ``shift / 8`` of ``s_b[q] - shift_in``."""
    if shift_in == 0 and shift == 0:  # the low bytes as they are (uint8 codes and their zero point):
        # 32-bit lanes instead of 64-bit ones, about twice as fast
        for q in range(np.uint64(destination.size)):
            destination[q] = ((np.uint32(s0[q]) & 255) | ((np.uint32(s1[q]) & 255) << 8)
                              | ((np.uint32(s2[q]) & 255) << 16) | ((np.uint32(s3[q]) & 255) << 24))
        return
    for q in range(np.uint64(destination.size)):  # unsigned: no wrap-around test, which blocks vectorising
        b0 = np.uint32(((np.int64(s0[q]) - shift_in) >> shift) & 255)
        b1 = np.uint32(((np.int64(s1[q]) - shift_in) >> shift) & 255)
        b2 = np.uint32(((np.int64(s2[q]) - shift_in) >> shift) & 255)
        b3 = np.uint32(((np.int64(s3[q]) - shift_in) >> shift) & 255)
        destination[q] = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
