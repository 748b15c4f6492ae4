"""Quantizers, expected error, the optimal quantizer and the baselines, against independent truths.

Each test's docstring names its truth: PyTorch (fake quantization, clamp's autograd, observers),
scipy.integrate.quad on a density written here from scipy.stats, Monte Carlo with samples drawn
here by scipy.stats / numpy (not by refquant), Max's 1960 table, published ACIQ values, the TensorRT
talk's worked example, scipy.stats.entropy, and brute-force grids evaluated cell by cell.
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.ao.quantization.observer import MinMaxObserver

from refquant.density.pgm import PiecewiseGaussian
from refquant.quantizers.baselines import (
    aciq_clipping,
    aciq_quantizer,
    expanded_quantized_distribution,
    kl_divergence,
    kl_quantizer,
    kl_threshold,
    method_errors,
    minmax_quantizer,
    mse_search_quantizer,
    percentile_quantizer,
    quantizer_from_interval,
)
from refquant.quantizers.error import empirical_mse, expected_mse
from refquant.quantizers.optimal import optimal_quantizer
from refquant.quantizers.uniform import UniformQuantizer, code_range, signed_quantizer, unsigned_quantizer

# The densities of the tests. A leaky-ReLU activation (slope 0.1): the negative side is the
# positive half-normal squeezed tenfold. Weights: a centre piece and two heavier tails.
LEAKY = PiecewiseGaussian([0.0], [0.5, 0.5], [0.0, 0.0], [0.1, 1.0])
WEIGHTS = PiecewiseGaussian([-1.0, 1.0], [0.2, 0.6, 0.2], [-0.5, 0.0, 0.5], [1.5, 0.7, 1.5])
HEAVY = PiecewiseGaussian([-1.0, 1.0], [0.1, 0.8, 0.1], [0.0, 0.0, 0.0], [3.0, 0.7, 3.0])
SHIFTED = PiecewiseGaussian([0.5, 2.0], [0.3, 0.5, 0.2], [0.2, 1.0, 2.5], [0.4, 0.6, 1.2])
# Narrow clusters: the error against the step (best zero point) has several local minima, 2 to 7
# depending on the bit width, some within 2 % of each other: a local search would be caught out.
CLUSTERS = PiecewiseGaussian([1.0, 2.5], [0.5, 0.3, 0.2], [0.0, 1.8, 4.0], [0.05, 0.1, 0.3])
TWO_SPIKES = PiecewiseGaussian([1.0], [0.7, 0.3], [0.0, 3.1], [0.05, 0.2])


# ------------------------------------------------------------------------------------------------
# Independent tools: a density and a sampler from scipy.stats, a brute-force cell-by-cell error
# ------------------------------------------------------------------------------------------------

def scipy_pdf(dist):
    """The piecewise-Gaussian density written from scipy.stats.norm (docs/SPECIFICATION.md, section 2)."""
    edges = np.concatenate([[-np.inf], dist.breakpoints, [np.inf]])

    def pdf(x):
        k = np.searchsorted(dist.breakpoints, x, side="right")
        mu, sigma = dist.means[k], dist.stds[k]
        mass = stats.norm.cdf(edges[k + 1], mu, sigma) - stats.norm.cdf(edges[k], mu, sigma)
        return dist.weights[k] * stats.norm.pdf(x, mu, sigma) / mass
    return pdf


def scipy_samples(dist, n, seed):
    """Draws from the piecewise Gaussian: a piece by its weight, then scipy's truncated normal."""
    rng = np.random.default_rng(seed)
    edges = np.concatenate([[-np.inf], dist.breakpoints, [np.inf]])
    pieces = rng.choice(dist.weights.size, size=n, p=dist.weights)
    out = np.empty(n)
    for k in range(dist.weights.size):
        chosen = pieces == k
        mu, sigma = dist.means[k], dist.stds[k]
        out[chosen] = stats.truncnorm.rvs((edges[k] - mu) / sigma, (edges[k + 1] - mu) / sigma,
                                          loc=mu, scale=sigma, size=int(chosen.sum()), random_state=rng)
    return out


