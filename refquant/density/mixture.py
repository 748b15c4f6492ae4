"""The Gaussian mixture, the comparison model of the PGM (docs/SPECIFICATION.md, section 3.7).

:class:`GaussianMixture` has the PGM's interface (``pdf``, ``cdf``, ``partial_moments``, ``fit``,
``fit_histogram``); its EM iterates are scikit-learn's ``GaussianMixture``'s, which the tests check.
"""
import math
import warnings

import numba
import numpy as np
from scipy import special

from refquant.density.breakpoints import _QUANTILE_SUBSAMPLE
from refquant.density.em import (
    ConvergenceWarning,
    FitInfo,
    _bin_statistics,
    _check_spread,
    _checked_histogram,
    _finite_samples,
    _histogram_cells,
    _without_degenerate_pieces,
)
from refquant.density.pgm import _validated_vector, _validated_weights
from refquant.density.truncated_normal import _LOG_SQRT_2PI, _truncated_moments, gaussian_interval_moments


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
        _, mass, mean, variance = gaussian_interval_moments(self.means, self.stds, lo[..., None],
                                                            hi[..., None])
        mass = self.weights * mass
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
