"""The quantized network, float side: batch-norm folding, the quantization plan, calibration,
the exact float64 simulation and the float32 fake-quantized network of quantization-aware
training (METHOD.md, sections 4 and 5). The integer side is ``refquant.integer_network``.

This docstring is the specification; every function below implements one paragraph of it.

1. Folding batch norm (:func:`fold_batchnorm`). A copy of the float network in which every
   ``batch_normalize=1`` convolution becomes a plain convolution with bias, computed in float64
   from the rolling statistics with the engine's normalisation
   (:func:`refquant.yolo.batchnorm.normalizer`, ``1 / sqrt(variance + .00001)``)::

       factor_m  = scales_m * normalizer(rolling_variance_m)
       weights' = weights * factor_m          (every weight of output channel m)
       biases'  = biases_m - rolling_mean_m * factor_m

   so that ``f(weights' * x + biases')`` equals the inference-mode ``f(BN(weights * x))``; the
   results are stored in the network's dtype. Everything quantized below is the folded network.

2. The quantization plan (:class:`QuantizationPlan`, JSON, never pickle). One
   :class:`~refquant.intervals.UniformQuantizer` for

   - the network input: 8-bit, step 1/255, zero point 0, codes 0..255 (:func:`input_quantizer`),
     exact for 8-bit images ``k / 255``; anything else is rounded to that grid, outside [0, 1]
     saturated;
   - the weights of every convolution: signed codes, zero point 0, one step per tensor;
   - the output of every convolution (after its activation): affine codes with an integer zero
     point inside the codes (0 is exactly representable: zero padding stays exact), unsigned
     ``0 .. 2**b - 1`` except for the ``"kl"`` method (signed, narrow range, zero point 0);
   - the output of every route with two or more inputs: its own grid, to which each input is
     requantized. A route with a single input is a copy and keeps its input's grid, as do
     maxpool, reorg and upsample (max and permutations of codes stay on the grid);
   - nothing for the region head, which runs in float on the dequantized codes of its input.

   Weight and activation widths are set separately, 2 to 8 bits; the first and the last
   convolution (weights and output) have their own width, 8 bits by default (``first_bits``,
   ``last_bits``; None = the general widths). Route grids use the activation width.

3. Calibration (:func:`calibration_statistics`, :func:`quantization_plan`, :func:`calibrate`).
   The float folded network runs in inference mode over the calibration images; the output of
   every quantized layer (before quantization) is accumulated in an :class:`ActivationHistogram`:
   bins of a power-of-two width ``w``, bin ``j`` = ``[j w, (j + 1) w)``, so 0 is always an edge;
   the width starts as the smallest one giving at most ``max_bins`` bins over the first batch and
   doubles (merging pairs of bins) whenever a later batch widens the range past ``max_bins``
   bins. Memory is bounded by ``max_bins`` counts per layer, the range adapts, nothing
   overflows; the exact minimum, maximum, count, sum and sum of squares are kept beside (a tqdm
   bar counts the images). Weights are read from the folded tensors themselves. The statistics
   (:class:`CalibrationStatistics`, with its PGM fits cached) serve every method and width, so
   one pass over the images gives all the plans of a comparison. Methods, per tensor:

   - ``"pgm"``: a :class:`~refquant.pgm.PiecewiseGaussian` fitted by EM, then
     :func:`~refquant.intervals.optimal_quantizer` (``symmetric=True`` for weights,
     ``zero_representable=True`` for activations, ``pow2_step`` optional). Weights:
     ``breakpoints="auto"`` with at most 3 pieces (centre and two tails), on the weight tensor.
     Activations: ``fit_histogram`` with ``breakpoints=[0.0]`` for leaky-ReLU outputs (and routes
     and pools of them) whose histogram straddles 0, ``"auto"`` (at most 4 pieces) otherwise: the
     ``activation_breakpoints="kink"`` policy, the default. ``activation_breakpoints="auto"`` fits
     every layer with ``"auto"`` (at most 4 pieces, chosen by BIC; 0 is among the candidate
     breakpoints whenever the values straddle it), which lets the positive side of a leaky ReLU
     have tail pieces: trained detectors' activations have tails heavier than one Gaussian's, and
     a two-piece fit then underestimates them, giving intervals too narrow at 6 and 8 bits. The
     policy is recorded in the plan's options, so that refits use it too.
   - the baselines of :mod:`refquant.intervals`, called unchanged: ``"minmax"``,
     ``"percentile"`` (99.99), ``"aciq"`` (Laplace prior) and ``"aciq-gauss"`` (Gaussian prior),
     ``"mse"`` (brute-force search), ``"kl"`` (TensorRT's entropy calibration, which gives
     symmetric narrow-range signed codes for activations too). Weights pass the whole tensor
     (``symmetric=True``). Activations use the histogram entry points of ``refquant.intervals``
     on :meth:`ActivationHistogram.density` (the histogram read as a piecewise-uniform density,
     its end bins trimmed to the exact extremes), with the exact statistics where a method reads
     them: min-max on the exact minimum and maximum (so it is exact), percentiles from the CDF,
     ACIQ with the exact mean and standard deviation (Laplace: ``E|x - mean|`` under the
     density), the MSE search and the KL calibration on the binned data (candidates and ``max |x|``
     from the exact extremes). Nothing is sampled: a plan is a function of the histograms.

4. Fixed-point parameters and the exact float64 simulation (:func:`fixed_point_layers`,
   :class:`SimulatedNetwork`). For a convolution with input grid ``(s_in, z_in)``, weight grid
   ``(s_w, 0)`` and output grid ``(s_out, z_out, qmin, qmax)``:

   - weight codes ``Q_w.quantize(weights')`` (int8), bias ``round_half_even(biases' / (s_in s_w))``
     in int32 (:func:`refquant.intconv.quantize_bias`);
   - the real multiplier ``M = s_in * s_w / s_out`` (float64, in that order) becomes
     ``(multiplier, shift)`` by :func:`refquant.intconv.quantize_multiplier` (22 bits), or
     ``(1, shift)`` when ``M`` is exactly ``2**-shift`` (power-of-two steps: a shift alone; the
     codes are the same either way). The negative side: the same pair for a linear activation,
     :func:`refquant.intconv.leaky_multipliers` (``0.1 M``, quantized separately) for leaky,
     ``(0, 0)`` for relu. A route input on another grid is rescaled by the pair of
     ``s_in / s_out``.
   - The SIMULATION is defined on integer-valued float64 tensors: with ``x = codes - z_in``,
     ``acc = weight_codes (x) + bias`` computed by the engine's im2col and GEMM in float64
     (every term an integer, every partial sum below 2**53: exact; in float32 where
     :func:`simulation_gemm_dtype` proves every partial sum below 2**24, which is just as exact
     and faster), then::

         code = clip(round_half_even(acc * (multiplier * 2.0**-shift)) + z_out, qmin, qmax)

     with the negative pair where ``acc < 0``. ``|acc * multiplier| < 2**31 * 2**22 <= 2**53``
     makes that product exact in float64, so this is exactly the integer rule
     ``clip(rounding_right_shift(acc * multiplier, shift) + z_out, qmin, qmax)`` of
     ``refquant.intconv``; the integer network (Numba int32 convolution, ``requantize_code``)
     therefore produces the same codes at every layer, which its tests check. A float32
     simulation could not promise that (its sums and products round), hence float64 and
     integer-valued tensors. Maxpool, reorg and upsample act on the codes with the engine's
     dtype-generic functions; the region head gets ``s (codes - z)`` in float64.

5. Quantization-aware training (:class:`FakeQuantNetwork`), float32 on the float engine:
   per convolution ``y = Q_a(f(conv(x, Q_w(W)) + Q_b(b)))`` with ``Q(x) = UniformQuantizer.fake``,
   ``Q_b`` the bias grid ``s_in s_w``, the input through ``Q_in`` and multi-input routes through
   their ``Q``. Backward: the straight-through rule (``UniformQuantizer.fake_backward``: the
   gradient passes where the value lies in the closed interval ``[lo, hi]``, 0 outside) for
   weights and activations, identity for the bias rounding. Its values equal the simulation's
   up to float32 rounding and the 2**-22 of the multipliers (a code can differ by one next to a
   rounding tie, and such a difference travels on to the next layers); training uses it,
   inference numbers come from the simulation or the integer network.
   :meth:`FakeQuantNetwork.refit` refits the PGMs and re-optimises the plan from the current
   weights and the pre-quantization activations of a batch of images.

6. The training loop and its result (:func:`quantization_aware_training`, :func:`save_quantized`).
   Darknet's training iteration (``refquant.train.train_iteration``: batching, augmentation,
   region loss, SGD with momentum and decay) runs unchanged on the :class:`FakeQuantNetwork`;
   every ``refit_every`` iterations the plan is refitted on a fixed set of images (the PGMs of
   the current weights and activations, the intervals re-optimised at the same widths). The
   result is saved without pickle as an ordinary Darknet model of the folded network (the cfg
   without ``batch_normalize``, :func:`folded_cfg_text`, and its ``.weights``) beside the plan's
   JSON; :func:`load_quantized` reads the three back.
"""
import contextlib
import dataclasses
import json
import math
import os
import time
import warnings

