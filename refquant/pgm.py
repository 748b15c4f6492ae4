"""Piecewise Gaussian models (PGM) of a layer's weights or activations, fitted by EM (METHOD.md, section 1).

The model. Breakpoints ``b_1 < ... < b_(K-1)`` split the real line into K pieces
``[b_(k-1), b_k)`` with ``b_0 = -inf`` and ``b_K = +inf`` (a value equal to a breakpoint
belongs to the piece on its right). On piece k the density is the Gaussian
``N(mu_k, sigma_k^2)`` truncated to the piece and scaled to carry the mass ``pi_k``::

    p(x) = pi_k * phi((x - mu_k) / sigma_k) / (sigma_k * Z_k),     x in piece k
    Z_k  = Phi((b_k - mu_k) / sigma_k) - Phi((b_(k-1) - mu_k) / sigma_k),   sum_k pi_k = 1

:class:`PiecewiseGaussian` behaves like a frozen ``scipy.stats`` distribution (``pdf``,
``logpdf``, ``cdf``, ``sf``, ``ppf``, ``mean``, ``var``, ``sample``) and adds
``partial_moments(lo, hi)``, the integrals of ``x**j p(x)`` over any interval: all that
``refquant.intervals`` needs for the expected quantization error in closed form.
:class:`GaussianMixture` is the comparison model with the same interface.

The fit (:meth:`PiecewiseGaussian.fit`, :meth:`PiecewiseGaussian.fit_histogram`).
``pi_k = n_k / n``, the fraction of samples in piece k (its maximum-likelihood value). Each
piece's ``(mu_k, sigma_k)`` is the maximum-likelihood truncated Gaussian, found by EM with the
draws that fell outside the piece as missing data (Dempster, Laird & Rubin 1977, section 4.6):
if ``N(mu, sigma^2)`` had produced the piece's ``n`` samples, it also produced about
``n (1 - Z) / Z`` draws outside, whose expected sums complete the normal's sufficient
statistics. Writing ``xbar``, ``v`` for the sample mean and variance of the piece and
``E``, ``V`` for the mean and variance of the current truncated Gaussian, one EM step is::

    mu'      = mu + Z (xbar - E)
    sigma'^2 = sigma^2 + Z (v - V) + Z (xbar - E) ((xbar - mu) + (E - mu) - Z (xbar - E))

(the complete-data mean and variance, rearranged so that nothing cancels). Only
``(n, xbar, v)`` enter: a step costs the same for 100 samples or 10^9. EM converges slowly when
most of the Gaussian lies outside the piece (a tail piece: the missing fraction ``1 - Z`` is
close to 1), so by default the EM steps are accelerated by SQUAREM (Varadhan & Roland 2008,
scheme S3), which extrapolates along two successive EM steps and falls back to the plain EM
steps whenever the extrapolated point does not raise the likelihood; ``accelerate=False`` runs
plain EM. Both converge to the same maximum (the truncated-normal log-likelihood is concave in
the natural parameters ``(mu / sigma^2, -1 / (2 sigma^2))``, so a maximum is unique). EM stops
when the fitted piece's mean and variance match the samples' to ``tol`` (these are the
likelihood equations). A piece whose samples have a tail heavier than a Gaussian's (CV of the
distances to its finite edge >= 1 for a tail piece) has no maximum: the likelihood rises
towards the limit ``mu -> -+inf``, ``sigma -> inf`` (an exponential tail); EM then stops at
``max_iter`` with a :class:`ConvergenceWarning`, holding a valid model close to that limit.

Histograms. ``fit_histogram(counts, bin_edges)`` fits the same model to binned data, so that the
activations of a whole calibration set can be accumulated into one histogram in bounded memory.
Positions inside a bin are treated as missing data too: the E-step replaces each bin's samples
by the current model's conditional mean and variance inside the bin. This maximises the exact
binned likelihood ``sum_j c_j log P(bin j)`` (no midpoint or Sheppard approximation); the outer
bin edges may be infinite, to hold the overflow. Breakpoints must be bin edges.

Choosing the breakpoints (``breakpoints="auto"``). Candidate breakpoints are the data's
quantiles at :data:`CANDIDATE_LEVELS` (from a fixed 65536-value subsample when there are more
samples; bin edges nearest those quantiles for a histogram) plus 0 when the data straddle it
(the kink of a leaky ReLU). Every run of consecutive candidate cells is fitted as a piece (at
most 150 EM steps each: a piece that needs more fits its samples badly); dynamic programming
then finds, for each K = 1..``max_pieces``, the breakpoints of maximum likelihood, and K is
chosen by the Bayesian information criterion ``BIC = -2 log L + p log n`` with ``p = 4K - 2``
free parameters (K - 1 masses, K means, K stds, K - 1 breakpoints), each K's log-likelihood
coming from a refit of its breakpoints on the exact likelihood. The chosen breakpoints are
finally fitted with the caller's ``max_iter`` and ``tol``; ``fit_info.selection`` keeps the table.
A histogram's search scores pieces with each bin's samples at its centre (the refits and the
final fit use the exact binned likelihood).

Degenerate input (each a documented outcome, never a silent one):

- empty input, or fewer than ``min_piece_samples`` values: :class:`DegenerateDataError`;
- NaN or infinite values: ``ValueError`` naming how many of each, and where the first is;
- all values equal (a histogram with a single non-empty bin): :class:`DegenerateDataError`,
  since no density with a spread fits a point mass;
- a piece (with given breakpoints) holding no sample: kept, with mass 0 (the maximum-likelihood
  mass; the density is 0 there and its mean/std are placeholders);
- a piece holding 1 to ``min_piece_samples - 1`` samples, or samples that are all equal: it is
  merged into its neighbour with more samples (the breakpoint between them is dropped), with a
  warning; ``fit_info.merged_breakpoints`` lists what was dropped.

Numerics. Every Gaussian integral over an interval goes through
:func:`truncated_standard_normal`, which works in log space for the mass, uses the scaled
complementary error function ``erfcx(t) = exp(t^2) erfc(t)`` in the tails and a Gauss-Legendre
rule on narrow intervals, so that masses and means keep full precision 40 or 3000 standard
deviations out (where ``Phi(b) - Phi(a)`` is ``0 - 0``) and on intervals 1e-8 wide.
"""
import dataclasses
import math
import warnings

import numba
import numpy as np
from scipy import special

_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: Quantile levels of the candidate breakpoints for ``breakpoints="auto"``: denser in the tails,
#: where the pieces of a weight distribution end.
CANDIDATE_LEVELS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                    0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.965, 0.98, 0.99, 0.995)
_QUANTILE_SUBSAMPLE = 65536
_SEARCH_MAX_ITER = 150
_SEARCH_TOL = 1e-6


class DegenerateDataError(ValueError):
    """The data cannot carry a density with a spread: empty, too few values, or all equal."""


class ConvergenceWarning(RuntimeWarning):
    """EM stopped at ``max_iter`` before reaching ``tol``; the numbers are in the message."""


@dataclasses.dataclass(frozen=True)
class FitInfo:
    """How a fit went.

    - ``source``: ``"samples"`` or ``"histogram"``; ``n_samples``: the number of values (sum of
      counts for a histogram).
    - ``log_likelihood``: of the data under the fitted model: ``sum_i log p(x_i)`` for samples,
      ``sum_j c_j log P(bin j)`` for a histogram.
    - ``iterations``: EM steps evaluated (the largest number over pieces; for the mixture, its
      E-steps), at most ``max_iter``.
    - ``converged``: every EM run stopped because it reached ``tol`` (not ``max_iter``).
    - ``n_parameters``, ``bic``: ``-2 log_likelihood + n_parameters * log(n_samples)``.
    - ``selection``: for ``breakpoints="auto"``, one row per K tried:
      ``(K, breakpoints, log_likelihood, bic)``; empty otherwise.
    - ``merged_breakpoints``: breakpoints dropped because a piece was degenerate.
    """
    source: str
    n_samples: float
    log_likelihood: float
    iterations: int
    converged: bool
    n_parameters: int
    bic: float
    selection: tuple = ()
    merged_breakpoints: tuple = ()


# ----------------------------------------------------------------------------------------------
# The truncated-normal integrals everything else is built from (scalar Numba kernels)
# ----------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _erfcx(x):
    """``exp(x^2) erfc(x)`` for ``x >= 0``, to a few ulps.

    Below 26, ``erfc`` (C library) has not underflowed; ``x^2`` is split exactly as
    ``square + error`` (Dekker's product) so that ``exp(x^2)`` does not inherit the rounding of
    ``x^2`` (which would cost ``x^2`` ulps). From 26 on, the asymptotic series
    ``erfcx(x) = 1/(x sqrt(pi)) sum_n (-1)^n (2n-1)!! / (2x^2)^n`` (Abramowitz & Stegun 7.1.23)
    has converged to double precision within 11 terms.
    """
    if x < 26.0:
        square = x * x
        split = 134217729.0 * x  # 2**27 + 1
        high = split - (split - x)
        low = x - high
        error = ((high * high - square) + 2.0 * high * low) + low * low
        return math.exp(square) * (1.0 + error) * math.erfc(x)
    inverse = 0.5 / (x * x)
    term = 1.0
    total = 1.0
    for n in range(1, 12):
        term *= -(2 * n - 1) * inverse
        total += term
    return total / (x * _SQRT_PI)


# An interval is "narrow" when the exponent of phi varies by at most about 2 * _NARROW_LIMIT
# over it. There the closed forms lose digits to cancellation (the variance's error grows like
# 1 / width^2), while an 8-point Gauss-Legendre rule on exp(quadratic) with a range < 0.5 is
# exact to ~1e-18 (Taylor remainder 0.5**16 / 16!).
_NARROW_LIMIT = 0.25
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(8)


