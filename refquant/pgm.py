"""Piecewise Gaussian models (PGM) of a layer's weights or activations (METHOD.md, section 1).

Breakpoints ``b_1 < ... < b_(K-1)`` split the real line into K pieces
``[b_(k-1), b_k)`` with ``b_0 = -inf`` and ``b_K = +inf`` (a value equal to a
breakpoint belongs to the piece on its right). On piece k the density is the
Gaussian ``N(mu_k, sigma_k^2)`` truncated to the piece and scaled to carry the
mass ``pi_k`` (``sum pi_k = 1``)::

    p(x) = pi_k * phi((x - mu_k) / sigma_k) / (sigma_k * Z_k),     x in piece k
    Z_k  = Phi((b_k - mu_k) / sigma_k) - Phi((b_(k-1) - mu_k) / sigma_k)

``PiecewiseGaussian`` behaves like a frozen ``scipy.stats`` distribution
(``pdf``, ``logpdf``, ``cdf``, ``sf``, ``ppf``, ``mean``, ``var``, ``sample``)
and adds ``partial_moments(lo, hi)``, the integrals of ``x**j p(x)`` over any
interval, which is all ``refquant.intervals`` needs to compute the expected
quantization error in closed form.

Numerics. Every Gaussian integral over an interval goes through
:func:`truncated_standard_normal`, which works in log space for the mass and
uses the scaled complementary error function ``erfcx(t) = exp(t^2) erfc(t)``
in the tails, so that masses, means and variances stay accurate 30 or 3000
standard deviations out (where ``Phi(b) - Phi(a)`` would be ``0 - 0``).
"""
import math

import numpy as np
from scipy import special

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# The truncated-normal integrals everything else is built from
# ----------------------------------------------------------------------------------------------

def truncated_standard_normal(alpha, beta, width=None):
    """Mass, mean and variance of the standard normal restricted to ``[alpha, beta]``.

    ``alpha``, ``beta``: broadcastable float arrays, ``-inf <= alpha``, ``beta <= +inf``.
    Returns ``(log_mass, mean, variance)`` with the broadcast shape::

        log_mass = log(Phi(beta) - Phi(alpha))
        mean     = (phi(alpha) - phi(beta)) / (Phi(beta) - Phi(alpha))
        variance = 1 + (alpha phi(alpha) - beta phi(beta)) / (Phi(beta) - Phi(alpha)) - mean^2

    (the textbook truncated-normal moments; Johnson, Kotz & Balakrishnan, *Continuous
    Univariate Distributions* vol. 1, ch. 13). Where ``alpha >= beta`` the interval is empty:
    ``log_mass = -inf``, ``mean = variance = 0``. ``width``, if given, is ``beta - alpha``
    computed more accurately by the caller (e.g. ``(hi - lo) / sigma`` rather than the difference
    of two standardised values, which loses digits when the interval is narrow).

    How it stays accurate. An interval on the left of 0 is mirrored to the right
    (mean changes sign). An interval straddling 0 uses ``erf`` differences, which add
    two terms of opposite sign and never cancel. An interval ``0 <= alpha < beta`` is
    written with ``erfcx(t) = exp(t^2) erfc(t)`` and the common factor ``exp(-alpha^2/2)``
    taken out, with ``d = exp(-(beta^2 - alpha^2)/2)``::

        Phi(beta) - Phi(alpha) = exp(-alpha^2/2) * (erfcx(alpha/sqrt2) - d erfcx(beta/sqrt2)) / 2
        phi(alpha) - phi(beta) = exp(-alpha^2/2) * (1 - d) / sqrt(2 pi)

    so no quantity underflows before the ratio is taken.
    """
    alpha, beta = np.broadcast_arrays(np.asarray(alpha, dtype=np.float64),
                                      np.asarray(beta, dtype=np.float64))
    empty = ~(alpha < beta)
    mirror = beta <= 0.0  # wholly on the left (or empty): use the right-hand formulas on [-beta, -alpha]
    lo = np.where(mirror, -beta, alpha)
    hi = np.where(mirror, -alpha, beta)
    straddle = lo < 0.0  # then hi > 0 too
    with np.errstate(all="ignore"):
        log_mass_t, mean_t, second_t = _right_side_moments(np.where(straddle, 0.0, lo), hi)
        log_mass_s, mean_s, second_s = _straddling_moments(np.where(straddle, lo, -1.0),
                                                           np.where(straddle, hi, 1.0))
        log_mass = np.where(straddle, log_mass_s, log_mass_t)
        mean = np.where(straddle, mean_s, mean_t)
        second = np.where(straddle, second_s, second_t)
        variance = np.maximum(second - mean * mean, 0.0)
        mean = np.where(mirror, -mean, mean)
    narrow = ~empty & np.isfinite(alpha) & np.isfinite(beta)
    with np.errstate(invalid="ignore"):  # inf - inf where an end is infinite: not narrow anyway
        width = beta - alpha if width is None else np.broadcast_to(width, alpha.shape)
        half_width = np.where(narrow, 0.5 * width, 0.0)
        centre = np.where(narrow, 0.5 * (beta + alpha), 0.0)
    narrow &= half_width * (np.abs(centre) + half_width) <= _NARROW_LIMIT
    if np.any(narrow):
        log_mass, mean, variance = (np.array(a, dtype=np.float64) for a in (log_mass, mean, variance))
        log_mass[narrow], mean[narrow], variance[narrow] = _narrow_moments(centre[narrow],
                                                                           half_width[narrow])
    log_mass = np.where(empty, -np.inf, log_mass)
    mean = np.where(empty, 0.0, mean)
    variance = np.where(empty, 0.0, variance)
    return log_mass, mean, variance


