"""The ``float-scale`` arithmetic profile: onnxruntime's and fbgemm's requantization
(docs/SPECIFICATION.md, section 11.8).

Sources followed (onnxruntime read at microsoft/onnxruntime 1272a013e7c98aa0f0ea15874f00e18372b42f66):

- onnxruntime ``QLinearConv`` (onnxruntime/core/providers/cpu/quantization/qlinearconv.cc): every
  scale is a float32 tensor and the output scale of channel o is computed in float32 as
  ``output_scales[i] = (X_scale_value * W_scale_data[i] / Y_scale_value)``;
  ``MlasRequantizeOutput`` (onnxruntime/core/mlas/lib/quantize.cpp): the int32 accumulator
  (int32 bias added) converted to float32, times that scale, clamped to the type's range less the
  zero point, rounded to nearest even, the zero point added.
- fbgemm ``requantize_`` / ``ReQuantizeOutput`` (pytorch/FBGEMM, include/fbgemm/QuantUtils.h,
  src/QuantUtilsAvx2.cc): ``lrintf(float(acc) * C_multiplier[o]) + C_zero_point``, clamped; torch's
  quantized convolution computes ``C_multiplier[o] = float(act_scale * weight_scale[o]) /
  float(output_scale)`` in float32 (aten/src/ATen/native/quantized/cpu/qconv.cpp).
- onnxruntime ``QLinearLeakyRelu`` and ``QLinearConcat`` (onnxruntime/contrib_ops/cpu/
  quantization/qlinear_activations.cc, qlinear_lookup_table.cc, qlinear_concat.cc): a 256-entry
  table per input grid, ``table[c] = MlasQuantizeLinear(f(X_scale * (c - X_zero_point)))`` in
  float32 (``f(v) = v >= 0 ? v : alpha * v`` for the leaky ReLU, the identity for a concatenation),
  ``MlasQuantizeLinear(v) = clamp(nearbyintf(v / Y_scale) + Y_zero_point)``
  (onnxruntime/core/mlas/lib/quantize.cpp, ``MlasQuantizeLinearKernel``).

The decomposition of a Darknet layer: a linear or relu convolution is one ``QLinearConv`` (relu a
clamp at the zero point's code, as a Relu fused into the QDQ node group); a leaky convolution is a
linear ``QLinearConv`` onto the pre-activation grid (:func:`preactivation_grid`), then
``QLinearLeakyRelu`` to the output grid; a route with inputs on other grids is ``QLinearConcat``
(equal to DequantizeLinear, Concat, QuantizeLinear). Every grid's step enters as a float32
(:func:`engine_step`). Where onnxruntime clamps to the type's range (0..255 for uint8), refquant
clamps to the grid's ``[qmin, qmax]``: the same for 8-bit grids, what a narrower grid needs.
Clamping before or after the rounding is the same, the bounds being integers.

The simulation computes the same float32 operations in NumPy (float32 arrays: each product,
division and conversion correctly rounded, as in C), the integer network in Numba kernels and
precomputed tables.
"""
import numba
import numpy as np

from refquant.integer import lowering
from refquant.integer.profiles.lowered import (
    ProfileConvolution,
    lowered_weights,
    requantized_accumulators,
    simulated_accumulators,
)
from refquant.integer.requantize import LEAKY_SLOPE, code_dtype
from refquant.quantizers.uniform import UniformQuantizer
from refquant.rounding import round_half_even

RULES = ("float-scale: acc in int32; scale[o] = f32(f32(f32(s_in) * f32(s_w[o])) / f32(s_out)); code = "
         "clip(nearbyintf(f32(acc) * scale[o]) + z_out, qmin, qmax) (round half to even in float32); relu: clamp "
         "at z_out; leaky: QLinearConv onto the pre-activation grid (the output grid's bits over [lo/0.1, hi]), "
         "then QLinearLeakyRelu: table[c] = clip(nearbyintf(leaky(f32(s_pre) * f32(c - z_pre)) / f32(s_out)) + "
         "z_out), alpha = f32(0.1); routes: QLinearConcat tables, clip(nearbyintf(f32(s_in) * f32(c - z_in) / "
         "f32(s_route)) + z_route).")