@numba.njit(cache=True)
def _narrow_moments(centre, half_width):
    """``(log mass, mean, variance)`` of N(0,1) on ``[centre - h, centre + h]``, narrow.

    With ``z = centre + y``, ``phi(z) = phi(centre) exp(-centre y - y^2/2)``: the mass is
    ``phi(centre) I0`` and the moments of y are ``I1/I0``, ``I2/I0`` with
    ``Ij = integral_{-h}^{h} y^j exp(-centre y - y^2/2) dy`` by Gauss-Legendre. The variance
    ``I2/I0 - (I1/I0)^2`` keeps its digits: ``(I1/I0)^2 < I2/I0 / 10`` here.
    """
    i0 = 0.0
    i1 = 0.0
    i2 = 0.0
    for node, weight in zip(_LEGENDRE_NODES, _LEGENDRE_WEIGHTS):
        y = half_width * node
        term = weight * math.exp(-centre * y - 0.5 * y * y)
        i0 += term
        i1 += term * y
        i2 += term * y * y
    shift = i1 / i0
    log_mass = -0.5 * centre * centre - _LOG_SQRT_2PI + math.log(half_width * i0)
    return log_mass, centre + shift, i2 / i0 - shift * shift


@numba.njit(cache=True)
def _right_side_moments(alpha, beta):
    """``(log mass, mean, second moment)`` of N(0,1) on ``[alpha, beta]``, ``0 <= alpha < beta <= inf``.

    With ``d = exp(-(beta^2 - alpha^2)/2)`` and the factor ``exp(-alpha^2/2)`` taken out::

        Phi(beta) - Phi(alpha) = exp(-alpha^2/2) (erfcx(alpha/sqrt2) - d erfcx(beta/sqrt2)) / 2
        phi(alpha) - phi(beta) = exp(-alpha^2/2) (1 - d) / sqrt(2 pi)

    so nothing underflows before the ratios are taken.
    """
    half_gap = 0.5 * (beta - alpha) * (beta + alpha)
    d = math.exp(-half_gap)
    one_minus_d = -math.expm1(-half_gap)
    if math.isinf(beta):
        denominator = _erfcx(alpha / _SQRT2)
        beta_d = 0.0
    else:
        denominator = _erfcx(alpha / _SQRT2) - d * _erfcx(beta / _SQRT2)
        beta_d = beta * d
    log_mass = -0.5 * alpha * alpha + math.log(0.5 * denominator)
    mean = _SQRT_2_OVER_PI * one_minus_d / denominator
    second = 1.0 + _SQRT_2_OVER_PI * (alpha - beta_d) / denominator
    return log_mass, mean, second


@numba.njit(cache=True)
def _straddling_moments(alpha, beta):
    """``(log mass, mean, second moment)`` of N(0,1) on ``[alpha, beta]``, ``alpha < 0 < beta``.

    ``erf(beta/sqrt2) - erf(alpha/sqrt2)`` adds two terms of the same sign: no cancellation.
    """
    mass = 0.5 * (math.erf(beta / _SQRT2) - math.erf(alpha / _SQRT2))
    phi_alpha = 0.0 if math.isinf(alpha) else math.exp(-0.5 * alpha * alpha - _LOG_SQRT_2PI)
    phi_beta = 0.0 if math.isinf(beta) else math.exp(-0.5 * beta * beta - _LOG_SQRT_2PI)
    alpha_phi = 0.0 if math.isinf(alpha) else alpha * phi_alpha
    beta_phi = 0.0 if math.isinf(beta) else beta * phi_beta
    return math.log(mass), (phi_alpha - phi_beta) / mass, 1.0 + (alpha_phi - beta_phi) / mass


@numba.njit(cache=True)
def _truncated_moments(alpha, beta, width):
    """Scalar kernel of :func:`truncated_standard_normal`; ``width`` NaN means ``beta - alpha``."""
    if not alpha < beta:
        return -np.inf, 0.0, 0.0
    sign = 1.0
    lo = alpha
    hi = beta
    if beta <= 0.0:  # wholly on the left: mirror onto [-beta, -alpha], the mean changes sign
        sign = -1.0
        lo = -beta
        hi = -alpha
    if math.isfinite(lo) and math.isfinite(hi):
        if math.isnan(width):
            width = hi - lo
        half_width = 0.5 * width
        centre = 0.5 * (lo + hi)
        if half_width * (abs(centre) + half_width) <= _NARROW_LIMIT:
            log_mass, mean, variance = _narrow_moments(centre, half_width)
            return log_mass, sign * mean, variance
    if lo < 0.0:
        log_mass, mean, second = _straddling_moments(lo, hi)
    else:
        log_mass, mean, second = _right_side_moments(lo, hi)
    return log_mass, sign * mean, max(second - mean * mean, 0.0)


@numba.njit(cache=True)
def _truncated_moments_array(alpha, beta, width, log_mass, mean, variance):
    for i in range(alpha.size):
        log_mass[i], mean[i], variance[i] = _truncated_moments(alpha[i], beta[i], width[i])


def truncated_standard_normal(alpha, beta, width=None):
    """Mass, mean and variance of the standard normal restricted to ``[alpha, beta]``.

    ``alpha``, ``beta``: broadcastable float arrays, ``-inf <= alpha``, ``beta <= +inf``.
    Returns ``(log_mass, mean, variance)`` arrays of the broadcast shape::

        log_mass = log(Phi(beta) - Phi(alpha))
        mean     = (phi(alpha) - phi(beta)) / (Phi(beta) - Phi(alpha))
        variance = 1 + (alpha phi(alpha) - beta phi(beta)) / (Phi(beta) - Phi(alpha)) - mean^2

    (the truncated-normal moments; Johnson, Kotz & Balakrishnan, *Continuous Univariate
    Distributions* vol. 1, ch. 13). An empty interval (``alpha >= beta``) gives
    ``log_mass = -inf``, ``mean = variance = 0``. ``width``, if given, is ``beta - alpha``
    computed more accurately by the caller (``(hi - lo) / sigma`` rather than the difference of
    two standardised values, which loses digits on a narrow interval).

    Accuracy: mass and mean to a few ulps everywhere; the variance to ~1e-15 relative except on
    wide intervals deep in a tail, where it degrades like ``eps * alpha^4`` (1e-10 at
    ``alpha = 30``, 1e-6 at 300).
    """
    alpha, beta = np.broadcast_arrays(np.asarray(alpha, dtype=np.float64),
                                      np.asarray(beta, dtype=np.float64))
    if width is None:
        width = np.full(alpha.shape, np.nan)
    width = np.broadcast_to(np.asarray(width, dtype=np.float64), alpha.shape)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (alpha, beta, width)]
    outputs = [np.empty(alpha.size) for _ in range(3)]
    _truncated_moments_array(*flat, *outputs)
    return tuple(out.reshape(alpha.shape) for out in outputs)


