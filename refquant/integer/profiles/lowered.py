"""The lowered convolution every arithmetic profile fills, and what they share before the int32
accumulator (docs/SPECIFICATION.md, section 11.8): weight codes (per tensor or per output channel),
the int32 bias, the accumulators of the integer kernel (``refquant.integer.conv.accumulator_chunks``)
and of the simulation (``refquant.integer.simulation.simulated_accumulator``). Profiles differ only
after the accumulator.
"""
import dataclasses

import numpy as np

from refquant.integer.conv import accumulator_chunks, pixel_view
from refquant.integer.lowering import centred_codes, checked_accumulator_range
from refquant.integer.network import convolution_input
from refquant.integer.requantize import code_dtype, quantize_bias
from refquant.integer.simulation import simulated_accumulator
from refquant.quantizers.uniform import UniformQuantizer
from refquant.yolo.convolutional import convolution_output_size


@dataclasses.dataclass(frozen=True)
class ProfileConvolution:
    """One convolution lowered by a profile (docs/SPECIFICATION.md, section 11.8).

    ``weight_codes`` (M, C, k, k) int8 (each output channel m on its step ``weight_steps[m]``, codes
    in ``weight_grid``'s range); ``bias`` (M,) int32 at scale ``s_in * weight_steps[m]``;
    ``linear_grid``: the grid the requantized accumulator lands on (``output_grid``, or for a leaky
    ReLU the engine runs as a separate op, its pre-activation grid); ``requantization``: the
    profile's parameters of the accumulator's requantization, a tuple led by its (M,) per-channel
    arrays (exact: ``(multiplier, shift, negative_multiplier, negative_shift)``; gemmlowp:
    ``(multiplier, shift, single_rounding, lo, hi)``; float-scale: ``(scale, lo, hi)``);
    ``activation_stage``: the profile's parameters of a separate activation (None when it is fused or
    absent); ``size``, ``stride``, ``padding`` as in the float layer.
    """

    index: int
    weight_codes: np.ndarray
    bias: np.ndarray
    input_grid: UniformQuantizer
    weight_grid: UniformQuantizer
    weight_steps: np.ndarray
    output_grid: UniformQuantizer
    linear_grid: UniformQuantizer
    requantization: tuple
    activation_stage: object
    activation: str
    size: int
    stride: int
    padding: int

    @property
    def input_range(self):
        """``(qmin - z_in, qmax - z_in)``: the values of ``codes - z_in`` entering the convolution."""
        return centred_codes(self.input_grid)


def channel_weight_codes(weights, weight_grid, weight_steps):
    """Weight codes (M, C, k, k) int8: output channel m quantized by
    ``UniformQuantizer(weight_steps[m], 0, qmin_w, qmax_w)`` (section 4's rule, per channel)."""
    codes = np.empty(weights.shape, np.int8)
    for channel, step in enumerate(weight_steps):
        grid = UniformQuantizer(float(step), 0, weight_grid.qmin, weight_grid.qmax)
        codes[channel] = grid.quantize(weights[channel])
    return codes


def lowered_weights(layer, input_grid, weight_grid, weight_steps, where):
    """``(weight_codes, bias)`` of a convolution with (M,) ``weight_steps``, the int32 accumulator range
    checked (``refquant.integer.conv.check_accumulator_range``); ValueError naming ``where``."""
    weights = layer.params["weights"].astype(np.float64)
    weight_codes = channel_weight_codes(weights, weight_grid, weight_steps)
    try:
        bias = quantize_bias(layer.params["biases"], input_grid.step, weight_steps)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    checked_accumulator_range(input_grid, weight_grid, weights, bias, where)
    return weight_codes, bias


def accumulator_bound(conv):
    """The largest ``|acc|`` the convolution can reach: ``max|B| + K max|x - z_in| max|w|`` (K = C k k)."""
    lo, hi = conv.input_range
    largest_weight = max(abs(conv.weight_grid.qmin), abs(conv.weight_grid.qmax))
    return int(np.abs(conv.bias.astype(np.int64)).max()) + conv.weight_codes[0].size * max(abs(lo), abs(hi)) * \
        largest_weight


def requantized_accumulators(conv, codes, packed_weights, requantize_block):
    """Integer side: the int32 accumulators of ``conv`` on ``codes`` (N, C, H, W), a chunk of images
    at a time (``refquant.integer.conv.accumulator_chunks``, the fast VNNI path), each handed to
    ``requantize_block(acc, out)``: ``acc`` the (O, n, Ho, Wo) int32 view
    (``refquant.integer.conv.pixel_view``), ``out`` the (n, O, Ho, Wo) codes of ``conv.linear_grid``
    to fill. Returns the codes (N, O, Ho, Wo) in ``code_dtype`` of the linear grid.
    """
    x, x_zero_point = convolution_input(conv, codes)
    shape, chunks = accumulator_chunks(x, packed_weights, conv.stride, conv.padding, conv.bias, conv.input_range,
                                       x_zero_point=x_zero_point)
    grid = conv.linear_grid
    out = np.empty(shape, code_dtype(grid.qmin, grid.qmax))
    for images, acc, (image_size, row_size) in chunks:
        view = pixel_view(acc, shape[1], images.stop - images.start, shape[2], shape[3], image_size, row_size)
        requantize_block(view, out[images])
    return out


def simulated_accumulators(conv, codes, weight_codes=None):
    """Simulation side: acc (N, M, OH, OW) float64, integer-valued and exact
    (``refquant.integer.simulation.simulated_accumulator``: im2col and a GEMM)."""
    acc = simulated_accumulator(conv, codes, weight_codes)
    size = [convolution_output_size(n, conv.size, conv.stride, conv.padding) for n in codes.shape[2:]]
    return acc.reshape(codes.shape[0], acc.shape[1], *size)
