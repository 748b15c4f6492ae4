"""refquant.yolo.direct: the im2col-free float32 convolution on AVX-512 (forward, weight and input
gradients).

Independent truths: PyTorch's ``conv2d`` and its autograd in float64 (the three sums, to float32
rounding); the same kernels run on one and on two threads (the bits must not depend on the thread
count); and the layer's im2col + GEMM path (REFQUANT_DIRECT=0), which must agree to rounding and
take over wherever the direct kernels do not apply.
"""
import numba
import numpy as np
import pytest
import torch

from refquant.yolo import convolutional, direct

pytestmark = pytest.mark.skipif(not direct.available(), reason="the direct kernels need AVX-512F")


def torch_sums(x, weights, dz, padding):
    """z, dL/dweights and dL/dx of ``sum(z * dz)`` by PyTorch in float64."""
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(weights.astype(np.float64)).requires_grad_(True)
    z = torch.nn.functional.conv2d(xt, wt, padding=padding)
    z.backward(torch.from_numpy(dz.astype(np.float64)).reshape(z.shape))
    return z.detach().numpy().reshape(dz.shape), wt.grad.numpy(), xt.grad.numpy()


def close(got, expected, terms):
    """Within float32 rounding of a sum of ``terms`` products: |error| <= terms * eps * max|expected|."""
    tolerance = terms * np.finfo(np.float32).eps * max(np.abs(expected).max(), 1e-30)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got.astype(np.float64) - expected).max() <= tolerance


@pytest.mark.parametrize("n,c,m,h,w,size", [
    (2, 3, 16, 33, 35, 3),     # the first layer's channels; odd map, neither dimension a tile's multiple
    (1, 5, 11, 7, 9, 3),       # outputs not a multiple of 8, a map smaller than a tile
    (3, 16, 32, 20, 20, 3),
    (2, 9, 10, 12, 11, 5),     # a 5x5 kernel, padding 2
    (1, 70, 9, 6, 6, 3),       # K = 630, not a multiple of the weight gradient's 3 steps (630 is: 3 * 210)
    (1, 7, 8, 4, 5, 3),        # K = 63
])
def test_the_three_sums_are_pytorchs(n, c, m, h, w, size):
    """Truth: torch.nn.functional.conv2d and autograd in float64, to float32 rounding."""
    rng = np.random.default_rng(c * m + h)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    weights = rng.normal(size=(m, c, size, size)).astype(np.float32)
    dz = rng.normal(size=(n, m, h * w)).astype(np.float32)
    padding = size // 2
    z_expected, dw_expected, dx_expected = torch_sums(x, weights, dz, padding)
    z, saved = direct.forward(x, weights, padding)
    dweights, dx = direct.backward(dz, weights, padding, x.shape, saved)
    close(z, z_expected, c * size * size)
    close(dweights, dw_expected, n * h * w)
    close(dx, dx_expected, m * size * size)
    no_dx = direct.backward(dz, weights, padding, x.shape, saved, input_gradient=False)
    assert no_dx[1] is None
    np.testing.assert_array_equal(no_dx[0], dweights)


def test_weight_gradient_over_many_chunks_and_long_reductions():
    """Truth: autograd in float64. A weight gradient summed over 2 images of 130 x 130 grid
    positions (9 chunks of 4096, added in chunk order), a forward of K = 256 * 9 = 2304 steps, and
    values near float32's large end (1e18: the products 1e36 stay finite)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 128, 128)).astype(np.float32)
    weights = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    dz = rng.normal(size=(2, 8, 128 * 128)).astype(np.float32)
    _, dw_expected, _ = torch_sums(x, weights, dz, 1)
    _, saved = direct.forward(x, weights, 1)
    close(direct.backward(dz, weights, 1, x.shape, saved, input_gradient=False)[0], dw_expected, 2 * 128 * 128)
    x = (rng.normal(size=(1, 256, 6, 6)) * 1e18).astype(np.float32)
    weights = rng.normal(size=(16, 256, 3, 3)).astype(np.float32)
    dz = rng.normal(size=(1, 16, 36)).astype(np.float32)
    z_expected, _, _ = torch_sums(x, weights, dz, 1)
    close(direct.forward(x, weights, 1)[0], z_expected, 2304)


def test_bits_do_not_depend_on_the_thread_count():
    """Truth: the same call on one thread. Every sum's order is fixed by the shapes, so two threads
    give the same bits."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 16, 40, 40)).astype(np.float32)
    weights = rng.normal(size=(24, 16, 3, 3)).astype(np.float32)
    dz = rng.normal(size=(3, 24, 1600)).astype(np.float32)
    threads = numba.get_num_threads()
    results = []
    try:
        for count in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            z, saved = direct.forward(x, weights, 1)
            results.append((z,) + direct.backward(dz, weights, 1, x.shape, saved))
    finally:
        numba.set_num_threads(threads)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_the_layer_runs_them_where_they_apply(monkeypatch):
    """Truth: the layer's im2col + GEMM path (REFQUANT_DIRECT=0), to float32 rounding, on a map of
    32 x 32 (direct) and of 16 x 16 (im2col either way: bit for bit the same)."""
    rng = np.random.default_rng(11)
    for size, expect_direct in ((32, True), (16, False)):
        x = rng.normal(size=(2, 8, size, size)).astype(np.float32)
        dz = rng.normal(size=(2, 16, size * size)).astype(np.float32)
        results = {}
        for mode in ("1", "0"):
            monkeypatch.setenv("REFQUANT_DIRECT", mode)
            layer = convolutional.ConvolutionalLayer(16, 3, 1, pad=1, activation="leaky")
            layer.build((8, size, size))
            z = layer.products(x).copy()
            results[mode] = (z,) + tuple(a.copy() for a in layer.backward_products(dz))
            assert isinstance(layer._columns[1], tuple) == (mode == "1" and expect_direct)
        for fast, plain in zip(results["1"], results["0"]):
            if expect_direct:
                assert np.abs(fast - plain).max() <= 1e-5 * np.abs(plain).max()
            else:
                np.testing.assert_array_equal(fast, plain)


def test_what_applies():
    """Truth: the kernels' own definition: float32, stride 1, odd size > 1 with "same" padding,
    maps of at least 32 x 32."""
    assert direct.applies(3, 1, 1, np.float32, 32, 32)
    assert direct.applies(5, 1, 2, np.float32, 64, 16)
    assert not direct.applies(3, 1, 1, np.float64, 32, 32)   # float64 keeps im2col + GEMM
    assert not direct.applies(3, 2, 1, np.float32, 32, 32)   # stride 2
    assert not direct.applies(1, 1, 0, np.float32, 32, 32)   # 1x1: no columns to save
    assert not direct.applies(3, 1, 0, np.float32, 32, 32)   # "valid" padding
    assert not direct.applies(3, 1, 1, np.float32, 16, 16)   # a small map
