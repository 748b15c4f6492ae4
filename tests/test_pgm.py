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

from refquant.density.em import ConvergenceWarning, DegenerateDataError, _Options
from refquant.density.mixture import GaussianMixture
from refquant.density.pgm import PiecewiseGaussian
from refquant.density.truncated_normal import truncated_standard_normal

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
    (([0.0], [0.5, 0.5], [1e149, 0], [1e-149, 1]), "no representable mass"),
    (([0.0], [0.5, 0.5], [1e200, 0], [1, 1]), r"means reaches 1e\+200.*at most 1e\+150"),
    (([0.0], [0.5, 0.5], [0, 0], [1e-300, 1]), r"stds is 1e-300.*at least 1e-150"),
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


# ------------------------------------------------------------------------------------------------
# Known models to draw from, with samplers independent of refquant (scipy.stats only)
# ------------------------------------------------------------------------------------------------

LEAKY_PRE_MEAN, LEAKY_PRE_STD = 0.5, 1.0


def leaky_relu_samples(n, seed):
    """Leaky-ReLU (slope 0.1) activations of N(0.5, 1) pre-activations: drawn and rectified directly."""
    y = np.random.default_rng(seed).normal(LEAKY_PRE_MEAN, LEAKY_PRE_STD, n)
    return np.where(y >= 0.0, y, 0.1 * y)


def leaky_relu_truth():
    """The exact PGM of leaky_relu_samples: two pieces split at 0, the negative side the positive
    side's Gaussian squeezed tenfold, masses Phi(-m/s) and 1 - Phi(-m/s)."""
    negative = stats.norm.cdf(-LEAKY_PRE_MEAN / LEAKY_PRE_STD)
    return ([0.0], [negative, 1.0 - negative], [0.1 * LEAKY_PRE_MEAN, LEAKY_PRE_MEAN],
            [0.1 * LEAKY_PRE_STD, LEAKY_PRE_STD])


# Weight-like: a narrow centre on [-1, 1) and wide tails outside, all centred at 0.
WEIGHT_TRUTH = ([-1.0, 1.0], [0.15, 0.7, 0.15], [0.0, 0.0, 0.0], [2.0, 0.5, 2.0])


def piecewise_samples(truth, n, seed):
    """Draws from a PGM by scipy.stats: piece counts multinomial, then scipy's truncnorm.rvs."""
    breakpoints, weights, means, stds = truth
    rng = np.random.default_rng(seed)
    edges = [-np.inf, *breakpoints, np.inf]
    parts = []
    for k, count in enumerate(rng.multinomial(n, weights)):
        a, b = (edges[k] - means[k]) / stds[k], (edges[k + 1] - means[k]) / stds[k]
        parts.append(stats.truncnorm.rvs(a, b, loc=means[k], scale=stds[k], size=count, random_state=rng))
    return rng.permutation(np.concatenate(parts))


def scipy_log_likelihood(x, truth):
    """sum_i log p(x_i) for a PGM, from scipy.stats.truncnorm.logpdf and the piece masses."""
    breakpoints, weights, means, stds = truth
    edges = [-np.inf, *breakpoints, np.inf]
    piece = np.searchsorted(breakpoints, x, side="right")
    total = 0.0
    for k in range(len(weights)):
        xk = x[piece == k]
        a, b = (edges[k] - means[k]) / stds[k], (edges[k + 1] - means[k]) / stds[k]
        total += xk.size * math.log(weights[k]) + stats.truncnorm.logpdf(xk, a, b, loc=means[k],
                                                                         scale=stds[k]).sum()
    return total


def parameters(model):
    return (model.breakpoints.tolist(), model.weights.tolist(), model.means.tolist(), model.stds.tolist())