def brute_force_errors(dist, steps, zero_points, qmin, qmax, chunk=4096):
    """Expected error of every quantizer (steps[i], zero_points[i]), cell by cell (the definition:
    each cell [level - step/2, level + step/2) of the clipped grid, and the two clipping regions,
    integrated against the density by dist.partial_moments). Shares nothing with the optimizer's
    lattice / anchor formulas."""
    steps, zero_points = np.broadcast_arrays(np.asarray(steps, float), np.asarray(zero_points, float))
    codes = np.arange(qmin, qmax + 1, dtype=float)
    out = np.empty(steps.size)
    for start in range(0, steps.size, chunk):
        s = steps.ravel()[start:start + chunk, None]
        levels = s * (codes - zero_points.ravel()[start:start + chunk, None])
        lo = np.concatenate([np.full_like(s, -np.inf), levels[:, 1:] - s / 2], axis=1)
        hi = np.concatenate([levels[:, :-1] + s / 2, np.full_like(s, np.inf)], axis=1)
        m0, m1, m2 = dist.partial_moments(lo, hi)
        out[start:start + chunk] = np.sum(m2 - 2 * levels * m1 + levels ** 2 * m0, axis=1)
    return out.reshape(steps.shape)


# ------------------------------------------------------------------------------------------------
# The quantizer
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step,zero_point,qmin,qmax", [(0.125, 3, 0, 15), (0.25, 0, -128, 127),
                                                      (2.0**-5, 131, 0, 255), (0.5, 0, -8, 7)])
def test_fake_and_codes_match_pytorch(step, zero_point, qmin, qmax):
    """Truth: torch.fake_quantize_per_tensor_affine, round(x / step) + zero_point with ties to even
    then clamp, on a power-of-two step (torch's x * (1/step) then equals our x / step), exact ties
    included; the codes are torch's output / step + zero_point (exact for a power-of-two step).
    (torch.quantize_per_tensor rounds x / step + zero_point instead: it differs on ties when the
    zero point is odd; the interface, like fake_quantize, adds the zero point after rounding.)"""
    rng = np.random.default_rng(1)
    lo, hi = step * (qmin - zero_point), step * (qmax - zero_point)
    x = np.concatenate([rng.uniform(lo - 3 * step, hi + 3 * step, 5000),
                        step * (np.arange(qmin - zero_point - 2, qmax - zero_point + 2) + 0.5)])
    x = x.astype(np.float32)
    quantizer = UniformQuantizer(step, zero_point, qmin, qmax)
    expected = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), step, zero_point, qmin, qmax).numpy()
    np.testing.assert_array_equal(quantizer.fake(x), expected)
    np.testing.assert_array_equal(quantizer.quantize(x), (expected.astype(np.float64) / step + zero_point).astype(np.int32))


def test_straight_through_mask_is_the_clamp_gradient():
    """Truth: PyTorch autograd of torch.clamp(x, lo, hi), whose gradient is 1 on the CLOSED interval,
    including x exactly at lo and hi."""
    quantizer = UniformQuantizer(0.25, 5, 0, 15)
    lo, hi = quantizer.interval
    x = np.concatenate([np.linspace(lo - 1, hi + 1, 1001), [lo, hi, np.nextafter(lo, -1), np.nextafter(hi, 9)]])
    xt = torch.tensor(x, requires_grad=True)
    torch.clamp(xt, lo, hi).backward(torch.ones_like(xt))
    np.testing.assert_array_equal(quantizer.straight_through_mask(x), xt.grad.numpy() == 1.0)
    dout = np.random.default_rng(0).normal(size=x.size)
    np.testing.assert_array_equal(quantizer.fake_backward(x, dout), dout * xt.grad.numpy())