import numba
import numpy as np
from tqdm import tqdm

from refquant import darknet, intervals, train
from refquant.intconv import (MAX_SHIFT, check_accumulator_range, leaky_multipliers, multiplier_value,
                              quantize_bias, quantize_multiplier, quantize_shift)
from refquant.intervals import UniformQuantizer, masked_gradient
from refquant.pgm import ConvergenceWarning, PiecewiseGaussian
from refquant.rounding import round_half_even
from refquant.yolo import batchnorm
from refquant.yolo.convolutional import convolution_output_size, im2col
from refquant.yolo.maxpool import maxpool_forward
from refquant.yolo.network import NETWORK_INPUT, Network
from refquant.yolo.reorg import reorg_forward
from refquant.yolo.upsample import upsample_forward

METHODS = ("pgm", "minmax", "percentile", "aciq", "aciq-gauss", "mse", "kl")
"""Calibration methods of :func:`quantization_plan` (see the module docstring, point 3)."""

PERCENTILE = 99.99
"""The ``"percentile"`` method's clipping percentile (NVIDIA pytorch-quantization's default)."""

DEFAULT_BITS_FIRST_LAST = 8
"""Width of the first and last convolution (weights and output) unless told otherwise."""

MIN_BITS, MAX_BITS = 2, 8
"""Widths accepted for weights and activations (int8 weights, activation codes within int16)."""

DEFAULT_BINS = 2048
"""Histogram bins per layer (TensorRT's calibration histograms use 2048 too)."""

ACTIVATION_BREAKPOINTS = ("kink", "auto")
"""Policies for the activations' PGM breakpoints (module docstring, point 3): ``"kink"`` (0 alone
for leaky-ReLU outputs) or ``"auto"`` (chosen by BIC for every layer)."""
DEFAULT_ACTIVATION_BREAKPOINTS = "kink"
"""The policy used when none is given (and for plans saved without one)."""

PGM_FIT_OPTIONS = {}
"""Keyword arguments of the calibration's PGM fits (``max_iter``, ``tol``, ...): none, i.e.
``refquant.pgm``'s defaults. A tail piece (the negative side of a leaky ReLU, a weight tail) can
reach ``max_iter`` with a flat likelihood; such fits are listed in
``CalibrationStatistics.fit_warnings`` and reported by one warning per plan."""

CODE_LAYERS = ("maxpool", "reorg", "upsample")
"""Layers that move codes without changing their grid."""

HEAD_LAYERS = ("region",)
"""Heads that run in float on the dequantized codes of their input."""

INTEGER_ACTIVATIONS = ("linear", "leaky", "relu")
"""Convolution activations with an integer form (requantization with one or two multipliers)."""

PLAN_FORMAT = "refquant-quantization-plan"
PLAN_VERSION = 1


# ================================================================================================
# 1. Folding batch norm
# ================================================================================================

def fold_batchnorm(net):
    """A copy of ``net`` whose batch-normalized convolutions are plain convolutions with bias.

    Folded in float64 with the engine's normaliser (module docstring, point 1), then stored in
    the network's dtype. Layers without batch norm are copied unchanged. The copy shares nothing
    with ``net``; its inference-mode forward equals ``net``'s (to float rounding).
    """
    if not isinstance(net, Network):
        raise TypeError(f"fold_batchnorm: expected a refquant Network, got {type(net).__name__}")
    folded = net.copy()
    for layer in folded.layers:
        if layer.type != "convolutional" or not layer.batch_normalize:
            continue
        p = layer.params
        factor = (p["scales"].astype(np.float64)
                  * batchnorm.normalizer(p["rolling_variance"].astype(np.float64)))
        weights = p["weights"].astype(np.float64) * factor[:, None, None, None]
        biases = p["biases"].astype(np.float64) - p["rolling_mean"].astype(np.float64) * factor
        layer.batch_normalize = False
        layer.params = {"biases": biases.astype(net.dtype), "weights": weights.astype(net.dtype)}
        layer.zero_grads()
    return folded


def is_folded(net):
    """True when no convolution of ``net`` has batch norm left."""
    return not any(layer.type == "convolutional" and layer.batch_normalize for layer in net.layers)


# ================================================================================================
# 2. The plan
# ================================================================================================

def input_quantizer():
    """The network input's grid: 8-bit codes 0..255, step 1/255, zero point 0 (8-bit images)."""
    return UniformQuantizer(1.0 / 255.0, 0, 0, 255)


def quantizer_bits(quantizer):
    """Bits needed for the codes of ``quantizer``: ``ceil(log2(qmax - qmin + 1))``."""
    return int(math.ceil(math.log2(quantizer.num_levels)))


def _quantizer_to_dict(quantizer):
    return {"step": quantizer.step, "zero_point": quantizer.zero_point,
            "qmin": quantizer.qmin, "qmax": quantizer.qmax}


def _quantizer_from_dict(data, where):
    try:
        return UniformQuantizer(float(data["step"]), data["zero_point"], int(data["qmin"]), int(data["qmax"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: expected a quantizer {{step, zero_point, qmin, qmax}}, got {data!r} "
                         f"({error})") from None


def conv_indices(net_or_types):
    """Indices of the convolutional layers (from a Network or a list of layer types)."""
    types = _layer_types(net_or_types)
    return [i for i, kind in enumerate(types) if kind == "convolutional"]


def _layer_types(net_or_types):
    if isinstance(net_or_types, Network):
        return [layer.type for layer in net_or_types.layers]
    return list(net_or_types)


def quantized_outputs(net):
    """Indices of the layers with their own output grid: convolutions and multi-input routes."""
    return [i for i, layer in enumerate(net.layers)
            if layer.type == "convolutional" or (layer.type == "route" and len(net.inputs[i]) > 1)]


@dataclasses.dataclass
class QuantizationPlan:
    """Per-layer quantizers of a network (module docstring, point 2).

    ``input``: the input grid; ``weights``: {conv index: signed quantizer}; ``activations``:
    {conv or multi-input route index: output quantizer}; ``layer_types`` and ``weight_shapes``
    ({conv index: (M, C, k, k)}) identify the network the plan belongs to (:meth:`check`);
    ``method`` and ``options`` (the widths and flags it was made with) let a plan be refitted;
    ``densities``: {(``"weights"`` or ``"activations"``, index): PiecewiseGaussian} fitted by
    the ``"pgm"`` method; ``network``: the network's name. Saved as JSON (:meth:`save`).
    """

    input: UniformQuantizer
    weights: dict
    activations: dict
    layer_types: list
    weight_shapes: dict
    method: str = "manual"
    options: dict = dataclasses.field(default_factory=dict)
    densities: dict = dataclasses.field(default_factory=dict)
    network: str = ""

    @classmethod
    def for_network(cls, net, weights, activations, input=None, method="manual", options=None,
                    densities=None):
        """A plan for ``net`` from given quantizers (e.g. hand-made ones); checked against ``net``."""
        plan = cls(input=input_quantizer() if input is None else input, weights=dict(weights),
                   activations=dict(activations), layer_types=[layer.type for layer in net.layers],
                   weight_shapes={i: tuple(net.layers[i].params["weights"].shape) for i in conv_indices(net)},
                   method=method, options=dict(options or {}), densities=dict(densities or {}),
                   network=net.name)
        plan.check(net)
        return plan

    # -- validation ------------------------------------------------------------------------------

    def check(self, net):
        """ValueError naming the layer unless the plan fits ``net`` and every quantizer is usable.

        Usable: weights signed with zero point 0 and codes within int8; activations with an
        integer zero point inside their codes, at most 256 codes; every convolution and
        multi-input route covered; the input grid integer with at most 256 codes.
        """
        types = [layer.type for layer in net.layers]
        if types != list(self.layer_types):
            raise ValueError(f"plan for {self.network or 'a network'} has layers {self.layer_types}, "
                             f"but {net.name} has {types}")
        for index in conv_indices(net):
            shape = tuple(net.layers[index].params["weights"].shape)
            if tuple(self.weight_shapes.get(index, ())) != shape:
                raise ValueError(f"plan: layer {index} [convolutional] has weights {shape} in {net.name}, "
                                 f"the plan was made for {self.weight_shapes.get(index)}")
            if index not in self.weights:
                raise ValueError(f"plan: layer {index} [convolutional] has no weight quantizer")
            _check_weight_grid(self.weights[index], f"plan: layer {index} [convolutional] weights")
        expected = set(quantized_outputs(net))
        for index in sorted(expected):
            if index not in self.activations:
                raise ValueError(f"plan: layer {index} [{types[index]}] has no output quantizer")
            _check_code_grid(self.activations[index], f"plan: layer {index} [{types[index]}] outputs")
        extra = set(self.activations) - expected
        if extra:
            index = min(extra)
            raise ValueError(f"plan: layer {index} [{types[index] if index < len(types) else '?'}] has an "
                             f"output quantizer but keeps its input's grid (only convolutions and "
                             f"multi-input routes have their own)")
        extra = set(self.weights) - set(conv_indices(net))
        if extra:
            raise ValueError(f"plan: weight quantizers for layers {sorted(extra)}, which are not convolutions")
        _check_code_grid(self.input, "plan: input")
        return self

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self):
        """Plain data for ``json.dump``: the inverse of :meth:`from_dict`."""
        layers = []
        for index, kind in enumerate(self.layer_types):
            entry = {"index": index, "type": kind}
            if index in self.weights:
                entry["weight_shape"] = list(self.weight_shapes[index])
                entry["weights"] = _quantizer_to_dict(self.weights[index])
            if index in self.activations:
                entry["activations"] = _quantizer_to_dict(self.activations[index])
            for kind_name in ("weights", "activations"):
                density = self.densities.get((kind_name, index))
                if density is not None:
                    entry[f"{kind_name}_density"] = density.to_dict()
            layers.append(entry)
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "network": self.network,
                "method": self.method, "options": dict(self.options),
                "input": _quantizer_to_dict(self.input), "layers": layers}

    @classmethod
    def from_dict(cls, data, where="plan"):
        """Rebuild a plan from :meth:`to_dict`'s output; ValueError naming ``where`` and the key."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{where}: not a refquant quantization plan (expected \"format\": \"{PLAN_FORMAT}\")")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"{where}: plan version {data.get('version')!r}, this refquant reads {PLAN_VERSION}")
        weights, activations, shapes, densities, types = {}, {}, {}, {}, []
        for position, entry in enumerate(data.get("layers", [])):
            if entry.get("index") != position or "type" not in entry:
                raise ValueError(f"{where}: layers[{position}] must have \"index\": {position} and a \"type\"")
            types.append(entry["type"])
            if "weights" in entry:
                weights[position] = _quantizer_from_dict(entry["weights"], f"{where}: layers[{position}].weights")
                shapes[position] = tuple(int(v) for v in entry.get("weight_shape", ()))
            if "activations" in entry:
                activations[position] = _quantizer_from_dict(entry["activations"],
                                                             f"{where}: layers[{position}].activations")
            for kind_name in ("weights", "activations"):
                if f"{kind_name}_density" in entry:
                    try:
                        densities[(kind_name, position)] = PiecewiseGaussian.from_dict(entry[f"{kind_name}_density"])
                    except (KeyError, TypeError, ValueError) as error:
                        raise ValueError(f"{where}: layers[{position}].{kind_name}_density: {error}") from None
        if "input" not in data:
            raise ValueError(f"{where}: missing \"input\" quantizer")
        return cls(input=_quantizer_from_dict(data["input"], f"{where}: input"), weights=weights,
                   activations=activations, layer_types=types, weight_shapes=shapes,
                   method=str(data.get("method", "manual")), options=dict(data.get("options", {})),
                   densities=densities, network=str(data.get("network", "")))

    def save(self, path):
        """Write the plan as JSON to ``path``."""
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path):
        """Read a plan written by :meth:`save`; ValueError naming the file for anything malformed."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        return cls.from_dict(data, where=path)


