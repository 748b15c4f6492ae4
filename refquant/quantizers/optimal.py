"""The optimal quantizer: the global minimiser of the expected error over step and zero point
under the quantizer's constraints (docs/SPECIFICATION.md, section 6).

A lattice scan of the error over (step, zero point) followed by cubic-Hermite refinement of each
local minimum; :func:`optimal_quantizer`'s docstring says why the result is global.
"""
import dataclasses
import math

import numpy as np

from refquant.quantizers.uniform import UniformQuantizer, _check_bits, code_range
from refquant.rounding import round_half_even


def _scan(dist, mean, var, steps, phases, qmin, qmax, z_first, z_last):
    """Error and its derivatives for each row (step, phase) and each integer part of the zero point.

    Row r has levels ``steps[r] * (q - z + phases[r])`` for codes ``q = qmin..qmax``, i.e. zero
    point ``z - phases[r]``, for every integer ``z`` in ``[z_first, z_last]``.
    ``steps``, ``phases``: (R,). Returns ``(error, d_error/d_log_step, d_error/d_phase)``, each (R, Z).
    """
    steps = np.asarray(steps, dtype=np.float64)[:, None]
    phases = np.asarray(phases, dtype=np.float64)[:, None]
    lattice = np.arange(qmin - z_last + 1, qmax - z_first + 1)     # edge j lies below level j
    edge_position = lattice + phases - 0.5                           # (R, J), in steps
    edges = steps * edge_position
    anchor = round_half_even(mean / steps - phases)                  # (R, 1) level nearest the mean
    left = lattice <= anchor
    with np.errstate(invalid="ignore"):
        m0, m1, _ = dist.partial_moments(np.where(left, -np.inf, edges), np.where(left, edges, np.inf))
    tail = edges * m0 - m1
    g = np.where(left, tail, -tail)                                  # G(e) >= 0
    slope = np.where(left, m0, -m0)                                  # G'(e)
    zeros = np.zeros((edges.shape[0], 1))
    cum_g = np.concatenate([zeros, np.cumsum(g, axis=1)], axis=1)
    cum_slope = np.concatenate([zeros, np.cumsum(slope, axis=1)], axis=1)
    cum_moment = np.concatenate([zeros, np.cumsum(slope * edge_position, axis=1)], axis=1)

    z = np.arange(z_first, z_last + 1)
    first = qmin - z + 1 - lattice[0]                               # (Z,) first edge of zero point z
    stop = qmax - z + 1 - lattice[0]                                # one past its last edge
    sum_g = cum_g[:, stop] - cum_g[:, first]
    sum_slope = cum_slope[:, stop] - cum_slope[:, first]
    sum_moment = cum_moment[:, stop] - cum_moment[:, first]
    anchor_position = np.clip(anchor, qmin - z, qmax - z) + phases   # (R, Z): clipped to the grid
    bias = mean - steps * anchor_position
    error = var + bias * bias - 2.0 * steps * sum_g
    d_step = -2.0 * anchor_position * bias - 2.0 * sum_g - 2.0 * steps * sum_moment
    d_phase = -2.0 * steps * bias - 2.0 * steps * steps * sum_slope
    return error, steps * d_step, d_phase


def _errors_at(dist, mean, var, steps, zero_points, qmin, qmax):
    """:func:`_scan` for one quantizer per row: ``(error, d/dlog_step, d/dzero_point)``, each (R,)."""
    error, d_log_step, d_phase = _scan(dist, mean, var, steps, -np.asarray(zero_points, dtype=np.float64),
                                       qmin, qmax, 0, 0)
    return error[:, 0], d_log_step[:, 0], -d_phase[:, 0]


def _cubic_minimizer(t0, f0, d0, t1, f1, d1):
    """Minimiser of the cubic with values f and slopes d at t0, t1 (Nocedal & Wright, eq. 3.59).

    For a bracket ``d0 < 0 < d1`` it lies strictly between t0 and t1.
    """
    with np.errstate(invalid="ignore", divide="ignore"):  # t0 == t1: not finite, bisect instead
        theta = d0 + d1 - 3.0 * (f0 - f1) / (t0 - t1)
        gamma = np.sign(t1 - t0) * np.sqrt(np.maximum(theta * theta - d0 * d1, 0.0))
        t = t1 - (t1 - t0) * (d1 + gamma - theta) / (d1 - d0 + 2.0 * gamma)
    return np.where(np.isfinite(t), t, 0.5 * (t0 + t1))


