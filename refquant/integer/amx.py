"""The integer convolution's GEMM on AMX-INT8: tiles of unsigned bytes times signed bytes, int32 sums.

AMX adds eight tile registers (``tmm0``-``tmm7``) of up to 16 rows of 64 bytes each and an
instruction that multiplies whole tiles. ``TDPBSUD c, a, b`` (Intel SDM; LLVM's
``llvm.x86.tdpbsud``) does, for every row m of ``c`` and every int32 column n::

    for k in range(a.colsb // 4):
        c[m, n] += sum_j int8(a[m].byte[4k + j]) * uint8(b[k].byte[4n + j])     j = 0..3

``a`` signed, ``b`` unsigned: so ``a`` is a tile of weights (16 output channels by 16 K steps of
4 bytes) and ``b`` a tile of input columns (16 K steps by 16 pixels of 4 bytes), and ``c`` the
16 outputs x 16 pixels of int32 accumulators, in the orientation of the VNNI kernel's
(:mod:`refquant.integer.vnni`: outputs by pixels). One instruction is 16 x 16 x 64 = 16384
products. The arithmetic is ``VPDPBUSD``'s: each uint8 x int8 product is exact, four of them sum
exactly (|4 * 255 * -128| < 2**17), and the addition to the int32 accumulator wraps around modulo
2**32 with no saturation (Intel's pseudocode ``c + tmp1 + tmp2 + tmp3 + tmp4`` on dwords; checked
at the bounds in tests/test_amx.py). Modular addition does not depend on the order, so the
result equals :func:`refquant.integer.conv._gemm_accumulate`'s and :func:`refquant.integer.vnni.gemm`'s
bit for bit on every input, and the true sum whenever it fits int32
(:func:`refquant.integer.conv.check_accumulator_range`).

Layouts (``K_BLOCK`` = 16 K steps of 4 bytes = 64 products per tile row):

* weights ``(ceil(O/32), ceil(K/64), 32, 64)`` int8 (:func:`pack_weights`): for output block b
  and K block s, rows 0-15 are one A tile (outputs 32b..32b+15, their 64 weights
  ``w[o, 64s:64s+64]``), rows 16-31 the next: 2 KB read in one stream;
* columns: :mod:`refquant.integer.vnni`'s, unchanged. A 32-pixel tile t's K step s is 128 bytes
  (32 pixels x 4) at ``t * tile_bytes + step_offsets[s]``; a B tile is the 16 K steps of one
  16-pixel half, 64 bytes each: one strided tile load whenever the 16 steps' offsets are evenly
  spaced. So are im2col's (:func:`refquant.integer.vnni.im2col_tiles`, 128 bytes apart, with K
  padded to whole blocks) and, for stride-1 convolutions whose channels fill whole blocks
  (C a multiple of 64), :func:`refquant.integer.vnni.direct_columns`' (one kernel offset (i, j),
  channel groups ``4 * length`` bytes apart), with the weights of
  :func:`pack_direct_weights`;
* accumulators ``(O padded to 32, >= 32 T)`` int32, output channel by pixel, as the VNNI GEMM's.

The micro-kernel holds a 32 x 32 block of accumulators in four C tiles (two output halves by two
pixel halves) over all of K, loading two A tiles and two B tiles per K block (8 tiles, all of
them): four ``TDPBSUD`` per four tile loads. The tile configuration (palette 1, every tile 16 rows
of 64 bytes) is per thread: each thread loads it (``LDTILECFG``) before its tasks and releases
the tiles (``TILERELEASE``) after. The intrinsics are LLVM's with immediate tile numbers, wrapped
for Numba like vnni.py's; LLVM refuses them on a CPU without AMX and the kernel would raise
SIGILL where Linux has not granted the process the tile state, so nothing here is compiled or run
unless :func:`amx_available` says the CPU has AMX-INT8 and the kernel granted it.
"""
import ctypes
import os
import platform
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from refquant.cpu import compiles_for
from refquant.integer import vnni

