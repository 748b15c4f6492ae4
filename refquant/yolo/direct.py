"""Direct float32 convolution on AVX-512: no im2col, the padded input read in place.

A "same" convolution (stride 1, kernel k odd, padding (k - 1) / 2) is three sums over the same
products, each done here by one Numba kernel built on LLVM's ``<16 x float>`` fused multiply-add:

* forward       z[n, o, y, x]  = sum_{c,i,j} W[o, c, i, j] * xp[n, c, y + i, x + j]
* input grad.   dx[n, c, y, x] = sum_{o,i,j} W[o, c, k-1-i, k-1-j] * dzp[n, o, y + i, x + j]
* weight grad.  dW[o, c, i, j] = sum_{n,y,x} dz[n, o, y, x] * xp[n, c, y + i, x + j]

with xp the input and dzp the output gradient, each zero-padded by (k - 1) / 2 on every side. The
sums are those of ``refquant.yolo.convolutional`` (im2col + GEMM, ``products`` and
``backward_products``), computed in another order, so the float32 results differ from them by
rounding only; each order is fixed by the shapes alone (never by the thread count or the timing),
so the bits repeat from run to run and from machine to machine with AVX-512.

Layout (:func:`padded_planes`): the images' padded planes ``(Hp, Wp)`` one after another, channel
by channel: ``planes[c * L + n * Hp * Wp + row * Wp + col]``, with L past the last image's end by at
least the farthest kernel offset plus a tile, all zero. Output pixel (n, y, x) is *grid position*
``p = n * Hp * Wp + y * Wp + x``, and its input at kernel offset (i, j) of channel c is
``planes[c * L + p + i * Wp + j]``: for 16 consecutive grid positions, 16 consecutive floats, one
vector load. The kernels compute every grid position, those with y >= Ho or x >= Wo included
(their values are dropped; (Hp*Wp - Ho*Wo) / (Hp*Wp) of the work, 3 % at 128 x 128, 36 % at 8 x 8).

Forward and input gradient (:func:`correlate`): a tile of 8 outputs by 32 grid positions keeps its
16 accumulator vectors in registers over all of K = C*k*k, each step one broadcast weight per output
and two input loads; K in Darknet's order (c, i, j), one FMA per step, so each value is the
sequential float32 sum over K. The tile goes to a small scratch, then the valid positions' runs are
copied to the output. Weight gradient (:func:`weight_gradient`): per task (8 outputs, a chunk of
grid positions) 24 accumulator vectors for 8 outputs by 3 steps of K, sequential over the chunk's
positions in each of 16 lanes, then the lanes added as a halving tree (:func:`_lane_sum`); the
chunks' partial sums are added in chunk order.

LLVM refuses an AVX-512 instruction the CPU lacks, so nothing here is compiled unless
:func:`available` says the CPU has AVX-512F.
"""
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from refquant.cpu import compiles_for

TILE = 32
"""Grid positions per forward tile: two vectors of 16 float32 lanes."""

BLOCK = 8
"""Outputs per forward tile, and per weight-gradient task."""

K_BLOCK = 3
"""Steps of K per weight-gradient tile (8 x 3 accumulator vectors)."""

CHUNK = 4096
"""Grid positions per weight-gradient task: its 8 output-gradient rows (128 KB) stay in L2 while
every step of K passes over them."""

LANES = 16


def available():
    """Whether the direct kernels may run here: the CPU Numba compiles for has AVX-512F.

    By :func:`refquant.cpu.compiles_for` (the host's CPU unless ``NUMBA_CPU_NAME`` names another);
    ``REFQUANT_DIRECT=0`` in the environment turns the kernels off (im2col + GEMM runs).
    """
    if os.environ.get("REFQUANT_DIRECT", "1") == "0":
        return False
    return compiles_for("avx512f")


MIN_PIXELS = 32 * 32
"""The least output map (pixels per image) convolved directly. On smaller maps the padding
positions are a large share of the grid (36 % at 8 x 8) and the reductions long (K = C*k*k of
hundreds to thousands): im2col + the BLAS is as fast or faster there (each layer shape of the
shapes detector timed both ways on random data, then the QAT step at 1024, 256 and 64:
docs/benchmarks.md)."""


