"""The baselines on a histogram (refquant.intervals, section 5) and the calibration plans built on them.

Independent truths: scipy.stats.rv_histogram (the same piecewise-uniform density, written by
scipy) for the CDF, quantiles, mean and variance; scipy.integrate.quad over its pdf for the partial
moments and the expected error; numpy's mean, std, percentile and histogram on the raw data; and
the sample entry points of refquant.intervals where the binned data are exactly the samples'
(TensorRT's 2048-bin histogram of |x|), each test saying which.
"""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from refquant import folding, ptq
from refquant.density.histogram import HistogramDensity
from refquant.quantizers import baselines, uniform
from refquant.quantizers import error as quantizers_error
from refquant.testing import load_cfg, randomize_batchnorm, two_input_route_cfg


def data(seed=0, n=20000):
    """A leaky-ReLU-like sample: Gaussian positives, a negative side squeezed tenfold, a few outliers."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.4, 1.0, n)
    x = np.where(x < 0, 0.1 * x, x)
    return np.concatenate([x, [6.5, 7.25]])


def irregular_histogram():
    """Irregular edges with empty bins inside and at the ends (as real histograms have)."""
    edges = np.array([-2.0, -1.5, -0.25, 0.0, 0.1, 0.7, 1.0, 2.5, 3.0, 4.0])
    counts = np.array([0.0, 3.0, 7.0, 12.0, 20.0, 0.0, 9.0, 4.0, 1.0])
    return counts, edges


def quad_moment(rv, edges, lo, hi, power, extra_points=()):
    """integral_lo^hi x**power rv.pdf(x) dx by scipy quad, split at every bin edge."""
    lo, hi = max(lo, edges[0]), min(hi, edges[-1])
    if hi <= lo:
        return 0.0
    points = np.unique(np.concatenate([edges, np.asarray(extra_points, dtype=float)]))
    points = np.concatenate([[lo], points[(points > lo) & (points < hi)], [hi]])
    return sum(integrate.quad(lambda t: t**power * rv.pdf(t), a, b)[0] for a, b in zip(points[:-1], points[1:]))


def test_density_matches_scipy_rv_histogram():
    """Truth: scipy.stats.rv_histogram((counts, edges)): cdf, ppf, mean, var; partial moments by
    scipy.integrate.quad over its pdf, including infinite ends and intervals inside one bin."""
    counts, edges = irregular_histogram()
    density, rv = HistogramDensity(counts, edges), stats.rv_histogram((counts, edges), density=False)
    x = np.array([-3.0, -2.0, -1.7, -0.25, 0.05, 0.8, 2.9, 4.0, 5.0])
    np.testing.assert_allclose(density.cdf(x), rv.cdf(x), rtol=0, atol=1e-14)
    q = np.array([1e-4, 0.05, 0.3, 0.5, 0.77, 0.9999, 1.0])
    np.testing.assert_allclose(density.ppf(q), rv.ppf(q), rtol=0, atol=1e-12)
    assert density.ppf(0.0) == edges[1]  # the support starts at the first non-empty bin
    assert density.mean() == pytest.approx(rv.mean(), rel=1e-13)
    assert density.var() == pytest.approx(rv.var(), rel=1e-12)
    for lo, hi in [(-np.inf, np.inf), (-1.0, 0.3), (-np.inf, 0.05), (0.75, np.inf), (0.12, 0.13), (2.5, 2.5)]:
        ours = density.partial_moments(lo, hi)
        for power in range(3):
            assert ours[power] == pytest.approx(quad_moment(rv, edges, lo, hi, power), rel=1e-10, abs=1e-14), \
                (lo, hi, power)
    broadcast = density.partial_moments(np.array([[-1.0], [0.0]]), np.array([0.5, 1.0, 2.0]))
    assert broadcast[0].shape == (2, 3)


def test_folded_density_is_the_density_of_the_absolute_value():
    """Truth: P(|X| <= a) = rv.cdf(a) - rv.cdf(-a) with scipy's rv_histogram."""
    counts, edges = irregular_histogram()
    rv = stats.rv_histogram((counts, edges), density=False)
    folded = HistogramDensity(counts, edges).folded()
    a = np.array([0.0, 0.05, 0.2, 1.2, 1.75, 2.0, 3.5, 4.0])
    np.testing.assert_allclose(folded.cdf(a), rv.cdf(a) - rv.cdf(-a), rtol=0, atol=1e-14)
    assert folded.edges[0] == 0.0 and folded.total == pytest.approx(counts.sum())


def test_expected_error_under_the_histogram_matches_quadrature():
    """Truth: E[(X - Q(X))^2] integrated by scipy quad over rv_histogram's pdf, split at every bin
    edge and every quantizer cell edge, for a 3-bit affine and a 4-bit signed quantizer."""
    counts, edges = irregular_histogram()
    density, rv = HistogramDensity(counts, edges), stats.rv_histogram((counts, edges), density=False)
    for quantizer in (uniform.unsigned_quantizer(3, 0.45, 2), uniform.signed_quantizer(4, 0.3)):
        cells = np.concatenate([quantizer.levels[:-1] + quantizer.step / 2])

        def squared_error(t):
            return (t - quantizer.fake(np.array([t]))[0]) ** 2 * rv.pdf(t)
        points = np.unique(np.concatenate([edges, cells]))
        points = points[(points >= edges[0]) & (points <= edges[-1])]
        truth = sum(integrate.quad(squared_error, a, b)[0] for a, b in zip(points[:-1], points[1:]))
        assert quantizers_error.expected_mse(density, quantizer) == pytest.approx(truth, rel=1e-9)


