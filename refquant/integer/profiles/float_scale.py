"""The ``float-scale`` arithmetic profile: onnxruntime's and fbgemm's requantization
(docs/SPECIFICATION.md, section 11.8).

Sources followed:

- onnxruntime ``QLinearConv`` (onnxruntime/core/providers/cpu/quantization/qlinearconv.cc): every
  scale is a float32 tensor and the output scale of channel o is computed in float32 as
  ``output_scales[i] = (X_scale_value * W_scale_data[i] / Y_scale_value)``;
  ``MlasRequantizeOutput`` (onnxruntime/core/mlas/lib/quantize.cpp): the int32 accumulator
  (int32 bias added) converted to float32, times that scale, rounded to nearest even, the zero
  point added, clamped.
- fbgemm ``requantize_`` / ``ReQuantizeOutput`` (pytorch/FBGEMM, include/fbgemm/QuantUtils.h,
  src/QuantUtilsAvx2.cc): ``lrintf(float(acc) * C_multiplier[o]) + C_zero_point``, clamped; torch's
  quantized convolution computes ``C_multiplier[o] = float(act_scale * weight_scale[o]) /
  float(output_scale)`` in float32 (aten/src/ATen/native/quantized/cpu/qconv.cpp).
- onnxruntime ``QLinearLeakyRelu`` and ``QLinearConcat`` (onnxruntime/contrib_ops/cpu/
  quantization/qlinear_activations.cc, qlinear_lookup_table.cc, qlinear_concat.cc): a 256-entry
  table per input grid, ``table[c] = MlasQuantizeLinear(f(X_scale * (c - X_zero_point)))`` in
  float32, ``MlasQuantizeLinear(v) = clamp(nearbyintf(v / Y_scale) + Y_zero_point)``
  (onnxruntime/core/mlas/lib/quantize.cpp).
"""
import numpy as np

from refquant.integer.requantize import LEAKY_SLOPE
from refquant.quantizers.uniform import UniformQuantizer
from refquant.rounding import round_half_even


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