# An interval is "narrow" when the exponent of phi varies by at most about 2 * _NARROW_LIMIT over
# it; there the closed forms above lose digits to cancellation (their error grows like 1/width^2
# for the variance), while an 8-point Gauss-Legendre rule is exact to ~1e-18 (the integrand is
# exp of a quadratic whose range is < 0.5: Taylor remainder 0.5**16 / 16! < 1e-17).
_NARROW_LIMIT = 0.25
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _narrow_moments(centre, half_width):
    """``(log mass, mean, variance)`` of N(0,1) on ``[centre - h, centre + h]`` for a narrow interval.

    With ``z = centre + y``: ``phi(z) = phi(centre) exp(-centre y - y^2/2)``, so the mass is
    ``phi(centre) * I0`` and the moments of y are ``I1/I0``, ``I2/I0`` with
    ``Ij = integral_{-h}^{h} y^j exp(-centre y - y^2/2) dy`` by Gauss-Legendre (nodes scaled to h).
    The variance ``I2/I0 - (I1/I0)^2`` keeps all its digits: ``(I1/I0)^2 <= I2/I0 / 10`` here.
    """
    y = half_width[:, None] * _LEGENDRE_NODES
    integrand = np.exp(-centre[:, None] * y - 0.5 * y * y) * _LEGENDRE_WEIGHTS
    i0 = integrand.sum(axis=1)
    i1 = (integrand * y).sum(axis=1)
    i2 = (integrand * y * y).sum(axis=1)
    log_mass = -0.5 * centre * centre - _LOG_SQRT_2PI + np.log(half_width * i0)
    shift = i1 / i0
    return log_mass, centre + shift, i2 / i0 - shift * shift


def _right_side_moments(alpha, beta):
    """``(log mass, mean, second moment)`` of N(0,1) on ``[alpha, beta]``, ``0 <= alpha < beta <= inf``.

    The erfcx form of :func:`truncated_standard_normal`; ``beta = inf`` gives ``d = 0``.
    """
    half_gap = 0.5 * (beta - alpha) * (beta + alpha)  # (beta^2 - alpha^2)/2 without cancelling
    d = np.exp(-half_gap)
    one_minus_d = -np.expm1(-half_gap)
    denominator = special.erfcx(alpha / _SQRT2) - d * special.erfcx(beta / _SQRT2)
    beta_d = np.where(np.isinf(beta), 0.0, beta * d)
    log_mass = -0.5 * alpha * alpha + np.log(0.5 * denominator)
    mean = _SQRT_2_OVER_PI * one_minus_d / denominator
    second = 1.0 + _SQRT_2_OVER_PI * (alpha - beta_d) / denominator
    return log_mass, mean, second


def _straddling_moments(alpha, beta):
    """``(log mass, mean, second moment)`` of N(0,1) on ``[alpha, beta]``, ``alpha < 0 < beta``."""
    mass = 0.5 * (special.erf(beta / _SQRT2) - special.erf(alpha / _SQRT2))
    phi_alpha = np.exp(-0.5 * alpha * alpha - _LOG_SQRT_2PI)
    phi_beta = np.exp(-0.5 * beta * beta - _LOG_SQRT_2PI)
    alpha_phi = np.where(np.isinf(alpha), 0.0, alpha * phi_alpha)
    beta_phi = np.where(np.isinf(beta), 0.0, beta * phi_beta)
    mean = (phi_alpha - phi_beta) / mass
    second = 1.0 + (alpha_phi - beta_phi) / mass
    return np.log(mass), mean, second


def gaussian_interval_moments(mu, sigma, lo, hi):
    """Mass, mean and variance of ``N(mu, sigma^2)`` restricted to ``[lo, hi]``.

    Broadcasts over all four arguments. Returns ``(log_mass, mean, variance)`` where
    ``log_mass = log P(lo <= X <= hi)`` and ``mean``, ``variance`` are those of X given
    ``lo <= X <= hi`` (0 and 0 for an empty interval).
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf for an infinite interval: width unused there
        width = (hi - lo) / sigma
    log_mass, mean_z, var_z = truncated_standard_normal((lo - mu) / sigma, (hi - mu) / sigma, width)
    return log_mass, mu + sigma * mean_z, sigma * sigma * var_z


def _log_normal_cdf_difference(alpha, beta):
    """``log(Phi(beta) - Phi(alpha))`` for ``alpha <= beta``, accurate in both tails."""
    return truncated_standard_normal(alpha, beta)[0]


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
        self._log_piece_mass = _log_normal_cdf_difference((self.edges[:-1] - self.means) / self.stds,
                                                          (self.edges[1:] - self.means) / self.stds)
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
        log_mass = _log_normal_cdf_difference((lo - mu) / sigma, (hi - mu) / sigma)
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