def _check_weight_grid(quantizer, where):
    if not isinstance(quantizer, UniformQuantizer):
        raise TypeError(f"{where}: expected a UniformQuantizer, got {type(quantizer).__name__}")
    if quantizer.zero_point != 0 or quantizer.qmin < -128 or quantizer.qmax > 127:
        raise ValueError(f"{where}: weights need signed codes within int8 and zero point 0, got "
                         f"codes [{quantizer.qmin}, {quantizer.qmax}] zero point {quantizer.zero_point}")


def _check_code_grid(quantizer, where):
    if not isinstance(quantizer, UniformQuantizer):
        raise TypeError(f"{where}: expected a UniformQuantizer, got {type(quantizer).__name__}")
    if not isinstance(quantizer.zero_point, int) or not quantizer.qmin <= quantizer.zero_point <= quantizer.qmax:
        raise ValueError(f"{where}: the zero point must be an integer code in [qmin, qmax] = "
                         f"[{quantizer.qmin}, {quantizer.qmax}] (0 representable), got {quantizer.zero_point}")
    if quantizer.num_levels > 256:
        raise ValueError(f"{where}: at most 8-bit codes (256 levels), got {quantizer.num_levels} levels")


def check_supported(net):
    """ValueError naming the first layer the quantized network cannot run.

    Supported: convolutions with a linear, leaky or relu activation, routes, maxpool, reorg,
    upsample with scale 1, and a region head that no other layer reads.
    """
    consumers = {j for inputs in net.inputs for j in inputs}
    for index, layer in enumerate(net.layers):
        kind = layer.type
        where = f"{net.name}: layer {index} [{kind}]"
        if kind == "convolutional":
            if layer.activation not in INTEGER_ACTIVATIONS:
                raise ValueError(f"{where}: activation {layer.activation!r} has no integer form "
                                 f"(supported: {', '.join(INTEGER_ACTIVATIONS)})")
        elif kind in HEAD_LAYERS:
            if index in consumers:
                raise ValueError(f"{where}: a head must be an output layer, but another layer reads it")
        elif kind == "upsample" and layer.scale != 1:
            raise ValueError(f"{where}: scale={layer.scale} would leave the grid; only scale=1 is supported")
        elif kind not in CODE_LAYERS and kind != "route":
            raise ValueError(f"{where}: not supported by the quantized network (supported: convolutional, "
                             f"route, {', '.join(CODE_LAYERS)}, region)")
        if any(j != NETWORK_INPUT and net.layers[j].type in HEAD_LAYERS for j in net.inputs[index]):
            raise ValueError(f"{where} reads a head's output")


def output_grids(net, plan):
    """The grid of every layer's output codes: list of UniformQuantizer, None for a head.

    Convolutions and multi-input routes: their plan quantizer; maxpool, reorg, upsample and
    single-input routes: their input's grid (:func:`check_supported` first, then the plan).
    """
    check_supported(net)
    plan.check(net)
    grids = []
    for index, layer in enumerate(net.layers):
        sources = [plan.input if j == NETWORK_INPUT else grids[j] for j in net.inputs[index]]
        if index in plan.activations:
            grids.append(plan.activations[index])
        elif layer.type in HEAD_LAYERS:
            grids.append(None)
        else:
            grids.append(sources[0])
    return grids


# ================================================================================================
# 3. Calibration
# ================================================================================================