def _hermite_value(t0, f0, d0, t1, f1, d1, t):
    """Value at t of the cubic Hermite interpolant of (f, d) at t0 and t1."""
    h = t1 - t0
    u = (t - t0) / h
    return ((2 * u**3 - 3 * u**2 + 1) * f0 + (u**3 - 2 * u**2 + u) * h * d0
            + (-2 * u**3 + 3 * u**2) * f1 + (u**3 - u**2) * h * d1)


@dataclasses.dataclass
class _Problem:
    """What the search needs: the density, its moments, the codes and which zero points are allowed."""
    dist: object
    mean: float
    var: float
    qmin: int
    qmax: int
    integer_zero_point: bool
    z_first: int = 0        # integer zero points searched (integer_zero_point only)
    z_last: int = 0

    def scan(self, steps):
        """Errors on a grid: ``(row_steps, error, slope, position)``, the last three (R, Z).

        Each column follows one path as the step changes, ``slope`` is d error / d log step along
        it and ``position`` labels it (:meth:`zero_point` turns it into the zero point).

        - Integer zero point: rows are the steps, columns the zero points ``z_first..z_last``;
          the path is "zero point fixed", ``position`` is the zero point.
        - Free zero point: rows are (step, phase) pairs, :data:`_PHASES` phases per step, columns
          the integer offsets whose interval holds the mean (the optimum's does: there
          d error / d zero point = 0, i.e. E[Q(X)] = E[X], and Q(X) lies in [lo, hi]). The path
          keeps the levels' positions relative to the mean in steps, ``position`` = the code of
          the mean, ``zero_point + mean / step``.
        """
        steps = np.asarray(steps, dtype=np.float64)
        if self.integer_zero_point:
            error, slope, _ = _scan(self.dist, self.mean, self.var, steps, np.zeros_like(steps),
                                    self.qmin, self.qmax, self.z_first, self.z_last)
            position = np.broadcast_to(np.arange(self.z_first, self.z_last + 1, dtype=np.float64),
                                       error.shape)
            return steps, error, slope, position
        row_steps = np.repeat(steps, _PHASES)
        # Levels step * (code - offset + phase) with phase = mean / step + fraction: level index 0
        # sits a fraction of a step from the mean, at every step.
        fraction = np.tile(np.arange(_PHASES) / _PHASES, steps.size)
        phases = self.mean / row_steps + fraction
        error, d_log_step, d_phase = _scan(self.dist, self.mean, self.var, row_steps, phases,
                                           self.qmin, self.qmax, self.qmin - 1, self.qmax + 1)
        # Along the path d phase / d log step = -mean / step.
        slope = d_log_step - (self.mean / row_steps)[:, None] * d_phase
        offsets = np.arange(self.qmin - 1, self.qmax + 2, dtype=np.float64)
        position = offsets[None, :] - fraction[:, None]
        return row_steps, error, slope, position

    def zero_point(self, position, step):
        """The zero point of the path ``position`` (see :meth:`scan`) at ``step``."""
        return position if self.integer_zero_point else position - self.mean / step

    def errors_at(self, steps, zero_points):
        return _errors_at(self.dist, self.mean, self.var, steps, zero_points, self.qmin, self.qmax)


_PHASES = 8              # phases per step scanned for a free zero point (then refined continuously)


_SCAN_BUDGET = 4096      # lattice points per scan: about 3 ms of partial_moments for 3 pieces


_REFINE_BUDGET = 512     # edges per refinement call: sets how many local minima are refined


_CANDIDATES = 4          # (exponent, offset) rows refined for a power-of-two step and free offset


_POW2_RANGE = 10.0       # power-of-two steps: exponents covering [s0 / 10, 10 s0], widened while needed