@pytest.mark.parametrize("step,zero_point,qmin,qmax", [(0.125, 3, 0, 15), (0.037, 0, -8, 7), (0.0113, 130, 0, 255),
                                                      (0.3, 2.37, 0, 15), (1e-3, -3, -128, 127)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_fake_quantization_is_the_reference_bit_for_bit(step, zero_point, qmin, qmax, dtype):
    """Truth: ``fake_with_mask_reference``, i.e. ``fake`` and ``straight_through_mask`` (NumPy; checked against
    PyTorch above). The Numba kernel of training must return the same values, dtype and mask for
    random values, exact ties between levels, the interval's ends and their float neighbours,
    +-inf and values far outside, at integer and real zero points; and reject NaN the same way."""
    quantizer = UniformQuantizer(step, zero_point, qmin, qmax)
    lo, hi = quantizer.interval
    rng = np.random.default_rng(qmax)
    ties = step * (np.arange(qmin - 2, qmax + 2) - zero_point + 0.5)
    x = np.concatenate([rng.uniform(lo - 3 * step, hi + 3 * step, 20000), ties, [lo, hi, -np.inf, np.inf, 1e30, -1e30],
                        np.nextafter([lo, hi], -np.inf), np.nextafter([lo, hi], np.inf)]).astype(dtype)
    x = x.reshape(1, -1)
    fake, mask = quantizer.fake_with_mask(x)
    reference, reference_mask = quantizer.fake_with_mask_reference(x)
    assert fake.dtype == reference.dtype and fake.shape == x.shape
    np.testing.assert_array_equal(fake, reference)
    np.testing.assert_array_equal(mask, reference_mask)
    assert 0 < mask.sum() < mask.size
    x[0, 7] = x[0, 3] = np.nan
    for method in (quantizer.fake, quantizer.fake_with_mask):
        with pytest.raises(ValueError, match="NaN .first at flat index 3"):
            method(x)


def test_pytorch_fake_quantize_gradient_differs_only_within_half_a_step_outside():
    """Truth: torch.fake_quantize_per_tensor_affine's backward. It masks the unclipped code, so it
    also passes the gradient on (lo - step/2, lo) and (hi, hi + step/2); elsewhere it agrees with ours
    (the documented boundary convention)."""
    step, zero_point = 0.25, 5
    quantizer = UniformQuantizer(step, zero_point, 0, 15)
    lo, hi = quantizer.interval
    x = np.linspace(lo - 1.013, hi + 1.017, 4001).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.fake_quantize_per_tensor_affine(xt, step, zero_point, 0, 15).sum().backward()
    torch_mask = xt.grad.numpy() == 1.0
    ours = quantizer.straight_through_mask(x)
    band = ((x > lo - step / 2) & (x < lo)) | ((x > hi) & (x < hi + step / 2))
    assert np.array_equal(ours[~band], torch_mask[~band])
    assert torch_mask[band].all() and not ours[band].any() and band.sum() > 10


def test_real_zero_point_rounds_to_the_nearest_level():
    """Truth: the nearest level by exhaustive argmin |x - level| (ties excluded), for a free offset."""
    quantizer = UniformQuantizer(0.3, 2.37, 0, 7)
    x = np.random.default_rng(3).uniform(-2, 3, 20000)
    nearest = np.argmin(np.abs(x[:, None] - quantizer.levels[None, :]), axis=1)
    np.testing.assert_array_equal(quantizer.quantize(x), nearest + quantizer.qmin)
    np.testing.assert_allclose(quantizer.fake(x), quantizer.levels[nearest], rtol=0, atol=1e-15)


def test_code_ranges_and_factories():
    """Truth: two's complement ranges written by hand (int8, narrow int8, uint4, 1-bit)."""
    assert code_range(8, signed=True) == (-128, 127)
    assert code_range(8, signed=True, narrow_range=True) == (-127, 127)
    assert code_range(4, signed=False) == (0, 15)
    assert code_range(1, signed=False) == (0, 1)
    q = signed_quantizer(4, 0.5)
    assert (q.qmin, q.qmax, q.zero_point, q.lo, q.hi) == (-8, 7, 0, -4.0, 3.5)
    q = unsigned_quantizer(2, 0.5, 1)
    assert q.levels.tolist() == [-0.5, 0.0, 0.5, 1.0]
    assert isinstance(q.zero_point, int) and q.num_levels == 4


@pytest.mark.parametrize("call,message", [
    (lambda: UniformQuantizer(0.0, 0, 0, 15), "step"),
    (lambda: UniformQuantizer(1.0, math.nan, 0, 15), "zero_point"),
    (lambda: UniformQuantizer(1.0, 0, 15, 15), "qmin"),
    (lambda: UniformQuantizer(1.0, 0, 0.0, 15), "qmin"),
    (lambda: UniformQuantizer(1.0, 0, 0, 15).quantize([0.0, math.nan]), "NaN"),
    (lambda: UniformQuantizer(1.0, 0, 0, 15).dequantize(np.array([1.5])), "integer"),
    (lambda: code_range(0, signed=True), "bits"),
    (lambda: code_range(1, signed=True, narrow_range=True), "narrow"),
    (lambda: optimal_quantizer(LEAKY, 17), "bits"),
    (lambda: optimal_quantizer(LEAKY, 4, zero_representable=False, symmetric=True), "symmetric"),
    (lambda: minmax_quantizer([], 8), "empty"),
    (lambda: percentile_quantizer([1.0, math.inf], 8), "percentile_quantizer: samples holds 0 NaN and 1 infinite"),
    (lambda: minmax_quantizer("abc", 8), "minmax_quantizer: samples must hold real numbers"),
    (lambda: aciq_quantizer([[1.0, 2.0], [3.0]], 8), "aciq_quantizer: samples must be an array of real numbers"),
    (lambda: mse_search_quantizer([-1e10, 1e300], 2), r"mse_search_quantizer: samples reaches 1e\+300"),
    (lambda: UniformQuantizer(None, 0, 0, 15), "UniformQuantizer: step must be a real number"),
    (lambda: UniformQuantizer(1e-300, 0, 0, 15), r"UniformQuantizer: step is 1e-300"),
    (lambda: kl_quantizer([1.0, 2.0], np.float64(4.0)), "kl_quantizer .*bits must be an int"),
    (lambda: kl_quantizer([1.0, 2.0], 9, num_bins=256), "kl_quantizer: num_bins must be an int above"),
    (lambda: kl_quantizer([1.0, 2.0], 2**70), r"kl_quantizer .*bits must be an int in \[2, 16\]"),
    (lambda: expected_mse(LEAKY, UniformQuantizer(0.1, 0, -2**31, 2**31 - 1)), "expected_mse: the quantizer has 4294967296 levels"),
    (lambda: aciq_clipping(4, "cauchy"), "prior"),
])
def test_bad_input_is_named(call, message):
    """Truth: the brief's rule, a clear error naming the argument at fault."""
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ------------------------------------------------------------------------------------------------
# Expected error
# ------------------------------------------------------------------------------------------------

CASES = [(PiecewiseGaussian.normal(0.4, 1.3), UniformQuantizer(0.37, 4, 0, 15)),
         (WEIGHTS, UniformQuantizer(0.21, 0, -8, 7)),
         (LEAKY, UniformQuantizer(0.09, 2.4, 0, 31)),
         (SHIFTED, UniformQuantizer(0.6, -1, 0, 3))]


@pytest.mark.parametrize("dist,quantizer", CASES)
def test_expected_mse_matches_numerical_integration(dist, quantizer):
    """Truth: scipy.integrate.quad of (x - Q(x))^2 p(x), p written from scipy.stats.norm, cell by
    cell (granular) and over the two clipping half-lines (clipping)."""
    pdf = scipy_pdf(dist)
    points = list(dist.breakpoints)
    levels, half = quantizer.levels, quantizer.step / 2
    cells = [(max(c - half, quantizer.lo), min(c + half, quantizer.hi), c) for c in levels]
    granular = sum(integrate.quad(lambda x: (x - c) ** 2 * pdf(x), a, b, epsabs=0, epsrel=1e-12, limit=200,
                                  points=[p for p in points if a < p < b] or None)[0] for a, b, c in cells)
    clipping = sum(integrate.quad(lambda x: (x - c) ** 2 * pdf(x), a, b, epsabs=0, epsrel=1e-12, limit=400)[0]
                   for a, b, c in [(-np.inf, quantizer.lo, quantizer.lo), (quantizer.hi, np.inf, quantizer.hi)])
    got_granular, got_clipping = expected_mse(dist, quantizer, split=True)
    assert got_granular == pytest.approx(granular, rel=1e-9)
    assert got_clipping == pytest.approx(clipping, rel=1e-7, abs=1e-15)
    assert expected_mse(dist, quantizer) == pytest.approx(granular + clipping, rel=1e-9)


@pytest.mark.parametrize("dist,quantizer", CASES[:3])
def test_expected_mse_matches_a_million_samples(dist, quantizer):
    """Truth: Monte Carlo, 10^6 draws made here by scipy.stats.truncnorm: the empirical error is
    within 4 standard errors of the expected one."""
    x = scipy_samples(dist, 10**6, seed=7)
    squared = (x - quantizer.fake(x)) ** 2
    standard_error = squared.std() / math.sqrt(x.size)
    assert abs(empirical_mse(x, quantizer) - expected_mse(dist, quantizer)) < 4 * standard_error


# ------------------------------------------------------------------------------------------------
# The optimal quantizer
# ------------------------------------------------------------------------------------------------

# J. Max, "Quantizing for minimum distortion", IRE Trans. Information Theory IT-6 (1960) 7-12,
# table for the optimum UNIFORM quantizer of a unit normal: levels N -> (step, mean squared error).
MAX_1960 = {2: (1.596, 0.3634), 4: (0.9957, 0.1188), 8: (0.5860, 0.03744), 16: (0.3352, 0.01154)}


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (3.7, 0.25), (-120.0, 40.0)])
@pytest.mark.parametrize("levels", sorted(MAX_1960))
def test_free_offset_optimum_matches_max_1960(levels, mu, sigma):
    """Truth: Max (1960), table of the optimum uniform quantizer for the normal density: the step
    over sigma and the error over sigma^2, to the table's digits, and levels centred on the mean."""
    table_step, table_error = MAX_1960[levels]
    dist = PiecewiseGaussian.normal(mu, sigma)
    quantizer = optimal_quantizer(dist, int(math.log2(levels)), zero_representable=False)
    digits = lambda value: 4 - int(math.floor(math.log10(value))) - 1  # noqa: E731  (4 significant)
    assert round(quantizer.step / sigma, digits(table_step)) == table_step
    assert round(expected_mse(dist, quantizer) / sigma**2, digits(table_error)) == table_error
    assert (quantizer.lo + quantizer.hi) / 2 == pytest.approx(mu, abs=1e-6 * sigma)


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_free_offset_gaussian_up_to_8_bits_against_brute_force(bits):
    """Truth: a brute-force grid of (step, offset) evaluated cell by cell: a coarse wide grid
    (step / 3 .. 3 step, offsets over a quarter of the codes) and a fine local one; the optimum is
    never worse, and the fine grid's best is within 1e-4 of it (the grid is informative)."""
    mu, sigma = 1.5, 2.0
    dist = PiecewiseGaussian.normal(mu, sigma)
    best = optimal_quantizer(dist, bits, zero_representable=False)
    n = 2**bits
    optimum = expected_mse(dist, best)
    centre = (n - 1) / 2  # levels centred on mu: zero point = (n - 1)/2 - mu/step (+ offset)
    coarse_steps = best.step * np.geomspace(1 / 3, 3, 41)[:, None]
    coarse_offsets = np.linspace(-n / 8, n / 8, 33)[None, :]
    coarse = brute_force_errors(dist, coarse_steps, centre - mu / coarse_steps + coarse_offsets, 0, n - 1)
    fine_steps = best.step * np.linspace(0.99, 1.01, 41)[:, None]
    fine_offsets = np.linspace(-0.5, 0.5, 41)[None, :]
    fine = brute_force_errors(dist, fine_steps, centre - mu / fine_steps + fine_offsets, 0, n - 1)
    assert optimum <= min(coarse.min(), fine.min()) * (1 + 1e-12)
    assert fine.min() <= optimum * (1 + 1e-4)


