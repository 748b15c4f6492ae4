"""The fused training kernels of a fake-quantized convolution (``refquant.qat._bias_activate_fake`` and
``_masked_activation_backward``) against their definition: the float layer's own ``forward`` (bias,
activation), ``UniformQuantizer.fake_with_mask``, ``masked_gradient`` and the layer's ``backward``,
composed as before the fusion. Equal bit for bit, NaN refused by its flat index as ``fake_with_mask`` does."""
import numpy as np
import pytest

from refquant import qat
from refquant.integer.requantize import quantize_bias
from refquant.quantizers.uniform import UniformQuantizer, masked_gradient
from refquant.yolo.convolutional import ConvolutionalLayer


def layer_and_grids(activation, dtype, size, rng):
    layer = ConvolutionalLayer(filters=5, size=size, stride=1, pad=1, activation=activation)
    layer.build((3, 9, 7), dtype=dtype, rng=rng)
    layer.params["biases"][...] = rng.normal(0, 0.3, 5)
    input_grid = UniformQuantizer(2.0**-5, 0, 0, 255)
    weight_grid = UniformQuantizer(0.02, 0, -7, 7)
    # a zero point with a fraction and a clipping range inside the outputs: every branch of the rule
    output_grid = UniformQuantizer(0.05, 4.5, 0, 15)
    return layer, input_grid, weight_grid, output_grid


def unfused(layer, weight_grid, output_grid, bias_step, x, dout):
    """The composition the fused kernels replace: (out, mask, y, grads, dx)."""
    params = layer.params
    saved = params["weights"].copy(), params["biases"].copy()
    weights, weight_mask = weight_grid.fake_with_mask(params["weights"])
    params["weights"] = weights.astype(saved[0].dtype)
    params["biases"] = (quantize_bias(saved[1], bias_step, 1.0) * bias_step).astype(saved[0].dtype)
    y = layer.forward(x, training=True)
    out, mask = output_grid.fake_with_mask(y)
    dx = layer.backward(masked_gradient(mask, dout), input_gradient=True)
    grads = {"biases": layer.grads["biases"].copy(),
             "weights": masked_gradient(weight_mask, layer.grads["weights"])}
    params["weights"], params["biases"] = saved
    return out.astype(y.dtype), mask, y, grads, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,size", [("leaky", 3), ("linear", 1), ("relu", 3)])
def test_fused_forward_and_backward_equal_the_composition_bit_for_bit(activation, size, dtype):
    rng = np.random.default_rng(7)
    layer, input_grid, weight_grid, output_grid = layer_and_grids(activation, dtype, size, rng)
    x = input_grid.fake(rng.random((4, 3, 9, 7))).astype(dtype)
    dout = rng.normal(size=(4, 5, 9, 7)).astype(dtype)
    expected = unfused(layer, weight_grid, output_grid, input_grid.step * weight_grid.step, x, dout)

    wrapper = qat.FakeQuantConvolution(layer)
    wrapper.set_grids(input_grid, weight_grid, output_grid)
    out = wrapper.forward(x, training=True)
    dx = wrapper.backward(dout)
    mask = wrapper._output_mask.reshape(out.shape)
    assert out.dtype == dtype and 0 < mask.mean() < 1  # both sides of the clipping range reached
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(mask, expected[1])
    np.testing.assert_array_equal(wrapper._unquantized, expected[2])
    for name in ("biases", "weights"):
        np.testing.assert_array_equal(layer.grads[name], expected[3][name])
    np.testing.assert_array_equal(dx, expected[4])


def test_fused_forward_refuses_nan_by_its_flat_index():
    rng = np.random.default_rng(3)
    layer, input_grid, weight_grid, output_grid = layer_and_grids("linear", np.float32, 1, rng)
    x = rng.random((2, 3, 9, 7)).astype(np.float32)
    x[1, 2, 4, 5] = np.nan  # a 1x1 convolution: NaN in every output channel at that pixel
    wrapper = qat.FakeQuantConvolution(layer)
    wrapper.set_grids(input_grid, weight_grid, output_grid)
    first = np.flatnonzero(np.isnan(layer.forward(x)))[0]  # the float layer's first NaN output
    with pytest.raises(ValueError, match=f"NaN \\(first at flat index {first}\\)"):
        wrapper.forward(x)
