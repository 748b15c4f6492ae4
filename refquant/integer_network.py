"""The integer network: a quantized YOLO run in fixed point (METHOD.md, section 5).

Built from a float network and a :class:`refquant.qat.QuantizationPlan`
(:meth:`IntegerNetwork.build`): batch norm folded (``refquant.qat.fold_batchnorm``), then per
convolution int8 weight codes, an int32 bias at the accumulator's scale and the requantization
pairs of ``refquant.qat.fixed_point_layers`` (the specification of every number is in
``refquant.qat``'s docstring, point 4). Running it (:meth:`IntegerNetwork.run`):

- input: ``codes = clip(round_half_even(x * 255), 0, 255)`` as uint8 (the plan's input grid,
  ``plan.input.quantize``);
- convolution: ``acc = refquant.intconv.conv2d(codes - z_in, weight_codes, bias=bias)`` in
  int32, after the accumulator range check (raised before computing), then
  ``code = clip(rounding_right_shift(acc * multiplier, shift) + z_out, qmin, qmax)`` with the
  negative pair where ``acc < 0`` (``refquant.intconv.requantize_leaky``: leaky ReLU and relu
  stay in the integer domain);
- maxpool, reorg, upsample: the float engine's dtype-generic functions on the codes (Darknet's
  maxpool padding: positions outside the image never win, i.e. the smallest code);
- route: each input requantized to the route's grid (``refquant.intconv.route_codes``);
- region head: float64 on ``step * (codes - zero_point)``, then the head's activations.

It reproduces ``refquant.qat.SimulatedNetwork`` (the float64 simulation of the same plan) code
for code at every layer, hence the same detections; ``tests/test_integer_network.py`` checks it.

Reporting: :func:`layer_costs` (model size and operation counts per layer beside the float
model's), :func:`layer_sqnr` (error of every layer against the float network) and
:func:`saturation_rates`; plots in ``refquant.integer_network_plots``.
"""
import math

import numpy as np

from refquant.intconv import code_dtype, conv2d, requantize_leaky, route_codes
from refquant.qat import (SimulatedNetwork, conv_indices, fixed_point_layers, fold_batchnorm,
                          output_grids, quantize_input, quantizer_bits, run_codes)
from refquant.yolo.network import NETWORK_INPUT

FLOAT_BITS = 32
"""Width of the float model's weights and activations (Darknet's float32)."""


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


def integer_convolution(conv, codes):
    """One convolution in fixed point: codes (N, C, H, W) integers -> output codes (N, M, OH, OW).

    ``conv``: a ``refquant.qat.FixedPointConvolution``. int32 accumulation with the int32 bias
    (``conv2d`` checks the accumulator range first), then requantization with the leaky/linear/relu pair.
    """
    x = shifted_codes(codes, conv.input_grid.zero_point, conv.input_range)
    acc = conv2d(x, conv.weight_codes, conv.stride, conv.padding, bias=conv.bias, x_range=conv.input_range,
                 w_range=(conv.weight_grid.qmin, conv.weight_grid.qmax))
    grid = conv.output_grid
    return requantize_leaky(acc, conv.multiplier, conv.shift, conv.negative_multiplier, conv.negative_shift,
                            grid.zero_point, grid.qmin, grid.qmax)


def integer_route(route, inputs):
    """A multi-input route on codes: every input moved to the route's grid, then concatenated."""
    grid = route.output_grid
    return route_codes(inputs, list(route.rescalings), grid.zero_point, grid.qmin, grid.qmax)


class IntegerNetwork:
    """A float network turned into fixed-point arithmetic by a quantization plan (module docstring).

    ``IntegerNetwork.build(net, plan)``; ``run(images)`` -> every layer's output (integer codes,
    the head's float64 output last); ``forward(images)`` -> the head's output alone, so that
    ``refquant.evaluate.evaluate(integer_network, records, names)`` scores it like a float network.
    Attributes: ``net`` (the folded float network, for its structure and head), ``plan``,
    ``grids`` (each layer's output grid), ``fixed`` (each layer's integer parameters).
    """

    def __init__(self, folded, plan):
        self.net = folded
        self.plan = plan
        self.grids = output_grids(folded, plan)
        self.fixed = fixed_point_layers(folded, plan)
        self.layers = folded.layers
        self.inputs = folded.inputs
        self.input_shape = folded.input_shape
        self.name = f"{folded.name} (integer {plan.method})"

    @classmethod
    def build(cls, net, plan):
        """Fold ``net`` (a copy; ``net`` is unchanged) and derive the integer parameters of ``plan``."""
        return cls(fold_batchnorm(net), plan)

    def run(self, images):
        """images (N, C, H, W) float in [0, 1] -> list of every layer's output (codes; the head's float64)."""
        grid = self.plan.input
        codes = quantize_input(self.net, self.plan, images).astype(code_dtype(grid.qmin, grid.qmax))
        return run_codes(self.net, self.fixed, codes, integer_convolution, integer_route, self.grids,
                         self.plan.input)

    def forward(self, images, training=False):
        """The last layer's output (the region head's activations, float64); inference only."""
        if training:
            raise ValueError(f"{self.name}: an integer network has no training mode (use qat.FakeQuantNetwork)")
        return self.run(images)[-1]

    def dequantized(self, outputs):
        """Every layer's output as real values: ``step * (codes - zero_point)``; heads unchanged."""
        return [out if grid is None else grid.dequantize(np.asarray(out).astype(np.int64))
                for out, grid in zip(outputs, self.grids)]

    def simulation(self):
        """The float64 simulation of the same folded network and plan (``refquant.qat.SimulatedNetwork``)."""
        return SimulatedNetwork(self.net, self.plan)


