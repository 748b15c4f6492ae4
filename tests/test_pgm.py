"""Tests of refquant.pgm: the piecewise Gaussian density, its EM fit, and the Gaussian mixture.

Every test names its independent truth in its docstring: scipy.stats / scipy.integrate, the
asymptotic series of the normal tail, direct numerical maximisation of the exact likelihood
with scipy.optimize, or scikit-learn's GaussianMixture.
"""
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from refquant.pgm import PiecewiseGaussian, truncated_standard_normal

# A three-piece model with a piece whose Gaussian centre lies outside it (piece 0), used by the
# distribution tests.
THREE_PIECES = PiecewiseGaussian([-0.5, 0.0], [0.2, 0.3, 0.5], [-0.3, 0.1, 0.4], [0.5, 0.2, 1.0])


def _quad_over_pieces(dist, function, lo, hi):
    """integral_lo^hi function(x) dx split at the breakpoints (quad needs the kinks as ends)."""
    cuts = [lo] + [b for b in dist.breakpoints if lo < b < hi] + [hi]
    return sum(integrate.quad(function, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
               for a, b in zip(cuts[:-1], cuts[1:]))


# ------------------------------------------------------------------------------------------------
# The density
# ------------------------------------------------------------------------------------------------

def test_pdf_is_weighted_scipy_truncnorm_on_each_piece():
    """Truth: scipy.stats.truncnorm, the truncated normal of each piece, times the piece's mass."""
    dist = THREE_PIECES
    x = np.linspace(-3.0, 4.0, 701)
    expected = np.empty_like(x)
    for k in range(dist.n_pieces):
        lo, hi = dist.edges[k], dist.edges[k + 1]
        inside = (x >= lo) & (x < hi)
        a, b = (lo - dist.means[k]) / dist.stds[k], (hi - dist.means[k]) / dist.stds[k]
        expected[inside] = dist.weights[k] * stats.truncnorm.pdf(x[inside], a, b, loc=dist.means[k],
                                                                 scale=dist.stds[k])
    np.testing.assert_allclose(dist.pdf(x), expected, rtol=1e-12)
    np.testing.assert_allclose(dist.logpdf(x), np.log(expected), rtol=1e-12, atol=1e-12)


def test_one_piece_model_is_scipy_normal():
    """Truth: scipy.stats.norm (pdf, cdf, sf, ppf, mean, var)."""
    dist = PiecewiseGaussian.normal(1.5, 0.7)
    x = np.linspace(-4, 6, 101)
    np.testing.assert_allclose(dist.pdf(x), stats.norm.pdf(x, 1.5, 0.7), rtol=1e-13)
    np.testing.assert_allclose(dist.cdf(x), stats.norm.cdf(x, 1.5, 0.7), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(dist.sf(x), stats.norm.sf(x, 1.5, 0.7), rtol=1e-13, atol=1e-300)
    q = np.linspace(0.001, 0.999, 99)
    np.testing.assert_allclose(dist.ppf(q), stats.norm.ppf(q, 1.5, 0.7), rtol=1e-12)
    assert dist.mean() == pytest.approx(1.5, rel=1e-14)
    assert dist.var() == pytest.approx(0.49, rel=1e-14)


def test_pdf_integrates_to_one_and_cdf_is_its_integral():
    """Truth: adaptive quadrature (scipy.integrate.quad) of the pdf."""
    dist = THREE_PIECES
    assert _quad_over_pieces(dist, dist.pdf, -np.inf, np.inf) == pytest.approx(1.0, abs=1e-11)
    for x in [-2.0, -0.5, -0.2, 0.0, 0.3, 2.5]:
        expected = _quad_over_pieces(dist, dist.pdf, -np.inf, x)
        assert float(dist.cdf(x)) == pytest.approx(expected, abs=1e-11)
        assert float(dist.sf(x)) == pytest.approx(1.0 - expected, abs=1e-11)


def test_ppf_inverts_cdf_including_piece_edges_and_ends():
    """Truth: the definition of a quantile, cdf(ppf(q)) = q and ppf(cdf(x)) = x (cdf checked by quad)."""
    dist = THREE_PIECES
    q = np.concatenate([np.linspace(0.0, 1.0, 1001), [1e-12, 0.2, 0.5, 1 - 1e-12]])
    x = dist.ppf(q)
    assert x[0] == -np.inf and x[1000] == np.inf
    np.testing.assert_allclose(dist.cdf(x[1:1000]), q[1:1000], rtol=1e-12, atol=1e-15)
    assert dist.ppf(0.2) == pytest.approx(-0.5, abs=1e-12)  # the mass below b_1 is 0.2
    assert dist.ppf(0.5) == pytest.approx(0.0, abs=1e-12)
    grid = np.linspace(-3.0, 5.0, 333)
    np.testing.assert_allclose(dist.ppf(dist.cdf(grid)), grid, atol=1e-10)


def test_mean_and_var_against_quadrature():
    """Truth: quad of x p(x) and (x - mean)^2 p(x)."""
    dist = THREE_PIECES
    mean = _quad_over_pieces(dist, lambda x: x * dist.pdf(x), -np.inf, np.inf)
    var = _quad_over_pieces(dist, lambda x: (x - mean) ** 2 * dist.pdf(x), -np.inf, np.inf)
    assert dist.mean() == pytest.approx(mean, rel=1e-11)
    assert dist.var() == pytest.approx(var, rel=1e-11)


@pytest.mark.parametrize("lo, hi", [(-np.inf, np.inf), (-1.0, 0.3), (-0.7, -0.6), (2.0, np.inf),
                                    (-np.inf, -3.0), (0.1, 0.1000001), (-0.5, 0.0), (0.3, -0.3),
                                    (-6.0, -5.0)])
def test_partial_moments_against_quadrature(lo, hi):
    """Truth: quad of x**j p(x) over [lo, hi], j = 0, 1, 2 (split at breakpoints)."""
    dist = THREE_PIECES
    got = dist.partial_moments(lo, hi)
    for j in range(3):
        expected = _quad_over_pieces(dist, lambda x: x ** j * dist.pdf(x), lo, hi) if lo < hi else 0.0
        assert float(got[j]) == pytest.approx(expected, rel=1e-9, abs=1e-15), j


def test_partial_moments_broadcast():
    """Truth: the scalar calls (already checked against quad) and additivity over adjacent intervals."""
    dist = THREE_PIECES
    lo = np.array([[-np.inf], [-1.0], [0.5]])
    hi = np.array([-0.2, 0.0, 1.0, np.inf])
    m0, m1, m2 = dist.partial_moments(lo, hi)
    assert m0.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            scalar = dist.partial_moments(lo[i, 0], hi[j])
            assert (m0[i, j], m1[i, j], m2[i, j]) == pytest.approx(tuple(map(float, scalar)), rel=1e-14)
    cuts = np.array([-np.inf, -2.0, -0.5, -0.1, 0.0, 0.7, np.inf])
    parts = dist.partial_moments(cuts[:-1], cuts[1:])
    whole = dist.partial_moments(-np.inf, np.inf)
    for j in range(3):
        assert parts[j].sum() == pytest.approx(float(whole[j]), rel=1e-13)


def _normal_tail_series(a, terms=12):
    """Asymptotic series of the normal tail, Q(a) = phi(a)/a * sum_n (-1)^n (2n-1)!! / a^(2n)
    (Abramowitz & Stegun 26.2.12). Returns (log Q(a), a^2 (1 - r)) with r = the sum, so that
    E[Z | Z > a] = a / r and Var[Z | Z > a] = 1 - a^2 (1 - r) / r^2, all without cancellation."""
    coefficient, r, one_minus_r_times_a2 = 1.0, 1.0, 0.0
    for n in range(1, terms):
        coefficient *= -(2 * n - 1) / (a * a)
        r += coefficient
        one_minus_r_times_a2 -= coefficient * a * a
    log_q = -0.5 * a * a - 0.5 * math.log(2 * math.pi) - math.log(a) + math.log(r)
    return log_q, one_minus_r_times_a2, r


@pytest.mark.parametrize("a", [12.0, 40.0, 300.0])
def test_far_tail_moments_against_asymptotic_series(a):
    """Truth: the normal-tail asymptotic series (A&S 26.2.12), exact to double precision for a >= 12.

    P(Z > a) underflows to 0 as a difference of cdfs for a > 38; the log mass, the conditional mean
    and the conditional variance must still come out right."""
    log_q, a2_one_minus_r, r = _normal_tail_series(a)
    log_mass, mean, variance = truncated_standard_normal(a, np.inf)
    assert float(log_mass) == pytest.approx(log_q, rel=1e-14)
    assert float(mean) == pytest.approx(a / r, rel=1e-14)
    tolerance = 1e-9 if a < 100 else 1e-5  # the closed form loses ~eps * a^4 relative here
    assert float(variance) == pytest.approx(1.0 - a2_one_minus_r / r ** 2, rel=tolerance)
    # Mirror image: the left tail.
    log_mass, mean, variance = truncated_standard_normal(-np.inf, -a)
    assert float(log_mass) == pytest.approx(log_q, rel=1e-14)
    assert float(mean) == pytest.approx(-a / r, rel=1e-14)
    # Through the distribution: N(mu, sigma) partial moments on [mu + a sigma, inf) are not zero.
    dist = PiecewiseGaussian.normal(2.0, 0.5)
    m0, m1, _ = dist.partial_moments(2.0 + a * 0.5, np.inf)
    if log_q > -700:
        assert float(m0) == pytest.approx(math.exp(log_q), rel=1e-13)
        assert float(m1 / m0) == pytest.approx(2.0 + 0.5 * a / r, rel=1e-14)


@pytest.mark.parametrize("a, width", [(0.0, 1e-3), (5.0, 1e-6), (30.0, 1e-3), (-3.0, 1e-5), (-1e-4, 2e-4)])
def test_narrow_interval_moments_against_scaled_quadrature(a, width):
    """Truth: quad of y**j exp(-a y - y^2/2) on [0, width] (phi(a + y) with phi(a) factored out, so
    quad works on a well-scaled integrand and nothing cancels)."""
    def integral(j):
        return integrate.quad(lambda y: y ** j * math.exp(-a * y - 0.5 * y * y), 0.0, width,
                              epsabs=0.0, epsrel=1e-13)[0]
    i0, i1, i2 = integral(0), integral(1), integral(2)
    log_mass, mean, variance = truncated_standard_normal(a, a + width, width)
    assert float(log_mass) == pytest.approx(-0.5 * a * a - 0.5 * math.log(2 * math.pi) + math.log(i0),
                                            rel=1e-13, abs=1e-13)
    assert float(mean) == pytest.approx(a + i1 / i0, rel=1e-13, abs=1e-16)
    assert float(variance) == pytest.approx(i2 / i0 - (i1 / i0) ** 2, rel=1e-9)


def test_sample_follows_the_cdf():
    """Truth: the Kolmogorov-Smirnov test (scipy.stats.kstest) against the quad-checked cdf, and
    the sample fraction of each piece against its mass (binomial 5-sigma band)."""
    dist = THREE_PIECES
    x = dist.sample(20000, rng=1)
    assert x.shape == (20000,)
    assert stats.kstest(x, dist.cdf).pvalue > 1e-3
    for k in range(3):
        fraction = np.mean(dist.piece_of(x) == k)
        sigma = math.sqrt(dist.weights[k] * (1 - dist.weights[k]) / x.size)
        assert abs(fraction - dist.weights[k]) < 5 * sigma


def test_zero_weight_piece_has_no_density_and_no_quantiles():
    """Truth: the definition, a piece of mass 0 has p = 0 there and the cdf is flat across it."""
    dist = PiecewiseGaussian([0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0])
    assert dist.pdf(-1.0) == 0.0 and dist.logpdf(-1.0) == -np.inf
    assert dist.cdf(-0.3) == 0.0
    assert np.all(dist.ppf(np.linspace(0.0, 0.99, 50)) >= 0.0)
    assert dist.partial_moments(-np.inf, 0.0)[0] == 0.0


@pytest.mark.parametrize("args, message", [
    (([0.0, 0.0], [0.3, 0.3, 0.4], [0, 0, 0], [1, 1, 1]), "strictly increasing"),
    (([0.0], [0.3, 0.3, 0.4], [0, 0, 0], [1, 1, 1]), "weights must have 2"),
    (([0.0], [0.5, 0.6], [0, 0], [1, 1]), "sum to 1"),
    (([0.0], [1.5, -0.5], [0, 0], [1, 1]), ">= 0"),
    (([0.0], [0.5, 0.5], [0, 0], [1, 0]), "stds must be > 0"),
    (([np.nan], [0.5, 0.5], [0, 0], [1, 1]), "breakpoints must be finite"),
    (([0.0], [0.5, 0.5], [0, np.inf], [1, 1]), "means must be finite"),
    (([0.0], [0.5, 0.5], [1e200, 0], [1, 1]), "no representable mass"),
])
def test_constructor_rejects_bad_parameters(args, message):
    """Truth: the documented parameter constraints."""
    with pytest.raises(ValueError, match=message):
        PiecewiseGaussian(*args)


def test_dict_round_trip():
    """Truth: the parameters given to the constructor."""
    again = PiecewiseGaussian.from_dict(THREE_PIECES.to_dict())
    for name in ("breakpoints", "weights", "means", "stds", "edges"):
        np.testing.assert_array_equal(getattr(again, name), getattr(THREE_PIECES, name))