def optimal_quantizer(dist, bits, zero_representable=True, symmetric=False, pow2_step=False,
                      narrow_range=False):
    """The ``bits``-bit uniform quantizer minimising :func:`expected_mse` under ``dist``.

    Constraints (docs/SPECIFICATION.md, section 6):

    - ``symmetric=True``: signed codes (:func:`code_range`, ``narrow_range`` optional), zero point
      0 (the weights' default). Only the step is searched.
    - ``zero_representable=True`` (default): unsigned codes ``[0, 2**bits - 1]`` and an integer
      zero point, searched over ALL of ``0..2**bits - 1``.
    - ``zero_representable=False``: the classic problem (Max 1960), unsigned codes, real zero point
      (a free grid offset).
    - ``pow2_step=True``: the step is a power of two ``2**e`` (pure fixed point).

    How the global optimum is found. For a fixed zero point (or a fixed position of the levels
    relative to the mean, for a free one) the error is a continuously differentiable function of
    ``t = log step``: the density is integrated, never sampled.

    1. Scan every zero point on a grid of steps. The steps are log-spaced around ``s0``, the step
       whose interval spans the quantiles ``1/(2n)`` and ``1 - 1/(2n)`` of ``dist`` (stretched by
       1.3, and to hold 0 when 0 must be representable). Their number G spends a budget of
       :data:`_SCAN_BUDGET` lattice points: over ``s0 / 10 .. 10 s0``, 256 steps up to 3 bits
       and 136 at 4 bits (spacing ratio < 1.04); over ``s0 / 2 .. 2 s0``, 8 steps at 8 bits
       (ratio 1.22, where the error is smooth in the step; 16 for symmetric codes). For each
       step ONE call of ``partial_moments`` on the lattice of all cell edges gives the error and
       its derivative in t for EVERY integer zero point at once, by prefix sums (see the comment
       above :func:`_scan`); a free zero point is scanned on 8 phases per step times every
       integer offset whose interval holds the mean (at a free optimum the interval does hold
       it). The range is widened at an end, by its half-width, while the smallest error scanned
       lies at that end.
    2. Bracket: for every zero point (and phase), every grid interval where the derivative in t
       changes sign from - to + holds a local minimum; its value is predicted by the cubic
       Hermite interpolant of (log error, its slope) at the two ends. A local minimum can only
       be missed if a local maximum lies in the same grid interval.
    3. Refine the best predicted minima (8 below 6 bits, 2 at 8 bits): for an integer zero point,
       a safeguarded cubic interpolation search in t inside the bracket, all candidates in one
       call per iteration (3-4 iterations); for a free zero point, Newton's method on (t, position
       of the mean in steps) with analytic gradients, also all candidates in one call per iteration. With ``pow2_step`` every exponent in the (widened)
       range and every integer zero point is evaluated exactly; only a free zero point is refined.
    4. Return the best refined candidate; it is never worse than the best point scanned.

    The multi-basin cases (narrow clusters: up to 7 local minima over the step) and every mode
    are tested against brute-force grids in tests/test_intervals.py, the free Gaussian case
    against Max's (1960) table.
    """
    _check_bits(bits, "optimal_quantizer")
    if symmetric and not zero_representable:
        raise ValueError("optimal_quantizer: symmetric=True fixes zero_point = 0, which is "
                         "representable; pass zero_representable=True")
    if narrow_range and not symmetric:
        raise ValueError("optimal_quantizer: narrow_range applies to symmetric (signed) codes only")
    qmin, qmax = code_range(bits, signed=symmetric, narrow_range=narrow_range)
    problem = _Problem(dist, float(dist.mean()), float(dist.var()), qmin, qmax,
                       integer_zero_point=zero_representable)
    if zero_representable and not symmetric:
        problem.z_first, problem.z_last = qmin, qmax
    if not (math.isfinite(problem.var) and problem.var > 0.0):
        raise ValueError(f"optimal_quantizer: dist must have a finite variance > 0, got {problem.var}")
    center = _initial_step(dist, qmin, qmax, zero_representable, symmetric)
    if pow2_step:
        step, zero_point = _search_pow2(problem, center)
    else:
        step, zero_point = _search(problem, center)
    return UniformQuantizer(step, zero_point, qmin, qmax)