def test_percentile_reads_the_cdf():
    """Truth: rv_histogram.ppf at 0.01 % and 99.99 % through the observer rule
    (quantizer_from_interval); and numpy.percentile of the raw data lies within one bin of it."""
    x = data()
    counts, edges = np.histogram(x, 512)
    density = HistogramDensity(counts, edges)
    rv = stats.rv_histogram((counts, edges), density=False)
    for bits in (4, 8):
        ours = baselines.percentile_quantizer_histogram(density, bits, 99.99)
        lo, hi = rv.ppf([1e-4, 1 - 1e-4])
        theirs = baselines.quantizer_from_interval(lo, hi, bits)
        assert ours.zero_point == theirs.zero_point and ours.step == pytest.approx(theirs.step, rel=1e-12)
    width = edges[1] - edges[0]
    lo, hi = baselines.percentile_quantizer_histogram(density, 8, 99.0).interval
    assert abs(hi - np.percentile(x, 99.0)) < width + ours.step
    symmetric = baselines.percentile_quantizer_histogram(density, 8, 99.5, symmetric=True)
    assert symmetric.zero_point == 0
    assert abs(symmetric.step * 128 - np.percentile(np.abs(x), 99.5)) < width


def test_aciq_from_exact_moments_equals_the_sample_rule():
    """Truth: numpy's mean and std of the raw data: given them, the Gaussian-prior histogram rule
    is aciq_quantizer on the samples (the same quantizer); the Laplace scale b = E|X - mean| under
    the density lies within half a bin width of numpy's mean |x - mean|."""
    x = data(1)
    counts, edges = np.histogram(x, 1024)
    density = HistogramDensity(counts, edges)
    for bits in (3, 4, 8):
        ours = baselines.aciq_quantizer_histogram(density, bits, "gaussian", mean=np.mean(x), std=np.std(x))
        assert ours == baselines.aciq_quantizer(x, bits, "gaussian")
    b_numpy = np.mean(np.abs(x - np.mean(x)))
    assert abs(density.absolute_deviation(np.mean(x)) - b_numpy) < 0.5 * (edges[1] - edges[0])
    laplace = baselines.aciq_quantizer_histogram(density, 4, "laplace", mean=np.mean(x))
    assert laplace.step == pytest.approx(baselines.aciq_quantizer(x, 4, "laplace").step, rel=1e-3)


def test_mse_search_picks_the_least_error_by_quadrature():
    """Truth: every candidate interval's error integrated by scipy quad over rv_histogram's pdf;
    the histogram search returns the candidate of least integrated error."""
    counts, edges = irregular_histogram()
    density, rv = HistogramDensity(counts, edges), stats.rv_histogram((counts, edges), density=False)
    bits, candidates = 3, 5
    ours = baselines.mse_search_quantizer_histogram(density, bits, num_candidates=candidates, progress=False)
    best, best_error = None, math.inf
    for lo, hi in baselines.mse_search_intervals(edges[1], edges[-1], False, candidates):
        quantizer = baselines.quantizer_from_interval(lo, hi, bits)
        cells = quantizer.levels[:-1] + quantizer.step / 2
        points = np.unique(np.concatenate([edges, cells[(cells > edges[0]) & (cells < edges[-1])]]))
        error = sum(integrate.quad(lambda t: (t - quantizer.fake(np.array([t]))[0]) ** 2 * rv.pdf(t), a, b)[0]
                    for a, b in zip(points[:-1], points[1:]))
        if error < best_error * (1 - 1e-9):
            best, best_error = quantizer, error
    assert density.support == (edges[1], edges[-1])
    assert ours == best


def test_kl_on_tensorrt_histogram_equals_the_sample_rule():
    """Truth: refquant.quantizers.baselines.kl_quantizer on the samples, which histograms |x| in 2048 bins over
    [0, max |x|] with numpy: given that very histogram, the histogram entry point reads the same
    counts back (integer sums at the edges) and returns the same quantizer; on a signed histogram
    of the same data the threshold stays within 1 % of it."""
    x = data(2)
    amax = float(np.abs(x).max())
    counts, edges = np.histogram(np.abs(x), 2048, (0.0, amax))
    density = HistogramDensity(counts, edges)
    np.testing.assert_array_equal(density.folded().counts_between(edges), counts)
    for bits in (4, 8):
        assert baselines.kl_quantizer_histogram(density, bits) == baselines.kl_quantizer(x, bits)
    signed, signed_edges = np.histogram(x, 3000)
    ours = baselines.kl_quantizer_histogram(HistogramDensity(signed, signed_edges), 8, extremes=(x.min(), x.max()))
    assert ours.step == pytest.approx(baselines.kl_quantizer(x, 8).step, rel=0.01)