SOURCES = ("onnxruntime qlinearconv.cc: QLinearConv output scales in float32",
           "onnxruntime mlas quantize.cpp: MlasRequantizeOutput, MlasQuantizeLinear",
           "onnxruntime contrib_ops qlinear_lookup_table.cc, qlinear_activations.cc, qlinear_concat.cc: "
           "QlinearBuildLookupTable, QLinearLeakyRelu, QLinearConcat",
           "fbgemm QuantUtils: requantize_ / ReQuantizeOutput; torch qconv.cpp: the float32 multiplier")


def engine_step(step):
    """A grid's step as an engine stores it: the float32 nearest to the float64 ``step``
    (ONNX ``x_scale`` tensors and torch's ``scale`` arguments on their way into fbgemm are float32).
    Scalar or array in, ``np.float32`` of the same shape out."""
    return np.asarray(step, np.float64).astype(np.float32)


def requantization_scale(input_step, weight_step, output_step):
    """The float32 factor taking an int32 accumulator to output codes, as onnxruntime computes it:

        scale[o] = float32(float32(s_x * s_w[o]) / s_y),   s_x, s_w[o], s_y = engine_step(...)

    one product then one division, each rounded to float32 (qlinearconv.cc,
    ``X_scale_value * W_scale_data[i] / Y_scale_value``; fbgemm's multiplier in torch is the same
    two float32 operations). ``input_step``, ``output_step``: scalars; ``weight_step``: a scalar
    (per-tensor weights) or (O,) per-output-channel steps. Returns np.float32 of
    ``weight_step``'s shape (a 0-d array for a scalar).
    """
    for name, value in (("input_step", input_step), ("output_step", output_step)):
        if np.ndim(value) != 0 or not float(value) > 0 or not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite scalar > 0, got {value!r}")
    weights = engine_step(weight_step)
    if weights.ndim > 1 or not np.all(np.isfinite(weights)) or not np.all(weights > 0):
        raise ValueError(f"weight_step must be a finite scalar or (O,) array > 0 in float32, got {weight_step!r}")
    product = engine_step(input_step) * weights  # float32 * float32: one rounding
    return product / engine_step(output_step)  # float32 / float32: one rounding


def preactivation_grid(output_grid, slope=LEAKY_SLOPE):
    """The grid of a leaky layer's linear output when the leaky ReLU is a separate requantization.

    An engine without a fused leaky ReLU (onnxruntime: ``QLinearConv`` then ``QLinearLeakyRelu``;
    TFLite: ``CONV_2D`` then ``LEAKY_RELU``) stores the pre-activation ``x`` on a grid of its own.
    The rule: the output grid's bits (its codes ``qmin..qmax``, n = qmax - qmin steps), covering

        [lo / slope, hi],   lo = s (qmin - z) <= 0, hi = s (qmax - z)   (the output grid's range)

    i.e. with ``a = (z - qmin) / slope`` and ``b = qmax - z`` (the two sides in output steps):

        step = s (a + b) / n,   zero_point = qmin + round_half_even(n a / (a + b))

    Why: leaky is increasing and maps [lo / slope, hi] onto [lo, hi], so every pre-activation
    whose leaky value the output grid can hold is held without clipping, and clipping anything
    beyond changes nothing (the output grid clips it anyway); the same number of codes keeps
    the linear output in the output's dtype (uint8 for <= 8 bits). The price is a coarser step,
    ``(a + b) / (z - qmin + b)`` times the output's. With ``z == qmin`` (no negative values) the
    grid is the output grid itself. The zero point rounds ``n a / (a + b)`` so 0 stays a code
    (zero padding exact); the ends move by at most half a step.

    ``output_grid``: a UniformQuantizer with an integer zero point in [qmin, qmax]; ``slope`` in
    (0, 1]. Returns a UniformQuantizer (float64 step).
    """
    grid = output_grid
    if not isinstance(grid, UniformQuantizer):
        raise TypeError(f"output_grid must be a UniformQuantizer, got {type(grid).__name__}")
    if not isinstance(grid.zero_point, int) or not grid.qmin <= grid.zero_point <= grid.qmax:
        raise ValueError(f"output_grid must have an integer zero point in [qmin, qmax] = [{grid.qmin}, "
                         f"{grid.qmax}], got {grid.zero_point!r}")
    slope = float(slope)
    if not 0.0 < slope <= 1.0:
        raise ValueError(f"slope must be in (0, 1], got {slope!r}")
    steps = grid.qmax - grid.qmin
    negative = (grid.zero_point - grid.qmin) / slope
    positive = grid.qmax - grid.zero_point
    zero_point = grid.qmin + int(round_half_even(steps * negative / (negative + positive)))
    return UniformQuantizer(grid.step * (negative + positive) / steps, zero_point, grid.qmin, grid.qmax)


