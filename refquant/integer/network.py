"""The integer network: a quantized YOLO run in fixed point (docs/SPECIFICATION.md, section 11.5).

uint8 input codes, int8 weights, int32 accumulation, requantization by multiplier and shift, leaky
ReLU inside the requantization, routes rescaled to their grid, the region head in float on the
dequantized codes. It reproduces :class:`refquant.integer.simulation.SimulatedNetwork` code for code.
"""
import numpy as np

from refquant import threads
from refquant.integer.conv import pack_weights
from refquant.integer.lowering import LoweredNetwork, run_codes
from refquant.integer.requantize import code_dtype, conv2d_requantized, route_codes
from refquant.integer.simulation import SimulatedNetwork


def shifted_codes(codes, zero_point, value_range):
    """``codes - zero_point`` in the narrowest dtype ``conv2d`` takes (uint8, int8 or int16)
    for values in ``value_range = (qmin - zero_point, qmax - zero_point)``."""
    lo, hi = value_range
    if lo >= 0 and hi <= 255:
        dtype = np.uint8
    elif lo >= -128 and hi <= 127:
        dtype = np.int8
    else:
        dtype = np.int16
    if zero_point == 0 and codes.dtype == dtype:
        return codes
    return (codes.astype(np.int16) - np.int16(zero_point)).astype(dtype)


def integer_convolution(conv, codes, packed_weights=None):
    """One convolution in fixed point: codes (N, C, H, W) integers -> output codes (N, M, OH, OW).

    ``conv``: a ``refquant.integer.lowering.FixedPointConvolution``. int32 accumulation with the int32 bias
    (``conv2d`` checks the accumulator range first), then requantization with the leaky/linear/relu pair,
    in one call (``conv2d_requantized``: ``requantize_leaky`` of ``conv2d``'s accumulators, bit for bit).
    ``packed_weights``: ``pack_weights`` of the weight codes if the caller keeps them (default: packed here).
    """
    x, x_zero_point = convolution_input(conv, codes)
    if packed_weights is None:
        packed_weights = weights_of(conv)
    grid = conv.output_grid
    return conv2d_requantized(x, packed_weights, conv.stride, conv.padding, conv.bias, conv.multiplier, conv.shift,
                              conv.negative_multiplier, conv.negative_shift, grid.zero_point, grid.qmin, grid.qmax,
                              x_range=conv.input_range, x_zero_point=x_zero_point)


def convolution_input(conv, codes):
    """``(x, x_zero_point)`` for ``conv2d``: uint8 codes as they are with their zero point (removed
    inside, as fbgemm takes them), any other codes shifted by :func:`shifted_codes` with zero point 0."""
    zero_point = conv.input_grid.zero_point
    if codes.dtype == np.uint8 and 0 <= zero_point <= 255:
        return codes, zero_point
    return shifted_codes(codes, zero_point, conv.input_range), 0


def weights_of(conv):
    """``conv``'s weight codes packed for ``conv2d`` (``pack_weights``), with the weight grid's code range."""
    return pack_weights(conv.weight_codes, (conv.weight_grid.qmin, conv.weight_grid.qmax))


def integer_route(route, inputs):
    """A multi-input route on codes: every input moved to the route's grid, then concatenated."""
    grid = route.output_grid
    return route_codes(inputs, list(route.rescalings), grid.zero_point, grid.qmin, grid.qmax)


class IntegerNetwork(LoweredNetwork):
    """A float network turned into fixed-point arithmetic by a quantization plan (docs/SPECIFICATION.md, section 11.5).

    ``IntegerNetwork.build(net, plan)``; ``run(images)`` -> every layer's output (integer codes,
    the head's float64 output last); ``forward(images)`` -> the head's output alone, so that
    ``refquant.detection.evaluate.evaluate(integer_network, records, names)`` scores it like a float network.
    Attributes: ``net`` (the folded float network, for its structure and head), ``plan``,
    ``grids`` (each layer's output grid), ``fixed`` (each layer's integer parameters).
    """

    KIND = "integer"

    def __init__(self, folded, plan, profile="exact"):
        super().__init__(folded, plan, profile)
        self._packed_weights = {}  # layer index -> pack_weights of its codes, made on first use

    def run(self, images):
        """images (N, C, H, W) float in [0, 1] -> list of every layer's output (codes; the head's float64)."""
        threads.fit()  # the thread pools sized to the cores free now (refquant.threads)
        grid = self.plan.input
        codes = self.input_codes(images).astype(code_dtype(grid.qmin, grid.qmax))
        return run_codes(self.net, self.fixed, codes, self._convolution, self.profile.integer_route, self.grids,
                         self.plan.input)

    def _convolution(self, conv, codes):
        if conv.index not in self._packed_weights:  # packed on first use, as fbgemm packs once
            self._packed_weights[conv.index] = weights_of(conv)
        return self.profile.integer_convolution(conv, codes, self._packed_weights[conv.index])

    def dequantized(self, outputs):
        """Every layer's output as real values: ``step * (codes - zero_point)``; heads unchanged."""
        return [out if grid is None else grid.dequantize(np.asarray(out).astype(np.int64))
                for out, grid in zip(outputs, self.grids)]

    def simulation(self):
        """The float64 simulation of the same folded network, plan and profile
        (``refquant.integer.simulation.SimulatedNetwork``)."""
        return SimulatedNetwork(self.net, self.plan, self.profile)
