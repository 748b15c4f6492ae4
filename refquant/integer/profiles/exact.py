"""The ``exact`` arithmetic profile: refquant's own requantization, the default (docs/SPECIFICATION.md,
sections 11.4-11.6 and 11.8).

Source: refquant itself, after gemmlowp's ``QuantizeMultiplier`` with 22 instead of 31 bits and
half-to-even instead of half-away-from-zero rounding, so that a float64 simulation is exact:
``code = clip(rounding_right_shift(acc * multiplier, shift) + z, qmin, qmax)``, leaky ReLU fused
(the negative pair where ``acc < 0``), routes rescaled by the same rule. A plan quantized per tensor
is lowered by ``refquant.integer.lowering.fixed_point_layers`` and run by today's kernels, unchanged
bit for bit; a layer with per-channel weight steps gets one pair (and negative pair) per output
channel, the same rule channel by channel.
"""
import numba
import numpy as np

from refquant.integer import lowering, network, simulation
from refquant.integer.profiles.lowered import (
    ProfileConvolution,
    lowered_weights,
    requantized_accumulators,
    simulated_accumulators,
)
from refquant.integer.requantize import multiplier_value, requantize_leaky_code
from refquant.rounding import round_half_even

RULES = ("exact: acc = sum (x - z_in) w + B in int32; code = clip(rounding_right_shift(acc * multiplier, shift) "
         "+ z_out, qmin, qmax), multiplier of 22 bits (2**21 <= multiplier < 2**22, or 1 for a power-of-two "
         "M = s_in s_w / s_out), rounding half to even; leaky ReLU fused: the pair of 0.1 M where acc < 0; relu: "
         "(0, 0) there; route inputs rescaled by quantize_multiplier(s_in / s_route) and the same rule. Per-channel "
         "weights: one pair per output channel.")

SOURCES = ("refquant: docs/SPECIFICATION.md, sections 11.4-11.6",
           "gemmlowp QuantizeMultiplier (22 bits here, half to even)")


def lower(folded, plan):
    """Per layer: ``FixedPointConvolution`` (per-tensor weights, section 11.4), ``ProfileConvolution``
    (per-channel weights: (M,) pairs), ``FixedPointRoute`` or None."""
    return lowering.lower_layers(folded, plan, lower_convolution, lowering.fixed_point_route)


def lower_convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where):
    """Section 11.4's parameters; with per-channel ``channel_steps`` (M,), ``requantization`` is the
    (M,) arrays ``(multiplier, shift, negative_multiplier, negative_shift)`` of
    ``requantization_pairs(activation, s_in * s_w[m] / s_out)``."""
    if channel_steps is None:
        return lowering._fixed_point_convolution(index, layer, input_grid, weight_grid, output_grid, where)
    weight_codes, bias = lowered_weights(layer, input_grid, weight_grid, channel_steps, where)
    pairs = []
    for step in channel_steps:
        real = input_grid.step * float(step) / output_grid.step  # section 11.4's order
        try:
            pairs.append(lowering.requantization_pairs(layer.activation, real))
        except ValueError as error:
            raise ValueError(f"{where}: multiplier {real!r}: {error}") from None
    requantization = tuple(np.array(column, np.int64) for column in zip(*pairs))
    return ProfileConvolution(index, weight_codes, bias, input_grid, weight_grid, np.asarray(channel_steps),
                              output_grid, output_grid, requantization, None, layer.activation, layer.size,
                              layer.stride, layer.padding)


@numba.njit(cache=True, parallel=True)
def _requantize_channels(acc, multiplier, shift, negative_multiplier, negative_shift, zero_point, qmin, qmax, out):
    """out[i, o] = requantize_leaky_code(acc[o, i], the pairs of channel o): acc (O, n, H, W) int32, out (n, O, H, W)."""
    n_outputs, n_images, height, width = acc.shape
    for o in numba.prange(n_outputs):
        for i in range(n_images):
            for y in range(height):
                for x in range(width):
                    out[i, o, y, x] = requantize_leaky_code(np.int64(acc[o, i, y, x]), multiplier[o], shift[o],
                                                            negative_multiplier[o], negative_shift[o],
                                                            zero_point, qmin, qmax)


def integer_convolution(conv, codes, packed_weights):
    """Section 11.5: ``refquant.integer.network.integer_convolution``, or per channel the same rule
    with channel o's pairs."""
    if isinstance(conv, lowering.FixedPointConvolution):
        return network.integer_convolution(conv, codes, packed_weights)
    grid = conv.output_grid

    def requantize_block(acc, out):
        _requantize_channels(acc, *conv.requantization, grid.zero_point, grid.qmin, grid.qmax, out)
    return requantized_accumulators(conv, codes, packed_weights, requantize_block)


def simulated_convolution(conv, codes, weight_codes):
    """Section 11.6: ``clip(rint(acc * (multiplier * 2.0**-shift)) + z_out, qmin, qmax)`` in float64, exact
    (``|acc * multiplier| < 2**53``), channel o's pair for channel o."""
    if isinstance(conv, lowering.FixedPointConvolution):
        return simulation.simulated_convolution(conv, codes, weight_codes)
    acc = simulated_accumulators(conv, codes, weight_codes)
    multiplier, shift, negative_multiplier, negative_shift = conv.requantization
    positive = np.array([multiplier_value(m, s) for m, s in zip(multiplier, shift)])[:, None, None]
    negative = np.array([multiplier_value(m, s) for m, s in zip(negative_multiplier, negative_shift)])[:, None, None]
    grid = conv.output_grid
    scaled = np.where(acc >= 0, acc * positive, acc * negative)
    return np.clip(round_half_even(scaled) + grid.zero_point, grid.qmin, grid.qmax)


integer_route = network.integer_route
simulated_route = simulation.simulated_route