def gaussian_interval_moments(mu, sigma, lo, hi):
    """Mass, mean and variance of ``N(mu, sigma^2)`` restricted to ``[lo, hi]`` (broadcasting).

    Returns ``(log_mass, mean, variance)``: ``log_mass = log P(lo <= X <= hi)``; ``mean`` and
    ``variance`` are those of X given ``lo <= X <= hi`` (0 and 0 for an empty interval).
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf for an infinite interval: width unused there
        width = (hi - lo) / sigma
    log_mass, mean_z, var_z = truncated_standard_normal((lo - mu) / sigma, (hi - mu) / sigma, width)
    return log_mass, mu + sigma * mean_z, sigma * sigma * var_z


# ----------------------------------------------------------------------------------------------
# EM for one truncated Gaussian piece (Numba kernels)
# ----------------------------------------------------------------------------------------------
# A piece's data is a run of "cells", each either exact (its count, mean and variance are known:
# raw samples) or censored (only its count and its interval [cell_lo, cell_hi) are known: a
# histogram bin). The E-step fills in a censored cell's mean and variance from the current model.

@numba.njit(cache=True)
def _em_step(piece_lo, piece_hi, mu, var, cell_lo, cell_hi, cell_count, cell_mean, cell_var,
             censored, start, stop):
    """One EM step for one piece. Returns ``(mu', var', log-likelihood, residual)``, the last two
    at ``(mu, var)``.

    E-step inside the piece: pool the cells' counts, means and variances (Chan, Golub & LeVeque's
    pairwise update), filling censored cells from ``N(mu, var)`` restricted to the cell. E-step
    outside: the truncation update of the module docstring. The log-likelihood is the piece's
    ``sum log(phi((x - mu)/sigma) / (sigma Z))`` for exact cells, ``sum c log(P(cell) / Z)`` for
    censored ones (its mass term ``n log pi`` is added by the caller). The residual
    ``|xbar - E| / sigma + |v - V| / sigma^2`` measures how far the truncated Gaussian's mean and
    variance are from the data's: it is 0 exactly at the maximum likelihood (a truncated Gaussian
    is an exponential family, whose likelihood equations match these two moments).
    """
    sigma = math.sqrt(var)
    n = 0.0
    mean = 0.0
    sum_squares = 0.0
    log_likelihood = 0.0
    for c in range(start, stop):
        count = cell_count[c]
        if count == 0.0:
            continue
        if censored[c]:
            log_mass, m, v = _truncated_moments((cell_lo[c] - mu) / sigma, (cell_hi[c] - mu) / sigma,
                                                (cell_hi[c] - cell_lo[c]) / sigma)
            m = mu + sigma * m
            v = var * v
            log_likelihood += count * log_mass
        else:
            m = cell_mean[c]
            v = cell_var[c]
            log_likelihood += count * (-0.5 * math.log(var) - _LOG_SQRT_2PI
                                       - (v + (m - mu) ** 2) / (2.0 * var))
        total = n + count
        delta = m - mean
        mean += delta * count / total
        sum_squares += count * v + delta * delta * n * count / total
        n = total
    variance = sum_squares / n
    log_z, e_in, v_in = _truncated_moments((piece_lo - mu) / sigma, (piece_hi - mu) / sigma,
                                           (piece_hi - piece_lo) / sigma)
    e_in = mu + sigma * e_in
    v_in = var * v_in
    log_likelihood -= n * log_z
    z = math.exp(log_z)
    gap = mean - e_in
    mu_next = mu + z * gap
    var_next = var + z * (variance - v_in) + z * gap * ((mean - mu) + (e_in - mu) - z * gap)
    residual = abs(gap) / sigma + abs(variance - v_in) / var
    return mu_next, var_next, log_likelihood, residual


@numba.njit(cache=True)
def _usable(mu, var):
    return math.isfinite(mu) and math.isfinite(var) and var > 0.0


@numba.njit(cache=True)
def _natural(mu, var):
    """The natural parameters ``(mu / var, -1 / (2 var))`` of ``N(mu, var)``."""
    return mu / var, -0.5 / var


@numba.njit(cache=True)
def _em_fit_piece(piece_lo, piece_hi, mu, var, cell_lo, cell_hi, cell_count, cell_mean, cell_var,
                  censored, start, stop, max_steps, tol, accelerate):
    """EM (SQUAREM-accelerated when ``accelerate``) for one piece from ``(mu, var)``.

    Stops when the moment residual of :func:`_em_step` is at most ``tol`` (converged), or after
    ``max_steps`` EM steps. SQUAREM, scheme S3 (Varadhan & Roland 2008, Scand. J. Statist.
    35:335), applied to the natural parameters ``theta = (mu/var, -1/(2 var))``, in which the
    log-likelihood is concave and a slowly converging EM path is nearly straight: from theta,
    two EM steps give theta1, theta2; with ``r = theta1 - theta``, ``w = theta2 - 2 theta1 + theta``
    and ``a = |r| / |w|``, the point ``theta + 2 a r + a^2 w`` is taken through one more EM step
    and kept only if its likelihood is not below theta1's; otherwise theta2 is kept, so the
    likelihood never decreases. Returns ``(mu, var, log_likelihood, steps, converged, residual)``.
    """
    args = (cell_lo, cell_hi, cell_count, cell_mean, cell_var, censored, start, stop)
    mu1, var1, log_likelihood, residual = _em_step(piece_lo, piece_hi, mu, var, *args)
    steps = 1
    # Every pass evaluates the EM map at least once more (at the new point, to test it), so the
    # extra SQUAREM evaluations are only made while two or more steps remain in the budget.
    while residual > tol and steps < max_steps and _usable(mu1, var1):
        mu_next, var_next = mu1, var1
        if accelerate and steps < max_steps - 1:
            mu2, var2, log_likelihood1, _ = _em_step(piece_lo, piece_hi, mu1, var1, *args)
            steps += 1
            if _usable(mu2, var2):
                mu_next, var_next = mu2, var2
                eta = _natural(mu, var)
                eta1 = _natural(mu1, var1)
                eta2 = _natural(mu2, var2)
                # Scale each coordinate by the current iterate so that |r| / |w| is dimensionless.
                r0, r1 = (eta1[0] - eta[0]) * math.sqrt(var), (eta1[1] - eta[1]) * var
                w0 = (eta2[0] - 2 * eta1[0] + eta[0]) * math.sqrt(var)
                w1 = (eta2[1] - 2 * eta1[1] + eta[1]) * var
                r_norm = r0 * r0 + r1 * r1
                w_norm = w0 * w0 + w1 * w1
                if w_norm > 0.0 and r_norm > w_norm and steps < max_steps - 1:
                    a = math.sqrt(r_norm / w_norm)
                    eta_x0 = eta[0] + 2 * a * (eta1[0] - eta[0]) + a * a * (eta2[0] - 2 * eta1[0] + eta[0])
                    eta_x1 = eta[1] + 2 * a * (eta1[1] - eta[1]) + a * a * (eta2[1] - 2 * eta1[1] + eta[1])
                    if eta_x1 < 0.0:
                        var_x = -0.5 / eta_x1
                        mu_x = eta_x0 * var_x
                        if _usable(mu_x, var_x):
                            mu3, var3, log_likelihood_x, _ = _em_step(piece_lo, piece_hi, mu_x, var_x,
                                                                      *args)
                            steps += 1
                            if log_likelihood_x >= log_likelihood1 and _usable(mu3, var3):
                                mu_next, var_next = mu3, var3
        mu, var = mu_next, var_next
        mu1, var1, log_likelihood, residual = _em_step(piece_lo, piece_hi, mu, var, *args)
        steps += 1
    converged = residual <= tol
    return mu, var, log_likelihood, steps, converged, residual


@numba.njit(cache=True)
def _em_fit_pieces(piece_lo, piece_hi, starts, stops, cell_lo, cell_hi, cell_count, cell_mean,
                   cell_var, censored, mu0, var0, max_steps, tol, accelerate):
    """:func:`_em_fit_piece` for each piece p, whose cells are ``starts[p]:stops[p]``."""
    n_pieces = piece_lo.size
    mu = np.empty(n_pieces)
    var = np.empty(n_pieces)
    log_likelihood = np.empty(n_pieces)
    steps = np.empty(n_pieces, dtype=np.int64)
    converged = np.empty(n_pieces, dtype=np.bool_)
    residual = np.empty(n_pieces)
    for p in range(n_pieces):
        (mu[p], var[p], log_likelihood[p], steps[p], converged[p],
         residual[p]) = _em_fit_piece(piece_lo[p], piece_hi[p], mu0[p], var0[p], cell_lo, cell_hi,
                                    cell_count, cell_mean, cell_var, censored, starts[p],
                                    stops[p], max_steps, tol, accelerate)
    return mu, var, log_likelihood, steps, converged, residual


# ----------------------------------------------------------------------------------------------
# Sufficient statistics of samples (Numba kernels)
# ----------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _bin_lookup_table(inner_edges, n_cells):
    """``table[c]`` = number of edges ``<= lo + c * width`` on a uniform grid of ``n_cells`` over
    ``[lo, hi] = [inner_edges[0], inner_edges[-1]]``: the bin at each grid cell's left end."""
    lo = inner_edges[0]
    width = (inner_edges[-1] - lo) / n_cells
    table = np.empty(n_cells, dtype=np.int64)
    k = 0
    for c in range(n_cells):
        while k < inner_edges.size and inner_edges[k] <= lo + c * width:
            k += 1
        table[c] = k
    return table


@numba.njit(cache=True)
def _bin_statistics(x, inner_edges):
    """Count, mean and variance of the values of ``x`` in each bin ``[e_(k-1), e_k)``.

    ``x``: 1-D finite values; ``inner_edges``: (B-1,) strictly increasing (outer edges -inf, +inf).
    One pass. A value's bin is the number of edges it reaches: counted directly for up to 4 edges,
    else looked up on a uniform grid over the inner edges and corrected by a comparison or two (a
    binary search would mispredict a branch at every level). Sums are taken
    about each bin's first value (the shifted-data algorithm; Chan, Golub & LeVeque 1983), so
    the variance does not cancel, and a bin whose values are all equal gets exactly 0.
    Returns ``(count, mean, variance)``, each (B,).
    """
    n_edges = inner_edges.size
    n_bins = n_edges + 1
    count = np.zeros(n_bins)
    reference = np.zeros(n_bins)
    shifted = np.zeros(n_bins)
    squares = np.zeros(n_bins)
    n_cells = 64 * n_bins
    if n_edges > 4:
        table = _bin_lookup_table(inner_edges, n_cells)
        lo = inner_edges[0]
        hi = inner_edges[-1]
        scale = n_cells / (hi - lo)
    for value in x:
        if n_edges <= 4:  # few edges (given breakpoints): count them, without a branch
            k = 0
            for edge in inner_edges:
                k += value >= edge
        elif value < inner_edges[0]:
            k = 0
        elif value >= inner_edges[-1]:
            k = n_edges
        else:
            k = table[min(int((value - lo) * scale), n_cells - 1)]
            while k > 0 and value < inner_edges[k - 1]:  # the grid point may round past an edge
                k -= 1
            while value >= inner_edges[k]:
                k += 1
        if count[k] == 0.0:
            reference[k] = value
        d = value - reference[k]
        count[k] += 1.0
        shifted[k] += d
        squares[k] += d * d
    mean = np.zeros(n_bins)
    variance = np.zeros(n_bins)
    for k in range(n_bins):
        if count[k] > 0.0:
            offset = shifted[k] / count[k]
            mean[k] = reference[k] + offset
            variance[k] = max(squares[k] / count[k] - offset * offset, 0.0)
    return count, mean, variance


@numba.njit(cache=True)
def _runs_statistics(count, mean, variance):
    """Pooled count, mean, variance of every run of consecutive bins ``i .. j-1``, ``i < j``.

    Inputs (B,); outputs (B, B+1) indexed ``[i, j]`` (zeros where ``j <= i``), pooled with
    Chan, Golub & LeVeque's pairwise update (no cancellation).
    """
    n_bins = count.size
    run_count = np.zeros((n_bins, n_bins + 1))
    run_mean = np.zeros((n_bins, n_bins + 1))
    run_variance = np.zeros((n_bins, n_bins + 1))
    for i in range(n_bins):
        n = 0.0
        m = 0.0
        squares = 0.0
        for j in range(i, n_bins):
            if count[j] > 0.0:
                total = n + count[j]
                delta = mean[j] - m
                m += delta * count[j] / total
                squares += count[j] * variance[j] + delta * delta * n * count[j] / total
                n = total
            run_count[i, j + 1] = n
            run_mean[i, j + 1] = m
            run_variance[i, j + 1] = squares / n if n > 0.0 else 0.0
    return run_count, run_mean, run_variance


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------