def standard_errors(x, model):
    """Asymptotic standard errors of each piece's (mu, sigma) and of the masses: the inverse
    observed Fisher information, by central differences of scipy's truncnorm log-likelihood,
    and sqrt(pi (1 - pi) / n) for the masses."""
    piece = model.piece_of(x)
    mean_errors, std_errors = [], []
    for k in range(model.n_pieces):
        xk, lo, hi = x[piece == k], model.edges[k], model.edges[k + 1]

        def log_likelihood(theta):
            return stats.truncnorm.logpdf(xk, (lo - theta[0]) / theta[1], (hi - theta[0]) / theta[1],
                                          loc=theta[0], scale=theta[1]).sum()
        theta = np.array([model.means[k], model.stds[k]])
        steps = 1e-3 * model.stds[k] * np.eye(2)
        hessian = np.empty((2, 2))
        for i in range(2):
            for j in range(2):
                hessian[i, j] = (log_likelihood(theta + steps[i] + steps[j])
                                 - log_likelihood(theta + steps[i] - steps[j])
                                 - log_likelihood(theta - steps[i] + steps[j])
                                 + log_likelihood(theta - steps[i] - steps[j])) / (4e-6 * model.stds[k] ** 2)
        errors = np.sqrt(np.diag(np.linalg.inv(-hessian)))
        mean_errors.append(errors[0])
        std_errors.append(errors[1])
    weight_errors = np.sqrt(model.weights * (1 - model.weights) / x.size)
    return weight_errors, np.array(mean_errors), np.array(std_errors)


def assert_recovered(model, truth, x):
    """Every fitted parameter within 5 standard errors of the generating one."""
    weight_errors, mean_errors, std_errors = standard_errors(x, model)
    assert np.all(np.abs(model.weights - truth[1]) < 5 * weight_errors), (model, weight_errors)
    assert np.all(np.abs(model.means - truth[2]) < 5 * mean_errors), (model, mean_errors)
    assert np.all(np.abs(model.stds - truth[3]) < 5 * std_errors), (model, std_errors)


# ------------------------------------------------------------------------------------------------
# The EM fit
# ------------------------------------------------------------------------------------------------

def test_fit_recovers_the_leaky_relu_model():
    """Truth: the generating model (leaky ReLU of a known normal, drawn with numpy), within 5
    asymptotic standard errors (from scipy's likelihood); the fitted log-likelihood is not below the true model's
    (computed with scipy.stats.truncnorm); breakpoints='auto' finds K = 2 split at 0."""
    x = leaky_relu_samples(200_000, seed=1)
    truth = leaky_relu_truth()
    fitted = PiecewiseGaussian.fit(x, [0.0])
    assert fitted.fit_info.converged
    assert_recovered(fitted, truth, x)
    assert fitted.fit_info.log_likelihood >= scipy_log_likelihood(x, truth)
    assert fitted.fit_info.log_likelihood == pytest.approx(scipy_log_likelihood(x, parameters(fitted)),
                                                           rel=1e-11)
    chosen = PiecewiseGaussian.fit(x)
    assert chosen.breakpoints.tolist() == [0.0]
    np.testing.assert_allclose(chosen.stds, fitted.stds, rtol=1e-6)


def test_fit_recovers_the_weight_like_model():
    """Truth: the generating three-piece model (drawn with scipy.stats.truncnorm), within 5
    asymptotic standard errors; the fitted
    log-likelihood is not below the true model's; 'auto' finds three pieces with breakpoints
    at the candidate quantiles nearest -1 and 1 (the 15% and 85% quantiles)."""
    x = piecewise_samples(WEIGHT_TRUTH, 200_000, seed=2)
    fitted = PiecewiseGaussian.fit(x, [-1.0, 1.0])
    assert fitted.fit_info.converged
    assert_recovered(fitted, WEIGHT_TRUTH, x)
    assert fitted.fit_info.log_likelihood >= scipy_log_likelihood(x, WEIGHT_TRUTH)
    chosen = PiecewiseGaussian.fit(x)
    assert chosen.n_pieces == 3
    np.testing.assert_allclose(chosen.breakpoints, [-1.0, 1.0], atol=0.03)
    rows = chosen.fit_info.selection
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    for n_pieces, _, log_likelihood, bic in rows:
        assert bic == pytest.approx(-2 * log_likelihood + (4 * n_pieces - 2) * math.log(x.size))
    assert chosen.fit_info.bic == min(row[3] for row in rows)


