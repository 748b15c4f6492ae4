"""Darknet's ``[reorg]`` layer (space-to-depth in Darknet's own index order).

Source: pjreddie/darknet ``src/reorg_layer.c`` (``forward_reorg_layer`` calls
``reorg_cpu(net.input, w, h, c, batch, stride, 0, l.output)``) and ``reorg_cpu`` in
``src/blas.c``. With ``forward=0`` that loop reads the input buffer as if it had
shape (C/s^2, H*s, W*s) and writes the output buffer as if it had shape
(C, H, W): for k < C, j < H, i < W, with C2 = C/s^2,

    out[k, j, i] = in_as(C2, H*s, W*s)[k % C2, j*s + (k // C2) // s, i*s + (k // C2) % s]

and the output buffer is then read as (C*s^2, H/s, W/s). This is *not* the
channel order of TensorFlow's ``space_to_depth``; OpenCV's Darknet importer
reproduces Darknet's (its ``ReorgLayer``), which the tests check. Only the flat
memory order matters, so the forward is a reshape/transpose and works for any
dtype (the integer network reuses it on codes).
"""
import numpy as np


def reorg_forward(x, stride):
    """x (N, C, H, W) -> (N, C*s*s, H/s, W/s) in Darknet's order (see the module); any dtype."""
    n_batch, channels, height, width = x.shape
    s = stride
    c2 = channels // (s * s)
    # in_as[n, c2, j*s + dy, i*s + dx] -> out[n, (dy*s + dx)*C2 + c2, j, i] (flat index (k, j, i))
    grid = np.ascontiguousarray(x).reshape(n_batch, c2, height, s, width, s)
    flat = grid.transpose(0, 3, 5, 1, 2, 4)  # (n, dy, dx, c2, j, i)
    return np.ascontiguousarray(flat).reshape(n_batch, channels * s * s, height // s, width // s)


def reorg_backward(dout, stride, input_shape):
    """The inverse permutation of :func:`reorg_forward` (Darknet's ``reorg_cpu(..., 1, ...)``)."""
    n_batch, channels, height, width = input_shape
    s = stride
    c2 = channels // (s * s)
    flat = np.ascontiguousarray(dout).reshape(n_batch, s, s, c2, height, width)
    grid = flat.transpose(0, 3, 4, 1, 5, 2)  # back to (n, c2, j, dy, i, dx)
    return np.ascontiguousarray(grid).reshape(input_shape)


class ReorgLayer:
    """``[reorg]``: cfg key stride (Darknet's default 1). Only the plain form (no reverse/flatten/extra)."""

    type = "reorg"
    cfg_keys = {"stride": ("int", 1)}

    def __init__(self, stride=1):
        if stride < 1:
            raise ValueError(f"reorg: stride must be >= 1, got {stride}")
        self.stride = stride
        self.params = {}
        self.grads = {}
        self._input_shape = None

    def output_shape(self, input_shape):
        """(C, H, W) -> (C*s*s, H/s, W/s); ValueError unless s divides H and W and s*s divides C."""
        channels, height, width = input_shape
        s = self.stride
        if height % s or width % s or channels % (s * s):
            raise ValueError(f"reorg: stride {s} needs H and W divisible by {s} and C by {s * s}, "
                             f"got C={channels} H={height} W={width}")
        return (channels * s * s, height // s, width // s)

    def forward(self, x, training=False):
        """x (N, C, H, W) -> (N, C*s*s, H/s, W/s)."""
        self.output_shape(x.shape[1:])
        self._input_shape = x.shape
        return reorg_forward(x, self.stride)

    def backward(self, dout):
        """dL/dy -> dL/dx by the inverse permutation."""
        return reorg_backward(dout, self.stride, self._input_shape)