def _finite_samples(x, caller):
    """``x`` flattened to a 1-D float array; errors for non-real dtypes, NaN/inf and emptiness."""
    array = np.asarray(x)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{caller}: x must hold real numbers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    array = np.ascontiguousarray(array).reshape(-1)
    if array.size == 0:
        raise DegenerateDataError(f"{caller}: x is empty; a density cannot be fitted to no samples")
    if not np.isfinite(array).all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        first = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{caller}: x holds {n_nan} NaN and {n_inf} infinite values among "
                         f"{array.size} (first at flat index {first}); remove them before fitting")
    return array


def _check_spread(x, min_samples, caller):
    """Raise :class:`DegenerateDataError` if ``x`` has fewer than ``min_samples`` values or one value."""
    if x.size < min_samples:
        raise DegenerateDataError(f"{caller}: only {x.size} values; a fit needs at least "
                                  f"min_piece_samples={min_samples}")
    if x.min() == x.max():
        raise DegenerateDataError(f"{caller}: x is constant (all {x.size} values equal {float(x[0])!r}); "
                                  f"no density with a spread can be fitted")


def _checked_histogram(counts, bin_edges, caller):
    """``(counts (B,), bin_edges (B+1,))`` as float arrays, after checking them.

    Counts: finite, ``>= 0``, not all 0. Edges: strictly increasing, finite except possibly the
    two outer ones (``-inf``, ``+inf`` bins hold the overflow).
    """
    counts = np.asarray(counts, dtype=np.float64)
    bin_edges = np.asarray(bin_edges, dtype=np.float64)
    if counts.ndim != 1 or bin_edges.ndim != 1 or bin_edges.size != counts.size + 1:
        raise ValueError(f"{caller}: counts must be 1-D (B,) and bin_edges (B+1,), got shapes "
                         f"{counts.shape} and {bin_edges.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{caller}: counts must be finite and >= 0")
    if np.any(np.isnan(bin_edges)) or not np.all(np.isfinite(bin_edges[1:-1])):
        raise ValueError(f"{caller}: bin_edges must be finite except the two outer ones")
    if bin_edges[0] == np.inf or bin_edges[-1] == -np.inf or np.any(np.diff(bin_edges) <= 0):
        raise ValueError(f"{caller}: bin_edges must be strictly increasing")
    if counts.sum() <= 0:
        raise DegenerateDataError(f"{caller}: the histogram is empty (all counts are 0)")
    return counts, bin_edges


def _bin_centres(bin_edges):
    """Centre of each bin; the finite edge for an infinite outer bin."""
    lo, hi = bin_edges[:-1], bin_edges[1:]
    with np.errstate(invalid="ignore"):
        centre = 0.5 * (lo + hi)
    centre = np.where(np.isinf(lo), hi, centre)
    return np.where(np.isinf(hi), lo, centre)


# ----------------------------------------------------------------------------------------------
# Fitting a PGM with given breakpoints
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Cells:
    """The data of a fit as consecutive cells ``[lo, hi)`` (see the EM kernels), all (C,)."""
    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    censored: np.ndarray


def _sample_cells(count, mean, var, edges):
    """Exact cells: the samples of each interval ``[edges[c], edges[c+1])``, summarised."""
    return _Cells(edges[:-1], edges[1:], count, mean, var, np.zeros(count.size, dtype=bool))


def _histogram_cells(counts, bin_edges):
    """One censored cell per bin: its count and interval are known, positions inside it are not
    (``mean`` holds the centre, used only to start EM)."""
    return _Cells(bin_edges[:-1], bin_edges[1:], counts, _bin_centres(bin_edges),
                  np.zeros(counts.size), np.ones(counts.size, dtype=bool))


@dataclasses.dataclass(frozen=True)
class _Options:
    max_iter: int
    tol: float
    accelerate: bool
    min_piece_samples: int


def _piece_of_cells(breakpoints, cells):
    """Piece index of each cell (cells never straddle a breakpoint)."""
    return np.searchsorted(breakpoints, cells.lo, side="right")


def _piece_summaries(breakpoints, cells):
    """Per piece: count, pooled mean and variance (censored cells at their centre), and whether
    its samples take at least two distinct values."""
    n_pieces = breakpoints.size + 1
    piece = _piece_of_cells(breakpoints, cells)
    count = np.bincount(piece, weights=cells.count, minlength=n_pieces)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(piece, weights=cells.count * cells.mean, minlength=n_pieces) / count
        spread = cells.count * (cells.var + (cells.mean - mean[piece]) ** 2)
        var = np.bincount(piece, weights=spread, minlength=n_pieces) / count
    occupied = np.bincount(piece, weights=(cells.count > 0), minlength=n_pieces)
    spread_inside = np.bincount(piece, weights=(cells.count > 0) & (cells.var > 0), minlength=n_pieces)
    distinct = (occupied >= 2) | (spread_inside > 0)
    return count, np.nan_to_num(mean), np.nan_to_num(var), distinct


def _without_degenerate_pieces(breakpoints, cells, min_piece_samples, caller):
    """Drop breakpoints until no piece holds 1..min-1 samples or a single repeated value.

    Each such piece is merged into its neighbour holding more samples (a warning says which).
    A piece with no sample at all is kept (mass 0). Raises :class:`DegenerateDataError` when
    even one piece cannot hold the data (too few values, or all equal).
    """
    breakpoints = np.array(breakpoints, dtype=np.float64)
    merged = []
    while True:
        count, mean, _, distinct = _piece_summaries(breakpoints, cells)
        degenerate = (count > 0) & ((count < min_piece_samples) | ~distinct)
        if not degenerate.any():
            return breakpoints, tuple(merged)
        if breakpoints.size == 0:
            raise DegenerateDataError(_degenerate_message(count[0], mean[0], cells,
                                                          min_piece_samples, caller))
        k = int(np.flatnonzero(degenerate)[0])
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j <= breakpoints.size]
        neighbour = max(neighbours, key=lambda j: count[j])
        dropped = float(breakpoints[min(k, neighbour)])
        edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
        reason = (f"holds {count[k]:g} samples (fewer than min_piece_samples={min_piece_samples})"
                  if count[k] < min_piece_samples else f"holds {count[k]:g} samples, all equal")
        warnings.warn(f"{caller}: piece {k} [{edges[k]:g}, {edges[k + 1]:g}) {reason}: merged "
                      f"into piece {neighbour}, breakpoint {dropped:g} dropped", stacklevel=4)
        merged.append(dropped)
        breakpoints = np.delete(breakpoints, min(k, neighbour))


def _degenerate_message(count, mean, cells, min_piece_samples, caller):
    if count < min_piece_samples:
        return (f"{caller}: only {count:g} values; a fit needs at least "
                f"min_piece_samples={min_piece_samples}")
    if cells.censored.any():
        j = int(np.flatnonzero(cells.count > 0)[0])
        return (f"{caller}: all {count:g} counts fall in one bin [{cells.lo[j]:g}, {cells.hi[j]:g}); "
                f"no density with a spread can be fitted")
    return (f"{caller}: x is constant (all {count:g} values equal {mean!r}); no density with a "
            f"spread can be fitted")


def _fit_given_breakpoints(breakpoints, cells, source, options, caller, n_chosen_breakpoints=0):
    """The PGM of maximum likelihood with these breakpoints, and its :class:`FitInfo`.

    ``n_chosen_breakpoints`` counts the breakpoints that were selected from the data (they add
    to the BIC's parameter count).
    """
    breakpoints, merged = _without_degenerate_pieces(breakpoints, cells, options.min_piece_samples,
                                                     caller)
    edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
    piece = _piece_of_cells(breakpoints, cells)
    n_pieces = edges.size - 1
    starts = np.searchsorted(piece, np.arange(n_pieces), side="left")
    stops = np.searchsorted(piece, np.arange(n_pieces), side="right")
    count, mean, var, _ = _piece_summaries(breakpoints, cells)
    n = count.sum()
    fitted = count > 0
    mu, piece_var, log_likelihood, steps, converged, residual = _em_fit_pieces(
        edges[:-1][fitted], edges[1:][fitted], starts[fitted], stops[fitted], cells.lo, cells.hi,
        cells.count, cells.mean, cells.var, cells.censored, mean[fitted], var[fitted],
        options.max_iter, options.tol, options.accelerate)
    if not converged.all():
        _warn_not_converged(caller, np.flatnonzero(fitted)[~converged], mu[~converged],
                            np.sqrt(piece_var[~converged]), np.sqrt(var[fitted][~converged]),
                            residual[~converged], options)
    overall_mean = np.dot(count, mean) / n
    overall_std = math.sqrt(np.dot(count, var + (mean - overall_mean) ** 2) / n)
    means, stds = _placeholder_parameters(edges, overall_std)
    means[fitted] = mu
    stds[fitted] = np.sqrt(piece_var)
    weights = count / n
    total_log_likelihood = float(np.sum(count[fitted] * np.log(weights[fitted])) + log_likelihood.sum())
    n_parameters = 3 * int(fitted.sum()) - 1 + n_chosen_breakpoints
    model = PiecewiseGaussian(breakpoints, weights, means, stds)
    model.fit_info = FitInfo(source=source, n_samples=float(n), log_likelihood=total_log_likelihood,
                             iterations=int(steps.max()), converged=bool(converged.all()),
                             n_parameters=n_parameters,
                             bic=-2.0 * total_log_likelihood + n_parameters * math.log(n),
                             merged_breakpoints=merged)
    return model