def _initial_step(dist, qmin, qmax, zero_representable, symmetric):
    """Centre of the first scan: a step whose interval holds all but 1/n of the mass (times 1.3)."""
    n = qmax - qmin + 1
    low, high = (float(v) for v in dist.ppf(np.array([0.5 / n, 1.0 - 0.5 / n])))
    if symmetric:
        span = 2.0 * max(abs(low), abs(high))
    elif zero_representable:
        span = max(high, 0.0) - min(low, 0.0)
    else:
        span = high - low
    return 1.3 * span / (qmax - qmin)


def _scan_widened(problem, center):
    """Scan log-spaced steps around ``center`` (:func:`_scan_plan`), widening until the best is inside.

    Returns ``(t, *problem.scan(exp(t)))`` with ``t`` the (G,) log steps.
    """
    num_steps, half_width = _scan_plan(problem)
    t_low, t_high = math.log(center) - half_width, math.log(center) + half_width
    spacing = (t_high - t_low) / (num_steps - 1)
    for _ in range(64):
        t = np.arange(t_low, t_high + 0.5 * spacing, spacing)
        steps, error, slope, position = problem.scan(np.exp(t))
        rows_per_step = steps.size // t.size
        best_step_index = int(np.argmin(np.nanmin(error, axis=1))) // rows_per_step
        if 0 < best_step_index < t.size - 1:
            return t, steps, error, slope, position
        if best_step_index == 0:
            t_low -= half_width
        else:
            t_high += half_width
    raise ValueError("optimal_quantizer: the error keeps decreasing at the end of the step range; "
                       f"is the density degenerate? (last range [{math.exp(t_low)}, {math.exp(t_high)}])")


