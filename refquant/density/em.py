"""Fitting a PGM's pieces by EM, with given breakpoints (docs/SPECIFICATION.md, section 3).

Each piece's (mu, sigma) is the maximum-likelihood truncated Gaussian, found by EM with the draws
that fell outside the piece as missing data, accelerated by SQUAREM (Varadhan & Roland 2008, a
two-step extrapolation of EM that falls back to plain EM when it does not raise the likelihood).
Samples enter only through per-cell sufficient statistics (count, mean, variance), so a step costs
the same for 100 samples or 10^9; histogram bins are cells whose positions are missing data too.
The estimate is the maximum over stds at most ``SIGMA_BOUND`` times the data's: a tail piece whose
likelihood has no finite maximum is fitted on that bound (:func:`_fit_on_bound`), and a piece EM
leaves on a flat ridge is finished by a search of the likelihood's profile (:func:`_fit_profile`),
so the result is the constrained maximum whatever path EM took (docs/SPECIFICATION.md, section 3.3).
Also here: the fit's outcome (:class:`FitInfo`, :class:`DegenerateDataError`,
:class:`ConvergenceWarning`) and the input checks of every fit.
"""
import dataclasses
import math
import warnings

import numba
import numpy as np

from refquant.density.truncated_normal import _LOG_SQRT_2PI, _interval_moments
from refquant.validate import check_scale, finite_samples


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
    - ``bounded``: pieces whose std is at the bound ``SIGMA_BOUND`` times the data's std, their
      likelihood having no finite maximum (docs/SPECIFICATION.md, section 3.3).
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
    bounded: tuple = ()


@numba.njit(cache=True)
def _cell_moments(c, mu, sigma, cell_lo, cell_hi, cell_count, cell_mean, cell_var, censored):
    """``(mean, variance, log-likelihood)`` of cell c at ``N(mu, sigma^2)``: a censored cell's
    conditional mean and variance and ``count log P(cell)``; an exact cell's own statistics and
    ``sum log phi((x - mu)/sigma) / sigma`` over its samples (without the piece's ``- log Z``)."""
    count = cell_count[c]
    var = sigma * sigma
    if censored[c]:
        log_mass, _, m, v = _interval_moments(mu, sigma, cell_lo[c], cell_hi[c])
        return m, v, count * log_mass
    m = cell_mean[c]
    v = cell_var[c]
    return m, v, count * (-0.5 * math.log(var) - _LOG_SQRT_2PI - (v + (m - mu) ** 2) / (2.0 * var))