def _warn_not_converged(caller, pieces, means, stds, sample_stds, residuals, options):
    """The :class:`ConvergenceWarning` for pieces whose EM stopped at ``max_iter``, with the numbers."""
    details = "; ".join(f"piece {k}: mean {m:.6g}, std {s:.6g} (samples' std {v:.6g}), moment "
                        f"residual {r:.3g}" for k, m, s, v, r in zip(pieces, means, stds, sample_stds,
                                                                    residuals))
    warnings.warn(f"{caller}: EM did not converge for pieces {pieces.tolist()} within max_iter="
                  f"{options.max_iter} steps (tol={options.tol:g}): {details}. The estimates are "
                  f"usable but short of the maximum. If the std keeps growing far beyond the "
                  f"samples' std, the piece's samples have a tail heavier than a Gaussian's: the "
                  f"likelihood then has no maximum, only a supremum in the limit mean -> +-inf, "
                  f"std -> inf (an exponential tail), which EM approaches without reaching.",
                  ConvergenceWarning, stacklevel=4)


def _placeholder_parameters(edges, spread):
    """Mean and std for pieces without samples (mass 0): any values with a representable Z do;
    the piece's finite edge (or centre) and the data's spread."""
    lo, hi = edges[:-1], edges[1:]
    with np.errstate(invalid="ignore"):
        means = np.where(np.isinf(lo), hi, np.where(np.isinf(hi), lo, 0.5 * (lo + hi)))
    means = np.where(np.isinf(means), 0.0, means)
    spread = spread if spread > 0 and math.isfinite(spread) else 1.0
    return means.astype(np.float64), np.full(means.size, spread)


# ----------------------------------------------------------------------------------------------
# Choosing the breakpoints ("auto")
# ----------------------------------------------------------------------------------------------

def _candidate_breakpoints(values, cumulative_fraction=None):
    """Candidate breakpoints: quantiles at CANDIDATE_LEVELS, plus 0 when the values straddle it.

    ``values``: samples (then ``cumulative_fraction`` is None; a fixed subsample of 65536 values
    is used when there are more), or the inner bin edges of a histogram with the fraction of
    counts below each (then the edge nearest each quantile level is taken).
    """
    if cumulative_fraction is None:
        if values.size > _QUANTILE_SUBSAMPLE:
            values = values[np.random.default_rng(0).integers(0, values.size, _QUANTILE_SUBSAMPLE)]
        candidates = np.quantile(values, CANDIDATE_LEVELS)
        low, high = values.min(), values.max()
    else:
        nearest = np.abs(cumulative_fraction[:, None] - np.array(CANDIDATE_LEVELS)).argmin(axis=0)
        candidates = values[nearest]
        # 0 must be a bin edge with counts on both sides.
        at_zero = np.flatnonzero(values == 0.0)
        below = cumulative_fraction[at_zero[0]] if at_zero.size else 0.0
        low, high = (-1.0, 1.0) if 0.0 < below < 1.0 else (0.0, 0.0)
    if low < 0.0 < high:
        candidates = np.append(candidates, 0.0)
    return np.unique(candidates)


def _best_segmentations(edges, count, mean, var, n, max_pieces, options):
    """For K = 1..max_pieces, the breakpoints (a subset of the inner ``edges``) of maximum likelihood.

    ``count``, ``mean``, ``var``: (B,) exact statistics of the B cells between ``edges`` (B+1,).
    Every run of cells ``i..j-1`` holding at least ``min_piece_samples`` distinct values is fitted
    by EM as a piece ``[edges[i], edges[j])``; its score is its log-likelihood plus
    ``n_run log(n_run / n)`` (the mass term), and the score of a segmentation is the sum over its
    pieces, so the best one for each K follows by dynamic programming over the end of the last
    piece. Candidate pieces get at most ``_SEARCH_MAX_ITER`` EM steps (tolerance
    ``_SEARCH_TOL``): pieces that need more are poor fits (their samples are far from a truncated
    Gaussian, e.g. a piece across a leaky-ReLU kink, whose maximum lies at infinity), and the
    chosen breakpoints are refitted with the caller's ``max_iter`` and ``tol``.
    Returns a list of ``(K, breakpoints, log_likelihood)``.
    """
    n_cells = count.size
    run_count, run_mean, run_var = _runs_statistics(count, mean, var)
    search = _search_options(options)
    first, last = np.triu_indices(n_cells + 1, k=1)
    first, last = first[first < n_cells], last[first < n_cells]
    usable = (run_count[first, last] >= options.min_piece_samples) & (run_var[first, last] > 0)
    first, last = first[usable], last[usable]
    runs = np.arange(first.size)
    _, _, log_likelihood, *_ = _em_fit_pieces(
        edges[first], edges[last], runs, runs + 1, edges[first], edges[last],
        run_count[first, last], run_mean[first, last], run_var[first, last],
        np.zeros(first.size, dtype=bool), run_mean[first, last], run_var[first, last],
        search.max_iter, search.tol, search.accelerate)
    score = np.full((n_cells + 1, n_cells + 1), -np.inf)
    pieces_count = run_count[first, last]
    score[first, last] = log_likelihood + pieces_count * np.log(pieces_count / n)
    # best[k, j]: best score covering cells 0..j-1 with k+1 pieces; origin[k, j]: start of the last.
    best = np.full((max_pieces, n_cells + 1), -np.inf)
    origin = np.zeros((max_pieces, n_cells + 1), dtype=np.int64)
    best[0] = score[0]
    for k in range(1, max_pieces):
        total = best[k - 1][:, None] + score  # [i, j]: k pieces up to i, then the piece i..j-1
        origin[k] = total.argmax(axis=0)
        best[k] = total.max(axis=0)
    results = []
    for k in range(max_pieces):
        if not np.isfinite(best[k, n_cells]):
            continue
        cuts, j = [], n_cells
        for level in range(k, 0, -1):
            j = origin[level, j]
            cuts.append(j)
        results.append((k + 1, edges[np.array(sorted(cuts), dtype=np.int64)], float(best[k, n_cells])))
    return results


def _chosen_by_bic(segmentations, refit, options):
    """Refit each K's best breakpoints with the exact likelihood and pick the least BIC.

    ``segmentations``: ``(K, breakpoints, _)`` rows of :func:`_best_segmentations`;
    ``refit(breakpoints, n_chosen_breakpoints, options) -> model``. The comparison fits use the
    search budget (``_SEARCH_MAX_ITER``, ``_SEARCH_TOL``) with their warnings held back; the
    chosen breakpoints are then fitted with the caller's options, and only that fit warns. The
    selection table (with the final fit's row) is attached to its ``fit_info``.
    """
    search = _search_options(options)
    trials = []
    for n_pieces, breakpoints, _ in segmentations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials.append(refit(breakpoints, n_pieces - 1, search))
    best = min(range(len(trials)), key=lambda t: trials[t].fit_info.bic)
    chosen = refit(trials[best].breakpoints, trials[best].n_pieces - 1, options)
    trials[best] = chosen
    selection = tuple((m.n_pieces, tuple(m.breakpoints.tolist()), m.fit_info.log_likelihood,
                       m.fit_info.bic) for m in trials)
    chosen.fit_info = dataclasses.replace(chosen.fit_info, selection=selection)
    return chosen


def _search_options(options):
    return dataclasses.replace(options, max_iter=min(options.max_iter, _SEARCH_MAX_ITER),
                               tol=max(options.tol, _SEARCH_TOL))


def _fit_auto_samples(x, max_pieces, options, caller):
    candidates = _candidate_breakpoints(x)
    count, mean, var = _bin_statistics(x, candidates)
    edges = np.concatenate([[-np.inf], candidates, [np.inf]])

    def refit(breakpoints, n_chosen, fit_options):
        cells = _merged_cells(edges, count, mean, var, breakpoints)
        return _fit_given_breakpoints(breakpoints, cells, "samples", fit_options, caller,
                                      n_chosen_breakpoints=n_chosen)
    return _chosen_by_bic(_best_segmentations(edges, count, mean, var, x.size, max_pieces, options),
                          refit, options)


def _merged_cells(edges, count, mean, var, breakpoints):
    """Exact cells of the pieces cut at ``breakpoints`` (a subset of ``edges``), pooled from the
    cells between ``edges``."""
    run_count, run_mean, run_var = _runs_statistics(count, mean, var)
    cut = np.searchsorted(edges, np.concatenate([[-np.inf], breakpoints, [np.inf]]))
    return _sample_cells(run_count[cut[:-1], cut[1:]], run_mean[cut[:-1], cut[1:]],
                         run_var[cut[:-1], cut[1:]], edges[cut])