K_STEP = 4
"""Bytes of one int32 lane: products summed per lane of TDPBSUD (as VPDPBUSD)."""

K_BLOCK = 16
"""K steps per tile: a tile row of 64 bytes. K is padded to a multiple of ``4 * K_BLOCK`` = 64."""

TILE_PIXELS = vnni.TILE_PIXELS
"""Pixels per micro-kernel block: two B tiles of 16, the VNNI column tiles' 32."""

OUTPUT_BLOCK = 32
"""Output channels per micro-kernel block: two A tiles of 16. O is padded to a multiple of it."""

_REQUIRED_FEATURES = ("amx-tile", "amx-int8")
_ARCH_REQ_XCOMP_PERM = 0x1023  # linux/arch/x86/include/uapi/asm/prctl.h
_XFEATURE_XTILEDATA = 18       # the tile data state, the one that needs permission
_SYS_ARCH_PRCTL = 158          # x86_64 syscall number of arch_prctl
_permission = None             # the arch_prctl request's outcome, asked once per process


def _request_permission():
    """Ask Linux for the tile data state (once per process; it then holds for every thread).

    Since Linux 5.16 a process must request AMX's 8 KB of tile state before its first tile
    instruction, else that instruction raises SIGILL; the request fails on kernels that lack
    AMX support or where it is disabled.
    """
    global _permission
    if _permission is None:
        _permission = False
        if sys.platform == "linux" and platform.machine() == "x86_64":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _permission = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
            except (OSError, AttributeError):
                _permission = False
    return _permission


def amx_available():
    """Whether :func:`gemm` may run here: the CPU Numba compiles for has AMX-INT8 and Linux grants it.

    Features by :func:`refquant.cpu.compiles_for` (the host's, or those ``NUMBA_CPU_FEATURES``
    lists when ``NUMBA_CPU_NAME`` names another CPU). And the process must be on
    Linux x86_64 with the tile state granted (arch_prctl ``ARCH_REQ_XCOMP_PERM``, asked here).
    ``REFQUANT_AMX=0`` in the environment turns this path off (the VNNI or portable kernel runs).
    """
    if os.environ.get("REFQUANT_AMX", "1") == "0":
        return False
    return _cpu_ready()


def _cpu_ready():
    """:func:`amx_available` without the environment switch: whether a tile instruction may run."""
    return compiles_for(*_REQUIRED_FEATURES) and _request_permission()


def tile_config():
    """LDTILECFG's 64 bytes: palette 1, tiles 0-7 all 16 rows of 64 bytes (the largest; the rest 0).

    Byte 0 is the palette, byte 1 the start row (0), bytes 16-47 each tile's bytes per row
    (uint16), bytes 48-63 its rows.
    """
    config = np.zeros(64, np.uint8)
    config[0] = 1
    config[16:48].view(np.uint16)[:8] = 4 * K_BLOCK
    config[48:56] = 16
    return config


_I8, _I64 = ir.IntType(8), ir.IntType(64)
_BYTE_POINTER = _I8.as_pointer()


def _call(builder, name, argument_types, arguments):
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), argument_types), name)
    builder.call(function, arguments)


@intrinsic
def _load_config(typingctx, config):
    """LDTILECFG from the 64 bytes of ``config`` (:func:`tile_config`): this thread's tile shapes."""
    def codegen(context, builder, signature, args):
        pointer = vnni.byte_pointer(context, builder, signature.args[0], args[0], ir.Constant(_I64, 0))
        _call(builder, "llvm.x86.ldtilecfg", [_BYTE_POINTER], [pointer])
        return context.get_dummy_value()
    return types.void(config), codegen


@intrinsic
def _release(typingctx):
    """TILERELEASE: this thread's tiles back to their initial state (no tile state to save)."""
    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(), codegen


