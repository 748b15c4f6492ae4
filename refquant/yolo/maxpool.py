"""Darknet's ``[maxpool]`` layer, with its implicit padding.

Source: pjreddie/darknet ``src/maxpool_layer.c`` (``make_maxpool_layer``,
``forward_maxpool_layer``, ``backward_maxpool_layer``) and ``parse_maxpool`` in
``src/parser.c``. The forward function is dtype-generic: the integer network
reuses it unchanged on activation codes (max commutes with any increasing
quantizer).
"""
import numba
import numpy as np

from refquant.yolo.workspace import reuse


def maxpool_padding(size, padding=None):
    """Total padding of a Darknet max pool: ``size - 1`` unless the cfg gives ``padding``.

    Darknet (``parse_maxpool``): ``int padding = option_find_int_quiet(options, "padding", size-1);``
    The window of output (i, j) starts at row ``i*stride - padding//2`` (``h_offset = -l.pad/2``),
    and positions outside the image never win the max. Hence ``size=2, stride=1`` keeps the
    size (padding one row at the bottom and one column on the right) and ``size=2, stride=2``
    gives ceil(H/2).
    """
    return size - 1 if padding is None else padding


def maxpool_output_size(size_in, size, stride, padding):
    """(size_in + padding - size) // stride + 1 (``make_maxpool_layer``: ``l.out_w``)."""
    return (size_in + padding - size) // stride + 1


@numba.njit(cache=True, inline="always")
def _window_max(x, n, c, row_lo, row_hi, col_lo, col_hi, width):
    # positions outside the image never win (Darknet's -FLT_MAX); among equal values the
    # first in row-major window order wins (Darknet's strict '>'); selects, not branches,
    # because random data would mispredict them
    best = x[n, c, row_lo, col_lo]
    best_index = row_lo * width + col_lo
    for row in range(row_lo, row_hi):
        for col in range(col_lo, col_hi):
            value = x[n, c, row, col]
            greater = value > best
            best_index = row * width + col if greater else best_index
            best = value if greater else best
    return best, best_index