def _fit_auto_histogram(counts, bin_edges, max_pieces, options, caller):
    inner = bin_edges[1:-1]
    fraction_below = np.cumsum(counts)[:-1] / counts.sum()
    candidates = _candidate_breakpoints(inner, fraction_below)
    # Search cells: the bins between consecutive candidates, every value at its bin's centre.
    edges = np.concatenate([[bin_edges[0]], candidates, [bin_edges[-1]]])
    first_bin = np.searchsorted(bin_edges, edges[:-1])
    centre = _bin_centres(bin_edges)
    cell = np.searchsorted(candidates, bin_edges[:-1], side="right")
    count = np.add.reduceat(counts, first_bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nan_to_num(np.add.reduceat(counts * centre, first_bin) / count)
        var = np.nan_to_num(np.add.reduceat(counts * (centre - mean[cell]) ** 2, first_bin) / count)
    search_edges = np.concatenate([[-np.inf], candidates, [np.inf]])
    cells = _histogram_cells(counts, bin_edges)

    def refit(breakpoints, n_chosen, fit_options):
        return _fit_given_breakpoints(breakpoints, cells, "histogram", fit_options, caller,
                                      n_chosen_breakpoints=n_chosen)
    segmentations = _best_segmentations(search_edges, count, mean, var, counts.sum(), max_pieces,
                                        options)
    return _chosen_by_bic(segmentations, refit, options)


# ----------------------------------------------------------------------------------------------
# The distribution
# ----------------------------------------------------------------------------------------------

class PiecewiseGaussian:
    """A piecewise Gaussian density: K truncated Gaussians on consecutive pieces of the line.

    Parameters (stored as read-only float64 arrays of the same names):

    - ``breakpoints``: (K-1,) strictly increasing finite values (empty for K = 1).
    - ``weights``: (K,) masses ``pi_k >= 0`` summing to 1 (within 1e-6; then renormalised).
    - ``means``, ``stds``: (K,) ``mu_k`` (finite) and ``sigma_k > 0`` of the Gaussian that is
      truncated to piece k. ``mu_k`` need not lie inside the piece.

    ``edges`` is ``(K+1,)``: ``[-inf, *breakpoints, +inf]``; piece k is ``[edges[k], edges[k+1])``.
    ``fit_info`` is None unless the instance comes from :meth:`fit` / :meth:`fit_histogram`.
    """

    def __init__(self, breakpoints, weights, means, stds):
        self.breakpoints = _validated_breakpoints(breakpoints)
        n_pieces = self.breakpoints.size + 1
        self.weights = _validated_weights(weights, n_pieces)
        self.means = _validated_vector(means, n_pieces, "means")
        self.stds = _validated_vector(stds, n_pieces, "stds")
        if np.any(self.stds <= 0.0):
            raise ValueError(f"stds must be > 0, got {self.stds.tolist()}")
        self.edges = np.concatenate([[-np.inf], self.breakpoints, [np.inf]])
        # log Z_k: the log mass of N(mu_k, sigma_k^2) inside its own piece.
        self._log_piece_mass, _, _ = gaussian_interval_moments(self.means, self.stds,
                                                               self.edges[:-1], self.edges[1:])
        if np.any(~np.isfinite(self._log_piece_mass)):
            bad = np.flatnonzero(~np.isfinite(self._log_piece_mass)).tolist()
            raise ValueError(f"pieces {bad}: N(mean, std^2) puts no representable mass on the piece "
                             f"(means {self.means.tolist()}, stds {self.stds.tolist()}, "
                             f"edges {self.edges.tolist()})")
        with np.errstate(divide="ignore"):
            self._log_weights = np.log(self.weights)
        self._cumulative = np.concatenate([[0.0], np.cumsum(self.weights)])
        self._cumulative[-1] = 1.0
        self._mass_above = np.concatenate([np.cumsum(self.weights[::-1])[::-1][1:], [0.0]])
        for name in ("breakpoints", "weights", "means", "stds", "edges"):
            getattr(self, name).setflags(write=False)
        self.fit_info = None

    @classmethod
    def normal(cls, mu, sigma):
        """The one-piece model: ``N(mu, sigma^2)`` on the whole line."""
        return cls([], [1.0], [mu], [sigma])

    @property
    def n_pieces(self):
        """K, the number of pieces."""
        return self.weights.size

    def __repr__(self):
        return (f"PiecewiseGaussian(breakpoints={self.breakpoints.tolist()}, "
                f"weights={self.weights.tolist()}, means={self.means.tolist()}, "
                f"stds={self.stds.tolist()})")

    def piece_of(self, x):
        """Index k of the piece ``[edges[k], edges[k+1])`` holding each value of ``x`` (int array)."""
        return np.searchsorted(self.breakpoints, np.asarray(x, dtype=np.float64), side="right")

    # -- density -------------------------------------------------------------------------------

    def logpdf(self, x):
        """``log p(x)`` (same shape as ``x``); ``-inf`` on a piece of zero mass."""
        x = np.asarray(x, dtype=np.float64)
        k = self.piece_of(x)
        z = (x - self.means[k]) / self.stds[k]
        return (self._log_weights[k] - np.log(self.stds[k]) - _LOG_SQRT_2PI - 0.5 * z * z
                - self._log_piece_mass[k])

    def pdf(self, x):
        """``p(x)`` (same shape as ``x``)."""
        return np.exp(self.logpdf(x))

    def cdf(self, x):
        """``P(X <= x)``: masses of the pieces below, plus the truncated-normal mass up to x."""
        x = np.asarray(x, dtype=np.float64)
        k = self.piece_of(x)
        inside = self._fraction_of_piece(k, self.edges[k], x)
        return self._cumulative[k] + self.weights[k] * inside

    def sf(self, x):
        """``P(X > x) = 1 - cdf(x)``, computed without the cancellation near 1."""
        x = np.asarray(x, dtype=np.float64)
        k = self.piece_of(x)
        inside = self._fraction_of_piece(k, x, self.edges[k + 1])
        return self._mass_above[k] + self.weights[k] * inside

    def _fraction_of_piece(self, k, lo, hi):
        """Fraction of piece k's mass lying in ``[lo, hi]`` (arrays broadcast with ``k``)."""
        mu, sigma = self.means[k], self.stds[k]
        log_mass, _, _ = gaussian_interval_moments(mu, sigma, lo, hi)
        return np.exp(log_mass - self._log_piece_mass[k])

    def ppf(self, q):
        """Quantile function, the inverse of :meth:`cdf`; ``ppf(0)`` and ``ppf(1)`` are the ends of the
        support (``-inf``, ``+inf`` unless an end piece has zero mass).

        Finds the piece k with ``cdf(b_(k-1)) <= q < cdf(b_k)`` (pieces of zero mass are never
        chosen), then solves ``Phi(z) = Phi(alpha_k) + r Z_k`` for the fraction
        ``r = (q - cdf(b_(k-1))) / pi_k`` in log space (``scipy.special.ndtri_exp``), using the
        upper-tail form ``Phi(-z) = Phi(-beta_k) + (1 - r) Z_k`` where ``z > 0``.
        """
        q = np.asarray(q, dtype=np.float64)
        if np.any((q < 0.0) | (q > 1.0)):
            raise ValueError("ppf: q must lie in [0, 1]")
        k = np.minimum(np.searchsorted(self._cumulative[1:-1], q, side="right"), self.n_pieces - 1)
        mu, sigma, weight = self.means[k], self.stds[k], self.weights[k]
        alpha = (self.edges[k] - mu) / sigma
        beta = (self.edges[k + 1] - mu) / sigma
        log_z = self._log_piece_mass[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            below = np.maximum(q - self._cumulative[k], 0.0) / weight
            above = np.maximum(self._cumulative[k + 1] - q, 0.0) / weight
            z_lower = special.ndtri_exp(np.logaddexp(special.log_ndtr(alpha), np.log(below) + log_z))
            z_upper = -special.ndtri_exp(np.logaddexp(special.log_ndtr(-beta), np.log(above) + log_z))
        z = np.clip(np.where(z_lower > 0.0, z_upper, z_lower), alpha, beta)
        x = mu + sigma * z
        # The ends of the support: pieces of zero mass at either end are not part of it.
        occupied = np.flatnonzero(self.weights > 0.0)
        x = np.where(q <= 0.0, self.edges[occupied[0]], x)
        return np.where(q >= 1.0, self.edges[occupied[-1] + 1], x)

    # -- moments -------------------------------------------------------------------------------

    def partial_moments(self, lo, hi):
        """``(m0, m1, m2)`` with ``m_j = integral_lo^hi x**j p(x) dx``, broadcasting ``lo``, ``hi``.

        ``lo``, ``hi`` may be ``-inf``/``+inf``; an interval with ``hi <= lo`` gives zeros.
        Sum over pieces of the piece's mass in ``[lo, hi]`` times the conditional moments::

            m0 = sum_k pi_k P_k,   m1 = sum_k pi_k P_k E_k,   m2 = sum_k pi_k P_k (V_k + E_k^2)

        where ``P_k``, ``E_k``, ``V_k`` are the probability, mean and variance of
        ``N(mu_k, sigma_k^2)`` conditioned on piece k intersected with ``[lo, hi]``
        (:func:`gaussian_interval_moments`), ``P_k`` taken relative to ``Z_k`` in log space.
        """
        lo, hi = np.broadcast_arrays(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        m0 = np.zeros(lo.shape)
        m1 = np.zeros(lo.shape)
        m2 = np.zeros(lo.shape)
        for k in range(self.n_pieces):
            if self.weights[k] == 0.0:
                continue
            piece_lo = np.maximum(lo, self.edges[k])
            piece_hi = np.minimum(hi, self.edges[k + 1])
            log_mass, mean, variance = gaussian_interval_moments(self.means[k], self.stds[k],
                                                                 piece_lo, piece_hi)
            mass = self.weights[k] * np.exp(log_mass - self._log_piece_mass[k])
            m0 += mass
            m1 += mass * mean
            m2 += mass * (variance + mean * mean)
        return m0, m1, m2

    def piece_moments(self):
        """``(mean_k, variance_k)``, each (K,): the moments of each truncated piece on its own."""
        _, mean, variance = gaussian_interval_moments(self.means, self.stds,
                                                      self.edges[:-1], self.edges[1:])
        return mean, variance

    def mean(self):
        """``E[X] = sum_k pi_k E_k``."""
        piece_mean, _ = self.piece_moments()
        return float(np.dot(self.weights, piece_mean))

    def var(self):
        """``Var[X]`` by the law of total variance, ``sum_k pi_k (V_k + (E_k - E[X])^2)``,
        which does not cancel the way ``E[X^2] - E[X]^2`` does for a far-off mean."""
        piece_mean, piece_var = self.piece_moments()
        overall = np.dot(self.weights, piece_mean)
        return float(np.dot(self.weights, piece_var + (piece_mean - overall) ** 2))

    def std(self):
        """``sqrt(var())``."""
        return math.sqrt(self.var())

    def sample(self, n, rng=None):
        """``n`` independent draws (float64 array of shape ``(n,)``) by inverting the cdf.

        ``rng``: a ``numpy.random.Generator`` or anything ``numpy.random.default_rng`` accepts.
        """
        rng = np.random.default_rng(rng)
        return self.ppf(rng.random(int(n)))

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, x, breakpoints="auto", *, max_pieces=4, max_iter=20000, tol=1e-9,
            min_piece_samples=5, accelerate=True):
        """The PGM of maximum likelihood for the samples ``x`` (any shape; flattened).

        ``breakpoints``: ``"auto"`` (K in 1..``max_pieces`` and the breakpoints chosen by
        likelihood and BIC, see the module docstring) or a sequence used as is (``[0.0]`` for
        leaky-ReLU activations, ``[]`` for one Gaussian). ``max_iter``: EM steps per piece.
        ``tol``: a piece has converged when its truncated Gaussian's mean and variance match
        the samples', ``|xbar - E| / sigma + |v - V| / sigma^2 <= tol`` (the likelihood
        equations, so this is a distance from the maximum, not merely a small step).
        ``accelerate``: SQUAREM (True) or plain EM (False). One pass over ``x`` computes each
        piece's (count, mean, variance); EM then never touches the samples again.
        The result carries :class:`FitInfo` in ``fit_info``; a piece that did not converge
        raises a :class:`ConvergenceWarning` with the numbers. Degenerate input: module docstring.
        """
        caller = "PiecewiseGaussian.fit"
        options = _Options(int(max_iter), float(tol), bool(accelerate), int(min_piece_samples))
        x = _finite_samples(x, caller)
        _check_spread(x, options.min_piece_samples, caller)
        if isinstance(breakpoints, str):
            _check_auto(breakpoints, max_pieces, caller)
            return _fit_auto_samples(x, int(max_pieces), options, caller)
        breakpoints = _validated_breakpoints(breakpoints)
        edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
        cells = _sample_cells(*_bin_statistics(x, breakpoints), edges)
        return _fit_given_breakpoints(breakpoints, cells, "samples", options, caller)

    @classmethod
    def fit_histogram(cls, counts, bin_edges, breakpoints="auto", *, max_pieces=4, max_iter=20000,
                      tol=1e-9, min_piece_samples=5, accelerate=True):
        """The PGM of maximum binned likelihood ``sum_j counts[j] log P(bin j)``.

        ``counts``: (B,) counts ``>= 0`` (e.g. summed ``numpy.histogram`` counts of every batch
        of a calibration set over fixed edges); ``bin_edges``: (B+1,) increasing, the outer two
        may be infinite. Within-bin positions are missing data filled in by the E-step (module
        docstring), so no midpoint approximation is made. Given breakpoints must be bin edges.
        Other arguments as in :meth:`fit`.
        """
        caller = "PiecewiseGaussian.fit_histogram"
        options = _Options(int(max_iter), float(tol), bool(accelerate), int(min_piece_samples))
        counts, bin_edges = _checked_histogram(counts, bin_edges, caller)
        cells = _histogram_cells(counts, bin_edges)
        _without_degenerate_pieces(np.empty(0), cells, options.min_piece_samples, caller)
        if isinstance(breakpoints, str):
            _check_auto(breakpoints, max_pieces, caller)
            return _fit_auto_histogram(counts, bin_edges, int(max_pieces), options, caller)
        breakpoints = _validated_breakpoints(breakpoints)
        missing = breakpoints[~np.isin(breakpoints, bin_edges[1:-1])]
        if missing.size:
            raise ValueError(f"{caller}: breakpoints {missing.tolist()} are not inner bin edges; "
                             f"add them to bin_edges so that no bin straddles a breakpoint")
        return _fit_given_breakpoints(breakpoints, cells, "histogram", options, caller)

    def log_likelihood(self, x):
        """``sum_i log p(x_i)`` over the flattened samples ``x``."""
        return float(np.sum(self.logpdf(np.ravel(x))))


    # -- plain-data form (JSON, never pickle) --------------------------------------------------

    def to_dict(self):
        """The parameters as plain lists, e.g. for ``json.dump``; inverse of :meth:`from_dict`."""
        return {"breakpoints": self.breakpoints.tolist(), "weights": self.weights.tolist(),
                "means": self.means.tolist(), "stds": self.stds.tolist()}

    @classmethod
    def from_dict(cls, parameters):
        """Rebuild from :meth:`to_dict`'s output (keys breakpoints, weights, means, stds)."""
        return cls(parameters["breakpoints"], parameters["weights"],
                   parameters["means"], parameters["stds"])


# ----------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------

def _validated_vector(values, size, name):
    array = np.array(values, dtype=np.float64).reshape(-1) if np.ndim(values) <= 1 else None
    if array is None:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {np.shape(values)}")
    if array.size != size:
        raise ValueError(f"{name} must have {size} values (one per piece), got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def _validated_breakpoints(breakpoints):
    if np.ndim(breakpoints) > 1:
        raise ValueError(f"breakpoints must be a 1-D sequence, got shape {np.shape(breakpoints)}")
    array = np.array(breakpoints, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"breakpoints must be finite, got {array.tolist()}")
    if np.any(np.diff(array) <= 0.0):
        raise ValueError(f"breakpoints must be strictly increasing, got {array.tolist()}")
    return array


def _validated_weights(weights, size):
    array = _validated_vector(weights, size, "weights")
    if np.any(array < 0.0):
        raise ValueError(f"weights must be >= 0, got {array.tolist()}")
    total = array.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got sum {total!r} for {array.tolist()}")
    return array / total


def _check_auto(breakpoints, max_pieces, caller):
    if breakpoints != "auto":
        raise ValueError(f"{caller}: breakpoints must be 'auto' or a sequence of numbers, "
                         f"got {breakpoints!r}")
    if not 1 <= int(max_pieces) <= 8:
        raise ValueError(f"{caller}: max_pieces must be in 1..8, got {max_pieces}")


# ----------------------------------------------------------------------------------------------
# The comparison model: a Gaussian mixture fitted by ordinary EM
# ----------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _mixture_em_pass(x, weights, means, stds):
    """E-step over the samples for ``sum_k w_k N(mu_k, s_k^2)``.

    Returns ``(log-likelihood at these parameters, N_k, S1_k, S2_k)`` with ``r_ik`` the
    responsibilities, ``N_k = sum_i r_ik``, ``S1_k = sum_i r_ik (x_i - mu_k)``,
    ``S2_k = sum_i r_ik (x_i - mu_k)^2`` (about the current means, so that the M-step's variance
    does not cancel).
    """
    n_components = weights.size
    log_prefactor = np.log(weights) - np.log(stds) - _LOG_SQRT_2PI
    log_term = np.empty(n_components)
    resp_n = np.zeros(n_components)
    resp_s1 = np.zeros(n_components)
    resp_s2 = np.zeros(n_components)
    log_likelihood = 0.0
    for value in x:
        largest = -np.inf
        for k in range(n_components):
            z = (value - means[k]) / stds[k]
            log_term[k] = log_prefactor[k] - 0.5 * z * z
            largest = max(largest, log_term[k])
        total = 0.0
        for k in range(n_components):
            log_term[k] = math.exp(log_term[k] - largest)
            total += log_term[k]
        log_likelihood += largest + math.log(total)
        for k in range(n_components):
            r = log_term[k] / total
            d = value - means[k]
            resp_n[k] += r
            resp_s1[k] += r * d
            resp_s2[k] += r * d * d
    return log_likelihood, resp_n, resp_s1, resp_s2


@numba.njit(cache=True)
def _mixture_binned_em_pass(cell_lo, cell_hi, counts, weights, means, stds):
    """E-step over histogram bins: positions inside a bin and component labels both missing.

    For bin j and component k, ``P_jk = w_k P_k(bin j)``, ``r_jk = P_jk / sum_k P_jk``, and the
    bin's samples contribute ``c_j r_jk`` times the conditional mean ``m_jk`` and variance
    ``v_jk`` of component k inside the bin. Returns the binned log-likelihood
    ``sum_j c_j log sum_k P_jk`` and ``N_k``, ``S1_k``, ``S2_k`` as in :func:`_mixture_em_pass`.
    """
    n_components = weights.size
    log_term = np.empty(n_components)
    conditional_mean = np.empty(n_components)
    conditional_var = np.empty(n_components)
    resp_n = np.zeros(n_components)
    resp_s1 = np.zeros(n_components)
    resp_s2 = np.zeros(n_components)
    log_likelihood = 0.0
    for j in range(counts.size):
        if counts[j] == 0.0:
            continue
        largest = -np.inf
        for k in range(n_components):
            log_mass, m, v = _truncated_moments((cell_lo[j] - means[k]) / stds[k],
                                                (cell_hi[j] - means[k]) / stds[k],
                                                (cell_hi[j] - cell_lo[j]) / stds[k])
            log_term[k] = math.log(weights[k]) + log_mass
            conditional_mean[k] = means[k] + stds[k] * m
            conditional_var[k] = stds[k] * stds[k] * v
            largest = max(largest, log_term[k])
        total = 0.0
        for k in range(n_components):
            log_term[k] = math.exp(log_term[k] - largest)
            total += log_term[k]
        log_likelihood += counts[j] * (largest + math.log(total))
        for k in range(n_components):
            r = counts[j] * log_term[k] / total
            d = conditional_mean[k] - means[k]
            resp_n[k] += r
            resp_s1[k] += r * d
            resp_s2[k] += r * (conditional_var[k] + d * d)
    return log_likelihood, resp_n, resp_s1, resp_s2


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, sigma_k^2)``: the comparison model, same interface as the PGM.

    Parameters (read-only float64 arrays of the same names): ``weights`` (K,) ``>= 0`` summing
    to 1, ``means`` (K,) finite, ``stds`` (K,) ``> 0``. ``fit_info`` as for the PGM.
    """

    def __init__(self, weights, means, stds):
        n_components = np.size(weights)
        self.weights = _validated_weights(weights, n_components)
        self.means = _validated_vector(means, n_components, "means")
        self.stds = _validated_vector(stds, n_components, "stds")
        if np.any(self.stds <= 0.0):
            raise ValueError(f"stds must be > 0, got {self.stds.tolist()}")
        for name in ("weights", "means", "stds"):
            getattr(self, name).setflags(write=False)
        self.fit_info = None

    @property
    def n_components(self):
        """K, the number of components."""
        return self.weights.size

    def __repr__(self):
        return (f"GaussianMixture(weights={self.weights.tolist()}, means={self.means.tolist()}, "
                f"stds={self.stds.tolist()})")

    # -- density -------------------------------------------------------------------------------

    def logpdf(self, x):
        """``log p(x)`` by log-sum-exp over the components."""
        z = (np.asarray(x, dtype=np.float64)[..., None] - self.means) / self.stds
        with np.errstate(divide="ignore"):
            log_terms = np.log(self.weights) - np.log(self.stds) - _LOG_SQRT_2PI - 0.5 * z * z
        return special.logsumexp(log_terms, axis=-1)

    def pdf(self, x):
        """``p(x)``."""
        return np.exp(self.logpdf(x))

    def cdf(self, x):
        """``sum_k w_k Phi((x - mu_k) / sigma_k)``."""
        z = (np.asarray(x, dtype=np.float64)[..., None] - self.means) / self.stds
        return special.ndtr(z) @ self.weights

    def sf(self, x):
        """``1 - cdf(x)`` without cancellation: ``sum_k w_k Phi(-(x - mu_k) / sigma_k)``."""
        z = (np.asarray(x, dtype=np.float64)[..., None] - self.means) / self.stds
        return special.ndtr(-z) @ self.weights

    def ppf(self, q):
        """Quantile function by bisection on the cdf (on the sf above the median), to the last bit.

        The mixture's cdf has no closed-form inverse; bisection on the monotone cdf within
        ``[min(mu - 40 sigma), max(mu + 40 sigma)]`` halves the bracket until it stops shrinking.
        ``ppf(0) = -inf``, ``ppf(1) = +inf``.
        """
        q = np.asarray(q, dtype=np.float64)
        if np.any((q < 0.0) | (q > 1.0)):
            raise ValueError("ppf: q must lie in [0, 1]")
        upper = q > 0.5
        target = np.where(upper, 1.0 - q, q)
        lo = np.full(q.shape, np.min(self.means - 40.0 * self.stds))
        hi = np.full(q.shape, np.max(self.means + 40.0 * self.stds))
        for _ in range(2100):  # enough to exhaust float64 between any two bracket ends
            middle = 0.5 * (lo + hi)
            if np.all((middle == lo) | (middle == hi)):
                break
            below = np.where(upper, self.sf(middle) > target, self.cdf(middle) < target)
            lo = np.where(below, middle, lo)
            hi = np.where(below, hi, middle)
        x = np.where(upper, lo, hi)
        x = np.where(q <= 0.0, -np.inf, x)
        return np.where(q >= 1.0, np.inf, x)

    # -- moments -------------------------------------------------------------------------------

    def partial_moments(self, lo, hi):
        """``(m0, m1, m2)``, ``m_j = integral_lo^hi x**j p(x) dx`` (broadcasting, infinite ends allowed).

        ``sum_k w_k P_k (1, E_k, V_k + E_k^2)`` with ``P_k``, ``E_k``, ``V_k`` the mass, mean and
        variance of component k restricted to ``[lo, hi]`` (:func:`gaussian_interval_moments`).
        """
        lo, hi = np.broadcast_arrays(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        log_mass, mean, variance = gaussian_interval_moments(self.means, self.stds, lo[..., None],
                                                             hi[..., None])
        mass = self.weights * np.exp(log_mass)
        return (mass.sum(axis=-1), (mass * mean).sum(axis=-1),
                (mass * (variance + mean * mean)).sum(axis=-1))

    def mean(self):
        """``sum_k w_k mu_k``."""
        return float(np.dot(self.weights, self.means))

    def var(self):
        """``sum_k w_k (sigma_k^2 + (mu_k - mean)^2)``."""
        return float(np.dot(self.weights, self.stds ** 2 + (self.means - self.mean()) ** 2))

    def std(self):
        """``sqrt(var())``."""
        return math.sqrt(self.var())

    def sample(self, n, rng=None):
        """``n`` draws: a component by its weight, then its normal."""
        rng = np.random.default_rng(rng)
        component = rng.choice(self.n_components, size=int(n), p=self.weights)
        return self.means[component] + self.stds[component] * rng.standard_normal(int(n))

    def log_likelihood(self, x):
        """``sum_i log p(x_i)`` over the flattened samples ``x``."""
        return float(np.sum(self.logpdf(np.ravel(x))))

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, x, n_components=3, *, init=None, max_iter=1000, tol=1e-10, min_std_fraction=1e-6):
        """Maximum-likelihood mixture of ``n_components`` Gaussians by ordinary EM.

        ``init``: ``(weights, means, stds)`` or None for the default start: equal weights, means
        at the quantiles ``(k + 1/2) / K`` of the data, stds ``std(x) / K``. Stops when the mean
        log-likelihood per sample rises by less than ``tol`` in a step (scikit-learn's rule), or
        after ``max_iter`` steps (then a :class:`ConvergenceWarning`). Each variance is floored
        at ``(min_std_fraction * std(x))^2``: the mixture likelihood is unbounded when a
        component collapses onto one value, and the floor keeps EM out of that singularity.
        """
        caller = "GaussianMixture.fit"
        x = _finite_samples(x, caller)
        _check_spread(x, max(int(n_components), 2), caller)
        _, _, var = _bin_statistics(x, np.empty(0))
        if init is None:
            sub = x if x.size <= _QUANTILE_SUBSAMPLE else x[
                np.random.default_rng(0).integers(0, x.size, _QUANTILE_SUBSAMPLE)]
            init = _default_mixture_start(np.quantile(sub, (np.arange(n_components) + 0.5) / n_components),
                                          math.sqrt(var[0]))
        return _mixture_em(lambda w, m, s: _mixture_em_pass(x, w, m, s), init, x.size,
                           min_std_fraction * math.sqrt(var[0]), max_iter, tol, "samples", caller)

    @classmethod
    def fit_histogram(cls, counts, bin_edges, n_components=3, *, init=None, max_iter=1000,
                      tol=1e-10, min_std_fraction=1e-6):
        """Maximum binned likelihood mixture by EM, positions inside bins as missing data.

        Arguments as :meth:`fit` and :meth:`PiecewiseGaussian.fit_histogram`; the default start
        takes the quantiles and the std from the bin centres.
        """
        caller = "GaussianMixture.fit_histogram"
        counts, bin_edges = _checked_histogram(counts, bin_edges, caller)
        cells = _histogram_cells(counts, bin_edges)
        _without_degenerate_pieces(np.empty(0), cells, max(int(n_components), 2), caller)
        n = counts.sum()
        centre_mean = np.dot(counts, cells.mean) / n
        centre_std = math.sqrt(np.dot(counts, (cells.mean - centre_mean) ** 2) / n)
        if init is None:
            fraction = np.cumsum(counts) / n
            levels = (np.arange(n_components) + 0.5) / n_components
            init = _default_mixture_start(cells.mean[np.searchsorted(fraction, levels)], centre_std)
        return _mixture_em(lambda w, m, s: _mixture_binned_em_pass(cells.lo, cells.hi, counts, w, m, s),
                           init, n, min_std_fraction * centre_std, max_iter, tol, "histogram", caller)

    # -- plain-data form -----------------------------------------------------------------------

    def to_dict(self):
        """The parameters as plain lists (JSON-ready); inverse of :meth:`from_dict`."""
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "stds": self.stds.tolist()}

    @classmethod
    def from_dict(cls, parameters):
        """Rebuild from :meth:`to_dict`'s output."""
        return cls(parameters["weights"], parameters["means"], parameters["stds"])


def _default_mixture_start(means, spread):
    n_components = means.size
    return np.full(n_components, 1.0 / n_components), means, np.full(n_components, spread / n_components)


def _mixture_em(e_step, init, n, min_std, max_iter, tol, source, caller):
    """Ordinary EM for a mixture: ``e_step(w, mu, s) -> (loglik, N_k, S1_k, S2_k)``; M-step
    ``w = N_k / n``, ``mu += S1_k / N_k``, ``s^2 = S2_k / N_k - (S1_k / N_k)^2``.

    Returns the fitted :class:`GaussianMixture` with its :class:`FitInfo`; the log-likelihood
    reported is that of the returned parameters.
    """
    weights, means, stds = (np.array(v, dtype=np.float64) for v in init)
    GaussianMixture(weights, means, stds)  # validates init
    previous = -np.inf
    converged = False
    step = 0
    for step in range(1, int(max_iter) + 1):
        log_likelihood, resp_n, resp_s1, resp_s2 = e_step(weights, means, stds)
        if log_likelihood / n - previous / n < tol:
            converged = True
            break
        previous = log_likelihood
        alive = resp_n > 0
        shift = np.where(alive, resp_s1 / np.where(alive, resp_n, 1.0), 0.0)
        variance = np.where(alive, resp_s2 / np.where(alive, resp_n, 1.0) - shift ** 2, stds ** 2)
        weights = resp_n / resp_n.sum()
        means = means + shift
        stds = np.sqrt(np.maximum(variance, min_std ** 2))
    else:
        log_likelihood = e_step(weights, means, stds)[0]
        warnings.warn(f"{caller}: EM did not converge within max_iter={max_iter} steps (mean "
                      f"log-likelihood {log_likelihood / n!r}, last rise "
                      f"{(log_likelihood - previous) / n!r} per sample, tol={tol!r})",
                      ConvergenceWarning, stacklevel=3)
    model = GaussianMixture(weights, means, stds)
    n_parameters = 3 * weights.size - 1
    model.fit_info = FitInfo(source=source, n_samples=float(n), log_likelihood=float(log_likelihood),
                             iterations=step, converged=converged, n_parameters=n_parameters,
                             bic=-2.0 * log_likelihood + n_parameters * math.log(n))
    return model