# The tile numbers are immediates of the instructions: literal integers in the calling code.
def _tile_transfer(llvm_name):
    """The intrinsic of TILELOADD or TILESTORED (``llvm_name``): tile ``tile``'s 16 rows of 64 bytes
    from or to ``array``, row r at byte ``byte_offset + r * stride``."""
    @intrinsic(prefer_literal=True)
    def transfer(typingctx, tile, array, byte_offset, stride):
        if not isinstance(tile, types.IntegerLiteral):
            return None
        number = tile.literal_value

        def codegen(context, builder, signature, args):
            pointer = vnni.byte_pointer(context, builder, signature.args[1], args[1], args[2])
            stride_value = context.cast(builder, args[3], signature.args[3], types.int64)
            _call(builder, llvm_name, [_I8, _BYTE_POINTER, _I64], [ir.Constant(_I8, number), pointer, stride_value])
            return context.get_dummy_value()
        return types.void(tile, array, byte_offset, stride), codegen
    return transfer


_tile_load = _tile_transfer("llvm.x86.tileloadd64")
"""TILELOADD: tile ``tile``'s 16 rows of 64 bytes from ``array``, row r at byte ``byte_offset + r * stride``."""

_tile_store = _tile_transfer("llvm.x86.tilestored64")
"""TILESTORED: tile ``tile``'s 16 rows of 64 bytes to ``array``, row r at byte ``byte_offset + r * stride``."""


@intrinsic(prefer_literal=True)
def _dot_accumulate(typingctx, c, a, b):
    """TDPBSUD c, a, b: c[m, n] += sum over k, j of int8(a[m] byte 4k+j) * uint8(b[k] byte 4n+j), wrapping int32."""
    if not all(isinstance(t, types.IntegerLiteral) for t in (c, a, b)):
        return None
    numbers = [ir.Constant(_I8, t.literal_value) for t in (c, a, b)]

    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.tdpbsud", [_I8, _I8, _I8], numbers)
        return context.get_dummy_value()
    return types.void(c, a, b), codegen


@numba.njit(cache=True, inline="always")
def _block_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, block_offsets, row_stride):
    """acc[32b:32b+32, 32t:32t+32] = start[32b:32b+32, None] + weights[b] . columns[t], over all of K.

    Tiles 0-3 are C (outputs 0-15 and 16-31 of the block by pixels 0-15 and 16-31 of the tile),
    4-5 A (the two output halves' weights), 6-7 B (the two pixel halves' columns). The C tiles
    start from ``start`` (each output's row of 16 copies of its first value: loaded, not added
    after) and stay in the tiles over all of K: nothing goes to memory before the end (sweeping
    K in chunks, so that a chunk of the block's weights stays in L1 for every tile of the task,
    with the sums stored and reloaded between chunks, measured no faster here). The order of the
    loads and products is Intel's for a 2 x 2 block: each product starts as soon as its two
    operands are loaded.
    """
    k_blocks = weights.shape[1]
    w_base = block * k_blocks * 2048   # 32 outputs x 64 bytes per K block
    x_base = tile * tile_bytes
    s_base = block * 2048              # start: 32 rows of 16 int32
    _tile_load(0, start, s_base, 64)
    _tile_load(1, start, s_base, 64)
    _tile_load(2, start, s_base + 1024, 64)
    _tile_load(3, start, s_base + 1024, 64)
    for k_block in range(k_blocks):
        x = x_base + block_offsets[k_block]
        w = w_base + 2048 * k_block
        _tile_load(4, weights, w, 64)
        _tile_load(6, columns, x, row_stride)
        _dot_accumulate(0, 4, 6)
        _tile_load(7, columns, x + 64, row_stride)
        _dot_accumulate(1, 4, 7)
        _tile_load(5, weights, w + 1024, 64)
        _dot_accumulate(2, 5, 6)
        _dot_accumulate(3, 5, 7)
    row = 32 * block * pixel_bytes + tile * 128   # acc[32b, 32t] in bytes
    _tile_store(0, acc, row, pixel_bytes)
    _tile_store(1, acc, row + 64, pixel_bytes)
    _tile_store(2, acc, row + 16 * pixel_bytes, pixel_bytes)
    _tile_store(3, acc, row + 16 * pixel_bytes + 64, pixel_bytes)


