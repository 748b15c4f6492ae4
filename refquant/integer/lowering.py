"""Lowering a folded network and its plan to fixed-point parameters (docs/SPECIFICATION.md, section 11.4): weight
codes, int32 biases and (multiplier, shift) pairs per convolution and route, and
:func:`run_codes`, the one executor that runs those layers on codes for both the float64
simulation and the integer network.
"""
import dataclasses
import math

import numpy as np

from refquant.folding import fold_batchnorm, is_folded
from refquant.integer.conv import check_accumulator_range
from refquant.integer.requantize import MAX_SHIFT, leaky_multipliers, quantize_bias, quantize_multiplier, quantize_shift
from refquant.plan import INTEGER_ACTIVATIONS, output_grids
from refquant.quantizers.uniform import UniformQuantizer
from refquant.yolo.maxpool import maxpool_forward
from refquant.yolo.network import NETWORK_INPUT
from refquant.yolo.reorg import reorg_forward
from refquant.yolo.upsample import upsample_forward


@dataclasses.dataclass(frozen=True)
class FixedPointConvolution:
    """The integer parameters of one convolution (docs/SPECIFICATION.md, section 11.4).

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
        return centred_codes(self.input_grid)


@dataclasses.dataclass(frozen=True)
class FixedPointRoute:
    """A multi-input route: per input None (already on the output grid) or
    ``(zero_point, multiplier, shift)`` rescaling it (``refquant.integer.requantize.rescale_codes``)."""

    index: int
    rescalings: tuple
    output_grid: UniformQuantizer


def requantization_pair(real_multiplier):
    """``(1, shift)`` when ``real_multiplier == 2**-shift`` exactly (a shift alone), else
    :func:`refquant.integer.requantize.quantize_multiplier`'s 22-bit pair. Both give the same codes."""
    mantissa, exponent = math.frexp(real_multiplier)
    if mantissa == 0.5 and 0 <= 1 - exponent <= MAX_SHIFT:
        return 1, quantize_shift(real_multiplier)
    return quantize_multiplier(real_multiplier)


def requantization_pairs(activation, real_multiplier):
    """(multiplier, shift, negative_multiplier, negative_shift) of a convolution (docs/SPECIFICATION.md, section 11.4): the
    negative side repeats the positive for linear, is ``leaky_multipliers``' for leaky, (0, 0) for relu."""
    positive = requantization_pair(real_multiplier)
    if activation == "linear":
        return positive + positive
    if activation == "leaky":
        return positive + tuple(leaky_multipliers(real_multiplier)[2:])
    if activation == "relu":
        return positive + (0, 0)
    raise ValueError(f"activation {activation!r} has no integer form (supported: {', '.join(INTEGER_ACTIVATIONS)})")


def lower_layers(folded, plan, convolution, route):
    """Per layer of ``folded``: ``convolution(index, layer, input_grid, weight_grid, channel_steps,
    output_grid, where)`` for a convolution (``channel_steps``: ``plan.channel_steps[index]`` as (M,)
    float64, or None for a layer quantized per tensor), ``route(index, input_grids, output_grid)``
    for a multi-input route, None for every other layer: the loop every arithmetic profile lowers with.

    ``folded``: a network without batch norm (:func:`fold_batchnorm`).
    """
    if not is_folded(folded):
        raise ValueError(f"{folded.name}: fold batch norm first (refquant.folding.fold_batchnorm)")
    grids = output_grids(folded, plan)
    layers = []
    for index, layer in enumerate(folded.layers):
        sources = [plan.input if j == NETWORK_INPUT else grids[j] for j in folded.inputs[index]]
        where = f"layer {index} [{layer.type}]"
        if layer.type == "convolutional":
            steps = plan.weight_steps(index) if index in plan.channel_steps else None
            layers.append(convolution(index, layer, sources[0], plan.weights[index], steps, grids[index], where))
        elif layer.type == "route" and len(sources) > 1:
            layers.append(route(index, sources, grids[index]))
        else:
            layers.append(None)
    return layers


def fixed_point_layers(folded, plan):
    """Per layer: FixedPointConvolution, FixedPointRoute (multi-input routes) or None: the ``exact``
    profile's parameters of a plan quantized per tensor (a per-channel plan is lowered by
    ``refquant.integer.profiles.exact``).

    ``folded``: a network without batch norm (:func:`fold_batchnorm`). Each convolution's int32
    accumulator range is checked here (:func:`refquant.integer.conv.check_accumulator_range`), before
    anything runs.
    """
    return lower_layers(folded, plan, _per_tensor_convolution, fixed_point_route)