def applies(size, stride, padding, dtype, height, width):
    """Whether a convolution is one the direct kernels compute: float32, stride 1, size > 1 odd,
    "same" padding (size - 1 = 2 * padding), maps of at least :data:`MIN_PIXELS`, AVX-512 here."""
    return (dtype == np.float32 and stride == 1 and size > 1 and size - 1 == 2 * padding
            and height * width >= MIN_PIXELS and available())


class _Float32x16(types.Type):
    """Numba's name for LLVM's ``<16 x float>``: one 512-bit register of 16 float32 lanes."""

    def __init__(self):
        super().__init__(name="float32x16")


float32x16 = _Float32x16()
_VECTOR = ir.VectorType(ir.FloatType(), LANES)


@register_model(_Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _element_pointer(context, builder, array_type, array, index):
    """Pointer to element ``index`` of a C-contiguous 1-d float32 array (no bounds check: callers
    index inside arrays they sized)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def _load(typingctx, array, index):
    """The 16 floats of ``array`` from element ``index`` (unaligned load)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
    return float32x16(array, index), codegen


@intrinsic
def _store(typingctx, array, index, vector):
    """Write 16 floats to ``array`` from element ``index``."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(array, index, vector), codegen


@intrinsic
def _broadcast(typingctx, array, index):
    """Element ``index`` of ``array`` in all 16 lanes."""
    def codegen(context, builder, signature, args):
        value = builder.load(_element_pointer(context, builder, signature.args[0], *args), align=4)
        vector = builder.insert_element(ir.Constant(_VECTOR, None), value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), LANES), None))
    return float32x16(array, index), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` per lane, rounded once (``llvm.fma``: VFMADD)."""
    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.fma.v16f32")
        return builder.call(function, list(args))
    return float32x16(a, b, c), codegen


@intrinsic
def _lane_sum(typingctx, vector):
    """The 16 lanes added as a halving tree: lanes i and i+8, then i and i+4, i+2, i+1 (a fixed
    order, written out here rather than left to LLVM's reduction)."""
    def codegen(context, builder, signature, args):
        value = args[0]
        width = LANES
        while width > 1:
            width //= 2
            index_type = ir.IntType(32)
            low = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(index_type, width), list(range(width))))
            high = builder.shuffle_vector(value, value,
                                          ir.Constant(ir.VectorType(index_type, width), list(range(width, 2 * width))))
            value = builder.fadd(low, high)
        return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))
    return types.float32(vector), codegen