@numba.njit(cache=True, inline="always")
def _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, task, n_tiles, tile_bytes,
               block_offsets, row_stride):
    """Task ``task``: a group of ``tiles_per_task`` tiles by a group of ``blocks_per_task`` output
    blocks, block by block (a block's weights, read by every tile of the group, stay in L2)."""
    n_blocks = weights.shape[0]
    pixel_bytes = 4 * acc.shape[1]
    n_block_groups = (n_blocks + blocks_per_task - 1) // blocks_per_task
    tile_start = (task // n_block_groups) * tiles_per_task
    block_start = (task % n_block_groups) * blocks_per_task
    for block in range(block_start, min(block_start + blocks_per_task, n_blocks)):
        for tile in range(tile_start, min(tile_start + tiles_per_task, n_tiles)):
            _block_update(weights, block, columns, tile, acc, pixel_bytes, start, tile_bytes, block_offsets,
                          row_stride)


@numba.njit(cache=True, parallel=True)
def _gemm_parallel(config, weights, columns, start, acc, tiles_per_task, blocks_per_task, n_tasks, n_tiles,
                   tile_bytes, block_offsets, row_stride, n_threads, counter):
    # Tasks from a shared counter, as vnni._gemm_parallel. The tile configuration is per thread:
    # loaded before the first tile instruction of each loop iteration, released after its last.
    for _ in numba.prange(n_threads):
        _load_config(config)
        task = vnni._fetch_add(counter, 1)
        while task < n_tasks:
            _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, task, n_tiles, tile_bytes,
                       block_offsets, row_stride)
            task = vnni._fetch_add(counter, 1)
        _release()


@numba.njit(cache=True)
def _gemm_serial(config, weights, columns, start, acc, tiles_per_task, blocks_per_task, n_tasks, n_tiles,
                 tile_bytes, block_offsets, row_stride, n_threads, counter):
    _load_config(config)
    for task in range(n_tasks):
        _gemm_task(weights, columns, start, acc, tiles_per_task, blocks_per_task, task, n_tiles, tile_bytes,
                   block_offsets, row_stride)
    _release()


def block_layout(step_offsets):
    """vnni's ``step_offsets`` (one per K step) -> ``(block_offsets, row_stride)``: each block of 16
    steps is one B tile, row r of block s at ``block_offsets[s] + r * row_stride``. ValueError unless
    the steps come in whole blocks, each evenly spaced by the same stride."""
    step_offsets = np.asarray(step_offsets, np.int64)
    if step_offsets.size == 0 or step_offsets.size % K_BLOCK:
        raise ValueError(f"{step_offsets.size} K steps: not whole blocks of {K_BLOCK}")
    blocks = step_offsets.reshape(-1, K_BLOCK)
    row_stride = int(blocks[0, 1] - blocks[0, 0])
    if not np.array_equal(blocks - blocks[:, :1], np.broadcast_to(row_stride * np.arange(K_BLOCK), blocks.shape)):
        raise ValueError("the K steps of a block are not evenly spaced by one stride: no single tile load")
    return np.ascontiguousarray(blocks[:, 0]), row_stride


