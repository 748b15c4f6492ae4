"""The piecewise Gaussian model (PGM) of a layer's weights or activations (docs/SPECIFICATION.md, section 2).

:class:`PiecewiseGaussian`: K Gaussians, each truncated to its piece ``[b_(k-1), b_k)`` and carrying
the mass ``pi_k``. It behaves like a frozen ``scipy.stats`` distribution (``pdf``, ``logpdf``, ``cdf``,
``sf``, ``ppf``, ``mean``, ``var``, ``sample``) and adds ``partial_moments(lo, hi)``, the integrals of
``x**j p(x)`` over an interval: all the quantizers need for the expected error in closed form.
``PiecewiseGaussian.fit`` and ``fit_histogram`` fit it to samples or a histogram
(:mod:`refquant.density.em`, :mod:`refquant.density.breakpoints`).
"""
import math

import numpy as np
from scipy import special

from refquant.density.breakpoints import _fit_auto_histogram, _fit_auto_samples
from refquant.density.em import (
    _bin_statistics,
    _check_spread,
    _checked_histogram,
    _finite_samples,
    _fit_given_breakpoints,
    _histogram_cells,
    _Options,
    _sample_cells,
    _without_degenerate_pieces,
)
from refquant.density.truncated_normal import _LOG_SQRT_2PI, gaussian_interval_moments
from refquant.validate import check_scale


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

    def __init__(self, breakpoints, weights, means, stds, *, normalize=True):
        self.breakpoints = _validated_breakpoints(breakpoints)
        n_pieces = self.breakpoints.size + 1
        self.weights = _validated_weights(weights, n_pieces, normalize)
        self.means = _validated_vector(means, n_pieces, "means")
        self.stds = _validated_vector(stds, n_pieces, "stds")
        if np.any(self.stds <= 0.0):
            raise ValueError(f"stds must be > 0, got {self.stds.tolist()}")
        for values, name, spread in ((self.breakpoints, "breakpoints", False), (self.means, "means", False),
                                     (self.stds, "stds", True)):
            check_scale(values, "PiecewiseGaussian", name, spread=spread)
        self.edges = np.concatenate([[-np.inf], self.breakpoints, [np.inf]])
        # log Z_k: the log mass of N(mu_k, sigma_k^2) inside its own piece.
        self._log_piece_mass, self._piece_mass, _, _ = gaussian_interval_moments(
            self.means, self.stds, self.edges[:-1], self.edges[1:])
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
        log_mass, mass, _, _ = gaussian_interval_moments(mu, sigma, lo, hi)
        return _mass_ratio(log_mass, mass, self._log_piece_mass[k], self._piece_mass[k])

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
            log_mass, mass, mean, variance = gaussian_interval_moments(self.means[k], self.stds[k],
                                                                       piece_lo, piece_hi)
            mass = self.weights[k] * _mass_ratio(log_mass, mass, self._log_piece_mass[k],
                                                 self._piece_mass[k])
            m0 += mass
            m1 += mass * mean
            m2 += mass * (variance + mean * mean)
        return m0, m1, m2

    def piece_moments(self):
        """``(mean_k, variance_k)``, each (K,): the moments of each truncated piece on its own."""
        _, _, mean, variance = gaussian_interval_moments(self.means, self.stds,
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
    def _from_fit(cls, fit):
        """The model of a :class:`~refquant.density.em.PiecesFit`, carrying its ``fit_info``."""
        model = cls(fit.breakpoints, fit.weights, fit.means, fit.stds)
        model.fit_info = fit.fit_info
        return model

    @classmethod
    def fit(cls, x, breakpoints="auto", *, max_pieces=4, max_iter=1000, tol=1e-9,
            min_piece_samples=5, accelerate=True, profile=True):
        """The PGM of maximum likelihood for the samples ``x`` (any shape; flattened).

        ``breakpoints``: ``"auto"`` (K in 1..``max_pieces`` and the breakpoints chosen by
        likelihood and BIC, docs/SPECIFICATION.md, section 3.6) or a sequence used as is (``[0.0]`` for
        leaky-ReLU activations, ``[]`` for one Gaussian). ``max_iter``: EM steps per piece.
        ``tol``: a piece has converged when its truncated Gaussian's mean and variance match
        the samples', ``|xbar - E| / sigma + |v - V| / sigma^2 <= tol`` (the likelihood
        equations, so this is a distance from the maximum, not merely a small step).
        ``accelerate``: SQUAREM (True) or plain EM (False). ``profile``: a piece EM leaves short
        of ``tol`` after ``max_iter`` steps (a flat ridge) is finished by a search of the
        likelihood's profile over sigma (True), or kept as EM left it (False). Every piece's std
        is bounded by ``SIGMA_BOUND`` times the data's; a piece whose likelihood still rises
        there is fitted on the bound (``fit_info.bounded``). One pass over ``x`` computes each
        piece's (count, mean, variance); EM then never touches the samples again.
        The result carries :class:`FitInfo` in ``fit_info``; a piece that did not converge
        raises a :class:`ConvergenceWarning` with the numbers. Degenerate input: docs/SPECIFICATION.md, section 3.4.
        """
        caller = "PiecewiseGaussian.fit"
        options = _Options(int(max_iter), float(tol), bool(accelerate), int(min_piece_samples),
                           bool(profile))
        x = _finite_samples(x, caller)
        _check_spread(x, options.min_piece_samples, caller)
        if isinstance(breakpoints, str):
            _check_auto(breakpoints, max_pieces, caller)
            return cls._from_fit(_fit_auto_samples(x, int(max_pieces), options, caller))
        breakpoints = _validated_breakpoints(breakpoints)
        edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
        cells = _sample_cells(*_bin_statistics(x, breakpoints), edges)
        return cls._from_fit(_fit_given_breakpoints(breakpoints, cells, "samples", options, caller))

    @classmethod
    def fit_histogram(cls, counts, bin_edges, breakpoints="auto", *, max_pieces=4, max_iter=1000,
                      tol=1e-9, min_piece_samples=5, accelerate=True, profile=True):
        """The PGM of maximum binned likelihood ``sum_j counts[j] log P(bin j)``.

        ``counts``: (B,) counts ``>= 0`` (e.g. summed ``numpy.histogram`` counts of every batch
        of a calibration set over fixed edges); ``bin_edges``: (B+1,) increasing, the outer two
        may be infinite. Within-bin positions are missing data filled in by the E-step (module
        docstring), so no midpoint approximation is made. Given breakpoints must be bin edges.
        Other arguments as in :meth:`fit`.
        """
        caller = "PiecewiseGaussian.fit_histogram"
        options = _Options(int(max_iter), float(tol), bool(accelerate), int(min_piece_samples),
                           bool(profile))
        counts, bin_edges = _checked_histogram(counts, bin_edges, caller)
        cells = _histogram_cells(counts, bin_edges)
        _without_degenerate_pieces(np.empty(0), cells, options.min_piece_samples, caller)
        if isinstance(breakpoints, str):
            _check_auto(breakpoints, max_pieces, caller)
            return cls._from_fit(_fit_auto_histogram(counts, bin_edges, int(max_pieces), options, caller))
        breakpoints = _validated_breakpoints(breakpoints)
        missing = breakpoints[~np.isin(breakpoints, bin_edges[1:-1])]
        if missing.size:
            raise ValueError(f"{caller}: breakpoints {missing.tolist()} are not inner bin edges; "
                             f"add them to bin_edges so that no bin straddles a breakpoint")
        return cls._from_fit(_fit_given_breakpoints(breakpoints, cells, "histogram", options, caller))

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
        """Rebuild from :meth:`to_dict`'s output (keys breakpoints, weights, means, stds), bit for bit:
        the weights are kept as written (checked to sum to 1 within 1e-6), not divided by their sum
        once more, which moves the last bit of about one model in ten."""
        return cls(parameters["breakpoints"], parameters["weights"],
                   parameters["means"], parameters["stds"], normalize=False)


# Below this a mass is subnormal or close to it, and its ratio is taken in log space instead.
_SMALLEST_LINEAR_MASS = 1e-280


def _mass_ratio(log_mass, mass, log_piece_mass, piece_mass):
    """``mass / piece_mass``: the linear masses keep a few ulps (a log of ~-700 holds the mass to
    only ~1e-13); log space where either is too small to be held linearly."""
    with np.errstate(divide="ignore", invalid="ignore"):
        linear = mass / piece_mass
        logarithmic = np.exp(log_mass - log_piece_mass)
    usable = (mass >= _SMALLEST_LINEAR_MASS) & (piece_mass >= _SMALLEST_LINEAR_MASS)
    return np.where(usable, linear, logarithmic)


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


def _validated_weights(weights, size, normalize=True):
    array = _validated_vector(weights, size, "weights")
    if np.any(array < 0.0):
        raise ValueError(f"weights must be >= 0, got {array.tolist()}")
    total = array.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got sum {total!r} for {array.tolist()}")
    return array / total if normalize else array


def _check_auto(breakpoints, max_pieces, caller):
    if breakpoints != "auto":
        raise ValueError(f"{caller}: breakpoints must be 'auto' or a sequence of numbers, "
                         f"got {breakpoints!r}")
    if not 1 <= int(max_pieces) <= 8:
        raise ValueError(f"{caller}: max_pieces must be in 1..8, got {max_pieces}")