# -- the float32 rules, once each --

def dequantize_linear(codes, grid):
    """onnxruntime's dequantization in its lookup tables: ``f32(s) * f32(c - z)`` (float32 array)."""
    return engine_step(grid.step) * (np.asarray(codes).astype(np.int64) - grid.zero_point).astype(np.float32)


def quantize_linear(values, grid):
    """``MlasQuantizeLinear`` on float32 ``values``: ``clip(nearbyintf(v / f32(s)) + z, qmin, qmax)``
    (a float32 division, round half to even), int64 codes."""
    quotient = np.asarray(values, np.float32) / engine_step(grid.step)
    return np.clip(np.rint(quotient).astype(np.int64) + grid.zero_point, grid.qmin, grid.qmax)


def leaky(values, slope=LEAKY_SLOPE):
    """QLinearLeakyRelu's function in float32: ``v >= 0 ? v : f32(alpha) * v``."""
    values = np.asarray(values, np.float32)
    return np.where(values >= 0, values, engine_step(slope) * values)


def lookup_table(input_grid, output_grid, function):
    """``QlinearBuildLookupTable``: for every code c of ``input_grid`` (qmin..qmax, entry ``c - qmin``),
    ``quantize_linear(function(dequantize_linear(c, input_grid)), output_grid)``, int64."""
    codes = np.arange(input_grid.qmin, input_grid.qmax + 1)
    return quantize_linear(function(dequantize_linear(codes, input_grid)), output_grid)


# -- the integer side (Numba kernel, tables) --

@numba.njit(cache=True, parallel=True)
def _requantize_channels(acc, scale, zero_point, qmin, qmax, out):
    """out[i, o] = clip(rint(float32(acc[o, i]) * scale[o]) + z, qmin, qmax): acc (O, n, H, W) int32,
    scale (O,) float32, out (n, O, H, W) (MlasRequantizeOutput per element)."""
    n_outputs, n_images, height, width = acc.shape
    for o in numba.prange(n_outputs):
        factor = scale[o]
        for i in range(n_images):
            for y in range(height):
                for x in range(width):
                    value = np.float32(acc[o, i, y, x]) * factor  # float32 * float32: one rounding
                    out[i, o, y, x] = min(max(np.int64(np.rint(value)) + zero_point, qmin), qmax)


def _apply_table(codes, table, input_grid, output_grid):
    """``table[codes - qmin_in]`` in the output grid's code dtype (QLinearLookupTableTransform)."""
    index = np.asarray(codes).astype(np.int64) - input_grid.qmin
    return table[index].astype(code_dtype(output_grid.qmin, output_grid.qmax))


# -- lowering and the profile's five functions --

def lower(folded, plan):
    """Per layer: ``ProfileConvolution`` (requantization ``(scale, lo, hi)``, scale (M,) float32 from
    :func:`requantization_scale`; a leaky layer's ``activation_stage`` its QLinearLeakyRelu table), a
    route's tables (per input None or the table of ``lookup_table(input grid, route grid, identity)``),
    or None."""
    return lowering.lower_layers(folded, plan, lower_convolution, lower_route)


def separate_activation_layout(layer, input_grid, weight_grid, channel_steps, output_grid, where):
    """What an engine with a separate activation op (onnxruntime, TFLite) makes of a convolution before
    its own requantization rule: ``(steps, weight_codes, bias, linear_grid, lo)``.

    ``steps`` (M,) float64 the weight steps (``channel_steps``, or the layer's step repeated);
    ``weight_codes, bias`` from ``refquant.integer.profiles.lowered.lowered_weights``; ``linear_grid``
    the grid the accumulator is requantized to (:func:`preactivation_grid` of the output grid for a
    leaky layer, else the output grid); ``lo`` the clamp's lower code (the zero point's for relu, a
    Relu fused into the clamp). ValueError naming ``where`` for an activation with no integer form.
    """
    steps = np.full(layer.params["weights"].shape[0], weight_grid.step) if channel_steps is None else channel_steps
    steps = np.asarray(steps, np.float64)
    weight_codes, bias = lowered_weights(layer, input_grid, weight_grid, steps, where)
    if layer.activation not in lowering.INTEGER_ACTIVATIONS:
        raise ValueError(f"{where}: activation {layer.activation!r} has no integer form")
    linear_grid = preactivation_grid(output_grid) if layer.activation == "leaky" else output_grid
    lo = max(output_grid.qmin, output_grid.zero_point) if layer.activation == "relu" else linear_grid.qmin
    return steps, weight_codes, bias, linear_grid, lo