def _integer_brute_force(dist, bits, symmetric, widths, num_steps=4000):
    """Every zero point allowed x a log grid of steps whose interval width spans ``widths``."""
    qmin, qmax = code_range(bits, signed=symmetric)
    zero_points = np.array([0]) if symmetric else np.arange(qmin, qmax + 1)
    steps = np.geomspace(widths[0], widths[1], num_steps) / (qmax - qmin)
    errors = brute_force_errors(dist, steps[:, None], zero_points[None, :], qmin, qmax)
    return errors.min(), steps, errors


@pytest.mark.parametrize("dist,bits,symmetric", [(LEAKY, 4, False), (LEAKY, 2, False), (WEIGHTS, 4, True),
                                                 (WEIGHTS, 3, False), (HEAVY, 2, False), (HEAVY, 2, True),
                                                 (SHIFTED, 3, False), (PiecewiseGaussian.normal(5, 0.5), 2, False),
                                                 (CLUSTERS, 2, False), (CLUSTERS, 3, False),
                                                 (TWO_SPIKES, 2, False), (TWO_SPIKES, 3, False)])
def test_integer_zero_point_optimum_never_worse_than_brute_force(dist, bits, symmetric):
    """Truth: brute force over EVERY allowed zero point and 4000 log-spaced steps (interval widths
    from sigma/50 to 50 sigma + |mean|), evaluated cell by cell; the optimum is never worse and the
    brute force comes within 1e-3 of it. CLUSTERS and TWO_SPIKES have several basins (in the
    brute force's envelope over zero points: 2 and 4 for CLUSTERS at 2 and 3 bits, 3 and 7 for
    TWO_SPIKES), the best of which must be found."""
    sigma = math.sqrt(dist.var())
    best = optimal_quantizer(dist, bits, symmetric=symmetric)
    optimum = expected_mse(dist, best)
    brute, _, _ = _integer_brute_force(dist, bits, symmetric, (sigma / 50, 50 * sigma + abs(dist.mean())))
    assert optimum <= brute * (1 + 1e-12)
    assert brute <= optimum * (1 + 1e-3)
    assert isinstance(best.zero_point, int) and best.qmin <= best.zero_point <= best.qmax
    if symmetric:
        assert best.zero_point == 0 and best.qmin == -2**(bits - 1)