class ActivationHistogram:
    """Counts of a layer's values over a calibration set, in bounded memory (module docstring, 3).

    Bin ``j`` is ``[j * bin_width, (j + 1) * bin_width)`` for ``j = first .. first + len(counts) - 1``;
    ``bin_width`` is a power of two, doubled (pairs of bins merged) whenever the range would need
    more than ``max_bins`` bins. Also kept exactly: ``count``, ``min``, ``max``, ``sum``,
    ``sum_squares`` (float64).
    """

    def __init__(self, max_bins=DEFAULT_BINS):
        if isinstance(max_bins, bool) or not isinstance(max_bins, (int, np.integer)) or max_bins < 16:
            raise ValueError(f"ActivationHistogram: max_bins must be an int >= 16, got {max_bins!r}")
        self.max_bins = int(max_bins)
        self.bin_width = None
        self.first = 0
        self.counts = np.zeros(0, np.int64)
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.sum = 0.0
        self.sum_squares = 0.0

    @property
    def edges(self):
        """(B+1,) float64 bin edges ``(first + k) * bin_width``."""
        return (self.first + np.arange(self.counts.size + 1, dtype=np.float64)) * self.bin_width

    def _bins_needed(self, width):
        return math.floor(self.max / width) - math.floor(self.min / width) + 1

    def add(self, values):
        """Count the values of an array of any shape (floats; NaN or inf is a ValueError)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return self
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ValueError(f"ActivationHistogram.add: {bad} values are NaN or infinite")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self.sum += float(np.sum(x))
        self.sum_squares += float(np.dot(x, x))
        if self.bin_width is None:
            self.bin_width = _initial_bin_width(lo, hi, self.max_bins)
            self.first = math.floor(lo / self.bin_width)
        while self._bins_needed(self.bin_width) > self.max_bins:
            self._coarsen()
        first = math.floor(self.min / self.bin_width)
        last = math.floor(self.max / self.bin_width)
        if first < self.first or last >= self.first + self.counts.size:
            grown = np.zeros(last - first + 1, np.int64)
            grown[self.first - first:self.first - first + self.counts.size] = self.counts
            self.counts, self.first = grown, first
        # x / bin_width is exact (a power of two), so floor puts each value in its bin exactly.
        bins = np.floor(x / self.bin_width).astype(np.int64) - self.first
        self.counts += np.bincount(bins, minlength=self.counts.size)
        return self

    def _coarsen(self):
        """Double the bin width: bins 2k and 2k+1 become bin k."""
        counts, first = self.counts, self.first
        if first % 2:
            counts, first = np.concatenate([[0], counts]), first - 1
        if counts.size % 2:
            counts = np.concatenate([counts, [0]])
        self.counts = counts.reshape(-1, 2).sum(axis=1)
        self.first = first // 2
        self.bin_width *= 2.0

    def mean(self):
        """The exact mean of every value added."""
        return self.sum / self.count

    def std(self):
        """The exact (population) standard deviation of every value added, from the sums."""
        mean = self.mean()
        return math.sqrt(max(self.sum_squares / self.count - mean * mean, 0.0))

    def density(self):
        """The histogram as a :class:`refquant.intervals.HistogramDensity` (uniform inside each bin).

        The first bin's left edge becomes the exact minimum and the last bin's right edge the
        exact maximum, unless that would empty the bin (a maximum lying exactly on the last
        bin's left edge), where the bin keeps its width: the density never reaches past the
        data by more than that one bin.
        """
        if self.count == 0:
            raise ValueError("ActivationHistogram.density: the histogram is empty")
        edges = self.edges
        edges[0] = self.min
        if self.max > edges[-2]:
            edges[-1] = self.max
        return intervals.HistogramDensity(self.counts, edges)

    def sample(self, n, rng=0):
        """``n`` values drawn from the histogram (bins by count, uniform inside, clipped to the
        exact extremes), followed by the exact minimum and maximum: (n + 2,) float64."""
        if self.count == 0:
            raise ValueError("ActivationHistogram.sample: the histogram is empty")
        rng = np.random.default_rng(rng)
        bins = rng.choice(self.counts.size, size=int(n), p=self.counts / self.counts.sum())
        values = (self.first + bins + rng.random(int(n))) * self.bin_width
        return np.concatenate([np.clip(values, self.min, self.max), [self.min, self.max]])

    def to_dict(self):
        """Plain data (counts, edges and the exact statistics), e.g. for JSON."""
        return {"bin_width": self.bin_width, "first": self.first, "counts": self.counts.tolist(),
                "count": self.count, "min": self.min, "max": self.max, "sum": self.sum,
                "sum_squares": self.sum_squares}


def _initial_bin_width(lo, hi, max_bins):
    """Smallest power of two giving at most ``max_bins`` bins over [lo, hi]."""
    span = hi - lo
    if span == 0.0:
        return 2.0 ** math.floor(math.log2(abs(lo))) if lo != 0.0 else 1.0
    width = 2.0 ** math.ceil(math.log2(span / (max_bins - 1)))
    while math.floor(hi / width) - math.floor(lo / width) + 1 > max_bins:
        width *= 2.0
    return width


class CalibrationStatistics:
    """What calibration learns from the data, independent of the widths and the method.

    ``net``: the folded network (weights are read from it when a plan is made: a snapshot valid
    while its weights do not change); ``histograms``: {layer index: ActivationHistogram} of every
    quantized output. PGM fits and histogram samples are cached, so plans at several widths and
    methods cost one calibration pass (:func:`quantization_plan`).
    """

    def __init__(self, net, histograms, max_pieces_weights=3, max_pieces_activations=4,
                 baseline_samples=2**17, seed=0, fit_options=None,
                 activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS):
        if activation_breakpoints not in ACTIVATION_BREAKPOINTS:
            raise ValueError(f"activation_breakpoints must be one of {', '.join(ACTIVATION_BREAKPOINTS)}, "
                             f"got {activation_breakpoints!r}")
        self.activation_breakpoints = activation_breakpoints
        self.net = net
        self.fit_options = dict(PGM_FIT_OPTIONS if fit_options is None else fit_options)
        self.histograms = histograms
        self.max_pieces_weights = max_pieces_weights
        self.max_pieces_activations = max_pieces_activations
        self.baseline_samples = int(baseline_samples)
        self.seed = seed
        self.densities = {}
        self._samples = {}
        self.fit_warnings = {}

    def weights(self, index):
        """The folded weights of convolution ``index`` as float64 (M, C, k, k)."""
        return self.net.layers[index].params["weights"].astype(np.float64)

    def sample(self, index):
        """The baselines' sample of layer ``index``'s outputs (:meth:`ActivationHistogram.sample`)."""
        if index not in self._samples:
            self._samples[index] = self.histograms[index].sample(self.baseline_samples, rng=[self.seed, index])
        return self._samples[index]

    def density(self, kind, index):
        """The PGM of layer ``index``'s ``kind`` (``"weights"`` or ``"activations"``), fitted once."""
        key = (kind, index)
        if key not in self.densities:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                if kind == "weights":
                    density = PiecewiseGaussian.fit(self.weights(index), "auto",
                                                    max_pieces=self.max_pieces_weights, **self.fit_options)
                else:
                    histogram = self.histograms[index]
                    breakpoints = ([0.0] if self.activation_breakpoints == "kink" and _leaky_output(self.net, index)
                                   and histogram.first < 0 < histogram.first + histogram.counts.size else "auto")
                    density = PiecewiseGaussian.fit_histogram(histogram.counts, histogram.edges, breakpoints,
                                                              max_pieces=self.max_pieces_activations,
                                                              **self.fit_options)
            for warning in caught:
                if issubclass(warning.category, ConvergenceWarning):
                    self.fit_warnings[key] = str(warning.message)
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            self.densities[key] = density
        return self.densities[key]


def _leaky_output(net, index):
    """True when layer ``index`` outputs leaky-ReLU values (a leaky conv, or pools/routes of them)."""
    layer = net.layers[index]
    if layer.type == "convolutional":
        return layer.activation == "leaky"
    if layer.type in CODE_LAYERS or layer.type == "route":
        return all(j != NETWORK_INPUT and _leaky_output(net, j) for j in net.inputs[index])
    return False


def image_batches(images, batch_size):
    """Batches from an (N, C, H, W) array (cut into ``batch_size`` images) or an iterable of arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be (N, C, H, W) with N >= 1, got shape {images.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    return images


def collect_histograms(batches, layer_outputs, indices, max_bins=DEFAULT_BINS, progress=True,
                       description="calibration"):
    """{index: ActivationHistogram} of ``layer_outputs(batch)[index]`` over every batch.

    ``layer_outputs``: batch -> list of every layer's float output (before quantization).
    """
    histograms = {index: ActivationHistogram(max_bins) for index in indices}
    total = None
    if isinstance(batches, list):
        total = sum(int(b.shape[0]) for b in batches)
    seen = 0
    with tqdm(total=total, desc=description, unit="image", disable=not progress, leave=False) as bar:
        for batch in batches:
            outputs = layer_outputs(batch)
            for index in indices:
                histograms[index].add(outputs[index])
            seen += int(batch.shape[0])
            bar.update(int(batch.shape[0]))
    if seen == 0:
        raise ValueError("calibration: no images")
    return histograms


def calibration_statistics(net, images, batch_size=4, max_bins=DEFAULT_BINS, baseline_samples=2**17,
                           seed=0, progress=True, activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS):
    """Fold ``net`` and histogram every quantized output over ``images`` (module docstring, 3).

    ``images``: (N, C, H, W) float array in [0, 1], or an iterable of such batches. The folded
    float network runs in inference mode. ``activation_breakpoints``: the PGM policy of the
    activations (:data:`ACTIVATION_BREAKPOINTS`). Returns :class:`CalibrationStatistics`.
    """
    folded = fold_batchnorm(net)
    check_supported(folded)  # before the long pass
    histograms = collect_histograms(image_batches(images, batch_size),
                                    lambda x: folded.forward(x, training=False, return_all=True),
                                    quantized_outputs(folded), max_bins, progress)
    return CalibrationStatistics(folded, histograms, baseline_samples=baseline_samples, seed=seed,
                                 activation_breakpoints=activation_breakpoints)


def layer_bits(net, weight_bits, activation_bits, first_bits=DEFAULT_BITS_FIRST_LAST,
               last_bits=DEFAULT_BITS_FIRST_LAST):
    """{layer index: (weight bits or None, activation bits)} for every quantized output.

    The first and last convolutions get ``first_bits`` / ``last_bits`` for both (None: the
    general widths); routes get ``activation_bits``.
    """
    for name, bits in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                       ("first_bits", first_bits), ("last_bits", last_bits)):
        if bits is None and name in ("first_bits", "last_bits"):
            continue
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    convs = conv_indices(net)
    widths = {}
    for index in quantized_outputs(net):
        bits = (int(weight_bits) if index in convs else None, int(activation_bits))
        if index == convs[-1] and last_bits is not None:
            bits = (int(last_bits), int(last_bits))
        if index == convs[0] and first_bits is not None:
            bits = (int(first_bits), int(first_bits))
        widths[index] = bits
    return widths


def quantization_plan(statistics, weight_bits, activation_bits, method="pgm",
                      first_bits=DEFAULT_BITS_FIRST_LAST, last_bits=DEFAULT_BITS_FIRST_LAST,
                      pow2_step=False, progress=False):
    """The plan of one method and set of widths from :class:`CalibrationStatistics` (point 3)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pow2_step and method != "pgm":
        raise ValueError(f"pow2_step=True is supported by method='pgm' (optimal_quantizer), not {method!r}")
    net = statistics.net
    widths = layer_bits(net, weight_bits, activation_bits, first_bits, last_bits)
    weights, activations, densities = {}, {}, {}
    for index in tqdm(sorted(widths), desc=f"plan ({method})", disable=not progress, leave=False):
        w_bits, a_bits = widths[index]
        try:
            if w_bits is not None:
                weights[index] = _weight_quantizer(statistics, index, w_bits, method, pow2_step)
            activations[index] = _activation_quantizer(statistics, index, a_bits, method, pow2_step)
        except ValueError as error:
            raise ValueError(f"layer {index} [{net.layers[index].type}], method {method!r}: {error}") from error
        if method == "pgm":
            for kind in ("weights", "activations"):
                if (kind, index) in statistics.densities:
                    densities[(kind, index)] = statistics.densities[(kind, index)]
    short = sorted(key for key in statistics.fit_warnings if key in densities)
    if short:
        warnings.warn(f"PGM fits short of EM convergence (usable estimates) for {short}; "
                      f"details in statistics.fit_warnings", ConvergenceWarning, stacklevel=2)
    options = {"weight_bits": int(weight_bits), "activation_bits": int(activation_bits),
               "first_bits": first_bits, "last_bits": last_bits, "pow2_step": bool(pow2_step),
               "activation_breakpoints": statistics.activation_breakpoints}
    return QuantizationPlan.for_network(net, weights, activations, method=method, options=options,
                                        densities=densities)


def _baseline(method, samples, bits, symmetric):
    """The intervals module's baseline quantizer for ``method`` (called unchanged)."""
    if method == "minmax":
        return intervals.minmax_quantizer(samples, bits, symmetric)
    if method == "percentile":
        return intervals.percentile_quantizer(samples, bits, PERCENTILE, symmetric)
    if method == "aciq":
        return intervals.aciq_quantizer(samples, bits, "laplace", symmetric)
    if method == "aciq-gauss":
        return intervals.aciq_quantizer(samples, bits, "gaussian", symmetric)
    if method == "mse":
        return intervals.mse_search_quantizer(samples, bits, symmetric, progress=False)
    if method == "kl":
        return intervals.kl_quantizer(samples, bits)
    raise ValueError(f"unknown method {method!r}")


def _weight_quantizer(statistics, index, bits, method, pow2_step):
    if method == "pgm":
        return intervals.optimal_quantizer(statistics.density("weights", index), bits, symmetric=True,
                                           pow2_step=pow2_step)
    return _baseline(method, statistics.weights(index), bits, symmetric=True)


def _activation_quantizer(statistics, index, bits, method, pow2_step):
    if method == "pgm":
        return intervals.optimal_quantizer(statistics.density("activations", index), bits,
                                           zero_representable=True, pow2_step=pow2_step)
    return _histogram_baseline(method, statistics.histograms[index], bits)


def _histogram_baseline(method, histogram, bits):
    """The intervals module's histogram entry point for ``method`` on an ActivationHistogram
    (affine codes; ``"kl"`` symmetric narrow-range), with its exact statistics (point 3)."""
    density = histogram.density()
    extremes = (histogram.min, histogram.max)
    if method == "minmax":
        return intervals.minmax_quantizer_histogram(density, bits, extremes=extremes)
    if method == "percentile":
        return intervals.percentile_quantizer_histogram(density, bits, PERCENTILE)
    if method in ("aciq", "aciq-gauss"):
        prior = "laplace" if method == "aciq" else "gaussian"
        return intervals.aciq_quantizer_histogram(density, bits, prior, mean=histogram.mean(), std=histogram.std())
    if method == "mse":
        return intervals.mse_search_quantizer_histogram(density, bits, extremes=extremes, progress=False)
    if method == "kl":
        return intervals.kl_quantizer_histogram(density, bits, extremes=extremes)
    raise ValueError(f"unknown method {method!r}")


def calibrate(net, images, weight_bits, activation_bits, method="pgm", first_bits=DEFAULT_BITS_FIRST_LAST,
              last_bits=DEFAULT_BITS_FIRST_LAST, pow2_step=False, batch_size=4, max_bins=DEFAULT_BINS,
              baseline_samples=2**17, seed=0, progress=True):
    """Post-training calibration: :func:`calibration_statistics` then :func:`quantization_plan`.

    For several methods or widths on the same images, call those two directly (one pass).
    """
    statistics = calibration_statistics(net, images, batch_size, max_bins, baseline_samples, seed, progress)
    return quantization_plan(statistics, weight_bits, activation_bits, method, first_bits, last_bits,
                             pow2_step, progress)


# ================================================================================================
# 4. Fixed-point parameters, and the exact float64 simulation
# ================================================================================================

@dataclasses.dataclass(frozen=True)
class FixedPointConvolution:
    """The integer parameters of one convolution (module docstring, point 4).

    ``weight_codes`` (M, C, k, k) int8; ``bias`` (M,) int32 at scale ``s_in * s_w``;
    ``multiplier, shift`` for ``acc >= 0``, ``negative_multiplier, negative_shift`` for
    ``acc < 0``; the three grids; ``size``, ``stride``, ``padding`` as in the float layer.
    """

    index: int
    weight_codes: np.ndarray
    bias: np.ndarray
    input_grid: UniformQuantizer
    weight_grid: UniformQuantizer
    output_grid: UniformQuantizer
    real_multiplier: float
    multiplier: int
    shift: int
    negative_multiplier: int
    negative_shift: int
    activation: str
    size: int
    stride: int
    padding: int

    @property
    def input_range(self):
        """``(qmin - z_in, qmax - z_in)``: the values of ``codes - z_in`` entering the convolution."""
        grid = self.input_grid
        return grid.qmin - grid.zero_point, grid.qmax - grid.zero_point


@dataclasses.dataclass(frozen=True)
class FixedPointRoute:
    """A multi-input route: per input None (already on the output grid) or
    ``(zero_point, multiplier, shift)`` rescaling it (``refquant.intconv.rescale_codes``)."""

    index: int
    rescalings: tuple
    output_grid: UniformQuantizer


def requantization_pair(real_multiplier):
    """``(1, shift)`` when ``real_multiplier == 2**-shift`` exactly (a shift alone), else
    :func:`refquant.intconv.quantize_multiplier`'s 22-bit pair. Both give the same codes."""
    mantissa, exponent = math.frexp(real_multiplier)
    if mantissa == 0.5 and 0 <= 1 - exponent <= MAX_SHIFT:
        return 1, quantize_shift(real_multiplier)
    return quantize_multiplier(real_multiplier)


def requantization_pairs(activation, real_multiplier):
    """(multiplier, shift, negative_multiplier, negative_shift) of a convolution (point 4): the
    negative side repeats the positive for linear, is ``leaky_multipliers``' for leaky, (0, 0) for relu."""
    positive = requantization_pair(real_multiplier)
    if activation == "linear":
        return positive + positive
    if activation == "leaky":
        return positive + tuple(leaky_multipliers(real_multiplier)[2:])
    if activation == "relu":
        return positive + (0, 0)
    raise ValueError(f"activation {activation!r} has no integer form (supported: {', '.join(INTEGER_ACTIVATIONS)})")


def fixed_point_layers(folded, plan):
    """Per layer: FixedPointConvolution, FixedPointRoute (multi-input routes) or None.

    ``folded``: a network without batch norm (:func:`fold_batchnorm`). Each convolution's int32
    accumulator range is checked here (:func:`refquant.intconv.check_accumulator_range`), before
    anything runs.
    """
    if not is_folded(folded):
        raise ValueError(f"{folded.name}: fold batch norm first (qat.fold_batchnorm)")
    grids = output_grids(folded, plan)
    layers = []
    for index, layer in enumerate(folded.layers):
        sources = [plan.input if j == NETWORK_INPUT else grids[j] for j in folded.inputs[index]]
        where = f"layer {index} [{layer.type}]"
        if layer.type == "convolutional":
            layers.append(_fixed_point_convolution(index, layer, sources[0], plan.weights[index],
                                                   grids[index], where))
        elif layer.type == "route" and len(sources) > 1:
            rescalings = tuple(None if source == grids[index] else
                               (source.zero_point,) + quantize_multiplier(source.step / grids[index].step)
                               for source in sources)
            layers.append(FixedPointRoute(index, rescalings, grids[index]))
        else:
            layers.append(None)
    return layers


def _fixed_point_convolution(index, layer, input_grid, weight_grid, output_grid, where):
    weights = layer.params["weights"].astype(np.float64)
    weight_codes = weight_grid.quantize(weights).astype(np.int8)
    try:
        bias = quantize_bias(layer.params["biases"], input_grid.step, weight_grid.step)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    real = input_grid.step * weight_grid.step / output_grid.step
    try:
        pairs = requantization_pairs(layer.activation, real)
    except ValueError as error:
        raise ValueError(f"{where}: multiplier {real!r}: {error}") from None
    conv = FixedPointConvolution(index, weight_codes, bias, input_grid, weight_grid, output_grid, real,
                                 *pairs, layer.activation, layer.size, layer.stride, layer.padding)
    try:
        check_accumulator_range(conv.input_range, (weight_grid.qmin, weight_grid.qmax), weights[0].size,
                                (int(bias.min()), int(bias.max())))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return conv


def run_codes(net, fixed, input_codes, convolution, route, grids, input_grid):
    """Run the layers of ``net`` on codes: the loop shared by the simulation and the integer network.

    ``convolution(FixedPointConvolution, codes) -> codes`` and ``route(FixedPointRoute, [codes])
    -> codes`` supply the arithmetic; maxpool, reorg and upsample use the engine's dtype-generic
    functions on the codes; a head gets ``grid.dequantize(codes)`` (float64). Returns the list of
    every layer's output (codes, the head's float output).
    """
    outputs = []
    for index, layer in enumerate(net.layers):
        sources = [input_codes if j == NETWORK_INPUT else outputs[j] for j in net.inputs[index]]
        kind = layer.type
        if kind == "convolutional":
            out = convolution(fixed[index], sources[0])
        elif kind == "route":
            out = sources[0] if len(sources) == 1 else route(fixed[index], sources)
        elif kind == "maxpool":
            out = maxpool_forward(sources[0], layer.size, layer.stride, layer.padding)[0]
        elif kind == "reorg":
            out = reorg_forward(sources[0], layer.stride)
        elif kind == "upsample":
            out = upsample_forward(sources[0], layer.stride)
        else:  # a head (output_grids has refused everything else)
            j = net.inputs[index][0]
            grid = input_grid if j == NETWORK_INPUT else grids[j]
            out = layer.forward(grid.dequantize(np.asarray(sources[0]).astype(np.int64)), training=False)
        outputs.append(out)
    return outputs


FLOAT32_EXACT_INTEGERS = 2 ** 24
"""Every integer of magnitude up to 2**24 is a float32 (24-bit significand)."""


def simulation_gemm_dtype(weight_codes, input_grid):
    """float32 if no partial sum of the simulation's GEMM can reach 2**24 in magnitude, else float64.

    ``weight_codes`` (M, K), the input grid of the convolution. Every partial sum of
    ``sum_k w_k (x_k - z)`` is bounded by ``max_m sum_k |w_mk| * max(|qmin - z|, |qmax - z|)``;
    below 2**24 every product and every partial sum is an integer float32 represents exactly, so
    the float32 GEMM returns the exact integers whatever order or FMA the BLAS uses. Above it, float64
    (exact below 2**53, which int32 accumulators always are). Same result, about half the time.
    """
    grid = input_grid
    span = max(abs(int(grid.qmin) - int(grid.zero_point)), abs(int(grid.qmax) - int(grid.zero_point)))
    bound = int(np.abs(np.asarray(weight_codes, dtype=np.int64)).sum(axis=1).max()) * span
    return np.float32 if bound < FLOAT32_EXACT_INTEGERS else np.float64


def gemm_weight_codes(conv):
    """``conv.weight_codes`` as the (M, K) matrix of the simulation's GEMM, in the dtype
    :func:`simulation_gemm_dtype` chooses for it."""
    flat = conv.weight_codes.reshape(conv.weight_codes.shape[0], -1)
    return flat.astype(simulation_gemm_dtype(flat, conv.input_grid))


def simulated_accumulator(conv, codes, weight_codes=None):
    """acc = W (codes - z_in) + bias, float64 (N, M, OH*OW), integer-valued, exact.

    By the engine's im2col and one GEMM per image, in float32 when :func:`simulation_gemm_dtype`
    proves every partial sum an integer below 2**24, else in float64 (integers below 2**53).
    ``weight_codes``: :func:`gemm_weight_codes` of ``conv`` if the caller keeps them (default:
    made here).
    """
    return gemm_products(conv, codes, weight_codes).astype(np.float64) + conv.bias.astype(np.float64)[:, None]


def gemm_products(conv, codes, weight_codes=None):
    """``W (codes - z_in)`` (N, M, OH*OW) without the bias, exact integers in the GEMM's dtype
    (:func:`gemm_weight_codes`; made here if None): im2col, then one GEMM per image."""
    if weight_codes is None:
        weight_codes = gemm_weight_codes(conv)
    x = (codes - float(conv.input_grid.zero_point)).astype(weight_codes.dtype)
    return np.matmul(weight_codes, im2col(x, conv.size, conv.stride, conv.padding))


def _output_size(conv, codes):
    """(OH, OW) of ``conv`` on ``codes`` (N, C, H, W): the engine's rule."""
    return tuple(convolution_output_size(n, conv.size, conv.stride, conv.padding) for n in codes.shape[2:])


def simulated_convolution(conv, codes, weight_codes=None):
    """The simulation's convolution (point 4): float64 codes in, float64 codes out (integer-valued).

    acc from :func:`simulated_accumulator`, then, in float64,
    code = clip(round_half_even(acc * multiplier * 2.0**-shift) + z_out, qmin, qmax),
    the negative pair where acc < 0.
    """
    acc = simulated_accumulator(conv, codes, weight_codes)
    out_h, out_w = _output_size(conv, codes)
    positive = multiplier_value(conv.multiplier, conv.shift)
    negative = multiplier_value(conv.negative_multiplier, conv.negative_shift)
    scaled = np.where(acc >= 0, acc * positive, acc * negative)
    grid = conv.output_grid
    out = np.clip(round_half_even(scaled) + grid.zero_point, grid.qmin, grid.qmax)
    return out.reshape(codes.shape[0], -1, out_h, out_w)


def simulated_convolution_fused(conv, codes, weight_codes=None):
    """:func:`simulated_convolution`, equal bit for bit, with everything after the GEMM in one
    parallel Numba pass: the optimized kernel :class:`SimulatedNetwork` runs.

    The reference makes about eight full-size float64 passes after the GEMM (cast, bias, two
    products, select, round, add, clip); :func:`_requantize_simulated` makes one, with the same
    float64 operations in the same order (no fast-math). ``tests/test_integer_network.py`` compares the two.
    """
    products = gemm_products(conv, codes, weight_codes)
    out_h, out_w = _output_size(conv, codes)
    grid = conv.output_grid
    out = np.empty(products.shape, np.float64)
    _requantize_simulated(products, conv.bias.astype(np.float64), multiplier_value(conv.multiplier, conv.shift),
                          multiplier_value(conv.negative_multiplier, conv.negative_shift), float(grid.zero_point),
                          float(grid.qmin), float(grid.qmax), out)
    return out.reshape(codes.shape[0], -1, out_h, out_w)


@numba.njit(cache=True, parallel=True)
def _requantize_simulated(products, bias, positive, negative, zero_point, qmin, qmax, out):
    """Per element of ``products`` (N, M, P), in float64: ``acc = products + bias[m]``, then
    ``min(max(round_half_even(acc * (positive if acc >= 0 else negative)) + zero_point, qmin), qmax)``."""
    n_batch, n_outputs, n_pixels = products.shape
    for task in numba.prange(n_batch * n_outputs):
        n, m = task // n_outputs, task % n_outputs
        for p in range(n_pixels):
            acc = np.float64(products[n, m, p]) + bias[m]
            scaled = acc * positive if acc >= 0 else acc * negative
            out[n, m, p] = min(max(round_half_even(scaled) + zero_point, qmin), qmax)


def simulated_route(route, inputs):
    """The simulation's route: each input moved to the output grid by
    ``clip(round_half_even((codes - z_in) * multiplier * 2.0**-shift) + z_out, qmin, qmax)``."""
    grid = route.output_grid
    parts = []
    for codes, rescaling in zip(inputs, route.rescalings):
        if rescaling is None:
            parts.append(codes)
            continue
        zero_point, multiplier, shift = rescaling
        scaled = (codes - float(zero_point)) * multiplier_value(multiplier, shift)
        parts.append(np.clip(round_half_even(scaled) + grid.zero_point, grid.qmin, grid.qmax))
    return np.concatenate(parts, axis=1)


class SimulatedNetwork:
    """The fake-quantized network computed exactly in float64 on integer-valued tensors (point 4).

    Build with :meth:`build`; :meth:`run` gives every layer's codes (float64) and the head's
    output; :meth:`forward` the head's output alone, so ``refquant.evaluate.evaluate`` can score
    it like a float network (``layers``, ``input_shape``, ``name`` are the folded network's).
    """

    def __init__(self, folded, plan):
        self.net = folded
        self.plan = plan
        self.grids = output_grids(folded, plan)
        self.fixed = fixed_point_layers(folded, plan)
        self.layers = folded.layers
        self.inputs = folded.inputs
        self.input_shape = folded.input_shape
        self.name = f"{folded.name} (simulated {plan.method})"
        self._weight_codes = {}  # (M, K) weight codes in the GEMM's dtype, made on first use

    @classmethod
    def build(cls, net, plan):
        """Fold ``net`` (a copy) and derive the fixed-point parameters of ``plan``."""
        return cls(fold_batchnorm(net), plan)

    def input_codes(self, images):
        """Codes of the input grid for ``images`` (N, C, H, W) float (shape checked per layer)."""
        return quantize_input(self.net, self.plan, images)

    def run(self, images):
        """images (N, C, H, W) float -> list of every layer's output: float64 codes; the head's float output."""
        codes = self.input_codes(images).astype(np.float64)
        return run_codes(self.net, self.fixed, codes, self._convolution, simulated_route, self.grids,
                         self.plan.input)

    def _convolution(self, conv, codes):
        if conv.index not in self._weight_codes:
            self._weight_codes[conv.index] = gemm_weight_codes(conv)
        return simulated_convolution_fused(conv, codes, self._weight_codes[conv.index])

    def forward(self, images, training=False):
        """The last layer's output (the region head's activations) for ``images``; inference only."""
        if training:
            raise ValueError(f"{self.name}: the simulation has no training mode (use FakeQuantNetwork)")
        return self.run(images)[-1]


def quantize_input(net, plan, images):
    """``plan.input.quantize(images)`` as int32 codes after checking ``images`` against ``net``."""
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{net.name}: images must be a float numpy array (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"{net.name}: images must have shape (N, C, H, W) with N >= 1, got {images.shape}")
    net.output_shapes(images.shape[1:])
    return plan.input.quantize(images)


# ================================================================================================
# 5. Quantization-aware training: the float32 fake-quantized network
# ================================================================================================

class FakeQuantConvolution:
    """A folded convolution in training: ``Q_a(f(conv(x, Q_w(W)) + Q_b(b)))`` (point 5).

    Shares ``params`` and ``grads`` with the wrapped layer, so an optimiser updating the wrapper's
    parameters updates the folded network's. Other attributes are the wrapped layer's.
    """

    def __init__(self, layer):
        self.layer = layer
        self.weight_grid = self.output_grid = None
        self.bias_step = None
        self._unquantized = None  # the last forward pass's output before Q_a, and its straight-through masks
        self._output_mask = None
        self._weight_mask = None
        self._weights_used = None

    def __getattr__(self, name):
        # "build" stays hidden: Network.__init__ would re-initialise the shared weights.
        if name in ("layer", "build"):
            raise AttributeError(name)
        return getattr(self.layer, name)

    @property
    def params(self):
        return self.layer.params

    @property
    def grads(self):
        return self.layer.grads

    def zero_grads(self):
        self.layer.zero_grads()

    def output_shape(self, input_shape):
        return self.layer.output_shape(input_shape)

    def set_grids(self, input_grid, weight_grid, output_grid):
        self.weight_grid, self.output_grid = weight_grid, output_grid
        self.bias_step = input_grid.step * weight_grid.step

    @contextlib.contextmanager
    def _swapped(self, weights, biases=None):
        """The layer's weights (and biases) replaced by the given arrays inside the ``with``."""
        params = self.layer.params
        saved = params["weights"], params["biases"]
        params["weights"] = weights
        if biases is not None:
            params["biases"] = biases
        try:
            yield
        finally:
            params["weights"], params["biases"] = saved

    def forward(self, x, training=False):
        """x (N, C, H, W) on the input grid -> fake-quantized output on the output grid."""
        params = self.layer.params
        dtype = params["weights"].dtype
        weights, self._weight_mask = self.weight_grid.fake_with_mask(params["weights"])
        self._weights_used = weights.astype(dtype, copy=False)
        biases = (quantize_bias(params["biases"], self.bias_step, 1.0) * self.bias_step).astype(dtype)
        with self._swapped(self._weights_used, biases):
            y = self.layer.forward(x, training=training)
        self._unquantized = y
        out, self._output_mask = self.output_grid.fake_with_mask(y)
        return out.astype(y.dtype, copy=False)

    def backward(self, dout, input_gradient=True):
        """Straight-through rule on the output and the weights; identity through the bias rounding.

        Sets the wrapped layer's grads; returns dL/dx (None with ``input_gradient=False``)."""
        dy = masked_gradient(self._output_mask, dout)
        with self._swapped(self._weights_used):
            dx = self.layer.backward(dy, input_gradient=input_gradient)
        grads = self.layer.grads
        grads["weights"][...] = masked_gradient(self._weight_mask, grads["weights"])
        return dx


class FakeQuantRoute:
    """A multi-input route in training: ``Q(concat(inputs))``, straight-through backward."""

    multi_input = True

    def __init__(self, layer):
        self.layer = layer
        self.output_grid = None
        self._unquantized = self._output_mask = None

    def __getattr__(self, name):
        if name in ("layer", "build"):
            raise AttributeError(name)
        return getattr(self.layer, name)

    def resolve(self, own_index):
        return self.layer.resolve(own_index)

    def output_shape(self, input_shapes):
        return self.layer.output_shape(input_shapes)

    def forward(self, inputs, training=False):
        y = self.layer.forward(inputs, training=training)
        self._unquantized = y
        out, self._output_mask = self.output_grid.fake_with_mask(y)
        return out.astype(y.dtype, copy=False)

    def backward(self, dout):
        return self.layer.backward(masked_gradient(self._output_mask, dout))


class FakeQuantNetwork(Network):
    """The folded network with fake quantization in the loop, for quantization-aware training.

    ``FakeQuantNetwork(folded, plan)``: ``folded`` from :func:`fold_batchnorm` (float32 for
    training). It is a :class:`~refquant.yolo.network.Network` whose convolutions and multi-input
    routes are wrapped (:class:`FakeQuantConvolution`, :class:`FakeQuantRoute`); the wrappers share
    ``params`` and ``grads`` with ``folded``'s layers (and ``seen`` with ``folded``), so
    ``forward(x, training)``, the head's ``loss``, ``backward(dout)`` and an optimiser over
    ``refquant.train.trainable(self)`` -- e.g. ``refquant.train.train_iteration(self, ...)`` as it
    is -- train ``folded`` in place (save ``folded``). The input passes through ``plan.input``.
    :meth:`refit` re-optimises the plan; :meth:`set_plan` installs another.
    """

    def __init__(self, folded, plan):
        if not is_folded(folded):
            raise ValueError(f"{folded.name}: FakeQuantNetwork trains a folded network; call fold_batchnorm first")
        wrapped = []
        for index, layer in enumerate(folded.layers):
            if layer.type == "convolutional":
                wrapped.append(FakeQuantConvolution(layer))
            elif layer.type == "route" and len(folded.inputs[index]) > 1:
                wrapped.append(FakeQuantRoute(layer))
            else:
                wrapped.append(layer)
        self.folded = folded
        seen = folded.seen
        super().__init__(wrapped, folded.input_shape, dtype=folded.dtype,
                         hyperparameters=folded.hyperparameters, name=f"{folded.name} (fake-quantized)")
        self.seen = seen  # Network.__init__ set it to 0 (through the property, i.e. in folded)
        self.weights_header = folded.weights_header
        self.plan = None
        self.set_plan(plan)

    @property
    def seen(self):
        """Images seen in training: the folded network's count (saved with its weights)."""
        return self.folded.seen

    @seen.setter
    def seen(self, value):
        self.folded.seen = value

    def set_plan(self, plan):
        """Install ``plan``'s grids in every wrapper (checked against the network)."""
        grids = output_grids(self.folded, plan)
        for index, layer in enumerate(self.layers):
            if isinstance(layer, FakeQuantConvolution):
                j = self.inputs[index][0]
                layer.set_grids(plan.input if j == NETWORK_INPUT else grids[j], plan.weights[index], grids[index])
            elif isinstance(layer, FakeQuantRoute):
                layer.output_grid = grids[index]
        self.plan = plan
        return plan

    def forward(self, x, training=False, return_all=False):
        """``Q_in(x)`` through the fake-quantized layers; the head's output (every layer's with return_all)."""
        x = self._check_input(x)
        quantized, self._input_mask = self.plan.input.fake_with_mask(x)
        return super().forward(quantized.astype(self.dtype, copy=False), training, return_all)

    def backward(self, dout, return_all=False, input_gradient=True):
        """dL/d(output) -> dL/dx (straight-through rule of the input grid too); fills the grads.

        As ``Network.backward``: ``return_all`` gives (dx, every layer's dL/d output);
        ``input_gradient=False`` skips dL/dx at the first convolution (training does not need it).
        """
        result = super().backward(dout, return_all, input_gradient)
        dx = result[0] if return_all else result
        if dx is not None:
            dx = masked_gradient(self._input_mask, dx)
        return (dx, result[1]) if return_all else dx

    def unquantized_outputs(self, x):
        """Every layer's output with the quantized layers' values taken BEFORE their output quantizer."""
        outputs = self.forward(x, training=False, return_all=True)
        return [layer._unquantized if isinstance(layer, (FakeQuantConvolution, FakeQuantRoute)) else out
                for layer, out in zip(self.layers, outputs)]

    def statistics(self, images, batch_size=4, max_bins=DEFAULT_BINS, baseline_samples=2**17, seed=0,
                   progress=True, activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS):
        """CalibrationStatistics of the current weights and pre-quantization activations."""
        histograms = collect_histograms(image_batches(images, batch_size), self.unquantized_outputs,
                                        quantized_outputs(self.folded), max_bins, progress, "refit")
        return CalibrationStatistics(self.folded, histograms, baseline_samples=baseline_samples, seed=seed,
                                     activation_breakpoints=activation_breakpoints)

    def refit(self, images, method=None, batch_size=4, progress=True, **overrides):
        """Refit the PGMs (or rerun the plan's method) on the current weights and the activations of
        ``images``, with the plan's widths (``overrides`` replace its options); installs and returns
        the new plan."""
        method = self.plan.method if method is None else method
        options = {key: self.plan.options[key] for key in
                   ("weight_bits", "activation_bits", "first_bits", "last_bits", "pow2_step")
                   if key in self.plan.options}
        options.update(overrides)
        if "weight_bits" not in options or "activation_bits" not in options:
            raise ValueError("refit: the plan has no weight_bits/activation_bits options; pass them")
        statistics = self.statistics(images, batch_size=batch_size, progress=progress,
                                     activation_breakpoints=self.plan.options.get("activation_breakpoints",
                                                                                  DEFAULT_ACTIVATION_BREAKPOINTS))
        return self.set_plan(quantization_plan(statistics, method=method, **options))


# ================================================================================================
# 6. The quantization-aware training loop, and saving its result
# ================================================================================================

QAT_OPTIONS = {"learning_rate": 0.001, "burn_in": 0, "policy": "constant"}
"""Training options of :func:`quantization_aware_training` over the cfg's ``[net]`` ones (batch,
momentum, decay, augmentation are the cfg's): fine-tuning from a trained network, so a constant
rate without burn-in, a tenth of Darknet's usual 0.01 ``learning_rate`` (the caller's options win)."""


@dataclasses.dataclass
class TrainingResult:
    """What :func:`quantization_aware_training` returns.

    ``folded``: the trained folded network; ``plan``: the plan in force at the end, the one the
    last iterations trained with; ``losses``: per iteration, the summed region loss divided by
    the batch (on that iteration's augmented images, before its update); ``refits``: the
    iterations after which the plan was refitted; ``plans``: the plan in force from the start
    and after each refit; ``options``: the training options used; ``seconds``: wall time.
    """

    folded: Network
    plan: QuantizationPlan
    losses: list
    refits: list
    plans: list
    options: dict
    seconds: float


def quantization_aware_training(net, plan, records, iterations, refit_every=100, refit_images=None, options=None,
                                seed=0, refit_batch_size=16, progress=True):
    """Train ``net`` with ``plan``'s quantizers in the loop (METHOD.md section 4; module docstring 5).

    ``net``: the float network (batch norm or not; it is folded into a copy, ``net`` is left
    unchanged); ``plan``: the starting plan, e.g. the post-training PGM plan; ``records``: VOC
    records of the training split (:func:`refquant.data.voc.load_voc`); ``iterations``: number of
    SGD updates. Each update is :func:`refquant.train.train_iteration` on the
    :class:`FakeQuantNetwork` as it is (Darknet's batching, augmentation, region loss and SGD with
    momentum and decay), with the options of the cfg, then :data:`QAT_OPTIONS`, then ``options``
    (keys of ``refquant.train.TRAINING_KEYS``); update k draws from ``numpy.random.default_rng([seed, k])``.

    Every ``refit_every`` updates (None or 0: never) the PGMs are refitted and the intervals
    re-optimised on the current weights and the activations of ``refit_images`` ((N, C, H, W)
    float in [0, 1], required then), by :meth:`FakeQuantNetwork.refit`, with the plan's method
    and widths. No refit follows the last update, so the returned plan is the one the final
    weights were trained with. Returns a :class:`TrainingResult`.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"quantization_aware_training: iterations must be an int >= 1, got {iterations!r}")
    if refit_every and refit_images is None:
        raise ValueError("quantization_aware_training: refit_every needs refit_images (the images the "
                         "activations are histogrammed on)")
    if refit_every and (isinstance(refit_every, bool) or not isinstance(refit_every, (int, np.integer))
                        or refit_every < 1):
        raise ValueError(f"quantization_aware_training: refit_every must be an int >= 1 or None, got {refit_every!r}")
    if not records:
        raise ValueError("quantization_aware_training: no training records")
    start = time.perf_counter()
    network = FakeQuantNetwork(fold_batchnorm(net), plan)
    options = train.training_options(network, {**QAT_OPTIONS, "max_batches": int(iterations), **(options or {})})
    updates = train.zero_updates(network)
    losses, refits, plans = [], [], [plan]
    batches = train.prefetched_batches(network, records, options, seed, range(1, int(iterations) + 1))
    with contextlib.closing(batches), tqdm(batches, total=int(iterations), desc=f"QAT ({plan.method})",
                                           unit="iteration", disable=not progress, leave=False) as bar:
        for iteration, loaded in bar:
            loss = train.train_iteration(network, records, options, updates, iteration, seed, loaded) / options["batch"]
            if not math.isfinite(loss):
                raise FloatingPointError(f"quantization_aware_training: the loss is {loss} at iteration {iteration}; "
                                         f"lower the learning rate (now {options['learning_rate']})")
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            if refit_every and iteration % refit_every == 0 and iteration < iterations:
                plans.append(network.refit(refit_images, batch_size=refit_batch_size, progress=False))
                refits.append(iteration)
    return TrainingResult(network.folded, network.plan, losses, refits, plans, options,
                          time.perf_counter() - start)


def folded_cfg_text(cfg_path):
    """The cfg of the folded network, as text: ``cfg_path``'s sections and options in their order,
    without the ``batch_normalize`` key of the convolutions.

    Darknet's parser then reads biases and weights only for each convolution
    (``load_convolutional_weights``, src/parser.c), which is what
    :func:`refquant.darknet.save_weights` writes for a folded network: the pair is an ordinary
    Darknet model that any Darknet reader (OpenCV's included) runs as the folded float network.
    """
    lines = [f"# {os.path.basename(os.fspath(cfg_path))} with batch norm folded into the convolutions "
             f"(refquant.qat.folded_cfg_text)"]
    for section in darknet.read_cfg(cfg_path):
        lines.append(f"\n[{section['name']}]")
        lines += [f"{key}={value}" for key, (value, _) in section["options"].items()
                  if not (section["name"] in ("convolutional", "conv") and key == "batch_normalize")]
    return "\n".join(lines) + "\n"


def save_quantized(folded, plan, cfg_path, prefix):
    """Save a quantized model without pickle: ``<prefix>.cfg`` (:func:`folded_cfg_text` of the
    network's cfg ``cfg_path``), ``<prefix>.weights`` (Darknet's format, the folded float32
    parameters) and ``<prefix>.plan.json`` (:meth:`QuantizationPlan.save`). Returns the three paths.

    ``folded``: a folded network (e.g. ``TrainingResult.folded``) built from ``cfg_path``; the
    plan is checked against it first.
    """
    if not is_folded(folded):
        raise ValueError(f"{folded.name}: save_quantized writes a folded network; call fold_batchnorm first")
    plan.check(folded)
    prefix = os.fspath(prefix)
    paths = (prefix + ".cfg", prefix + ".weights", prefix + ".plan.json")
    text = folded_cfg_text(cfg_path)
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(text)
    check = darknet.build_network(paths[0])
    if [layer.type for layer in check.layers] != [layer.type for layer in folded.layers]:
        raise ValueError(f"{cfg_path}: its layers are not those of {folded.name}")
    darknet.save_weights(folded, paths[1])
    plan.save(paths[2])
    return paths


def load_quantized(prefix, dtype=np.float32):
    """Read what :func:`save_quantized` wrote: ``(folded network, plan)``, the plan checked
    against the network (ValueError naming the file otherwise)."""
    prefix = os.fspath(prefix)
    folded = darknet.load(prefix + ".cfg", prefix + ".weights", dtype=dtype)
    if not is_folded(folded):
        raise ValueError(f"{prefix}.cfg: has batch-normalized convolutions; not a folded network")
    plan = QuantizationPlan.load(prefix + ".plan.json")
    try:
        plan.check(folded)
    except ValueError as error:
        raise ValueError(f"{prefix}.plan.json: {error}") from None
    return folded, plan