def _direct_piece_maximum(xk, lo, hi):
    """(mu, sigma, log-likelihood) maximising sum log truncnorm.pdf(xk) over (mu, log sigma) by
    scipy.optimize (Nelder-Mead, then BFGS to polish), starting from the sample moments."""
    def negative(theta):
        sigma = math.exp(theta[1])
        return -stats.truncnorm.logpdf(xk, (lo - theta[0]) / sigma, (hi - theta[0]) / sigma,
                                       loc=theta[0], scale=sigma).sum()
    start = [xk.mean(), math.log(xk.std())]
    result = optimize.minimize(negative, start, method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    result = optimize.minimize(negative, result.x, method="BFGS", options={"gtol": 1e-9})
    return result.x[0], math.exp(result.x[1]), -result.fun


@pytest.mark.parametrize("accelerate", [True, False])
def test_em_agrees_with_direct_maximisation_of_the_likelihood(accelerate):
    """Truth: scipy.optimize on the exact truncated-normal log-likelihood of each piece (scipy's
    truncnorm.logpdf), which shares no code with the EM. Plain and accelerated EM both agree."""
    x = piecewise_samples(WEIGHT_TRUTH, 4000, seed=3)
    fitted = PiecewiseGaussian.fit(x, [-1.0, 1.0], accelerate=accelerate, tol=1e-12, max_iter=200_000)
    edges = [-np.inf, -1.0, 1.0, np.inf]
    piece = fitted.piece_of(x)
    total = 0.0
    for k in range(3):
        mu, sigma, log_likelihood = _direct_piece_maximum(x[piece == k], edges[k], edges[k + 1])
        assert fitted.means[k] == pytest.approx(mu, abs=1e-5 * sigma)
        assert fitted.stds[k] == pytest.approx(sigma, rel=1e-5)
        total += log_likelihood + np.sum(piece == k) * math.log(np.mean(piece == k))
    assert fitted.fit_info.log_likelihood == pytest.approx(total, rel=1e-10)
    assert fitted.fit_info.log_likelihood >= total - 1e-7


def _bounded_direct_maximum(xk, hi, sigma_max):
    """scipy's L-BFGS-B on the exact truncated-normal log-likelihood of samples on (-inf, hi),
    over (mu, sigma) with sigma <= sigma_max: ``(mu, sigma, log L)``."""
    def negative(theta):
        return -stats.truncnorm.logpdf(xk, -np.inf, (hi - theta[0]) / theta[1], loc=theta[0],
                                       scale=theta[1]).sum()
    best = None
    for start in ([xk.mean(), xk.std()], [hi + 5.0 * sigma_max, 0.9 * sigma_max]):
        result = optimize.minimize(negative, start, method="L-BFGS-B",
                                   bounds=[(None, None), (1e-3 * xk.std(), sigma_max)],
                                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000})
        if best is None or result.fun < best.fun:
            best = result
    return best.x[0], best.x[1], -best.fun


def _tail_samples(scales, seed):
    """A left tail of exponentials of the given scales (equal shares) below 0, beside N(1, 0.5^2)."""
    rng = np.random.default_rng(seed)
    tail = np.concatenate([-rng.exponential(scale, 3000) for scale in scales])
    return np.concatenate([tail, rng.normal(1.0, 0.5, 7000)])


def test_a_flat_ridge_is_finished_at_the_maximum():
    """An exponential tail (coefficient of variation ~1, where a truncated Gaussian's maximum
    likelihood sits far out on a flat ridge and EM crawls): the fit reaches the maximum that
    scipy's bounded L-BFGS-B finds on scipy's truncnorm likelihood; EM alone stops short."""
    x = _tail_samples([0.15], seed=1)
    fitted = PiecewiseGaussian.fit(x, [0.0])
    tail = x[x < 0.0]
    _, _, log_likelihood = _bounded_direct_maximum(tail, 0.0, 10.0 * x.std())
    assert fitted.fit_info.converged and fitted.fit_info.bounded == ()

    def log_likelihood_at(mu, sigma):
        return stats.truncnorm.logpdf(tail, -np.inf, -mu / sigma, loc=mu, scale=sigma).sum()
    own = log_likelihood_at(fitted.means[0], fitted.stds[0])
    assert own >= log_likelihood - 1e-9  # scipy's search does not beat it ...
    for factor in (0.9, 1.1):  # ... and scipy's profile over mu is lower at a std 10% off
        sigma = factor * fitted.stds[0]
        profile = optimize.minimize_scalar(lambda m: -log_likelihood_at(m, sigma),
                                           bracket=(fitted.means[0] * factor ** 2, fitted.means[0]))
        assert -profile.fun < own - 1e-5
    assert fitted.stds[0] < 10.0 * x.std() * 0.5  # an inner maximum, not the bound
    with pytest.warns(ConvergenceWarning):
        em_only = PiecewiseGaussian.fit(x, [0.0], profile=False, max_iter=2000)
    assert em_only.log_likelihood(x) < fitted.log_likelihood(x) - 0.1


