"""Per-tensor sensitivity of a quantization plan, and the error each density predicts beside the
error measured on held-out images.

For every quantized convolution's weights and every quantized layer output, the folded float
network runs with only that tensor fake-quantized by the plan's quantizer
(:func:`partially_quantized_outputs`); the mAP change against the float network and the
signal-to-quantization-noise ratio (SQNR) of the region head's input say what that tensor alone
costs. Beside it, per tensor, the squared error the plan's density predicts in closed form
(:func:`refquant.quantizers.error.expected_mse`, docs/SPECIFICATION.md, section 5) and the squared
error measured on the held-out images' values (activations) or on the weights themselves.
A tensor whose measured error is far above its predicted one has a density that misses its tails.
"""
import dataclasses

import numpy as np
from tqdm import tqdm

from refquant.integer.measures import sqnr_from_powers
from refquant.plan import quantizer_bits
from refquant.quantizers.error import empirical_mse, expected_mse
from refquant.yolo.network import NETWORK_INPUT


def partially_quantized_outputs(folded, images, weights=None, outputs=None):
    """Every layer's output of the float ``folded`` network on ``images`` (N, C, H, W), with only
    the given tensors fake-quantized: ``weights`` {convolution index: UniformQuantizer} replaces
    that layer's weights by their fake-quantized values (in the network's dtype), ``outputs``
    {layer index: UniformQuantizer} fake-quantizes that layer's output before the next layers read
    it. Everything else, the input and the biases included, stays float. Inference mode.
    """
    weights, outputs = weights or {}, outputs or {}
    x = np.asarray(images, dtype=folded.dtype)
    results = []
    for index, layer in enumerate(folded.layers):
        sources = [x if j == NETWORK_INPUT else results[j] for j in folded.inputs[index]]
        if getattr(layer, "multi_input", False):
            y = layer.forward(sources, training=False)
        elif index in weights:
            original = layer.params["weights"]
            layer.params["weights"] = weights[index].fake(original.astype(np.float64)).astype(original.dtype)
            try:
                y = layer.forward(sources[0], training=False)
            finally:
                layer.params["weights"] = original
        else:
            y = layer.forward(sources[0], training=False)
        if index in outputs:
            y = outputs[index].fake(y).astype(folded.dtype)
        results.append(y)
    return results


@dataclasses.dataclass(frozen=True)
class TensorSensitivity:
    """One tensor's row: ``layer`` index, ``kind`` (``"weights"`` or ``"activations"``), its
    ``bits``; ``mAP`` with only this tensor quantized and ``delta`` = that minus the float mAP
    (points); ``sqnr_db`` of the head's input against float; ``predicted_mse`` under the plan's
    density (None when the plan has no density for it) and ``measured_mse`` on the data."""

    layer: int
    kind: str
    bits: int
    mAP: float
    delta: float
    sqnr_db: float
    predicted_mse: object
    measured_mse: float


def _head_input(folded):
    return folded.inputs[len(folded.layers) - 1][0]


def _run(folded, inputs, batch_size, weights, outputs, reference_head_inputs):
    """``(head outputs, head-input noise power against reference_head_inputs)`` over ``inputs`` in
    batches, with the given tensors fake-quantized."""
    head_input = _head_input(folded)
    heads, noise, count = [], 0.0, 0
    for start in range(0, len(inputs), batch_size):
        layer_outputs = partially_quantized_outputs(folded, inputs[start:start + batch_size], weights, outputs)
        heads.append(layer_outputs[-1])
        difference = layer_outputs[head_input].astype(np.float64) - reference_head_inputs[start:start + batch_size]
        noise += float(np.sum(difference ** 2))
        count += difference.size
    return np.concatenate(heads), noise / count