def test_narrow_range_symmetric_optimum_against_brute_force():
    """Truth: brute force over 4000 log-spaced steps, codes [-7, 7] (narrow 4-bit), cell by cell."""
    best = optimal_quantizer(WEIGHTS, 4, symmetric=True, narrow_range=True)
    assert (best.qmin, best.qmax, best.zero_point) == (-7, 7, 0)
    steps = np.geomspace(0.01, 10.0, 4000)
    errors = brute_force_errors(WEIGHTS, steps, 0, -7, 7)
    assert expected_mse(WEIGHTS, best) <= errors.min() * (1 + 1e-12)
    assert errors.min() <= expected_mse(WEIGHTS, best) * (1 + 1e-4)


def test_8_bit_integer_zero_point_against_brute_force():
    """Truth: brute force over all 256 zero points x 60 steps around the optimum (x 0.8 .. 1.25),
    cell by cell, for the 3-piece weight model: never worse."""
    best = optimal_quantizer(WEIGHTS, 8)
    steps = best.step * np.geomspace(0.8, 1.25, 60)
    errors = brute_force_errors(WEIGHTS, steps[:, None], np.arange(256)[None, :], 0, 255)
    assert expected_mse(WEIGHTS, best) <= errors.min() * (1 + 1e-12)


@pytest.mark.parametrize("dist,bits,zero_representable", [(LEAKY, 4, True), (WEIGHTS, 8, True),
                                                          (SHIFTED, 3, False)])