def test_a_tail_heavier_than_exponential_is_fitted_on_the_bound():
    """Two exponential scales (coefficient of variation > 1): the truncated-Gaussian likelihood
    rises without end as sigma grows (its supremum is an exponential). The fit stops on the
    bound sigma = 10 std(x), at the mean scipy's bounded maximisation finds there."""
    x = _tail_samples([0.05, 0.5], seed=2)
    fitted = PiecewiseGaussian.fit(x, [0.0])
    sigma_max = 10.0 * x.std()
    assert fitted.fit_info.bounded == (0,) and fitted.fit_info.converged
    assert fitted.stds[0] == pytest.approx(sigma_max, rel=1e-12)
    tail = x[x < 0.0]
    _, sigma, _ = _bounded_direct_maximum(tail, 0.0, sigma_max)
    assert sigma == pytest.approx(sigma_max, rel=1e-6)  # scipy's maximum is on the bound too
    on_bound = optimize.minimize_scalar(  # and there, scipy's 1-D maximum over mu
        lambda m: -stats.truncnorm.logpdf(tail, -np.inf, -m / sigma_max, loc=m, scale=sigma_max).sum(),
        bracket=(0.9 * fitted.means[0], fitted.means[0]), tol=1e-12)
    assert fitted.means[0] == pytest.approx(on_bound.x, rel=1e-7)


def _histogram_of(x, inner_edges):
    """Counts of x in [-inf, e_1), [e_1, e_2), ..., [e_last, inf) (numpy's searchsorted)."""
    counts = np.bincount(np.searchsorted(inner_edges, x, side="right"), minlength=inner_edges.size + 1)
    return counts, np.concatenate([[-np.inf], inner_edges, [np.inf]])


def test_histogram_fit_agrees_with_direct_maximisation_of_the_binned_likelihood():
    """Truth: scipy.optimize on sum_j c_j log(P(bin j)/Z_k) written with scipy.stats.norm.cdf
    (independent of the EM and of its within-bin E-step)."""
    x = leaky_relu_samples(20_000, seed=4)
    inner = np.concatenate([np.linspace(-0.4, 0.0, 9)[:-1], np.linspace(0.0, 3.0, 13)])
    counts, edges = _histogram_of(x, inner)
    fitted = PiecewiseGaussian.fit_histogram(counts, edges, [0.0], tol=1e-12)
    assert fitted.fit_info.source == "histogram" and fitted.fit_info.n_samples == 20_000
    piece_edges = [-np.inf, 0.0, np.inf]
    piece_of_bin = np.searchsorted([0.0], edges[:-1], side="right")
    total = 0.0
    for k in range(2):
        lo, hi, c = edges[:-1][piece_of_bin == k], edges[1:][piece_of_bin == k], counts[piece_of_bin == k]

        def negative(theta):
            mu, sigma = theta[0], math.exp(theta[1])
            z = stats.norm.cdf(piece_edges[k + 1], mu, sigma) - stats.norm.cdf(piece_edges[k], mu, sigma)
            p = stats.norm.cdf(hi, mu, sigma) - stats.norm.cdf(lo, mu, sigma)
            return -np.sum(c * np.log(p / z))
        start = [fitted.means[k] * 1.1 + 0.01, math.log(fitted.stds[k] * 0.9)]
        result = optimize.minimize(negative, start, method="Nelder-Mead",
                                   options={"xatol": 1e-11, "fatol": 1e-12, "maxiter": 20000})
        assert fitted.means[k] == pytest.approx(result.x[0], abs=1e-5 * fitted.stds[k])
        assert fitted.stds[k] == pytest.approx(math.exp(result.x[1]), rel=1e-5)
        total += -result.fun + c.sum() * math.log(c.sum() / counts.sum())
    assert fitted.fit_info.log_likelihood == pytest.approx(total, rel=1e-9)