def fixed_point_route(index, sources, grid):
    """A multi-input route's rescalings (section 11.5): None for an input on the route's grid, else
    ``(zero_point, *quantize_multiplier(s_in / s_route))``."""
    rescalings = tuple(None if source == grid else (source.zero_point,) + quantize_multiplier(source.step / grid.step)
                       for source in sources)
    return FixedPointRoute(index, rescalings, grid)


def _per_tensor_convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where):
    if channel_steps is not None:
        raise ValueError(f"{where}: weights quantized per channel; lower the plan with an arithmetic profile "
                         f"(refquant.integer.profiles.exact)")
    return _fixed_point_convolution(index, layer, input_grid, weight_grid, output_grid, where)


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
    checked_accumulator_range(input_grid, weight_grid, weights, bias, where)
    return FixedPointConvolution(index, weight_codes, bias, input_grid, weight_grid, output_grid, real,
                                 *pairs, layer.activation, layer.size, layer.stride, layer.padding)


def centred_codes(grid):
    """``(qmin - z, qmax - z)``: the values ``codes - zero_point`` of ``grid``'s codes, what a
    convolution multiplies (its ``input_range``)."""
    return grid.qmin - grid.zero_point, grid.qmax - grid.zero_point


def checked_accumulator_range(input_grid, weight_grid, weights, bias, where):
    """:func:`refquant.integer.conv.check_accumulator_range` of a convolution with ``weights``
    (M, C, k, k) and int32 ``bias`` (M,) on these grids, before anything runs; ValueError naming ``where``."""
    try:
        check_accumulator_range(centred_codes(input_grid), (weight_grid.qmin, weight_grid.qmax), weights[0].size,
                                (int(bias.min()), int(bias.max())))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


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


def quantize_input(net, plan, images):
    """``plan.input.quantize(images)`` as int32 codes after checking ``images`` against ``net``."""
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{net.name}: images must be a float numpy array (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"{net.name}: images must have shape (N, C, H, W) with N >= 1, got {images.shape}")
    net.output_shapes(images.shape[1:])
    return plan.input.quantize(images)


class LoweredNetwork:
    """A folded network lowered to fixed point by a plan: what the float64 simulation and the integer
    network share (both run :func:`run_codes` on the same :func:`fixed_point_layers`).

    ``build(net, plan)`` folds ``net`` (a copy; ``net`` is unchanged); ``run(images)`` gives every
    layer's output, ``forward(images)`` the head's alone, so that
    ``refquant.detection.evaluate.evaluate`` scores it like a float network (``layers``,
    ``input_shape``, ``name`` are the folded network's). Attributes: ``net`` (the folded float
    network, for its structure and head), ``plan``, ``profile`` (the arithmetic profile,
    ``refquant.integer.profiles``), ``grids`` (each layer's output grid), ``fixed`` (each layer's
    integer parameters, as the profile lowers them).
    """

    KIND = "lowered"
    """How :attr:`name` calls this arithmetic."""

    def __init__(self, folded, plan, profile="exact"):
        # imported here: the profiles build on this module (they lower with lower_layers, run with run_codes)
        from refquant.integer.profiles import get_profile
        self.profile = get_profile(profile)
        self.net = folded
        self.plan = plan
        self.grids = output_grids(folded, plan)
        self.fixed = self.profile.lower(folded, plan)
        self.layers = folded.layers
        self.inputs = folded.inputs
        self.input_shape = folded.input_shape
        arithmetic = plan.method if self.profile.name == "exact" else f"{plan.method}, {self.profile.name} profile"
        self.name = f"{folded.name} ({self.KIND} {arithmetic})"

    @classmethod
    def build(cls, net, plan, profile="exact"):
        """Fold ``net`` (a copy; ``net`` is unchanged) and derive the fixed-point parameters of ``plan``
        under the arithmetic ``profile`` (a name of ``refquant.integer.profiles.PROFILES`` or a Profile)."""
        return cls(fold_batchnorm(net), plan, profile)

    def input_codes(self, images):
        """Codes of the input grid for ``images`` (N, C, H, W) float (shape checked per layer)."""
        return quantize_input(self.net, self.plan, images)

    def run(self, images):
        """Every layer's output for ``images``: defined by the arithmetic (simulation or integer)."""
        raise NotImplementedError(f"{type(self).__name__} defines no arithmetic")

    def forward(self, images, training=False):
        """The last layer's output (the region head's activations, float64); inference only."""
        if training:
            raise ValueError(f"{self.name}: the {self.KIND} network has no training mode (use "
                             f"refquant.qat.FakeQuantNetwork)")
        return self.run(images)[-1]
