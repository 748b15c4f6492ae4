"""Darknet's ``[upsample]`` layer: nearest-neighbour upsampling by an integer stride.

Source: pjreddie/darknet ``src/upsample_layer.c`` and ``upsample_cpu`` in ``src/blas.c``:
``out[b, k, j, i] = scale * in[b, k, j / stride, i / stride]``; backward sums each
stride x stride block of the gradient (times ``scale``) into its source pixel.
The forward is dtype-generic when ``scale == 1`` (the integer network reuses it).
Negative strides (Darknet's "downsample" variant) are not supported.
"""
import numpy as np


def upsample_forward(x, stride, scale=1.0):
    """x (N, C, H, W) -> (N, C, H*s, W*s), each pixel repeated in an s x s block, times ``scale``."""
    n_batch, channels, height, width = x.shape
    s = stride
    out = np.broadcast_to(x[:, :, :, None, :, None], (n_batch, channels, height, s, width, s))
    out = out.reshape(n_batch, channels, height * s, width * s)
    return out if scale == 1 else out * x.dtype.type(scale)


def upsample_backward(dout, stride, scale=1.0):
    """dL/dy (N, C, H*s, W*s) -> dL/dx (N, C, H, W): the sum over each block, times ``scale``."""
    n_batch, channels, out_h, out_w = dout.shape
    s = stride
    dx = dout.reshape(n_batch, channels, out_h // s, s, out_w // s, s).sum(axis=(3, 5))
    return dx if scale == 1 else dx * dout.dtype.type(scale)


class UpsampleLayer:
    """``[upsample]``: cfg keys stride=2, scale=1 (Darknet's defaults)."""

    type = "upsample"
    cfg_keys = {"stride": ("int", 2), "scale": ("float", 1.0)}

    def __init__(self, stride=2, scale=1.0):
        if stride < 1:
            raise ValueError(f"upsample: stride must be >= 1 (downsampling is not supported), got {stride}")
        self.stride = stride
        self.scale = scale
        self.params = {}
        self.grads = {}

    def output_shape(self, input_shape):
        """(C, H, W) -> (C, H*s, W*s)."""
        channels, height, width = input_shape
        return (channels, height * self.stride, width * self.stride)

    def forward(self, x, training=False):
        """x (N, C, H, W) -> (N, C, H*s, W*s)."""
        return upsample_forward(x, self.stride, self.scale)

    def backward(self, dout):
        """dL/dy -> dL/dx by summing blocks."""
        return upsample_backward(dout, self.stride, self.scale)