def test_histogram_of_fine_bins_approaches_the_sample_fit():
    """Truth: the sample fit (checked above against scipy.optimize); binned maximum likelihood
    converges to it as the bins shrink (here 1/500 of the spread), and the binned log-likelihood
    (from the cdf) of the sample fit falls just short of the histogram fit's. Tail pieces' means are loosely
    determined (mu and sigma trade off along a ridge of the likelihood), hence 0.5% of sigma."""
    x = piecewise_samples(WEIGHT_TRUTH, 100_000, seed=5)
    from_samples = PiecewiseGaussian.fit(x, [-1.0, 1.0])
    inner = np.linspace(-8.0, 8.0, 4001)
    counts, edges = _histogram_of(x, inner)
    from_histogram = PiecewiseGaussian.fit_histogram(counts, edges, [-1.0, 1.0])
    np.testing.assert_allclose(from_histogram.weights, from_samples.weights, rtol=1e-12)
    np.testing.assert_allclose(from_histogram.stds, from_samples.stds, rtol=1e-3)
    np.testing.assert_allclose(from_histogram.means, from_samples.means, atol=0.01)
    # The binned likelihood, written with the (quad-checked) cdf: the histogram fit maximises it.
    def binned_log_likelihood(model):
        mass = model.cdf(edges[1:]) - model.cdf(edges[:-1])
        return np.sum(counts[counts > 0] * np.log(mass[counts > 0]))
    assert from_histogram.fit_info.log_likelihood == pytest.approx(binned_log_likelihood(from_histogram),
                                                                   rel=1e-12)
    assert 0.0 <= binned_log_likelihood(from_histogram) - binned_log_likelihood(from_samples) < 0.01
    chosen = PiecewiseGaussian.fit_histogram(counts, edges)
    assert chosen.n_pieces == 3
    np.testing.assert_allclose(chosen.breakpoints, [-1.0, 1.0], atol=0.03)


def test_a_histogram_candidate_equally_near_two_edges_is_the_lower():
    """A constructed tie: every candidate level but 0.5 is some edge's cumulative fraction exactly,
    and two edges sit at fractions 0.5 -+ 1/32 (exact in binary). The rule (specification, 3.6):
    the lower edge."""
    from refquant.density.breakpoints import CANDIDATE_LEVELS, _candidate_breakpoints
    fractions = np.array(sorted([level for level in CANDIDATE_LEVELS if level != 0.5] + [0.46875, 0.53125]))
    assert 0.5 - 0.46875 == 0.53125 - 0.5  # the tie is exact
    edges = np.arange(1.0, fractions.size + 1.0)
    candidates = _candidate_breakpoints(edges, fractions)
    lower, upper = edges[fractions == 0.46875][0], edges[fractions == 0.53125][0]
    assert lower in candidates and upper not in candidates


def test_equal_segmentation_scores_go_to_the_earliest_last_piece(monkeypatch):
    """A constructed tie: every candidate piece scored 0 (its log-likelihood replaced by minus its
    mass term), so every segmentation with K pieces ties. The rule (specification, 3.6): at every
    stage the last piece that starts earliest, so K pieces cut at the K-1 smallest candidates."""
    from refquant.density import breakpoints as search

    def flat_scores(piece_lo, piece_hi, starts, stops, cell_lo, cell_hi, cell_count, *rest):
        total = float(np.sum(count))
        log_likelihood = -cell_count * np.log(cell_count / total)
        zeros = np.zeros(piece_lo.size)
        return zeros, zeros + 1.0, log_likelihood, zeros, zeros.astype(bool), zeros, zeros.astype(bool)
    monkeypatch.setattr(search, "_em_fit_pieces", flat_scores)
    edges = np.array([-np.inf, -2.0, -1.0, 0.0, 1.0, 2.0, np.inf])
    count = np.full(6, 10.0)
    mean = np.array([-3.0, -1.5, -0.5, 0.5, 1.5, 3.0])
    var = np.full(6, 0.1)
    options = search._search_options(_Options(max_iter=1000, tol=1e-9, accelerate=True, min_piece_samples=5))
    rows = search._best_segmentations(edges, count, mean, var, count.sum(), 4, options)
    assert [(k, list(b)) for k, b, _ in rows] == [(1, []), (2, [-2.0]), (3, [-2.0, -1.0]), (4, [-2.0, -1.0, 0.0])]
    assert all(score == 0.0 for _, _, score in rows)