def lower_convolution(index, layer, input_grid, weight_grid, channel_steps, output_grid, where):
    """QLinearConv's parameters (and QLinearLeakyRelu's table for a leaky layer); module docstring."""
    steps, weight_codes, bias, linear_grid, lo = separate_activation_layout(layer, input_grid, weight_grid,
                                                                            channel_steps, output_grid, where)
    scale = requantization_scale(input_grid.step, steps, linear_grid.step)
    stage = lookup_table(linear_grid, output_grid, leaky) if layer.activation == "leaky" else None
    return ProfileConvolution(index, weight_codes, bias, input_grid, weight_grid, steps, output_grid, linear_grid,
                              (scale, lo, linear_grid.qmax), stage, layer.activation, layer.size, layer.stride,
                              layer.padding)


def same_engine_grid(source, grid):
    """Equal float32 steps and zero points: the engine copies the input (no table, no rescaling)."""
    return engine_step(source.step) == engine_step(grid.step) and source.zero_point == grid.zero_point


def lower_route(index, sources, grid):
    """QLinearConcat's per-input tables (None for an input already on the route's float32 grid)."""
    tables = tuple(None if same_engine_grid(source, grid) else
                   (source, lookup_table(source, grid, lambda values: values)) for source in sources)
    return lowering.FixedPointRoute(index, tables, grid)


def integer_convolution(conv, codes, packed_weights):
    """QLinearConv (the fast kernel's int32 accumulators, then MlasRequantizeOutput per channel), then
    QLinearLeakyRelu's table for a leaky layer."""
    scale, lo, hi = conv.requantization
    zero_point = conv.linear_grid.zero_point

    def requantize_block(acc, out):
        _requantize_channels(acc, scale, zero_point, lo, hi, out)
    codes = requantized_accumulators(conv, codes, packed_weights, requantize_block)
    if conv.activation_stage is None:
        return codes
    return _apply_table(codes, conv.activation_stage, conv.linear_grid, conv.output_grid)


def simulated_convolution(conv, codes, weight_codes):
    """The same codes from the simulation's exact float64 accumulators, in float32 NumPy: the
    accumulator converted to float32, times the float32 scale, ``np.rint``; a leaky layer's
    QLinearLeakyRelu computed element by element (:func:`dequantize_linear`, :func:`leaky`,
    :func:`quantize_linear`), not by its table."""
    acc = simulated_accumulators(conv, codes, weight_codes)
    scale, lo, hi = conv.requantization
    # float64 -> float32 rounds an integer below 2**31 as int32 -> float32 does (both to nearest even)
    scaled = acc.astype(np.float32) * scale[:, None, None]
    out = np.clip(np.rint(scaled).astype(np.int64) + conv.linear_grid.zero_point, lo, hi)
    if conv.activation_stage is not None:
        out = quantize_linear(leaky(dequantize_linear(out, conv.linear_grid)), conv.output_grid)
    return out.astype(np.float64)


def integer_route(route, inputs):
    """QLinearConcat: inputs on the route's grid copied, the others through their tables."""
    grid = route.output_grid
    dtype = code_dtype(grid.qmin, grid.qmax)
    parts = [np.asarray(codes).astype(dtype) if table is None else _apply_table(codes, table[1], table[0], grid)
             for codes, table in zip(inputs, route.rescalings)]
    return np.concatenate(parts, axis=1)


def simulated_route(route, inputs):
    """The same route on float64 codes, element by element: ``quantize_linear(dequantize_linear(c))``."""
    grid = route.output_grid
    parts = [codes if table is None else
             quantize_linear(dequantize_linear(codes.astype(np.int64), table[0]), grid).astype(np.float64)
             for codes, table in zip(inputs, route.rescalings)]
    return np.concatenate(parts, axis=1)