def _scan_plan(problem):
    """``(G, R)``: G steps scanned (the lattice-point budget over the lattice length, 8 to 256) over
    ``log step`` in ``log s0 +- R``, R from log 10 (wide, when lattices are cheap: low bit widths)
    down to log 2 (8 steps at 8 bits, spacing ratio 1.22, where the error is smooth in the step)."""
    lattice = (problem.qmax - problem.qmin) + (problem.z_last - problem.z_first
                                               if problem.integer_zero_point else 2)
    per_step = lattice * (1 if problem.integer_zero_point else _PHASES)
    num_steps = int(np.clip(_SCAN_BUDGET // per_step, 8, 256))
    return num_steps, float(np.clip(0.02 * num_steps, math.log(2.0), math.log(10.0)))


def _search(problem, center):
    """Scan, bracket and refine (steps 1-4 of :func:`optimal_quantizer`) for a real step."""
    t, steps, error, slope, position = _scan_widened(problem, center)
    best = np.unravel_index(np.nanargmin(error), error.shape)
    result = (steps[best[0]], problem.zero_point(position[best], steps[best[0]]), error[best])
    # Brackets: consecutive steps on the same path (column, and phase row) with slope - then +.
    # The minimum is predicted by cubic Hermite interpolation of log(error), smoother in t.
    shape = (t.size, steps.size // t.size, error.shape[1])
    f, d = np.log(error).reshape(shape), (slope / error).reshape(shape)
    position = position.reshape(shape)
    t0 = np.broadcast_to(t[:-1, None, None], f[:-1].shape)
    t1 = np.broadcast_to(t[1:, None, None], f[1:].shape)
    bracket = (d[:-1] < 0.0) & (d[1:] > 0.0)
    t_min = _cubic_minimizer(t0, f[:-1], d[:-1], t1, f[1:], d[1:])
    predicted = np.where(bracket, _hermite_value(t0, f[:-1], d[:-1], t1, f[1:], d[1:], t_min), np.inf)
    order = np.argsort(predicted, axis=None)[:_num_candidates(problem)]
    order = order[np.isfinite(predicted.ravel()[order])]
    g, row, column = np.unravel_index(order, predicted.shape)
    if order.size == 0:
        candidates = []
    elif problem.integer_zero_point:
        ends = [(t[g + k], f[g + k, row, column], d[g + k, row, column]) for k in (0, 1)]
        candidates = _refine_step(problem, position[g, row, column], ends[0], ends[1], t_min[g, row, column])
    else:
        candidates = _refine_free(problem, t_min[g, row, column], position[g, row, column])
    return _tie_broken([result] + list(candidates), problem.integer_zero_point)


def _num_candidates(problem):
    """How many local minima to refine: up to 8, fewer at high bit widths (about 512 edges a call)."""
    return int(np.clip(_REFINE_BUDGET // (problem.qmax - problem.qmin), 2, 8))


def _refine_step(problem, zero_points, bracket_low, bracket_high, t_start, max_iter=40):
    """Minimise over t = log step for each fixed zero point, all at once, inside its bracket.

    ``bracket_low``, ``bracket_high``: ``(t, log error, d log error / dt)`` arrays at the bracket
    ends from the scan (slope - at the low end, + at the high end); ``t_start`` the first guess.
    Safeguarded cubic interpolation of log(error) through the last two iterates (first: the guess
    and the nearer bracket end), bisection when that leaves the bracket; stops when the slope of
    log(error) is below 1e-8, the next move below 1e-7 (then the error is within about 1e-13 of
    the minimum's: it is quadratic there, curvature ~30) or the bracket is 1e-12 wide.
    Returns a list of (step, zero_point, error) at the best point evaluated.
    """
    zero_points = np.asarray(zero_points, dtype=np.float64)
    a, b = bracket_low[0].copy(), bracket_high[0].copy()
    t = np.asarray(t_start, dtype=np.float64).copy()
    nearer_low = (t - a) < (b - t)
    previous = [np.where(nearer_low, low, high) for low, high in zip(bracket_low, bracket_high)]
    best_t, best_f = t.copy(), np.full(t.shape, np.inf)
    for _ in range(max_iter):
        error, d_log_step, _ = problem.errors_at(np.exp(t), zero_points)
        f, d = np.log(error), d_log_step / error
        improved = error < best_f
        best_t, best_f = np.where(improved, t, best_t), np.where(improved, error, best_f)
        a, b = np.where(d < 0.0, t, a), np.where(d < 0.0, b, t)
        if np.all((b - a < 1e-12) | (np.abs(d) <= 1e-8)):
            break
        following = _cubic_minimizer(previous[0], previous[1], previous[2], t, f, d)
        following = np.where((following > a) & (following < b), following, 0.5 * (a + b))
        if np.all(np.abs(following - t) < 1e-7):
            break  # t is within ~1e-7 of the minimum: the error is within ~1e-13 relative of it
        previous, t = [t, f, d], following
    return [(math.exp(tk), zk, fk) for tk, zk, fk in zip(best_t, zero_points, best_f)]


def _refine_free(problem, t, position, fixed_step=False, max_iter=60):
    """Newton's method on (t = log step, position) for a free zero point, all candidates at once.

    ``position = zero_point + mean / step`` (the code of the mean) keeps the problem well
    conditioned when the mean is far from 0. Gradient analytic (:func:`_scan`), Hessian by forward
    differences of it (both in one call per iteration), steps limited to 0.1 in t and 0.5 in
    position and quartered until the error falls; stops when the predicted decrease is below 1e-15
    of the error. ``fixed_step`` keeps t (power-of-two steps). Returns (step, zero_point, error) list.
    """
    h = 1e-6
    shifts = np.array([[0.0, 0.0], [h, 0.0], [0.0, h]])

    def evaluate(point):                        # point (K, 2) -> error (K,), gradient (K, 2), Hessian (K, 2, 2)
        rows = point[:, None, :] + shifts       # (K, 3, 2)
        step = np.exp(rows[..., 0]).ravel()
        error, d_log_step, d_zero = problem.errors_at(step, rows[..., 1].ravel() - problem.mean / step)
        gradient = np.stack([d_log_step + d_zero * problem.mean / step, d_zero], axis=-1).reshape(-1, 3, 2)
        if fixed_step:
            gradient[..., 0] = 0.0
        hessian = (gradient[:, 1:, :] - gradient[:, :1, :]) / h
        hessian = 0.5 * (hessian + np.swapaxes(hessian, 1, 2))
        if fixed_step:
            hessian[:, 0, :], hessian[:, :, 0], hessian[:, 0, 0] = 0.0, 0.0, 1.0
        return error.reshape(-1, 3)[:, 0], gradient[:, 0, :], hessian

    point = np.stack([np.asarray(t, dtype=np.float64), np.asarray(position, dtype=np.float64)], axis=-1)
    error, gradient, hessian = evaluate(point)
    limit = np.array([0.0 if fixed_step else 0.1, 0.5])
    scale = np.ones(len(point))
    for _ in range(max_iter):
        (a, b), (_, c) = hessian[:, 0, :].T, hessian[:, 1, :].T
        det = a * c - b * b
        convex = (a > 0) & (det > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            newton = -np.stack([c * gradient[:, 0] - b * gradient[:, 1],
                                a * gradient[:, 1] - b * gradient[:, 0]], axis=-1) / det[:, None]
        direction = np.where(convex[:, None], newton, -gradient / np.abs(hessian).max(axis=(1, 2))[:, None])
        direction = np.clip(direction * scale[:, None], -limit, limit)
        if np.all(-np.sum(gradient * direction, axis=1) <= 1e-15 * error):
            break
        trial = point + direction
        trial_error, trial_gradient, trial_hessian = evaluate(trial)
        better = trial_error < error
        point = np.where(better[:, None], trial, point)
        error = np.where(better, trial_error, error)
        gradient = np.where(better[:, None], trial_gradient, gradient)
        hessian = np.where(better[:, None, None], trial_hessian, hessian)
        scale = np.where(better, 1.0, 0.25 * scale)
    steps = np.exp(point[:, 0])
    return [(s, float(p - problem.mean / s), float(e)) for s, p, e in zip(steps, point[:, 1], error)]


def _search_pow2(problem, center):
    """Every exponent e with 2**e in the (widened) scan range, every zero point: exact enumeration."""
    e_low, e_high = math.floor(math.log2(center / _POW2_RANGE)), math.ceil(math.log2(center * _POW2_RANGE))
    for _ in range(256):
        exponents = np.arange(e_low, e_high + 1)
        steps, error, _, position = problem.scan(np.exp2(exponents.astype(np.float64)))
        rows_per_step = steps.size // exponents.size
        best = np.unravel_index(np.nanargmin(error), error.shape)
        best_exponent_index = best[0] // rows_per_step
        if 0 < best_exponent_index < exponents.size - 1:
            break
        if best_exponent_index == 0:
            e_low -= 2
        else:
            e_high += 2
    else:
        raise ValueError("optimal_quantizer: no interior optimum over power-of-two steps; is the density degenerate?")
    if problem.integer_zero_point:  # exact enumeration: every tied (exponent, zero point) is here
        rows, columns = np.nonzero(error <= error[best] * (1.0 + TIE_TOLERANCE))
        return _tie_broken([(steps[r], problem.zero_point(position[r, c], steps[r]), error[r, c])
                            for r, c in zip(rows, columns)], integer_zero_point=True)
    # Free zero point: refine it continuously for the best few (exponent, phase, offset) rows.
    rows, columns = np.unravel_index(np.argsort(error, axis=None)[:_CANDIDATES], error.shape)
    candidates = _refine_free(problem, np.log(steps[rows]), position[rows, columns], fixed_step=True)
    step, zero_point = steps[best[0]], problem.zero_point(position[best], steps[best[0]])
    return _tie_broken([(step, zero_point, error[best])] + candidates, integer_zero_point=False)


TIE_TOLERANCE = 1e-10
"""Errors within this relative distance of the least are a tie between integer zero points
(docs/SPECIFICATION.md, section 6): equal up to the rounding of the error's evaluation and of the
refinement, as the errors of the mirror-image zero points ``z`` and ``qmax + qmin - z`` of a
symmetric density are."""


def _tie_broken(candidates, integer_zero_point):
    """``(step, zero_point)`` of the least error among ``(step, zero_point, error)`` candidates.

    Integer zero points: errors within :data:`TIE_TOLERANCE` of the least tie, and the smallest
    zero point wins, then the smallest step (zero point first: tied zero points of a real step
    share the step only to the refinement's precision, so an order by step would be decided by
    rounding). A free (real) zero point: candidates within the tolerance are one minimum reached
    by several refinements, and the least error wins; only exactly equal errors go to the smallest
    zero point, then step.
    """
    least = min(candidate[2] for candidate in candidates)
    margin = TIE_TOLERANCE if integer_zero_point else 0.0
    tied = [c for c in candidates if c[2] <= least * (1.0 + margin)]
    step, zero_point, _ = min(tied, key=lambda candidate: (candidate[1], candidate[0]))
    return step, zero_point