def test_power_of_two_step_against_enumeration(dist, bits, zero_representable):
    """Truth: enumeration of the exponents -20..10 x every zero point (integer), or x 400 offsets
    over the codes (free), cell by cell: never worse."""
    best = optimal_quantizer(dist, bits, zero_representable=zero_representable, pow2_step=True)
    assert math.log2(best.step) == int(math.log2(best.step))
    n = 2**bits
    steps = np.exp2(np.arange(-20, 11, dtype=float))[:, None]
    zero_points = (np.arange(n)[None, :] if zero_representable
                   else np.linspace(-2 * n, 2 * n, 400)[None, :] - dist.mean() / steps)
    errors = brute_force_errors(dist, steps, zero_points, 0, n - 1)
    assert expected_mse(dist, best) <= errors.min() * (1 + 1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("pow2_step", [False, True])
def test_mirror_image_zero_points_tie_to_the_smaller(bits, pow2_step):
    """A constructed tie: under N(0, 1) with unsigned codes, zero points z and qmax - z are mirror
    images with the same error (checked here by brute force, cell by cell, at the optimum's step).
    The rule (specification, section 6): the smaller zero point wins."""
    dist = PiecewiseGaussian.normal(0.0, 1.0)
    best = optimal_quantizer(dist, bits, pow2_step=pow2_step)
    qmax = 2**bits - 1
    mirror = qmax - best.zero_point
    errors = brute_force_errors(dist, np.array([[best.step]]), np.array([[best.zero_point, mirror]]), 0, qmax)
    assert errors[0, 0] == pytest.approx(errors[0, 1], rel=1e-12)  # the tie is real
    if mirror != best.zero_point:  # (an odd number of codes could put the optimum on the axis)
        assert best.zero_point < mirror
    if bits == 2 and not pow2_step:
        assert best.zero_point == 1  # the outside implementation's answer for the golden case


def test_the_tie_breaker_on_constructed_candidates():
    """The rule as documented (specification, section 6), on hand-made candidate lists."""
    from refquant.quantizers.optimal import TIE_TOLERANCE, _tie_broken
    candidates = [(0.5, 2.0, 1.0), (0.4, 1.0, 1.0 + 0.5 * TIE_TOLERANCE), (0.3, 1.0, 1.0), (0.1, 0.0, 1.1)]
    assert _tie_broken(candidates, integer_zero_point=True) == (0.3, 1.0)
    assert _tie_broken([(0.5, 2.0, 1.0), (0.4, 1.0, 1.0 + 2 * TIE_TOLERANCE)], True) == (0.5, 2.0)
    # a real zero point: within the tolerance is one minimum, the least error wins ...
    assert _tie_broken([(0.5, 2.0, 1.0), (0.4, 1.0, 1.0 + 0.5 * TIE_TOLERANCE)], False) == (0.5, 2.0)
    # ... and exact equality goes to the smaller zero point
    assert _tie_broken([(0.5, 2.0, 1.0), (0.4, 1.0, 1.0)], False) == (0.4, 1.0)


def test_constraints_cost_error_in_the_expected_order():
    """Truth: nested constraint sets (a minimum over a larger set is no larger): free offset <=
    integer zero point <= power-of-two step; and symmetric codes lose to affine on a skewed density."""
    free = expected_mse(LEAKY, optimal_quantizer(LEAKY, 4, zero_representable=False))
    integer = expected_mse(LEAKY, optimal_quantizer(LEAKY, 4))
    pow2 = expected_mse(LEAKY, optimal_quantizer(LEAKY, 4, pow2_step=True))
    symmetric = expected_mse(LEAKY, optimal_quantizer(LEAKY, 4, symmetric=True))
    assert free <= integer * (1 + 1e-12) and integer <= pow2 * (1 + 1e-12)
    assert integer < symmetric


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------

# Banner, Nahshan & Soudry (NeurIPS 2019), section 3: alpha* at M = 2, 3, 4 bits (two decimals,
# truncated in the paper: our unrounded values are 2.831, 3.897, 5.029 and 1.711, 2.152, 2.559).
ACIQ_PUBLISHED = {"laplace": {2: 2.83, 3: 3.89, 4: 5.03}, "gaussian": {2: 1.71, 3: 2.15, 4: 2.55}}


@pytest.mark.parametrize("prior", sorted(ACIQ_PUBLISHED))
def test_aciq_clipping_matches_published_values(prior):
    """Truth: the clipping values published by Banner et al. (2019), to their two decimals."""
    for bits, published in ACIQ_PUBLISHED[prior].items():
        assert abs(aciq_clipping(bits, prior) - published) < 0.01


def test_aciq_quantizer_clips_at_alpha_sigma():
    """Truth: the published 2.55 sigma (4 bits, Gaussian) applied to samples drawn by numpy."""
    x = np.random.default_rng(5).normal(0.0, 2.0, 200000)
    quantizer = aciq_quantizer(x, 4, "gaussian", symmetric=True)
    assert quantizer.hi == pytest.approx(2.55 * 2.0 * 7 / 7.5, rel=0.01)  # PyTorch rule: hi = 7 step


@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, False), (8, True), (3, True)])
def test_minmax_matches_pytorch_observer(bits, symmetric):
    """Truth: torch.ao.quantization.MinMaxObserver's calculate_qparams (scale, zero point)."""
    x = np.random.default_rng(2).normal(0.3, 1.7, 10000).astype(np.float32)
    qmin, qmax = code_range(bits, signed=symmetric)
    observer = MinMaxObserver(dtype=torch.qint8 if symmetric else torch.quint8, quant_min=qmin, quant_max=qmax,
                              qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine)
    observer(torch.from_numpy(x))
    scale, zero_point = observer.calculate_qparams()
    quantizer = minmax_quantizer(x, bits, symmetric)
    assert quantizer.step == pytest.approx(float(scale), rel=1e-6)
    assert quantizer.zero_point == int(zero_point)
    assert (quantizer.qmin, quantizer.qmax) == (qmin, qmax)