def test_minmax_with_exact_extremes_equals_the_sample_rule():
    """Truth: minmax_quantizer on the raw samples (numpy min and max)."""
    x = data(3)
    counts, edges = np.histogram(x, 100)
    density = HistogramDensity(counts, edges)
    for symmetric in (False, True):
        assert (baselines.minmax_quantizer_histogram(density, 4, symmetric, extremes=(x.min(), x.max()))
                == baselines.minmax_quantizer(x, 4, symmetric))


def test_bad_histograms_are_refused():
    """Truth: the documented requirements (shapes, finite, non-negative counts not all 0,
    strictly increasing edges); each error names what is wrong."""
    with pytest.raises(ValueError, match="shapes"):
        HistogramDensity([1, 2], [0, 1])
    with pytest.raises(ValueError, match="not all 0"):
        HistogramDensity([0, 0], [0, 1, 2])
    with pytest.raises(ValueError, match="increase strictly"):
        HistogramDensity([1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        HistogramDensity([1, np.nan], [0, 1, 2])
    with pytest.raises(TypeError, match="HistogramDensity"):
        baselines.percentile_quantizer_histogram(np.ones(10), 4)
    with pytest.raises(ValueError, match="q must be"):
        HistogramDensity([1, 2], [0, 1, 2]).ppf(1.5)


# ------------------------------------------------------------------------------------------------
# Calibration plans: the activation baselines read the histograms
# ------------------------------------------------------------------------------------------------

def test_activation_histogram_density_keeps_counts_and_exact_extremes():
    """Truth: numpy.histogram of the same values over the density's inner edges, and numpy's
    min, max, mean and std of the values."""
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(0.3, 1.0, 5000), rng.normal(5.0, 0.5, 300)])
    histogram = ptq.ActivationHistogram(64)
    for part in np.array_split(values, 5):
        histogram.add(part)
    density = histogram.density()
    assert density.edges[0] == values.min() and density.edges[-1] == values.max()
    expected, _ = np.histogram(values, density.edges)
    np.testing.assert_array_equal(density.counts, expected)
    assert histogram.mean() == pytest.approx(np.mean(values), rel=1e-12)
    assert histogram.std() == pytest.approx(np.std(values), rel=1e-10)


def small_network():
    """Leaky convolutions with random batch-norm statistics, a two-input route, a linear 1x1 output
    (refquant.testing.two_input_route_cfg), float64."""
    return randomize_batchnorm(load_cfg(two_input_route_cfg(), "small.cfg", dtype=np.float64, seed=3), 3)


def test_baseline_plans_follow_the_full_activations():
    """Truth: the refquant.intervals sample rules on ALL the float activations of the calibration
    images at once (numpy statistics of the whole tensor): the histogram plans give the same
    Gaussian ACIQ interval (exact moments, to float summation order), percentile intervals
    within one bin (and one step) of numpy's inverted-CDF percentiles, and an MSE-search quantizer
    whose error on the data is within 5 % of the sample search's (on a 3x3 convolution and the
    two-input route)."""
    net = small_network()
    images = np.random.default_rng(1).random((6, 3, 32, 32))
    statistics = ptq.calibration_statistics(net, images, batch_size=2, progress=False)
    folded = folding.fold_batchnorm(net)
    outputs = folded.forward(images, return_all=True)
    # A convolution that only a maxpool reads is calibrated on the maxpool's output (its values travel on).
    readers = {j: [k for k, sources in enumerate(folded.inputs) if j in sources] for j in range(len(folded.layers))}
    for j, found in readers.items():
        if folded.layers[j].type == "convolutional" and len(found) == 1 and folded.layers[found[0]].type == "maxpool":
            outputs[j] = outputs[found[0]]
    plans = {method: ptq.quantization_plan(statistics, 4, 4, method, first_bits=None, last_bits=None)
             for method in ("aciq-gauss", "percentile", "mse")}
    for index in plans["mse"].activations:
        values, width = outputs[index], statistics.histograms[index].bin_width
        ours = plans["aciq-gauss"].activations[index]
        theirs = baselines.aciq_quantizer(values, 4, "gaussian")
        assert ours.zero_point == theirs.zero_point and ours.step == pytest.approx(theirs.step, rel=1e-9)
        lo, hi = plans["percentile"].activations[index].interval
        theirs = baselines.quantizer_from_interval(*np.percentile(values, [100 - baselines.PERCENTILE, baselines.PERCENTILE],
                                                                  method="inverted_cdf"), 4)
        assert abs(hi - theirs.hi) < width + theirs.step and abs(lo - theirs.lo) < width + theirs.step
    for index in (2, 5):  # the sample search costs 625 passes over the values: two layers
        values, ours = outputs[index], plans["mse"].activations[index]
        theirs = baselines.mse_search_quantizer(values, 4, progress=False)
        assert quantizers_error.empirical_mse(values, ours) <= 1.05 * quantizers_error.empirical_mse(values, theirs), index