# ------------------------------------------------------------------------------------------------
# Model size and operation counts
# ------------------------------------------------------------------------------------------------

def layer_costs(net, plan, input_shape=None):
    """Per convolution of ``net`` (the float network, batch norm or not): model size and operations.

    Each entry (dict): ``index``; ``weights``, ``biases`` (counts); ``weight_bits``;
    ``activation_bits`` (of the convolution's INPUT codes); ``macs`` = M * C*k*k * OH*OW per image
    at ``input_shape`` (C, H, W; default the cfg's); ``bops`` = macs * weight_bits * activation_bits
    (bit operations); ``bytes`` = ceil(weights * weight_bits / 8) + 4 * biases (int32 biases; the
    per-layer multipliers, shifts and zero points, a few bytes, are not counted); and the float
    model's ``float_bytes`` = 4 * every float32 the Darknet weights file stores for the layer
    (batch-norm vectors included), ``float_bops`` = macs * 32 * 32.
    """
    grids = output_grids(net, plan)
    shapes = net.output_shapes(input_shape)
    input_shape = net.input_shape if input_shape is None else tuple(input_shape)
    costs = []
    for index in conv_indices(net):
        layer = net.layers[index]
        j = net.inputs[index][0]
        input_grid = plan.input if j == NETWORK_INPUT else grids[j]
        in_channels = input_shape[0] if j == NETWORK_INPUT else shapes[j][0]
        filters, out_h, out_w = shapes[index]
        n_weights = int(layer.params["weights"].size)
        macs = filters * in_channels * layer.size * layer.size * out_h * out_w
        weight_bits = quantizer_bits(plan.weights[index])
        activation_bits = quantizer_bits(input_grid)
        costs.append({
            "index": index, "weights": n_weights, "biases": filters,
            "weight_bits": weight_bits, "activation_bits": activation_bits,
            "macs": macs, "bops": macs * weight_bits * activation_bits,
            "bytes": math.ceil(n_weights * weight_bits / 8) + 4 * filters,
            "float_bytes": 4 * int(sum(p.size for p in layer.params.values())),
            "float_bops": macs * FLOAT_BITS * FLOAT_BITS,
        })
    return costs


def cost_totals(costs):
    """Sums over the layers of :func:`layer_costs`: macs, bops, bytes, float_bytes, float_bops."""
    return {key: int(sum(entry[key] for entry in costs))
            for key in ("macs", "bops", "bytes", "float_bytes", "float_bops")}


# ------------------------------------------------------------------------------------------------
# Error against the float network
# ------------------------------------------------------------------------------------------------

def sqnr_db(reference, approximation):
    """Signal-to-quantization-noise ratio ``10 log10(sum ref**2 / sum (ref - approx)**2)`` in dB
    (float64; ``inf`` when they are equal)."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = reference - np.asarray(approximation, dtype=np.float64)
    signal_power, noise_power = float(np.sum(reference ** 2)), float(np.sum(noise ** 2))
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def layer_sqnr(net, quantized, images):
    """SQNR (dB) of every layer of ``quantized`` (IntegerNetwork or SimulatedNetwork) against the
    float network ``net`` in inference mode, on ``images``: list of (index, type, dB).

    Each layer's dequantized codes are compared with the float output of the same layer; the
    head compares head outputs.
    """
    reference = net.forward(np.asarray(images, dtype=net.dtype), training=False, return_all=True)
    outputs = quantized.run(images)
    values = [out if grid is None else grid.dequantize(np.asarray(out).astype(np.int64))
              for out, grid in zip(outputs, quantized.grids)]
    return [(index, layer.type, sqnr_db(ref, value))
            for index, (layer, ref, value) in enumerate(zip(net.layers, reference, values))]


def saturation_rates(quantized, outputs):
    """Fractions of codes at the ends of their range, per layer with its own grid.

    ``outputs``: ``quantized.run(images)``. Returns a list of (index, type, fraction at qmin,
    fraction at qmax) for the convolutions and multi-input routes (other layers only move codes).
    """
    rates = []
    for index in sorted(quantized.plan.activations):
        grid, codes = quantized.grids[index], np.asarray(outputs[index])
        rates.append((index, quantized.layers[index].type, float(np.mean(codes == grid.qmin)),
                      float(np.mean(codes == grid.qmax))))
    return rates