@numba.njit(cache=True, parallel=True)
def _maxpool(x, size, stride, offset, out, indexes):
    n_batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    # output columns whose window lies wholly inside the image, handled without clipping
    inner_lo = min(out_w, max(0, (-offset + stride - 1) // stride))
    inner_hi = max(inner_lo, min(out_w, (width - size - offset) // stride + 1))
    for t in numba.prange(n_batch * channels):
        n = t // channels
        c = t % channels
        for i in range(out_h):
            row_lo = max(offset + i * stride, 0)
            row_hi = min(offset + i * stride + size, height)
            for j in range(inner_lo):
                col_lo = max(offset + j * stride, 0)
                best, best_index = _window_max(x, n, c, row_lo, row_hi, col_lo,
                                               min(offset + j * stride + size, width), width)
                out[n, c, i, j] = best
                indexes[n, c, i, j] = best_index
            if size == 2 and row_hi - row_lo == 2:  # the common 2x2 window, unrolled
                for j in range(inner_lo, inner_hi):
                    col = offset + j * stride
                    a, b = x[n, c, row_lo, col], x[n, c, row_lo, col + 1]
                    d, e = x[n, c, row_lo + 1, col], x[n, c, row_lo + 1, col + 1]
                    best, best_index = a, row_lo * width + col
                    best_index = best_index + 1 if b > best else best_index
                    best = b if b > best else best
                    best_index = (row_lo + 1) * width + col if d > best else best_index
                    best = d if d > best else best
                    best_index = (row_lo + 1) * width + col + 1 if e > best else best_index
                    best = e if e > best else best
                    out[n, c, i, j] = best
                    indexes[n, c, i, j] = best_index
            else:
                for j in range(inner_lo, inner_hi):
                    col_lo = offset + j * stride
                    best, best_index = _window_max(x, n, c, row_lo, row_hi, col_lo, col_lo + size, width)
                    out[n, c, i, j] = best
                    indexes[n, c, i, j] = best_index
            for j in range(inner_hi, out_w):
                col_lo = max(offset + j * stride, 0)
                best, best_index = _window_max(x, n, c, row_lo, row_hi, col_lo,
                                               min(offset + j * stride + size, width), width)
                out[n, c, i, j] = best
                indexes[n, c, i, j] = best_index


def windows_inside(size_in, size, stride, padding):
    """True if every window overlaps the image (else Darknet would output -FLT_MAX there)."""
    out = maxpool_output_size(size_in, size, stride, padding)
    first_start = -(padding // 2)
    last_start = first_start + (out - 1) * stride
    return out >= 1 and first_start + size > 0 and last_start < size_in


def maxpool_forward(x, size, stride, padding, indexes_out=None):
    """Max over each size x size window; x (N, C, H, W) of any real dtype -> (out, indexes).

    out (N, C, OH, OW) with OH = :func:`maxpool_output_size`; ``indexes`` (same shape, int64)
    holds the flat position row*W + col of each maximum within its (n, c) plane (the first
    one in row-major window order on ties, Darknet's ``val > max``). ``indexes_out``: an int64
    array of that shape to fill instead of a fresh one.
    """
    n_batch, channels, height, width = x.shape
    if not (windows_inside(height, size, stride, padding) and windows_inside(width, size, stride, padding)):
        raise ValueError(f"maxpool: with size {size}, stride {stride}, padding {padding} some windows of a "
                         f"{height}x{width} input lie entirely outside it")
    out_h = maxpool_output_size(height, size, stride, padding)
    out_w = maxpool_output_size(width, size, stride, padding)
    out = np.empty((n_batch, channels, out_h, out_w), dtype=x.dtype)
    indexes = reuse(indexes_out, out.shape, np.int64)
    _maxpool(np.ascontiguousarray(x), size, stride, -(padding // 2), out, indexes)
    return out, indexes


@numba.njit(cache=True, parallel=True)
def _maxpool_backward(dout, indexes, dx_planes):
    n_batch, channels, plane = dx_planes.shape
    for t in numba.prange(n_batch * channels):
        n = t // channels
        c = t % channels
        for k in range(plane):
            dx_planes[n, c, k] = 0
        for i in range(dout.shape[2]):
            for j in range(dout.shape[3]):
                dx_planes[n, c, indexes[n, c, i, j]] += dout[n, c, i, j]


def maxpool_backward(dout, indexes, input_shape, out=None):
    """Route each output gradient to its maximum (``backward_maxpool_layer``); -> (N, C, H, W).
    ``out``: an array of that shape and dout's dtype to fill instead of a fresh one."""
    n_batch, channels, height, width = input_shape
    dx = reuse(out, input_shape, dout.dtype)
    _maxpool_backward(np.ascontiguousarray(dout), indexes, dx.reshape(n_batch, channels, height * width))
    return dx


class MaxpoolLayer:
    """``[maxpool]``: cfg keys stride=1, size=stride, padding=size-1 (Darknet's defaults)."""

    type = "maxpool"
    cfg_keys = {
        "stride": ("int", 1),
        "size": ("int", lambda options: options["stride"]),
        "padding": ("int", lambda options: maxpool_padding(options["size"])),
    }

    def __init__(self, stride=1, size=None, padding=None):
        size = stride if size is None else size
        if size < 1 or stride < 1:
            raise ValueError(f"maxpool: size and stride must be >= 1, got size={size} stride={stride}")
        self.size = size
        self.stride = stride
        self.padding = maxpool_padding(size, padding)
        if self.padding < 0:
            raise ValueError(f"maxpool: padding must be >= 0, got {self.padding}")
        self.params = {}
        self.grads = {}
        self._cache = None
        self._gradient = None  # dL/dx of the last backward, reused by the next one

    def output_shape(self, input_shape):
        """(C, H, W) -> (C, OH, OW); ValueError if the window does not fit."""
        channels, height, width = input_shape
        out_h = maxpool_output_size(height, self.size, self.stride, self.padding)
        out_w = maxpool_output_size(width, self.size, self.stride, self.padding)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"maxpool: input {height}x{width} is too small for a {self.size}x{self.size} window")
        if not (windows_inside(height, self.size, self.stride, self.padding)
                and windows_inside(width, self.size, self.stride, self.padding)):
            raise ValueError(f"maxpool: padding {self.padding} is so large that some {self.size}x{self.size} "
                             f"windows of a {height}x{width} input lie entirely outside it")
        return (channels, out_h, out_w)

    def forward(self, x, training=False):
        """x (N, C, H, W) -> (N, C, OH, OW), any dtype."""
        self.output_shape(x.shape[1:])
        # the indexes reused from the last forward (kept for backward only; fresh arrays cost page faults)
        previous = self._cache[1] if self._cache is not None else None
        out, indexes = maxpool_forward(x, self.size, self.stride, self.padding, previous)
        self._cache = (x.shape, indexes)
        return out

    def backward(self, dout):
        """dL/dy -> dL/dx: each gradient goes to the input position that was the maximum.

        dL/dx lives in the layer (the next backward overwrites it): a fresh array of a training
        batch's size costs more in page faults than the pass itself."""
        input_shape, indexes = self._cache
        self._gradient = maxpool_backward(dout, indexes, input_shape, self._gradient)
        return self._gradient