@numba.njit(cache=True)
def _em_step(piece_lo, piece_hi, mu, var, cell_lo, cell_hi, cell_count, cell_mean, cell_var,
             censored, start, stop):
    """One EM step for one piece. Returns ``(mu', var', log-likelihood, residual)``, the last two
    at ``(mu, var)``.

    E-step inside the piece: pool the cells' counts, means and variances (Chan, Golub & LeVeque's
    pairwise update), filling censored cells from ``N(mu, var)`` restricted to the cell. E-step
    outside: the truncation update of docs/SPECIFICATION.md, section 3.2. The log-likelihood is the piece's
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
        m, v, cell_log_likelihood = _cell_moments(c, mu, sigma, cell_lo, cell_hi, cell_count,
                                                  cell_mean, cell_var, censored)
        log_likelihood += cell_log_likelihood
        total = n + count
        delta = m - mean
        mean += delta * count / total
        sum_squares += count * v + delta * delta * n * count / total
        n = total
    variance = sum_squares / n
    log_z, z, e_in, v_in = _interval_moments(mu, sigma, piece_lo, piece_hi)
    log_likelihood -= n * log_z
    gap = mean - e_in
    mu_next = mu + z * gap
    var_next = var + z * (variance - v_in) + z * gap * ((mean - mu) + (e_in - mu) - z * gap)
    residual = abs(gap) / sigma + abs(variance - v_in) / var
    return mu_next, var_next, log_likelihood, residual


@numba.njit(cache=True)
def _score_at(piece_lo, piece_hi, mu, var, cell_lo, cell_hi, cell_count, cell_mean, cell_var,
              censored, start, stop):
    """``(l, dl/dtheta1, d2l/dtheta1^2, dl/dtheta2)`` of one piece at ``(mu, var)``, in the natural
    parameters ``theta = (mu/var, -1/(2 var))``.

    For an exponential family the derivatives of ``log P(cell)`` are its conditional moments:
    ``dl/dtheta1 = sum_c n_c (E_c - E)``, ``d2l/dtheta1^2 = sum_c n_c (V_c - V)`` (an exact
    sample has no curvature: ``V_c = 0``), ``dl/dtheta2 = sum_c n_c (E_c[x^2] - E[x^2])``, with
    ``E``, ``V`` those of the piece's truncated Gaussian.
    """
    sigma = math.sqrt(var)
    log_z, _, e_in, v_in = _interval_moments(mu, sigma, piece_lo, piece_hi)
    log_likelihood = 0.0
    gradient1 = 0.0
    curvature = 0.0
    gradient2 = 0.0
    for c in range(start, stop):
        count = cell_count[c]
        if count == 0.0:
            continue
        m, v, cell_log_likelihood = _cell_moments(c, mu, sigma, cell_lo, cell_hi, cell_count,
                                                  cell_mean, cell_var, censored)
        log_likelihood += cell_log_likelihood - count * log_z
        gradient1 += count * (m - e_in)
        curvature += count * ((v if censored[c] else 0.0) - v_in)
        gradient2 += count * ((v - v_in) + (m - e_in) * (m + e_in))
    return log_likelihood, gradient1, curvature, gradient2


# Newton on the bound stops when a step moves the mean by at most this many sigmas.
_BOUND_STEP_TOL = 1e-12


@numba.njit(cache=True)
def _fit_on_bound(piece_lo, piece_hi, mu, var_max, cell_lo, cell_hi, cell_count, cell_mean,
                  cell_var, censored, start, stop):
    """The maximum of a piece's likelihood over mu with ``var = var_max`` fixed, by Newton in
    ``theta1 = mu / var_max`` (concave there: a truncation of a log-concave density has a smaller
    variance, so each ``V_c - V <= 0``), halving a step that lowers the likelihood.

    Returns ``(mu, log_likelihood, dl/dtheta2, steps, ok)``; ``ok`` is False when the curvature
    vanishes (no mass left to move), and the caller then falls back to EM.
    """
    args = (cell_lo, cell_hi, cell_count, cell_mean, cell_var, censored, start, stop)
    sigma = math.sqrt(var_max)
    log_likelihood, gradient1, curvature, gradient2 = _score_at(piece_lo, piece_hi, mu, var_max, *args)
    for steps in range(1, 201):
        if not curvature < 0.0 or not math.isfinite(log_likelihood):
            return mu, log_likelihood, gradient2, steps, False
        step = -var_max * gradient1 / curvature
        while True:
            trial = mu + step
            trial_log_likelihood, trial_gradient1, trial_curvature, trial_gradient2 = _score_at(
                piece_lo, piece_hi, trial, var_max, *args)
            if trial_log_likelihood >= log_likelihood or abs(step) <= _BOUND_STEP_TOL * sigma:
                break
            step *= 0.5
        mu = trial
        log_likelihood, gradient1, curvature, gradient2 = (trial_log_likelihood, trial_gradient1,
                                                           trial_curvature, trial_gradient2)
        if abs(step) <= _BOUND_STEP_TOL * sigma:
            return mu, log_likelihood, gradient2, steps, True
    return mu, log_likelihood, gradient2, 200, False


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
def _fit_profile(piece_lo, piece_hi, mu, var, var_max, cell_lo, cell_hi, cell_count, cell_mean,
                 cell_var, censored, start, stop):
    """The maximum of a piece's likelihood with ``var < var_max`` by its profile over
    ``theta2 = -1/(2 var)``: for each theta2, mu maximised by :func:`_fit_on_bound`; the profile's
    slope is the joint likelihood's ``dl/dtheta2`` at that mu (envelope theorem), decreasing in
    theta2 (a profile of a concave function is concave), so its root is bracketed and found by
    the Illinois variant of regula falsi, to ``var`` within 1e-13 relative.

    Used when EM stops at ``max_iter`` short of the maximum (a ridge where EM crawls). Returns
    ``(mu, var, log_likelihood, ok)``; ``ok`` False when no bracket is found.
    """
    args = (cell_lo, cell_hi, cell_count, cell_mean, cell_var, censored, start, stop)
    mu_here, _, slope, _, ok = _fit_on_bound(piece_lo, piece_hi, mu, var, *args)
    if not ok:
        return mu, var, -np.inf, False
    # Bracket [var_a, var_b] with the slope positive at a (rising) and negative at b: from var, x4
    # up to the bound while the slope is positive, /4 down while it is negative.
    var_a, mu_a, slope_a = var, mu_here, slope
    var_b, mu_b, slope_b = var, mu_here, slope
    for _ in range(200):
        if (slope_a > 0.0) != (slope_b > 0.0):
            break
        if slope_b > 0.0:
            if var_b == var_max:
                return mu, var, -np.inf, False  # rises to the bound: the caller's bounded case
            var_a, mu_a, slope_a = var_b, mu_b, slope_b
            var_b = min(4.0 * var_b, var_max)
            mu_b, _, slope_b, _, ok = _fit_on_bound(piece_lo, piece_hi, mu_a, var_b, *args)
        else:
            var_b, mu_b, slope_b = var_a, mu_a, slope_a
            var_a = 0.25 * var_a
            mu_a, _, slope_a, _, ok = _fit_on_bound(piece_lo, piece_hi, mu_b, var_a, *args)
        if not ok:
            return mu, var, -np.inf, False
    else:
        return mu, var, -np.inf, False
    # Illinois regula falsi on slope(theta2), theta2 = -1/(2 var): a < b in theta2 as var_a < var_b.
    theta_a, theta_b = -0.5 / var_a, -0.5 / var_b
    side = 0
    for _ in range(200):
        theta = (theta_a * slope_b - theta_b * slope_a) / (slope_b - slope_a)
        if not theta_a < theta < theta_b:
            theta = 0.5 * (theta_a + theta_b)
        var_t = -0.5 / theta
        mu_t, log_likelihood_t, slope_t, _, ok = _fit_on_bound(piece_lo, piece_hi, 0.5 * (mu_a + mu_b),
                                                               var_t, *args)
        if not ok:
            return mu, var, -np.inf, False
        if slope_t > 0.0:
            theta_a, slope_a, mu_a = theta, slope_t, mu_t
            if side == -1:
                slope_b *= 0.5
            side = -1
        else:
            theta_b, slope_b, mu_b = theta, slope_t, mu_t
            if side == 1:
                slope_a *= 0.5
            side = 1
        if theta_b - theta_a <= 1e-13 * abs(theta_a) or slope_t == 0.0:
            return mu_t, var_t, log_likelihood_t, True
    return mu, var, -np.inf, False


@numba.njit(cache=True)
def _em_fit_pieces(piece_lo, piece_hi, starts, stops, cell_lo, cell_hi, cell_count, cell_mean,
                   cell_var, censored, mu0, var0, var_max, max_steps, tol, accelerate, profile):
    """Each piece p (cells ``starts[p]:stops[p]``) fitted with ``sigma^2 <= var_max``
    (docs/SPECIFICATION.md, section 3.3).

    First the maximum on the bound (:func:`_fit_on_bound`); if the likelihood still rises with
    sigma there (``dl/dtheta2 >= 0``), it is the estimate (``bounded[p]``): the unbounded
    likelihood has no finite maximum, only a supremum as sigma grows without end. Otherwise EM
    (:func:`_em_fit_piece`) from ``(mu0[p], min(var0[p], var_max))``, its result replaced by the
    bound's if it ends above the bound; a piece EM leaves short of ``tol`` after ``max_steps`` is
    finished by the profile search (:func:`_fit_profile`) when ``profile``.
    """
    n_pieces = piece_lo.size
    mu = np.empty(n_pieces)
    var = np.empty(n_pieces)
    log_likelihood = np.empty(n_pieces)
    steps = np.empty(n_pieces, dtype=np.int64)
    converged = np.empty(n_pieces, dtype=np.bool_)
    residual = np.empty(n_pieces)
    bounded = np.zeros(n_pieces, dtype=np.bool_)
    for p in range(n_pieces):
        args = (cell_lo, cell_hi, cell_count, cell_mean, cell_var, censored, starts[p], stops[p])
        mu_bound, log_likelihood_bound, slope, bound_steps, ok = _fit_on_bound(
            piece_lo[p], piece_hi[p], mu0[p], var_max, *args)
        if ok and slope >= 0.0:
            mu[p], var[p], log_likelihood[p] = mu_bound, var_max, log_likelihood_bound
            steps[p], converged[p], residual[p], bounded[p] = bound_steps, True, 0.0, True
            continue
        (mu[p], var[p], log_likelihood[p], steps[p], converged[p],
         residual[p]) = _em_fit_piece(piece_lo[p], piece_hi[p], mu0[p], min(var0[p], var_max), *args,
                                    max_steps, tol, accelerate)
        if ok and var[p] > var_max:
            mu[p], var[p], log_likelihood[p] = mu_bound, var_max, log_likelihood_bound
            converged[p], residual[p], bounded[p] = True, 0.0, True
        elif profile and not converged[p]:
            mu_profile, var_profile, log_likelihood_profile, found = _fit_profile(
                piece_lo[p], piece_hi[p], mu[p], var[p], var_max, *args)
            # EM may already sit at the maximum within rounding (its residual just above tol):
            # the profile's point is kept unless it is lower by more than rounding.
            if found and log_likelihood_profile >= log_likelihood[p] - 1e-12 * abs(log_likelihood[p]):
                _, _, log_likelihood[p], residual[p] = _em_step(piece_lo[p], piece_hi[p], mu_profile,
                                                                 var_profile, *args)
                mu[p], var[p], converged[p] = mu_profile, var_profile, True
    return mu, var, log_likelihood, steps, converged, residual, bounded


# The bound on a piece's std, in units of the std of all the data being fitted: far above any
# piece a Gaussian describes (a piece's own spread is at most the data's), and close enough to
# the limit that a bounded tail differs from the exponential supremum by a curvature of
# 1 / (100 s^2) over data spanning a few s.
SIGMA_BOUND = 10.0


def _sigma_bound(count, mean, var):
    """``SIGMA_BOUND`` times the std of the data given as cells (count, mean, variance)."""
    n = count.sum()
    overall_mean = np.dot(count, mean) / n
    return SIGMA_BOUND * math.sqrt(np.dot(count, var + (mean - overall_mean) ** 2) / n)


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


def _finite_samples(x, caller):
    """``x`` flattened to a 1-D float array (:func:`refquant.validate.finite_samples`: real numbers,
    finite, within the scale the fits compute in); :class:`DegenerateDataError` when empty."""
    try:
        empty = np.size(x) == 0
    except ValueError:  # ragged: finite_samples says so by name
        empty = False
    if empty:
        raise DegenerateDataError(f"{caller}: x is empty; a density cannot be fitted to no samples")
    return finite_samples(x, caller, "x")


def _check_spread(x, min_samples, caller):
    """Raise :class:`DegenerateDataError` if ``x`` has fewer than ``min_samples`` values or one value."""
    if x.size < min_samples:
        raise DegenerateDataError(f"{caller}: only {x.size} values; a fit needs at least "
                                  f"min_piece_samples={min_samples}")
    if x.min() == x.max():
        raise DegenerateDataError(f"{caller}: x is constant (all {x.size} values equal {float(x[0])!r}); "
                                  f"no density with a spread can be fitted")
    check_scale(x.max() - x.min(), caller, "the range of x", spread=True)


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
    occupied = np.flatnonzero(counts > 0)
    ends = bin_edges[[occupied[0], occupied[-1] + 1]]
    ends = ends[np.isfinite(ends)]
    check_scale(bin_edges[np.isfinite(bin_edges)], caller, "bin_edges")
    if ends.size == 2:
        check_scale(ends[1] - ends[0], caller, "the range of the occupied bins", spread=True)
    return counts, bin_edges


def _bin_centres(bin_edges):
    """Centre of each bin; the finite edge for an infinite outer bin."""
    lo, hi = bin_edges[:-1], bin_edges[1:]
    with np.errstate(invalid="ignore"):
        centre = 0.5 * (lo + hi)
    centre = np.where(np.isinf(lo), hi, centre)
    return np.where(np.isinf(hi), lo, centre)


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
    profile: bool = True


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


@dataclasses.dataclass
class PiecesFit:
    """The maximum-likelihood parameters of a PGM with given breakpoints, and how the fit went
    (:meth:`refquant.density.pgm.PiecewiseGaussian.fit` turns it into the model)."""
    breakpoints: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    fit_info: FitInfo

    @property
    def n_pieces(self):
        return self.weights.size


def _fit_given_breakpoints(breakpoints, cells, source, options, caller, n_chosen_breakpoints=0):
    """The PGM of maximum likelihood with these breakpoints, and its :class:`FitInfo`, as a :class:`PiecesFit`.

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
    sigma_max = _sigma_bound(count, mean, var)
    mu, piece_var, log_likelihood, steps, converged, residual, bounded = _em_fit_pieces(
        edges[:-1][fitted], edges[1:][fitted], starts[fitted], stops[fitted], cells.lo, cells.hi,
        cells.count, cells.mean, cells.var, cells.censored, mean[fitted], var[fitted],
        sigma_max ** 2, options.max_iter, options.tol, options.accelerate, options.profile)
    if not converged.all():
        _warn_not_converged(caller, np.flatnonzero(fitted)[~converged], mu[~converged],
                            np.sqrt(piece_var[~converged]), np.sqrt(var[fitted][~converged]),
                            residual[~converged], options)
    means, stds = _placeholder_parameters(edges, sigma_max / SIGMA_BOUND)
    means[fitted] = mu
    stds[fitted] = np.sqrt(piece_var)
    weights = count / n
    total_log_likelihood = float(np.sum(count[fitted] * np.log(weights[fitted])) + log_likelihood.sum())
    n_parameters = 3 * int(fitted.sum()) - 1 + n_chosen_breakpoints
    return PiecesFit(breakpoints, weights, means, stds, FitInfo(source=source, n_samples=float(n), log_likelihood=total_log_likelihood,
                             iterations=int(steps.max()), converged=bool(converged.all()),
                             n_parameters=n_parameters,
                             bic=-2.0 * total_log_likelihood + n_parameters * math.log(n),
                             merged_breakpoints=merged,
                             bounded=tuple(int(k) for k in np.flatnonzero(fitted)[bounded])))


def _warn_not_converged(caller, pieces, means, stds, sample_stds, residuals, options):
    """The :class:`ConvergenceWarning` for pieces whose EM stopped at ``max_iter``, with the numbers."""
    details = "; ".join(f"piece {k}: mean {m:.6g}, std {s:.6g} (samples' std {v:.6g}), moment "
                        f"residual {r:.3g}" for k, m, s, v, r in zip(pieces, means, stds, sample_stds,
                                                                    residuals))
    warnings.warn(f"{caller}: EM did not converge for pieces {pieces.tolist()} within max_iter="
                  f"{options.max_iter} steps (tol={options.tol:g}): {details}. The estimates are "
                  f"usable but short of the maximum (fit with profile=True to finish them by a search "
                  f"of the likelihood's profile over the std).",
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