def test_one_gaussian_is_chosen_for_gaussian_data():
    """Truth: the data are one normal (numpy); BIC must not buy extra pieces."""
    x = np.random.default_rng(6).normal(3.0, 2.0, 20_000)
    chosen = PiecewiseGaussian.fit(x)
    assert chosen.n_pieces == 1
    assert chosen.means[0] == pytest.approx(x.mean(), rel=1e-12)
    assert chosen.stds[0] == pytest.approx(x.std(), rel=1e-12)  # the untruncated MLE, in closed form


# ------------------------------------------------------------------------------------------------
# Degenerate input
# ------------------------------------------------------------------------------------------------

def test_degenerate_input_gives_clear_outcomes():
    """Truth: the documented outcomes (module docstring of refquant.pgm)."""
    with pytest.raises(DegenerateDataError, match="empty"):
        PiecewiseGaussian.fit(np.array([]))
    with pytest.raises(DegenerateDataError, match=r"constant \(all 100 values equal 0.25\)"):
        PiecewiseGaussian.fit(np.full(100, 0.25), [0.0])
    with pytest.raises(DegenerateDataError, match="only 3 values"):
        PiecewiseGaussian.fit([1.0, 2.0, 3.0])
    x = np.arange(20.0)
    x[[3, 7]] = np.nan
    x[11] = -np.inf
    with pytest.raises(ValueError, match="2 NaN and 1 infinite values among 20 .first at flat index 3"):
        PiecewiseGaussian.fit(x)
    with pytest.raises(TypeError, match="real numbers"):
        PiecewiseGaussian.fit(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="'auto' or a sequence"):
        PiecewiseGaussian.fit(np.arange(10.0), "automatic")


def test_piece_with_a_handful_of_samples_is_merged_with_a_warning():
    """Truth: the documented rule, a piece with 1..4 samples is merged into its larger neighbour."""
    x = np.concatenate([np.random.default_rng(7).normal(1.0, 1.0, 1000) % 10 + 0.5, [-0.3, -0.2, -0.1]])
    with pytest.warns(UserWarning, match=r"piece 0 \[-inf, 0\) holds 3 samples .* breakpoint 0 dropped"):
        fitted = PiecewiseGaussian.fit(x, [0.0, 5.0])
    assert fitted.breakpoints.tolist() == [5.0]
    assert fitted.fit_info.merged_breakpoints == (0.0,)
    assert fitted.weights.sum() == pytest.approx(1.0)


def test_piece_without_samples_keeps_mass_zero():
    """Truth: maximum likelihood gives an empty piece mass 0 (ReLU outputs have no negatives)."""
    x = np.abs(np.random.default_rng(8).normal(0.0, 1.0, 5000))
    fitted = PiecewiseGaussian.fit(x, [0.0])
    assert fitted.weights.tolist() == [0.0, 1.0]
    assert fitted.pdf(-0.5) == 0.0
    assert fitted.stds[1] == pytest.approx(1.0, rel=0.05)
    assert fitted.means[1] == pytest.approx(0.0, abs=0.1)


