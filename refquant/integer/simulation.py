"""The exact float64 simulation of the integer network (docs/SPECIFICATION.md, section 11.6): integer-valued
float64 tensors, the engine's im2col and GEMM (in float32 where every partial sum provably stays an
integer below 2**24), then the requantization rule. ``simulated_convolution`` (one Numba pass) and
``simulated_convolution_reference`` (NumPy) are equal bit for bit.
"""
import numba
import numpy as np

from refquant import threads
from refquant.integer.lowering import (
    FLOAT32_EXACT_INTEGERS,
    LoweredNetwork,
    run_codes,
)
from refquant.integer.requantize import multiplier_value
from refquant.rounding import round_half_even
from refquant.yolo.convolutional import convolution_output_size, im2col


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


def simulated_convolution_reference(conv, codes, weight_codes=None):
    """The simulation's convolution (docs/SPECIFICATION.md, section 11.6): float64 codes in, float64 codes out (integer-valued).

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


def simulated_convolution(conv, codes, weight_codes=None):
    """:func:`simulated_convolution_reference`, equal bit for bit, with everything after the GEMM in one
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


class SimulatedNetwork(LoweredNetwork):
    """The fake-quantized network computed exactly in float64 on integer-valued tensors (docs/SPECIFICATION.md, section 11.6).

    Build with :meth:`build`; :meth:`run` gives every layer's codes (float64) and the head's
    output; :meth:`forward` the head's output alone, so ``refquant.detection.evaluate.evaluate`` can score
    it like a float network (``layers``, ``input_shape``, ``name`` are the folded network's).
    """

    KIND = "simulated"

    def __init__(self, folded, plan, profile="exact"):
        super().__init__(folded, plan, profile)
        self._weight_codes = {}  # (M, K) weight codes in the GEMM's dtype, made on first use

    def run(self, images):
        """images (N, C, H, W) float -> list of every layer's output: float64 codes; the head's float output."""
        threads.fit()  # the thread pools sized to the cores free now (refquant.threads)
        codes = self.input_codes(images).astype(np.float64)
        return run_codes(self.net, self.fixed, codes, self._convolution, self.profile.simulated_route, self.grids,
                         self.plan.input)

    def _convolution(self, conv, codes):
        if conv.index not in self._weight_codes:
            self._weight_codes[conv.index] = gemm_weight_codes(conv)
        return self.profile.simulated_convolution(conv, codes, self._weight_codes[conv.index])