def test_percentile_quantizer_by_hand():
    """Truth: hand computation on x = 0, 1, ..., 1000 with 2 bits: the 1st and 99th percentiles are
    10 and 990, so step = 990 / 3 = 330 after stretching to hold 0, zero point 0."""
    quantizer = percentile_quantizer(np.arange(1001.0), 2, percentile=99.0)
    assert quantizer.step == pytest.approx(330.0) and quantizer.zero_point == 0


def test_kl_expansion_matches_the_tensorrt_talk_example():
    """Truth: the worked example of Migacz, "8-bit Inference with TensorRT" (GTC 2017):
    P = [1 0 2 3 5 3 1 7] merged into 2 bins [6, 16], expanded to [2 0 2 2 4 4 4 4]."""
    expanded = expanded_quantized_distribution([1, 0, 2, 3, 5, 3, 1, 7], 2)
    assert expanded.tolist() == [2, 0, 2, 2, 4, 4, 4, 4]


def test_kl_threshold_on_a_hand_made_histogram():
    """Truth: P and Q written out by hand for each candidate of a 7-bin histogram with 2 quantized
    bins (outliers folded into P's last bin; Q merged in halves, remainder to the last half, spread
    over P's nonzero bins), their KL by scipy.stats.entropy, and the threshold (m + 0.5) * width."""
    histogram = [8, 6, 0, 4, 2, 1, 3]
    hand = {2: ([8, 6 + 10], [8, 6]),
            3: ([8, 6, 0 + 10], [8, 3, 3]),
            4: ([8, 6, 0, 4 + 6], [7, 7, 0, 4]),
            5: ([8, 6, 0, 4, 2 + 4], [7, 7, 0, 3, 3]),
            6: ([8, 6, 0, 4, 2, 1 + 3], [7, 7, 0, 7 / 3, 7 / 3, 7 / 3])}
    threshold, divergences = kl_threshold(histogram, bin_width=0.5, num_quantized_bins=2)
    expected = [stats.entropy(p, q) for p, q in (hand[i] for i in range(2, 7))]
    np.testing.assert_allclose(divergences, expected, rtol=1e-12)
    assert threshold == (2 + int(np.argmin(expected)) + 0.5) * 0.5
    assert kl_divergence([1, 1], [1, 0]) == math.inf and kl_divergence([0, 1], [0, 0]) == math.inf
    # All the mass beyond the first candidates: their Q is empty, they must lose, never win as NaN.
    threshold, divergences = kl_threshold([0, 0, 0, 5, 1], bin_width=1.0, num_quantized_bins=2)
    assert divergences[0] == math.inf and threshold == (2 + int(np.argmin(divergences)) + 0.5)