def test_histogram_degenerate_input():
    """Truth: the documented outcomes for histograms."""
    edges = np.array([-np.inf, -1.0, 0.0, 1.0, np.inf])
    with pytest.raises(DegenerateDataError, match="one bin"):
        PiecewiseGaussian.fit_histogram([0, 50, 0, 0], edges)
    with pytest.raises(DegenerateDataError, match="empty"):
        PiecewiseGaussian.fit_histogram([0, 0, 0, 0], edges)
    with pytest.raises(ValueError, match=r"breakpoints \[0.5\] are not inner bin edges"):
        PiecewiseGaussian.fit_histogram([5, 50, 40, 5], edges, [0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        PiecewiseGaussian.fit_histogram([5, 50, 40, 5], edges[::-1])
    with pytest.raises(ValueError, match="finite and >= 0"):
        PiecewiseGaussian.fit_histogram([5, -1, 40, 5], edges)


def test_non_convergence_is_a_warning_with_the_numbers():
    """Truth: EM cannot converge in 2 steps from the sample moments of a truncated piece."""
    x = piecewise_samples(WEIGHT_TRUTH, 5000, seed=9)
    with pytest.warns(ConvergenceWarning, match=r"did not converge for pieces \[0, 1, 2\] within "
                                                r"max_iter=2 steps \(tol=1e-09\): piece 0: mean .*, std "
                                                r".* \(samples' std .*\), moment residual"):
        fitted = PiecewiseGaussian.fit(x, [-1.0, 1.0], max_iter=2, profile=False)
    assert not fitted.fit_info.converged and fitted.fit_info.iterations == 2


# ------------------------------------------------------------------------------------------------
# The Gaussian mixture
# ------------------------------------------------------------------------------------------------

MIXTURE_START = ([0.3, 0.4, 0.3], [-2.0, 0.1, 1.5], [0.8, 0.5, 1.2])


def mixture_samples(n, seed):
    """Draws from 0.2 N(-3, 0.5^2) + 0.5 N(0, 0.7^2) + 0.3 N(3, 0.6^2) with numpy."""
    rng = np.random.default_rng(seed)
    component = rng.choice(3, size=n, p=[0.2, 0.5, 0.3])
    return np.array([-3.0, 0.0, 3.0])[component] + np.array([0.5, 0.7, 0.6])[component] * rng.standard_normal(n)


def _sklearn_mixture(**options):
    from sklearn.mixture import GaussianMixture as SklearnMixture
    return SklearnMixture(3, reg_covar=0.0, **options)


@pytest.mark.slow
def test_mixture_em_iterates_equal_scikit_learn():
    """Truth: scikit-learn's GaussianMixture from the same start (weights_init, means_init,
    precisions_init), without regularisation (reg_covar=0): EM is deterministic, so after the same
    60 steps both hold the same parameters and the same log-likelihood (sklearn's score * n)."""
    x = mixture_samples(20_000, seed=10)
    with pytest.warns(ConvergenceWarning, match="max_iter=60"):
        ours = GaussianMixture.fit(x, 3, init=MIXTURE_START, tol=-np.inf, max_iter=60)
    theirs = _sklearn_mixture(tol=0.0, max_iter=60, weights_init=MIXTURE_START[0],
                              means_init=np.array(MIXTURE_START[1])[:, None],
                              precisions_init=(1.0 / np.array(MIXTURE_START[2]) ** 2)[:, None, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own "did not converge": we asked for 60 steps
        theirs.fit(x[:, None])
    assert theirs.n_iter_ == 60
    np.testing.assert_allclose(ours.weights, theirs.weights_, rtol=1e-10)
    np.testing.assert_allclose(ours.means, theirs.means_[:, 0], rtol=1e-10)
    np.testing.assert_allclose(ours.stds, np.sqrt(theirs.covariances_[:, 0, 0]), rtol=1e-10)
    assert ours.fit_info.log_likelihood == pytest.approx(theirs.score(x[:, None]) * x.size, rel=1e-12)
    assert ours.log_likelihood(x) == pytest.approx(theirs.score(x[:, None]) * x.size, rel=1e-12)


@pytest.mark.slow
def test_mixture_converged_fit_reaches_scikit_learn_optimum():
    """Truth: scikit-learn's GaussianMixture (its k-means start, 3 restarts) run to convergence:
    on well-separated components both reach the global maximum, where the log-likelihoods agree
    to the stopping tolerance and the parameters to its square root."""
    x = mixture_samples(20_000, seed=11)
    ours = GaussianMixture.fit(x, 3, tol=1e-10)
    assert ours.fit_info.converged
    theirs = _sklearn_mixture(tol=1e-10, max_iter=10_000, n_init=3, random_state=0).fit(x[:, None])
    assert theirs.converged_
    assert ours.fit_info.log_likelihood == pytest.approx(theirs.score(x[:, None]) * x.size, rel=1e-9)
    order = np.argsort(theirs.means_[:, 0])
    np.testing.assert_allclose(ours.weights, theirs.weights_[order], rtol=1e-4)
    np.testing.assert_allclose(ours.means, theirs.means_[order, 0], rtol=1e-4, atol=1e-4)


def test_mixture_distribution_functions():
    """Truth: scipy.stats.norm per component (pdf, cdf), quad for partial moments, cdf(ppf(q)) = q."""
    mixture = GaussianMixture(*MIXTURE_START)
    x = np.linspace(-6, 6, 97)
    expected_pdf = sum(w * stats.norm.pdf(x, m, s) for w, m, s in zip(*MIXTURE_START))
    expected_cdf = sum(w * stats.norm.cdf(x, m, s) for w, m, s in zip(*MIXTURE_START))
    np.testing.assert_allclose(mixture.pdf(x), expected_pdf, rtol=1e-13)
    np.testing.assert_allclose(mixture.cdf(x), expected_cdf, rtol=1e-13)
    np.testing.assert_allclose(mixture.sf(x), 1 - expected_cdf, rtol=1e-12, atol=1e-16)
    q = np.linspace(0.0, 1.0, 201)
    np.testing.assert_allclose(mixture.cdf(mixture.ppf(q[1:-1])), q[1:-1], rtol=1e-13, atol=1e-16)
    assert mixture.ppf(0.0) == -np.inf and mixture.ppf(1.0) == np.inf
    for lo, hi in [(-np.inf, np.inf), (-1.0, 0.5), (3.0, np.inf), (-np.inf, -9.0)]:
        got = mixture.partial_moments(lo, hi)
        for j in range(3):
            expected = integrate.quad(lambda v: v ** j * mixture.pdf(v), lo, hi, epsabs=1e-14, epsrel=1e-12)[0]
            assert float(got[j]) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    mean = integrate.quad(lambda v: v * mixture.pdf(v), -np.inf, np.inf)[0]
    assert mixture.mean() == pytest.approx(mean, rel=1e-12)
    assert mixture.var() == pytest.approx(integrate.quad(lambda v: (v - mean) ** 2 * mixture.pdf(v),
                                                         -np.inf, np.inf)[0], rel=1e-10)
    draws = mixture.sample(20_000, rng=0)
    assert stats.kstest(draws, mixture.cdf).pvalue > 1e-3


def test_mixture_histogram_fit_maximises_the_binned_likelihood():
    """Truth: scipy.optimize (BFGS) on the binned mixture log-likelihood written with
    scipy.stats.norm.cdf, and the sample fit as the bins shrink."""
    x = mixture_samples(20_000, seed=12)
    inner = np.linspace(-4.0, 5.0, 31)
    counts, edges = _histogram_of(x, inner)
    fitted = GaussianMixture.fit_histogram(counts, edges, 3, tol=1e-13, max_iter=20_000)

    def binned_log_likelihood(theta):
        weights = np.exp(np.append(theta[:2], 0.0))
        weights /= weights.sum()
        means, stds = theta[2:5], np.exp(theta[5:8])
        mass = sum(w * (stats.norm.cdf(edges[1:], m, s) - stats.norm.cdf(edges[:-1], m, s))
                   for w, m, s in zip(weights, means, stds))
        return np.sum(counts * np.log(mass))
    start = np.concatenate([np.log(fitted.weights[:2] / fitted.weights[2]) + 0.05, fitted.means + 0.05,
                            np.log(fitted.stds) - 0.05])
    result = optimize.minimize(lambda t: -binned_log_likelihood(t), start, method="BFGS",
                               options={"gtol": 1e-8})
    assert fitted.fit_info.log_likelihood >= -result.fun - 1e-6
    assert fitted.fit_info.log_likelihood == pytest.approx(-result.fun, rel=1e-9)
    assert fitted.fit_info.log_likelihood == pytest.approx(binned_log_likelihood(
        np.concatenate([np.log(fitted.weights[:2] / fitted.weights[2]), fitted.means, np.log(fitted.stds)])),
        rel=1e-12)
    fine_counts, fine_edges = _histogram_of(x, np.linspace(-6.0, 7.0, 6501))
    fine = GaussianMixture.fit_histogram(fine_counts, fine_edges, 3, tol=1e-12, max_iter=20_000)
    raw = GaussianMixture.fit(x, 3, tol=1e-12, max_iter=20_000)
    np.testing.assert_allclose(fine.means, raw.means, atol=2e-3)
    np.testing.assert_allclose(fine.stds, raw.stds, rtol=2e-3)


def test_mixture_degenerate_input():
    """Truth: the documented outcomes."""
    with pytest.raises(DegenerateDataError, match="constant"):
        GaussianMixture.fit(np.ones(50))
    with pytest.raises(DegenerateDataError, match="empty"):
        GaussianMixture.fit([])
    with pytest.raises(ValueError, match="1 NaN"):
        GaussianMixture.fit([1.0, np.nan, 2.0, 3.0])