def gemm(weights, columns, start, n_threads, parallel=True, layout=None, acc_columns=0):
    """acc (32B, >= 32T) int32 = start[:, None] + W . X, wrapping modulo 2**32, by TDPBSUD.

    ``weights`` (B, KB, 32, 64) int8 from :func:`pack_weights`: W[o, k] = weights[o // 32, k // 64,
    o % 32, k % 64]; ``start`` (32B,) int32, each output's first value. The columns X as
    :func:`refquant.integer.vnni.gemm`'s (``layout`` None: ``columns`` (T, 16 KB, 32, 4) uint8
    from :func:`refquant.integer.vnni.im2col_tiles`; else ``(T, tile_bytes, step_offsets)``, whose
    steps must come in evenly spaced blocks of 16, :func:`block_layout`). Every pixel of the T tiles
    is computed (those past the caller's are garbage). ``parallel``: on Numba's threads (else in
    the calling thread). ``acc_columns``: the least width of acc.
    """
    if not (_permission or _cpu_ready()):  # a tile instruction here would kill the process (SIGILL)
        raise RuntimeError("AMX-INT8 is not available here (CPU features or Linux's tile permission)")
    n_blocks, k_blocks = weights.shape[:2]
    assert weights.shape[2:] == (OUTPUT_BLOCK, 4 * K_BLOCK) and weights.dtype == np.int8
    if layout is None:
        assert columns.shape[1:] == (K_BLOCK * k_blocks, TILE_PIXELS, K_STEP) and columns.dtype == np.uint8
        layout = (columns.shape[0], columns.shape[1] * TILE_PIXELS * K_STEP,
                  TILE_PIXELS * K_STEP * np.arange(columns.shape[1]))
    n_tiles, tile_bytes, step_offsets = layout
    block_offsets, row_stride = block_layout(step_offsets)
    assert block_offsets.shape == (k_blocks,)
    assert start.shape == (OUTPUT_BLOCK * n_blocks,) and start.dtype == np.int32
    assert weights.flags.c_contiguous and columns.flags.c_contiguous
    start_rows = np.repeat(start, 16).reshape(-1, 16)   # a C tile's 16 copies of each output's start
    acc = np.empty((OUTPUT_BLOCK * n_blocks, max(TILE_PIXELS * n_tiles, acc_columns)), np.int32)
    tile_groups, block_groups = _task_grid(n_tiles, n_blocks, n_threads if parallel else 1)
    tiles_per_task, blocks_per_task = -(-n_tiles // tile_groups), -(-n_blocks // block_groups)
    n_tasks = -(-n_tiles // tiles_per_task) * -(-n_blocks // blocks_per_task)
    run = _gemm_parallel if parallel else _gemm_serial
    run(_CONFIG, weights, columns, start_rows, acc, tiles_per_task, blocks_per_task, n_tasks, n_tiles, tile_bytes,
        block_offsets, row_stride, n_threads, np.zeros(1, np.int64))
    return acc


_CONFIG = tile_config()


def _task_grid(n_tiles, n_blocks, n_threads):
    """(tile groups, block groups): tiles in groups of at most 8 (256 pixels), output blocks split
    until there are about 4 tasks per thread (so that a thread starting late finds work left;
    1, 2, 4 and 8 measured alike on the benchmark's layers)."""
    tile_groups = -(-n_tiles // 8)
    block_groups = max(1, min(n_blocks, -(-4 * n_threads // tile_groups)))
    return tile_groups, block_groups


def pack_weights(w_matrix):
    """(O, K) int8 -> (ceil(O/32), ceil(K/64), 32, 64) int8, zero-padded: the layout of :func:`gemm`."""
    n_outputs, k = w_matrix.shape
    n_blocks, k_blocks = -(-n_outputs // OUTPUT_BLOCK), -(-k // (4 * K_BLOCK))
    padded = np.zeros((n_blocks * OUTPUT_BLOCK, k_blocks * 4 * K_BLOCK), np.int8)
    padded[:n_outputs, :k] = w_matrix
    return np.ascontiguousarray(padded.reshape(n_blocks, OUTPUT_BLOCK, k_blocks, 4 * K_BLOCK).transpose(0, 2, 1, 3))


def pack_direct_weights(w):
    """(O, C, kh, kw) int8 -> :func:`pack_weights` of the (O, kh*kw*C4*4) matrix whose K order is
    (i, j, c) (channels padded to C4*4: :func:`refquant.integer.vnni.pack_direct_weights`' K order),
    for :func:`refquant.integer.vnni.direct_columns`: whole blocks when C is a multiple of 64."""
    n_outputs, channels, kh, kw = w.shape
    padded = np.zeros((n_outputs, kh, kw, -(-channels // K_STEP) * K_STEP), np.int8)
    padded[..., :channels] = w.transpose(0, 2, 3, 1)
    return pack_weights(padded.reshape(n_outputs, -1))