@intrinsic
def _zero(typingctx):
    """16 lanes of +0.0."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * LANES)
    return float32x16(), codegen


def _fresh(name, shape, dtype):
    """The default ``buffer``: a new array every call (a layer passes its workspace's instead)."""
    return np.empty(shape, dtype)


def padded_planes(x, padding, extra, buffer=_fresh):
    """x (N, C, H, W) float32 -> (planes (C*L,) float32, L): the layout of this module's docstring.

    ``extra``: grid positions past the last image that a kernel may read (its farthest kernel
    offset plus a tile), all zero. ``buffer(name, shape, dtype)``: where the planes go (an array to
    reuse: a fresh one of tens of MB costs its page faults, here more than the convolution)."""
    n_images, channels, height, width = x.shape
    grid = (height + 2 * padding) * (width + 2 * padding)
    length = n_images * grid + extra
    planes = buffer("direct_planes", (channels, length), np.float32)
    _fill_planes(np.ascontiguousarray(x), padding, planes)
    return planes.reshape(-1), length


@numba.njit(cache=True, parallel=True)
def _fill_planes(x, padding, planes):
    n_images, channels, height, width = x.shape
    grid_w = width + 2 * padding
    grid = (height + 2 * padding) * grid_w
    for c in numba.prange(channels):
        plane = planes[c]
        plane[:] = 0
        for n in range(n_images):
            for row in range(height):
                start = n * grid + (row + padding) * grid_w + padding
                plane[start:start + width] = x[n, c, row]


def pack_weights(w_matrix):
    """(O, K) float32 -> (ceil(O/8) * K * 8,) float32: for output block b and step k, the 8 outputs'
    weights ``w[8b:8b+8, k]`` side by side (zeros past O), the order :func:`correlate` broadcasts."""
    n_outputs, k = w_matrix.shape
    blocks = -(-n_outputs // BLOCK)
    packed = np.zeros((blocks * BLOCK, k), np.float32)
    packed[:n_outputs] = w_matrix
    return np.ascontiguousarray(packed.reshape(blocks, BLOCK, k).transpose(0, 2, 1)).reshape(-1)


def kernel_offsets(channels, size, plane_length, grid_w):
    """Offsets (C*size*size,) int64 of step k = (c*size + i)*size + j: ``c*L + i*Wp + j``."""
    c, i, j = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
    return (c * plane_length + i * grid_w + j).reshape(-1).astype(np.int64)


def correlate(packed, planes, offsets, n_outputs, n_images, grid_h, grid_w, out_h, out_w, out=None):
    """out (N, O, out_h*out_w) float32: out[n, o, y*out_w + x] = sum over steps k of
    W[o, k] * planes[offsets[k] + p], p = (n*grid_h + y)*grid_w + x, K in order (one FMA a step).

    ``packed`` from :func:`pack_weights`, ``offsets`` from :func:`kernel_offsets`; ``planes`` must
    hold every position a tile reads (:func:`padded_planes`' ``extra`` >= max offset + TILE).
    ``out``: an array of that shape to fill instead of a fresh one."""
    if out is None:
        out = np.empty((n_images, n_outputs, out_h * out_w), np.float32)
    n_tiles = -(-(n_images * grid_h * grid_w) // TILE)
    _correlate(packed, planes, offsets, n_tiles, grid_h, grid_w, out_h, out_w, out)
    return out


TILES_PER_TASK = 4
"""Forward tiles (128 grid positions) per parallel task; with :data:`BLOCKS_PER_TASK` output blocks,
the task's inputs (128 positions by K) and weights (32 outputs by K) stay in L2 while each tile
meets each block."""

BLOCKS_PER_TASK = 4


@numba.njit(cache=True, parallel=True)
def _correlate(packed, planes, offsets, n_tiles, grid_h, grid_w, out_h, out_w, out):
    n_images, n_outputs, spatial = out.shape
    n_blocks = -(-n_outputs // BLOCK)
    k_steps = offsets.shape[0]
    flat = out.reshape(-1)
    grid = grid_h * grid_w
    tile_groups = -(-n_tiles // TILES_PER_TASK)
    block_groups = -(-n_blocks // BLOCKS_PER_TASK)
    for task in numba.prange(tile_groups * block_groups):
        first_tile = (task // block_groups) * TILES_PER_TASK
        first_block = (task % block_groups) * BLOCKS_PER_TASK
        tiles = min(n_tiles - first_tile, TILES_PER_TASK)
        scratch = np.empty(BLOCK * TILE, np.float32)
        # per tile, its runs of valid pixels: (first lane, length, output index of (n, 0, y, x))
        runs = np.empty((TILES_PER_TASK, TILE, 3), np.int64)
        n_runs = np.empty(TILES_PER_TASK, np.int64)
        for t in range(tiles):
            n_runs[t] = _tile_runs((first_tile + t) * TILE, grid, grid_w, out_h, out_w, n_outputs * spatial,
                                   spatial, n_images, runs[t])
        for block in range(first_block, min(n_blocks, first_block + BLOCKS_PER_TASK)):
            for t in range(tiles):
                if n_runs[t] == 0:
                    continue
                _tile_products(packed, planes, offsets, k_steps, block, (first_tile + t) * TILE, scratch)
                for r in range(min(BLOCK, n_outputs - BLOCK * block)):
                    o = BLOCK * block + r
                    for run in range(n_runs[t]):
                        lane, length = runs[t, run, 0], runs[t, run, 1]
                        destination = runs[t, run, 2] + o * spatial
                        flat[destination:destination + length] = scratch[r * TILE + lane:r * TILE + lane + length]


@numba.njit(cache=True, inline="always")
def _tile_runs(p0, grid, grid_w, out_h, out_w, image_size, spatial, n_images, runs):
    """The runs of valid output pixels among grid positions p0 .. p0+31: how many, into ``runs``."""
    n_runs = 0
    q = 0
    while q < TILE:
        p = p0 + q
        n = p // grid
        rest = p - n * grid
        y = rest // grid_w
        x = rest - y * grid_w
        if n >= n_images:
            break
        if y >= out_h or x >= out_w:  # padding position: skip to the next row's start
            q += grid_w - x
            continue
        length = min(out_w - x, TILE - q)
        runs[n_runs, 0], runs[n_runs, 1], runs[n_runs, 2] = q, length, n * image_size + y * out_w + x
        n_runs += 1
        q += length
    return n_runs


@numba.njit(cache=True, inline="always")
def _tile_products(packed, planes, offsets, k_steps, block, p0, scratch):
    """scratch (8 x 32) = the 8 outputs of ``block`` at grid positions p0 .. p0+31, over all of K."""
    w = block * k_steps * BLOCK
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _zero()
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = _zero()
    for k in range(k_steps):
        at = offsets[k] + p0
        xa, xb = _load(planes, at), _load(planes, at + LANES)
        wk = w + BLOCK * k
        w0, w1, w2, w3 = _broadcast(packed, wk), _broadcast(packed, wk + 1), _broadcast(packed, wk + 2), _broadcast(packed, wk + 3)
        a0, b0 = _fma(w0, xa, a0), _fma(w0, xb, b0)
        a1, b1 = _fma(w1, xa, a1), _fma(w1, xb, b1)
        a2, b2 = _fma(w2, xa, a2), _fma(w2, xb, b2)
        a3, b3 = _fma(w3, xa, a3), _fma(w3, xb, b3)
        w4, w5, w6, w7 = _broadcast(packed, wk + 4), _broadcast(packed, wk + 5), _broadcast(packed, wk + 6), _broadcast(packed, wk + 7)
        a4, b4 = _fma(w4, xa, a4), _fma(w4, xb, b4)
        a5, b5 = _fma(w5, xa, a5), _fma(w5, xb, b5)
        a6, b6 = _fma(w6, xa, a6), _fma(w6, xb, b6)
        a7, b7 = _fma(w7, xa, a7), _fma(w7, xb, b7)
    _store(scratch, 0, a0)
    _store(scratch, 16, b0)
    _store(scratch, 32, a1)
    _store(scratch, 48, b1)
    _store(scratch, 64, a2)
    _store(scratch, 80, b2)
    _store(scratch, 96, a3)
    _store(scratch, 112, b3)
    _store(scratch, 128, a4)
    _store(scratch, 144, b4)
    _store(scratch, 160, a5)
    _store(scratch, 176, b5)
    _store(scratch, 192, a6)
    _store(scratch, 208, b6)
    _store(scratch, 224, a7)
    _store(scratch, 240, b7)


def weight_gradient(gradient_planes, gradient_length, planes, offsets, n_outputs, n_positions, buffer=_fresh):
    """dW (O, K) float32 = sum over grid positions p < n_positions of
    gradient_planes[o * gradient_length + p] * planes[offsets[k] + p].

    ``gradient_planes``: the output gradient on the input's grid (zero at padding positions), O
    rounded up to a multiple of 8 planes of ``gradient_length`` (the extra ones zero). Per task
    (8 outputs, :data:`CHUNK` positions) the lanes' sequential sums, then the 16 lanes by :func:`_lane_sum`;
    the chunks' sums added in chunk order."""
    k_total = offsets.shape[0]
    n_blocks = -(-n_outputs // BLOCK)
    n_chunks = -(-n_positions // CHUNK)
    padded_offsets = np.concatenate([offsets, np.full(-k_total % K_BLOCK, offsets[0], np.int64)])
    partial = buffer("direct_partial", (n_chunks, n_blocks * BLOCK, padded_offsets.shape[0]), np.float32)
    _weight_gradient(gradient_planes, gradient_length, planes, padded_offsets, n_positions, n_blocks, partial)
    dw = partial[0].copy()
    for chunk in partial[1:]:
        dw += chunk
    return dw[:n_outputs, :k_total]


@numba.njit(cache=True, parallel=True)
def _weight_gradient(gradient_planes, gradient_length, planes, offsets, n_positions, n_blocks, partial):
    n_chunks = partial.shape[0]
    k_blocks = offsets.shape[0] // K_BLOCK
    for task in numba.prange(n_chunks * n_blocks):
        chunk, block = task // n_blocks, task % n_blocks
        start = chunk * CHUNK
        stop = min(n_positions, start + CHUNK)
        for kb in range(k_blocks):
            _gradient_tile(gradient_planes, gradient_length, planes, offsets, block, kb, start, stop,
                           partial[chunk, BLOCK * block:BLOCK * (block + 1), K_BLOCK * kb:K_BLOCK * (kb + 1)])


@numba.njit(cache=True, inline="always")
def _gradient_tile(g, length, planes, offsets, block, kb, start, stop, sums):
    """sums (8, 3)[r, s] = the sum over positions p = start, start+1, ... < stop of
    g[(8*block + r) * length + p] * planes[offsets[3*kb + s] + p]: per lane (p mod 16) in order, then
    the lanes by :func:`_lane_sum` (positions past n_positions, up to the next multiple of 16, are
    zero in g)."""
    o = BLOCK * block * length
    x0, x1, x2 = offsets[K_BLOCK * kb], offsets[K_BLOCK * kb + 1], offsets[K_BLOCK * kb + 2]
    a0 = a1 = a2 = b0 = b1 = b2 = c0 = c1 = c2 = d0 = d1 = d2 = _zero()
    e0 = e1 = e2 = f0 = f1 = f2 = g0 = g1 = g2 = h0 = h1 = h2 = _zero()
    for p in range(start, stop, LANES):
        u0, u1, u2 = _load(planes, x0 + p), _load(planes, x1 + p), _load(planes, x2 + p)
        v = _load(g, o + p)
        a0, a1, a2 = _fma(v, u0, a0), _fma(v, u1, a1), _fma(v, u2, a2)
        v = _load(g, o + length + p)
        b0, b1, b2 = _fma(v, u0, b0), _fma(v, u1, b1), _fma(v, u2, b2)
        v = _load(g, o + 2 * length + p)
        c0, c1, c2 = _fma(v, u0, c0), _fma(v, u1, c1), _fma(v, u2, c2)
        v = _load(g, o + 3 * length + p)
        d0, d1, d2 = _fma(v, u0, d0), _fma(v, u1, d1), _fma(v, u2, d2)
        v = _load(g, o + 4 * length + p)
        e0, e1, e2 = _fma(v, u0, e0), _fma(v, u1, e1), _fma(v, u2, e2)
        v = _load(g, o + 5 * length + p)
        f0, f1, f2 = _fma(v, u0, f0), _fma(v, u1, f1), _fma(v, u2, f2)
        v = _load(g, o + 6 * length + p)
        g0, g1, g2 = _fma(v, u0, g0), _fma(v, u1, g1), _fma(v, u2, g2)
        v = _load(g, o + 7 * length + p)
        h0, h1, h2 = _fma(v, u0, h0), _fma(v, u1, h1), _fma(v, u2, h2)
    sums[0, 0], sums[0, 1], sums[0, 2] = _lane_sum(a0), _lane_sum(a1), _lane_sum(a2)
    sums[1, 0], sums[1, 1], sums[1, 2] = _lane_sum(b0), _lane_sum(b1), _lane_sum(b2)
    sums[2, 0], sums[2, 1], sums[2, 2] = _lane_sum(c0), _lane_sum(c1), _lane_sum(c2)
    sums[3, 0], sums[3, 1], sums[3, 2] = _lane_sum(d0), _lane_sum(d1), _lane_sum(d2)
    sums[4, 0], sums[4, 1], sums[4, 2] = _lane_sum(e0), _lane_sum(e1), _lane_sum(e2)
    sums[5, 0], sums[5, 1], sums[5, 2] = _lane_sum(f0), _lane_sum(f1), _lane_sum(f2)
    sums[6, 0], sums[6, 1], sums[6, 2] = _lane_sum(g0), _lane_sum(g1), _lane_sum(g2)
    sums[7, 0], sums[7, 1], sums[7, 2] = _lane_sum(h0), _lane_sum(h1), _lane_sum(h2)


def _extra(size, grid_w):
    """Zero grid positions past the last image: the farthest kernel offset plus two tiles."""
    return (size - 1) * (grid_w + 1) + 2 * TILE


def forward(x, weights, padding, out=None, buffer=_fresh):
    """The convolution's products z (N, O, H*W) of a "same" convolution (:func:`applies`) and the
    padded planes ``(planes, L)`` that :func:`backward` reads again. ``out``: an array to fill;
    ``buffer``: as :func:`padded_planes`."""
    n_images, channels, height, width = x.shape
    n_outputs, _, size, _ = weights.shape
    grid_h, grid_w = height + 2 * padding, width + 2 * padding
    planes, length = padded_planes(x, padding, _extra(size, grid_w), buffer)
    offsets = kernel_offsets(channels, size, length, grid_w)
    packed = pack_weights(np.ascontiguousarray(weights, np.float32).reshape(n_outputs, -1))
    out = correlate(packed, planes, offsets, n_outputs, n_images, grid_h, grid_w, height, width, out)
    return out, (planes, length)


def backward(dz, weights, padding, input_shape, saved, input_gradient=True, buffer=_fresh):
    """The adjoints of :func:`forward`: dL/dz (N, O, H*W) -> (dL/dweights (O, C, k, k), dL/dx
    (N, C, H, W) or None). ``saved``: the padded planes :func:`forward` returned; ``buffer``: as
    :func:`padded_planes`, for the gradient's planes, the chunks' partial sums and dL/dx."""
    planes, length = saved
    n_images, channels, height, width = input_shape
    n_outputs, _, size, _ = weights.shape
    grid_h, grid_w = height + 2 * padding, width + 2 * padding
    margin = padding * grid_w + padding  # dL/dx reads dz up to this far before a position
    extra = _extra(size, grid_w)
    n_positions = n_images * grid_h * grid_w
    gradient_length = margin + n_positions + extra
    gradient = buffer("direct_gradient", (-(-n_outputs // BLOCK) * BLOCK, gradient_length), np.float32)
    _fill_gradient_planes(np.ascontiguousarray(dz, np.float32), grid_h, grid_w, height, width, margin, gradient)
    gradient = gradient.reshape(-1)
    offsets = kernel_offsets(channels, size, length, grid_w)
    dweights = weight_gradient(gradient[margin:], gradient_length, planes, offsets, n_outputs, n_positions, buffer)
    dweights = dweights.reshape(weights.shape)
    if not input_gradient:
        return dweights, None
    # dx[c] = sum over (o, i, j) of W[o, c, k-1-i, k-1-j] * dz padded: the forward's sum with the
    # weights flipped and transposed, over the gradient's planes (base: the margin's shift cancels)
    flipped = np.ascontiguousarray(weights[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), np.float32)
    packed = pack_weights(flipped.reshape(channels, -1))
    dx = correlate(packed, gradient, kernel_offsets(n_outputs, size, gradient_length, grid_w), channels, n_images,
                   grid_h, grid_w, height, width, buffer("direct_dx", (n_images, channels, height * width), np.float32))
    return dweights, dx.reshape(input_shape)


@numba.njit(cache=True, parallel=True)
def _fill_gradient_planes(dz, grid_h, grid_w, out_h, out_w, margin, gradient):
    """gradient[o, margin + (n*grid_h + y)*grid_w + x] = dz[n, o, y*out_w + x]; 0 elsewhere (and in
    the planes past dz's outputs)."""
    n_images, n_outputs, _ = dz.shape
    grid = grid_h * grid_w
    for o in numba.prange(gradient.shape[0]):
        plane = gradient[o]
        plane[:] = 0
        if o >= n_outputs:
            continue
        for n in range(n_images):
            for y in range(out_h):
                start = margin + n * grid + y * grid_w
                plane[start:start + out_w] = dz[n, o, y * out_w:(y + 1) * out_w]
