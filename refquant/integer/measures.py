"""What a quantized network costs and how far it is from the float one: model size and bit
operations per layer (:func:`layer_costs`), signal-to-quantization-noise ratio per layer
(:func:`layer_sqnr`) and the rate of saturated codes (:func:`saturation_rates`).
"""
import math

import numpy as np

from refquant.plan import conv_indices, output_grids, quantizer_bits
from refquant.yolo.network import NETWORK_INPUT

FLOAT_BITS = 32
"""Width of the float model's weights and activations (Darknet's float32)."""


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


def sqnr_db(reference, approximation):
    """Signal-to-quantization-noise ratio ``10 log10(sum ref**2 / sum (ref - approx)**2)`` in dB
    (float64; ``inf`` when they are equal)."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = reference - np.asarray(approximation, dtype=np.float64)
    return sqnr_from_powers(float(np.sum(reference ** 2)), float(np.sum(noise ** 2)))


def sqnr_from_powers(signal_power, noise_power):
    """``10 log10(signal power / noise power)`` in dB, the powers summed or averaged alike (so that
    they can be accumulated batch by batch); ``inf`` without noise, ``-inf`` without signal."""
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