def test_kl_quantizer_is_tensorrt_narrow_symmetric():
    """Truth: TensorRT's int8 convention, codes [-127, 127], zero point 0, scale = threshold / 127,
    and the threshold found by kl_threshold on the 2048-bin |x| histogram (hand-assembled here)."""
    x = np.random.default_rng(4).laplace(0.0, 1.0, 100000)
    quantizer = kl_quantizer(x, 8)
    histogram, _ = np.histogram(np.abs(x), bins=2048, range=(0, np.abs(x).max()))
    threshold, _ = kl_threshold(histogram, np.abs(x).max() / 2048, 128)
    assert (quantizer.qmin, quantizer.qmax, quantizer.zero_point) == (-127, 127, 0)
    assert quantizer.hi == pytest.approx(threshold, rel=1e-12)
    assert threshold < np.abs(x).max()


def test_mse_search_and_optimum_agree_on_samples():
    """Truth: the density's analytic optimum, evaluated on 10^5 samples drawn by scipy: the
    brute-force search over the same samples does not beat it by more than sampling noise (1 %)
    and comes within 10 % of it with a 24 x 24 candidate grid."""
    x = scipy_samples(LEAKY, 10**5, seed=11)
    searched = empirical_mse(x, mse_search_quantizer(x, 4))
    optimum = empirical_mse(x, optimal_quantizer(LEAKY, 4))
    assert optimum <= searched * 1.01
    assert searched <= optimum * 1.10


def test_method_errors_covers_every_method_and_the_optimum_wins():
    """Truth: the paper's claim on data drawn from the model: the density's optimum has the lowest
    empirical error of all methods (within 1 % sampling slack)."""
    x = scipy_samples(WEIGHTS, 50000, seed=13)
    errors = method_errors(x, 4, dist=WEIGHTS, num_candidates=12)
    assert set(errors) == {"min-max", "percentile", "ACIQ (Gauss)", "ACIQ", "MSE search",
                           "KL (TensorRT)", "optimal (density)"}
    assert errors["optimal (density)"] <= min(errors.values()) * 1.01
    assert quantizer_from_interval(-1.0, 3.0, 8).zero_point == 64