def _float_pass(folded, inputs, batch_size, activations):
    """The float network once over ``inputs``: ``(head outputs, head inputs, {layer: mean squared
    error of its quantizer in ``activations`` on its float output})``."""
    head_input = _head_input(folded)
    heads, head_inputs, squared = [], [], {index: [0.0, 0] for index in activations}
    for start in range(0, len(inputs), batch_size):
        layer_outputs = folded.forward(inputs[start:start + batch_size], training=False, return_all=True)
        heads.append(layer_outputs[-1])
        head_inputs.append(layer_outputs[head_input].astype(np.float64))
        for index, quantizer in activations.items():
            values = layer_outputs[index].astype(np.float64)
            squared[index][0] += float(np.sum((values - quantizer.fake(values)) ** 2))
            squared[index][1] += values.size
    return (np.concatenate(heads), np.concatenate(head_inputs),
            {index: total / n for index, (total, n) in squared.items()})


def sensitivity(statistics, plan, inputs, score, batch_size=50, progress=True):
    """``(float mAP, [TensorSensitivity])`` of ``plan`` on ``inputs`` (held-out images, letterboxed).

    ``statistics``: the :class:`refquant.ptq.CalibrationStatistics` the plan was made from (its
    folded network; the densities are the plan's own); ``score(head outputs) -> mAP``
    in percent (e.g. :func:`refquant.demo.experiment.mean_average_precision` on the images'
    records). One float pass, then one pass per quantized tensor (a tqdm bar counts them). A plan with
    per-channel weight steps is refused: each tensor is fake-quantized here with its one step.
    """
    if plan.channel_steps:
        raise ValueError(f"sensitivity: the plan quantizes the weights of layers {sorted(plan.channel_steps)} per "
                         f"channel; the diagnosis quantizes each weight tensor with its one step (a per-tensor plan)")
    folded = statistics.net
    float_heads, references, measured = _float_pass(folded, inputs, batch_size, plan.activations)
    signal = float(np.mean(references ** 2))
    float_mAP = score(float_heads)
    tensors = [("weights", i, q) for i, q in sorted(plan.weights.items())]
    tensors += [("activations", i, q) for i, q in sorted(plan.activations.items())]
    rows = []
    for kind, index, quantizer in tqdm(tensors, desc="sensitivity", unit="tensor", disable=not progress):
        chosen = {index: quantizer}
        heads, noise = _run(folded, inputs, batch_size, chosen if kind == "weights" else {},
                               chosen if kind == "activations" else {}, references)
        mAP = score(heads)
        density = plan.densities.get((kind, index))
        predicted = None if density is None else float(expected_mse(density, quantizer))
        error = (empirical_mse(statistics.weights(index), quantizer) if kind == "weights" else measured[index])
        rows.append(TensorSensitivity(index, kind, quantizer_bits(quantizer), mAP, mAP - float_mAP,
                                      sqnr_from_powers(signal, noise), predicted, float(error)))
    return float_mAP, rows


def sensitivity_lines(float_mAP, rows, names=None):
    """The printed table: one line per tensor, most harmful first."""
    lines = [f"float mAP {float_mAP:.2f} %; each row quantizes one tensor alone",
             f"{'layer':>5} {'tensor':<12} {'bits':>4} {'mAP':>7} {'change':>7} {'SQNR dB':>8} "
             f"{'predicted MSE':>14} {'measured MSE':>13} {'ratio':>6}"]
    for r in sorted(rows, key=lambda r: r.delta):
        name = f"{r.layer}" if names is None else f"{r.layer} {names[r.layer]}"
        predicted = "-" if r.predicted_mse is None else f"{r.predicted_mse:.3g}"
        ratio = "-" if not r.predicted_mse else f"{r.measured_mse / r.predicted_mse:.2f}"
        lines.append(f"{name:>5} {r.kind:<12} {r.bits:>4} {r.mAP:>7.2f} {r.delta:>+7.2f} {r.sqnr_db:>8.1f} "
                     f"{predicted:>14} {r.measured_mse:>13.3g} {ratio:>6}")
    return lines
