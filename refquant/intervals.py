"""Uniform quantizers, their expected error, the optimal interval and step, and the baselines.

METHOD.md sections 2 and 3. A b-bit uniform quantizer has integer codes ``q`` in
``[qmin, qmax]``, a step ``s > 0`` and a zero point ``z``::

    code(x) = clip(round(x / s) + z, qmin, qmax)          (z an integer)
    Q(x)    = s * (code(x) - z)
    interval [lo, hi] = [s (qmin - z), s (qmax - z)],   levels s (q - z), q = qmin..qmax

``round`` is :func:`refquant.rounding.round_half_even`, the project's one rounding rule.

Contents, in reading order:

1. :class:`UniformQuantizer` (quantize / dequantize / fake quantization and the straight-through
   gradient rule) and the code ranges of signed and unsigned codes.
2. :func:`expected_mse`, the closed-form expected squared error under a density (granular and
   clipping parts), and :func:`empirical_mse` for data.
3. :func:`optimal_quantizer`, the global minimiser of :func:`expected_mse` over step and zero point
   under the constraints of METHOD.md section 2 (how it is global: see its docstring).
4. The baselines a user will compare with, all returning a :class:`UniformQuantizer` from samples:
   min-max and percentile (PyTorch's observer rule), ACIQ (Banner et al.), brute-force MSE search
   over the samples, and TensorRT's KL-divergence calibration.
5. The same baselines on a histogram (:class:`HistogramDensity`, the piecewise-uniform density of
   binned data, as calibration accumulates activations): percentiles from its CDF, ACIQ from its
   moments, the MSE search and the KL calibration scored on the binned data.

A density ``dist`` is anything with ``partial_moments(lo, hi) -> (m0, m1, m2)``
(``m_j = integral_lo^hi x**j p(x) dx``, broadcasting, infinite ends allowed), ``mean()``, ``var()``
and ``ppf(q)``: :class:`refquant.pgm.PiecewiseGaussian` and the Gaussian mixture both are.
"""
import dataclasses
import math

import numba
import numpy as np
from scipy import optimize, special
from tqdm import tqdm

from refquant.rounding import round_half_even

MAX_BITS = 16

# ================================================================================================
# 1. The quantizer
# ================================================================================================


@dataclasses.dataclass(frozen=True)
class UniformQuantizer:
    """The uniform quantizer ``Q(x) = step * (clip(round(x/step) + zero_point, qmin, qmax) - zero_point)``.

    ``step``: float > 0. ``qmin < qmax``: integer codes. ``zero_point``: the code of the value 0.

    An integer ``zero_point`` (stored as ``int``) makes 0 exactly representable and the formula
    above is literally the one used (PyTorch's ``fake_quantize_per_tensor_affine`` and the
    project's integer network use the same). A real ``zero_point`` is allowed for the classic
    free-offset problem (METHOD.md section 3, Max 1960); then, with ``z = floor(zero_point)`` and
    ``f = zero_point - z``, ``code(x) = clip(round(x/step + f) + z, qmin, qmax)``, the nearest level
    ``step * (code - zero_point)``; for an integer zero point (``f = 0``) this is the formula above.

    Ties (``x/step + f`` exactly half-way between two integers) go to the even integer, before
    ``z`` is added, as ``round_half_even`` does. ``x / step`` is computed in float64 by a division.
    (PyTorch's fake quantization multiplies by ``1/step`` in float32, so its codes can differ by
    one for x within float32 rounding of a tie; ``torch.quantize_per_tensor`` rounds
    ``x/step + z`` instead, which differs on ties when z is odd.)
    """

    step: float
    zero_point: float
    qmin: int
    qmax: int

    def __post_init__(self):
        step = float(self.step)
        if not (math.isfinite(step) and step > 0.0):
            raise ValueError(f"UniformQuantizer: step must be a finite float > 0, got {self.step!r}")
        zero_point = float(self.zero_point)
        if not math.isfinite(zero_point):
            raise ValueError(f"UniformQuantizer: zero_point must be finite, got {self.zero_point!r}")
        for name in ("qmin", "qmax"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"UniformQuantizer: {name} must be an int, got {value!r}")
        if not (-2**31 <= self.qmin < self.qmax <= 2**31 - 1):
            raise ValueError(f"UniformQuantizer: need -2**31 <= qmin < qmax < 2**31 (int32 codes), "
                             f"got qmin={self.qmin}, qmax={self.qmax}")
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "qmin", int(self.qmin))
        object.__setattr__(self, "qmax", int(self.qmax))
        object.__setattr__(self, "zero_point", int(zero_point) if zero_point.is_integer() else zero_point)

    # -- the grid -------------------------------------------------------------------------------

    @property
    def num_levels(self):
        """``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    @property
    def lo(self):
        """Lowest level ``step * (qmin - zero_point)``: the left end of the interval."""
        return self.step * (self.qmin - self.zero_point)

    @property
    def hi(self):
        """Highest level ``step * (qmax - zero_point)``: the right end of the interval."""
        return self.step * (self.qmax - self.zero_point)

    @property
    def interval(self):
        """``(lo, hi)``."""
        return self.lo, self.hi

    @property
    def levels(self):
        """(num_levels,) float64: ``step * (q - zero_point)`` for ``q = qmin..qmax``, increasing."""
        return self.step * (np.arange(self.qmin, self.qmax + 1, dtype=np.float64) - self.zero_point)

    # -- forward --------------------------------------------------------------------------------

    def quantize(self, x):
        """Integer codes of ``x`` (any shape): int32 array of the same shape, in ``[qmin, qmax]``.

        NaN is rejected (ValueError); ``+-inf`` saturate to ``qmax``/``qmin``.
        """
        x = np.asarray(x, dtype=np.float64)
        if np.isnan(x).any():
            raise _nan_error(int(np.argmax(np.isnan(x))))
        whole, fraction = self._split_zero_point()
        codes = round_half_even(x / self.step + fraction) + whole
        return np.clip(codes, self.qmin, self.qmax).astype(np.int32)

    def _split_zero_point(self):
        """``(z, f)``: the zero point's integer part ``floor(zero_point)`` and its fraction (class docstring)."""
        whole = math.floor(self.zero_point)
        return whole, self.zero_point - whole

    def dequantize(self, codes):
        """Values ``step * (codes - zero_point)`` (float64, same shape) of integer codes."""
        codes = np.asarray(codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"dequantize: codes must be an integer array, got dtype {codes.dtype}")
        return self.step * (codes.astype(np.float64) - self.zero_point)

    def fake(self, x):
        """Fake quantization ``Q(x) = dequantize(quantize(x))``, the forward pass of training.

        Returns float32 for a float32 ``x`` (the levels rounded to float32) and float64 otherwise.
        """
        x = np.asarray(x)
        out = self.dequantize(self.quantize(x))
        return out.astype(np.float32) if x.dtype == np.float32 else out

    # -- backward: the straight-through estimator -----------------------------------------------

    def straight_through_mask(self, x):
        """The gradient rule of training: ``dQ/dx := 1`` for ``lo <= x <= hi``, 0 outside (bool array).

        Rounding is passed straight through (Bengio et al. 2013, "Estimating or propagating
        gradients through stochastic neurons"); the clipping is differentiated exactly. Boundary
        convention: the interval is CLOSED, as the derivative of ``clip(x, lo, hi)`` in PyTorch's
        ``torch.clamp`` backward (gradient 1 at ``x == lo`` and ``x == hi``). Note that PyTorch's
        ``fake_quantize_per_tensor_affine`` masks on the unclipped code instead, i.e. passes the
        gradient on the wider ``[lo - step/2, hi + step/2]`` (up to ties); we follow the interval.
        """
        x = np.asarray(x, dtype=np.float64)  # compare in float64 (NumPy 2 would cast lo, hi to float32)
        return (x >= self.lo) & (x <= self.hi)

    def fake_backward(self, x, dout):
        """``dL/dx = dout * straight_through_mask(x)`` (same shape and dtype as ``dout``)."""
        return masked_gradient(self.straight_through_mask(x), dout)

    # -- the optimized kernel of training -------------------------------------------------------

    def fake_with_mask(self, x):
        """``(fake(x), straight_through_mask(x))`` in one parallel pass (Numba): the training kernel.

        Equal bit for bit to the reference methods above (the same float64 operations in the same
        order, no fast-math; ``tests/test_intervals.py`` compares them), about four times faster on
        the activations of a training batch, where the reference makes eight full-size passes
        (``benchmarks/bench_qat.py``).
        NaN is rejected as by :meth:`quantize`.
        """
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        flat = np.ascontiguousarray(x).reshape(-1)
        out = np.empty(flat.shape, np.float32 if x.dtype == np.float32 else np.float64)
        mask = np.empty(flat.shape, np.bool_)
        whole, fraction = self._split_zero_point()
        nan_at = _fake_quantize_kernel(flat, self.step, fraction, float(whole), float(self.qmin),
                                       float(self.qmax), float(self.zero_point), self.lo, self.hi, out, mask)
        if nan_at >= 0:
            raise _nan_error(nan_at)
        return out.reshape(x.shape), mask.reshape(x.shape)


def _nan_error(index):
    """The error of quantizing NaN, naming the first one's flat index."""
    return ValueError(f"quantize: x contains NaN (first at flat index {index})")


def masked_gradient(mask, dout):
    """``dout`` where ``mask`` (the straight-through mask) holds, 0 elsewhere; ``dout``'s dtype."""
    dout = np.asarray(dout)
    return np.where(mask, dout, np.zeros((), dtype=dout.dtype))


@numba.njit(cache=True, parallel=True)
def _fake_quantize_kernel(x, step, fraction, whole, qmin, qmax, zero_point, lo, hi, out, mask):
    """The element loop of :meth:`UniformQuantizer.fake_with_mask`; returns the first NaN's index or -1.

    Per element, in float64 as :meth:`UniformQuantizer.quantize` then :meth:`~UniformQuantizer.dequantize`:
    ``code = min(max(rint(x / step + fraction) + whole, qmin), qmax)``,
    ``out = step * (code - zero_point)`` (cast to ``out``'s dtype), ``mask = lo <= x <= hi``.
    """
    n = x.size
    nan_at = n
    for i in numba.prange(n):
        value = np.float64(x[i])
        if value != value:
            nan_at = min(nan_at, i)  # a prange reduction: the smallest index wins
            out[i] = 0
            mask[i] = False
            continue
        code = min(max(round_half_even(value / step + fraction) + whole, qmin), qmax)
        out[i] = step * (code - zero_point)
        mask[i] = (value >= lo) and (value <= hi)
    return nan_at if nan_at < n else -1


def code_range(bits, signed, narrow_range=False):
    """``(qmin, qmax)`` of ``bits``-bit codes.

    Unsigned: ``[0, 2**bits - 1]``. Signed (two's complement): ``[-2**(bits-1), 2**(bits-1) - 1]``;
    ``narrow_range`` drops the most negative code, ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, the
    symmetric range of TensorRT's int8 (and of TFLite's int8 weights).
    """
    _check_bits(bits)
    if not signed:
        if narrow_range:
            raise ValueError("code_range: narrow_range applies to signed codes only")
        return 0, 2**bits - 1
    if narrow_range and bits < 2:
        raise ValueError(f"code_range: narrow signed codes need bits >= 2, got bits={bits}")
    return -2**(bits - 1) + int(narrow_range), 2**(bits - 1) - 1


def signed_quantizer(bits, step, narrow_range=False):
    """A ``bits``-bit signed symmetric quantizer: zero point 0, codes from :func:`code_range`."""
    qmin, qmax = code_range(bits, signed=True, narrow_range=narrow_range)
    return UniformQuantizer(step, 0, qmin, qmax)


def unsigned_quantizer(bits, step, zero_point):
    """A ``bits``-bit unsigned affine quantizer: codes ``[0, 2**bits - 1]``, the given zero point."""
    qmin, qmax = code_range(bits, signed=False)
    return UniformQuantizer(step, zero_point, qmin, qmax)


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")


# ================================================================================================
# 2. Expected and empirical error
# ================================================================================================


def expected_mse(dist, quantizer, split=False):
    """``E[(X - Q(X))^2]`` for X ~ ``dist``, in closed form (no numerical integration).

    The real line splits into the quantizer's cells, each mapped to one level ``c``:

    - granular cells ``[c - step/2, c + step/2)`` intersected with ``[lo, hi]`` (the two end cells
      are half cells ``[lo, lo + step/2)`` and ``[hi - step/2, hi]``);
    - the clipping regions ``(-inf, lo)`` -> ``lo`` and ``(hi, inf)`` -> ``hi``.

    On a cell ``[a, b)``: ``integral_a^b (x - c)^2 p(x) dx = m2 - 2 c m1 + c^2 m0`` with
    ``(m0, m1, m2) = dist.partial_moments(a, b)`` (for a piecewise Gaussian: Phi and phi terms per
    cell and piece). Cell boundaries carry no mass, so the tie rule does not enter.

    Returns the total (float), or with ``split=True`` the pair ``(granular, clipping)``.
    """
    levels = quantizer.levels
    half = 0.5 * quantizer.step
    cell_lo = np.concatenate([[quantizer.lo], levels[1:] - half])
    cell_hi = np.concatenate([levels[:-1] + half, [quantizer.hi]])
    granular = float(np.sum(_cell_errors(dist, cell_lo, cell_hi, levels)))
    clipping = float(np.sum(_cell_errors(dist, np.array([-np.inf, quantizer.hi]),
                                         np.array([quantizer.lo, np.inf]),
                                         np.array([quantizer.lo, quantizer.hi]))))
    return (granular, clipping) if split else granular + clipping


def _cell_errors(dist, lo, hi, level):
    """``integral_lo^hi (x - level)^2 p(x) dx`` for arrays of cells."""
    m0, m1, m2 = dist.partial_moments(lo, hi)
    return m2 - 2.0 * level * m1 + level * level * m0


def empirical_mse(samples, quantizer):
    """``mean((x - Q(x))^2)`` over the samples (float64)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("empirical_mse: samples is empty")
    return float(np.mean((x - quantizer.fake(x)) ** 2))


# ================================================================================================
# 3. The optimal quantizer
# ================================================================================================
#
# The fast form of the error used by the search. For any level L_a of the grid (the "anchor")
# and every x, moving x's level from L_a to Q(x) one edge e at a time changes (x - level)^2 by
# -2 step (e - x) per edge crossed leftwards and -2 step (x - e) rightwards, so
#
#     E[(X - Q(X))^2] = Var X + (E X - L_a)^2 - 2 step * sum_e G(e),
#     G(e) = E[(e - X)_+]  for the edges left of L_a,   G(e) = E[(X - e)_+]  right of L_a,
#
# (edges e = the midpoints between consecutive levels). G(e) = |e m0 - m1| with the partial
# moments of the tail beyond e. With the anchor at the level nearest the mean every term is small,
# so nothing large cancels. Because every edge of every integer zero point lies on one lattice
# step * (j + phase - 1/2), one call of partial_moments per step gives the error of EVERY zero
# point at once by prefix sums over the lattice. Derivatives, from G'(e) = +-m0:
#
#     d/dstep  = -2 c_a (E X - L_a) - 2 sum G - 2 step sum_e c_e G'(e)     (c = position / step)
#     d/dphase = -2 step (E X - L_a) - 2 step^2 sum_e G'(e)                (all levels shift by step)


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

    Constraints (METHOD.md section 2):

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
    _check_bits(bits)
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
    raise RuntimeError("optimal_quantizer: the error keeps decreasing at the end of the step range; "
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
    for candidate in candidates:
        if candidate[2] < result[2]:
            result = candidate
    return result[0], result[1]


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
        raise RuntimeError("optimal_quantizer: no interior optimum over power-of-two steps")
    step, zero_point = steps[best[0]], problem.zero_point(position[best], steps[best[0]])
    if problem.integer_zero_point:
        return step, zero_point
    # Free zero point: refine it continuously for the best few (exponent, phase, offset) rows.
    rows, columns = np.unravel_index(np.argsort(error, axis=None)[:_CANDIDATES], error.shape)
    candidates = _refine_free(problem, np.log(steps[rows]), position[rows, columns], fixed_step=True)
    return min([(step, zero_point, error[best])] + candidates, key=lambda candidate: candidate[2])[:2]


# ================================================================================================
# 4. Baselines
# ================================================================================================


def quantizer_from_interval(lo, hi, bits, symmetric=False):
    """The calibration rule of PyTorch's observers (``torch.ao.quantization.observer``,
    ``UniformQuantizationObserverBase._calculate_qparams``) turning a clipping interval into codes.

    The interval is first stretched to hold 0 (``lo <= 0 <= hi``). Then, with
    ``eps = float32 machine epsilon``:

    - affine (unsigned codes ``[0, 2**bits - 1]``): ``step = max((hi - lo) / (qmax - qmin), eps)``,
      ``zero_point = clip(qmin - round(lo / step), qmin, qmax)``;
    - symmetric (signed codes ``[-2**(bits-1), 2**(bits-1) - 1]``, zero point 0):
      ``step = max(max(-lo, hi) / ((qmax - qmin) / 2), eps)``.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"quantizer_from_interval: interval must be finite, got [{lo}, {hi}]")
    eps = float(np.finfo(np.float32).eps)
    qmin, qmax = code_range(bits, signed=symmetric)
    if symmetric:
        return UniformQuantizer(max(max(-lo, hi) / ((qmax - qmin) / 2.0), eps), 0, qmin, qmax)
    step = max((hi - lo) / (qmax - qmin), eps)
    zero_point = int(np.clip(qmin - round_half_even(lo / step), qmin, qmax))
    return UniformQuantizer(step, zero_point, qmin, qmax)


def _samples(samples, name):
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name}: samples is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: samples contain NaN or inf (first at flat index "
                         f"{int(np.argmax(~np.isfinite(x)))})")
    return x


def minmax_quantizer(samples, bits, symmetric=False):
    """Min-max calibration: the interval ``[min x, max x]`` (PyTorch's ``MinMaxObserver``)."""
    x = _samples(samples, "minmax_quantizer")
    return quantizer_from_interval(x.min(), x.max(), bits, symmetric)


def percentile_quantizer(samples, bits, percentile=99.99, symmetric=False):
    """Percentile calibration: the interval between the ``100 - p`` and ``p`` percentiles of x
    (symmetric: ``[-a, a]`` with ``a`` the ``p`` percentile of ``|x|``), as in NVIDIA's
    pytorch-quantization ``HistogramCalibrator(method="percentile")``; numpy's linear percentile."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile_quantizer: percentile must be in (50, 100], got {percentile}")
    x = _samples(samples, "percentile_quantizer")
    if symmetric:
        a = np.percentile(np.abs(x), percentile)
        return quantizer_from_interval(-a, a, bits, symmetric=True)
    lo, hi = np.percentile(x, [100.0 - percentile, percentile])
    return quantizer_from_interval(lo, hi, bits)


def aciq_clipping(bits, prior="gaussian"):
    """ACIQ's optimal clipping value, in units of sigma (Gaussian) or of the Laplace scale b.

    Banner, Nahshan & Soudry, "Post training 4-bit quantization of convolutional networks for
    rapid-deployment", NeurIPS 2019 (arXiv:1810.05723), section 3: for a density symmetric about
    its mean clipped to ``[-alpha, alpha]`` and ``2**M`` levels, the error is modelled as the exact
    clipping error plus the granular noise ``Delta^2 / 12`` of the step ``Delta = 2 alpha / 2**M``:

        Laplace(b):     2 b^2 exp(-alpha/b) + alpha^2 / (3 * 4**M)
        N(0, sigma^2):  (alpha^2 + sigma^2) (1 - erf(alpha / (sqrt2 sigma)))
                        - sqrt(2/pi) alpha sigma exp(-alpha^2 / (2 sigma^2)) + alpha^2 / (3 * 4**M)

    and ``alpha`` minimises it (here numerically, to 1e-10). The paper quotes, truncated to two
    decimals, 2.83b, 3.89b, 5.03b (Laplace) and 1.71, 2.15, 2.55 sigma (Gaussian) at M = 2, 3, 4.
    """
    _check_bits(bits)
    granular = 1.0 / (3.0 * 4.0**bits)
    if prior == "gaussian":
        def model(alpha):
            return ((alpha * alpha + 1.0) * special.erfc(alpha / math.sqrt(2.0))
                    - math.sqrt(2.0 / math.pi) * alpha * math.exp(-0.5 * alpha * alpha)
                    + alpha * alpha * granular)
    elif prior == "laplace":
        def model(alpha):
            return 2.0 * math.exp(-alpha) + alpha * alpha * granular
    else:
        raise ValueError(f"aciq_clipping: prior must be 'gaussian' or 'laplace', got {prior!r}")
    return float(optimize.minimize_scalar(model, bounds=(1e-3, 40.0), method="bounded",
                                          options={"xatol": 1e-10}).x)


def aciq_quantizer(samples, bits, prior="gaussian", symmetric=False):
    """ACIQ calibration: clip to ``mean +- alpha`` with ``alpha`` from :func:`aciq_clipping` times the
    sample's sigma (Gaussian) or ``b = mean |x - mean|`` (Laplace), as Banner et al. estimate them;
    ``symmetric`` centres the interval on 0 instead (weights)."""
    x = _samples(samples, "aciq_quantizer")
    spread = float(np.std(x)) if prior == "gaussian" else float(np.mean(np.abs(x - np.mean(x))))
    return aciq_quantizer_from_spread(float(np.mean(x)), spread, bits, prior, symmetric)


def aciq_quantizer_from_spread(mean, spread, bits, prior="gaussian", symmetric=False):
    """ACIQ's rule given the estimates: the interval ``center +- aciq_clipping(bits, prior) * spread``
    (``center`` = ``mean``, or 0 when ``symmetric``; ``spread`` = sigma for the Gaussian prior, the
    Laplace scale b for the Laplace prior), turned into codes by :func:`quantizer_from_interval`."""
    if not (math.isfinite(mean) and math.isfinite(spread) and spread >= 0.0):
        raise ValueError(f"aciq_quantizer_from_spread: need a finite mean and spread >= 0, got mean={mean!r}, "
                         f"spread={spread!r}")
    center = 0.0 if symmetric else float(mean)
    alpha = aciq_clipping(bits, prior) * float(spread)
    return quantizer_from_interval(center - alpha, center + alpha, bits, symmetric)


def mse_search_quantizer(samples, bits, symmetric=False, num_candidates=24, progress=None):
    """Brute-force MSE search over the samples: every candidate interval, its empirical error.

    Candidates: ``[f_i min, f_j max]`` for the fractions ``f = 0, 1/C, ..., 1`` of the extremes
    (``C = num_candidates``, the extremes stretched to hold 0), all pairs of nonzero width, each
    turned into codes by :func:`quantizer_from_interval` and scored by :func:`empirical_mse`;
    symmetric: ``[-f a, f a]`` with ``a = max |x|``. Costs ``(C+1)^2`` passes over the samples,
    shown by a tqdm bar (``progress=None``: on a terminal only; True/False force it).
    """
    x = _samples(samples, "mse_search_quantizer")
    return _mse_search(lambda quantizer: empirical_mse(x, quantizer), float(x.min()), float(x.max()), bits,
                       symmetric, num_candidates, progress, "mse_search_quantizer")


def mse_search_intervals(minimum, maximum, symmetric=False, num_candidates=24):
    """The candidate intervals of the MSE search, in the order they are tried.

    Affine: ``[f_i low, f_j high]`` for the fractions ``f = 0, 1/C, ..., 1`` with
    ``low = min(minimum, 0)``, ``high = max(maximum, 0)``, every pair of nonzero width;
    symmetric: ``[-f a, f a]``, ``f = 1/C, ..., 1``, ``a = max(|minimum|, |maximum|)``.
    """
    fractions = np.arange(1, num_candidates + 1) / num_candidates
    if symmetric:
        a = max(abs(minimum), abs(maximum))
        return [(-f * a, f * a) for f in fractions]
    low, high = min(minimum, 0.0), max(maximum, 0.0)
    fractions = np.concatenate([[0.0], fractions])
    return [(fl * low, fh * high) for fl in fractions for fh in fractions if fl * low < fh * high]


def _mse_search(error_of, minimum, maximum, bits, symmetric, num_candidates, progress, caller):
    """The candidate of :func:`mse_search_intervals` with the least ``error_of(quantizer)``
    (the first of equals)."""
    intervals = mse_search_intervals(minimum, maximum, symmetric, num_candidates)
    if not intervals:
        raise ValueError(f"{caller}: all values are 0")
    best, best_error = None, np.inf
    for lo, hi in tqdm(intervals, desc="MSE search", disable=None if progress is None else not progress,
                       leave=False):
        quantizer = quantizer_from_interval(lo, hi, bits, symmetric)
        error = error_of(quantizer)
        if error < best_error:
            best, best_error = quantizer, error
    return best


# -- TensorRT's KL-divergence calibration --------------------------------------------------------
#
# S. Migacz, "8-bit Inference with TensorRT", NVIDIA GTC 2017 (talk S7310), the calibration
# pseudo-code: histogram |x| in 2048 bins; for each candidate number of bins i = 128 .. 2047,
# P = bins[0:i] with the outliers bins[i:] added to P[i-1]; Q = bins[0:i] quantized into 128
# levels and expanded back to i bins; choose the i minimising KL(P || Q); threshold =
# (i + 0.5) * bin width. Details the slides leave open follow MXNet's implementation of the talk
# (python/mxnet/contrib/quantization.py, _get_optimal_threshold): when 128 does not divide i the
# last level takes the remainder bins, and a level's count is spread over the bins where P is
# nonzero.


def expanded_quantized_distribution(bins, num_quantized_bins, nonzero=None):
    """Quantize ``bins`` (i,) into ``num_quantized_bins`` levels and expand back to i bins.

    Level j merges bins ``[j m, (j+1) m)`` with ``m = i // num_quantized_bins`` (the last level
    also takes the remaining bins); its total is spread evenly over the bins of the level where
    ``nonzero`` (default ``bins != 0``) holds, zero elsewhere. The slides' example:
    ``[1,0,2,3,5,3,1,7]`` into 2 levels -> ``[2,0,2,2,4,4,4,4]``.
    """
    bins = np.asarray(bins, dtype=np.float64)
    nonzero = bins != 0 if nonzero is None else np.asarray(nonzero, dtype=bool)
    if bins.size < num_quantized_bins:
        raise ValueError(f"expanded_quantized_distribution: {bins.size} bins < {num_quantized_bins} levels")
    merged = bins.size // num_quantized_bins
    starts = np.arange(num_quantized_bins) * merged
    totals = np.add.reduceat(bins, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    level_of_bin = np.minimum(np.arange(bins.size) // merged, num_quantized_bins - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(counts > 0, totals / counts, 0.0)
    return np.where(nonzero, share[level_of_bin], 0.0)


def kl_divergence(p, q):
    """``KL(P || Q) = sum_{P > 0} P log(P / Q)`` of two histograms, each normalised to sum 1;
    ``inf`` when Q is 0 where P is not."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if q.sum() <= 0:
        return math.inf
    p, q = p / p.sum(), q / q.sum()
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def kl_threshold(histogram, bin_width, num_quantized_bins=128):
    """TensorRT's threshold search on a histogram of |x|: ``(threshold, divergences)``.

    ``divergences[i - num_quantized_bins]`` is ``KL(P_i || Q_i)`` for the candidate with i bins,
    ``i = num_quantized_bins .. len(histogram) - 1`` (the talk's ``range(128, 2048)``);
    ``threshold = (m + 0.5) * bin_width`` for the minimising m.
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.ndim != 1 or histogram.size <= num_quantized_bins:
        raise ValueError(f"kl_threshold: need a 1-D histogram with more than {num_quantized_bins} bins, "
                         f"got shape {histogram.shape}")
    if np.any(histogram < 0) or histogram.sum() <= 0:
        raise ValueError("kl_threshold: histogram counts must be >= 0 and not all 0")
    outliers = np.concatenate([np.cumsum(histogram[::-1])[::-1], [0.0]])   # outliers[i] = sum bins[i:]
    divergences = np.empty(histogram.size - num_quantized_bins)
    for i in range(num_quantized_bins, histogram.size):
        reference = histogram[:i].copy()
        reference[i - 1] += outliers[i]
        candidate = expanded_quantized_distribution(histogram[:i], num_quantized_bins, reference != 0)
        divergences[i - num_quantized_bins] = kl_divergence(reference, candidate)
    m = num_quantized_bins + int(np.argmin(divergences))
    return (m + 0.5) * bin_width, divergences


def kl_quantizer(samples, bits=8, num_bins=2048):
    """TensorRT's entropy calibration: threshold T by :func:`kl_threshold` on a ``num_bins``-bin
    histogram of |x| over ``[0, max |x|]`` with ``2**(bits-1)`` quantized levels, then the
    symmetric narrow-range codes of TensorRT: ``step = T / (2**(bits-1) - 1)``, codes
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``."""
    x = np.abs(_samples(samples, "kl_quantizer"))
    if bits < 2:
        raise ValueError(f"kl_quantizer: needs bits >= 2 (narrow signed codes), got {bits}")
    amax = float(x.max())
    if amax == 0.0:
        raise ValueError("kl_quantizer: all samples are 0")
    histogram, _ = np.histogram(x, bins=num_bins, range=(0.0, amax))
    threshold, _ = kl_threshold(histogram, amax / num_bins, 2**(bits - 1))
    return signed_quantizer(bits, threshold / (2**(bits - 1) - 1), narrow_range=True)


def baseline_quantizers(samples, bits, symmetric=False, num_candidates=24):
    """Every baseline on the same samples: dict method name -> UniformQuantizer.

    KL calibration is always symmetric narrow-range (as in TensorRT) and is left out below 2 bits.
    """
    quantizers = {
        "min-max": minmax_quantizer(samples, bits, symmetric),
        "percentile 99.99": percentile_quantizer(samples, bits, 99.99, symmetric),
        "ACIQ Gauss": aciq_quantizer(samples, bits, "gaussian", symmetric),
        "ACIQ Laplace": aciq_quantizer(samples, bits, "laplace", symmetric),
        "MSE search": mse_search_quantizer(samples, bits, symmetric, num_candidates),
    }
    if bits >= 2:
        quantizers["KL (TensorRT)"] = kl_quantizer(samples, bits)
    return quantizers


def method_errors(samples, bits, dist=None, symmetric=False, num_candidates=24):
    """Empirical error on ``samples`` of every baseline and, given a fitted ``dist``, of
    ``optimal_quantizer(dist, bits, symmetric=symmetric)``: dict method name -> MSE."""
    quantizers = baseline_quantizers(samples, bits, symmetric, num_candidates)
    if dist is not None:
        quantizers["optimal (density)"] = optimal_quantizer(dist, bits, symmetric=symmetric)
    return {name: empirical_mse(samples, quantizer) for name, quantizer in quantizers.items()}


# ================================================================================================
# 5. The baselines on a histogram
# ================================================================================================
#
# Calibration accumulates each layer's activations in a histogram (bounded memory), so the
# baselines need entry points that read the histogram itself rather than samples drawn from it.
# The histogram is read as a density: bin j's count spread uniformly over [e_j, e_(j+1)) (the
# model of scipy.stats.rv_histogram). Every baseline then has an exact counterpart: percentiles
# from its CDF, ACIQ's spreads from its moments, the MSE search and the KL calibration scored on
# it. A percentile read from it lies in the bin of the data's own (the inverted-CDF definition),
# so within one bin width of it; given the exact extremes and moments (a calibration histogram
# keeps them beside its counts), min-max and Gaussian ACIQ are the sample rules exactly.


class HistogramDensity:
    """The piecewise-uniform density of a histogram: ``counts`` (B,) on ``edges`` (B+1,).

    ``p(x) = (c_j / n) / (e_(j+1) - e_j)`` on bin ``[e_j, e_(j+1))``, 0 outside ``[e_0, e_B]``
    (``n = sum c``); the same density as ``scipy.stats.rv_histogram((counts, edges))``. It is a
    density in the sense of this module (``partial_moments``, ``cdf``, ``ppf``, ``mean``,
    ``var``), so :func:`expected_mse` and :func:`optimal_quantizer` accept it too.

    ``counts``: finite, >= 0 (any real numbers: weights work), not all 0; ``edges``: finite,
    strictly increasing. Partial moments come from prefix sums of the bins' moments, the part of a
    bin from the uniform's moments on a sub-interval ``[l, u]``: count ``c (u - l) / w``, mean
    ``(l + u) / 2``, second moment ``(l^2 + l u + u^2) / 3`` (no difference of cubes). The sums are
    kept in counts, so integer counts read back exactly at the edges (:meth:`counts_between`).
    """

    def __init__(self, counts, edges):
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0 or edges.shape != (counts.size + 1,):
            raise ValueError(f"HistogramDensity: need counts (B,) with B >= 1 and edges (B+1,), got shapes "
                             f"{counts.shape} and {edges.shape}")
        if not (np.isfinite(counts).all() and np.isfinite(edges).all()):
            raise ValueError("HistogramDensity: counts and edges must be finite")
        if np.any(counts < 0) or counts.sum() <= 0:
            raise ValueError("HistogramDensity: counts must be >= 0 and not all 0")
        if np.any(np.diff(edges) <= 0):
            j = int(np.argmax(np.diff(edges) <= 0))
            raise ValueError(f"HistogramDensity: edges must increase strictly, got edges[{j}] = {edges[j]!r} "
                             f">= edges[{j + 1}] = {edges[j + 1]!r}")
        self.counts, self.edges = counts, edges
        self.total = float(counts.sum())
        self.mass = counts / self.total
        self.widths = np.diff(edges)
        centres = 0.5 * (edges[:-1] + edges[1:])
        second = (edges[:-1] ** 2 + edges[:-1] * edges[1:] + edges[1:] ** 2) / 3.0
        self._cumulative = [np.concatenate([[0.0], np.cumsum(counts * moment)])
                            for moment in (np.ones_like(centres), centres, second)]
        self._mean = float(np.sum(self.mass * centres))
        self._var = float(np.sum(self.mass * ((centres - self._mean) ** 2 + self.widths ** 2 / 12.0)))
        nonzero = np.flatnonzero(counts)
        self.support = float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])

    def _sums_below(self, x):
        """``n * integral_-inf^x t**j p(t) dt`` for j = 0, 1, 2 (three arrays shaped like x)."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.edges[0], self.edges[-1])
        j = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, self.counts.size - 1)
        left = self.edges[j]
        part = self.counts[j] * ((x - left) / self.widths[j])
        n0, n1, n2 = (c[j] for c in self._cumulative)
        return n0 + part, n1 + part * 0.5 * (left + x), n2 + part * (left * left + left * x + x * x) / 3.0

    def partial_moments(self, lo, hi):
        """``(m0, m1, m2)``, ``m_j = integral_lo^hi x**j p(x) dx`` (broadcasting; ends may be infinite)."""
        lo_sums, hi_sums = self._sums_below(lo), self._sums_below(hi)
        return tuple((h - l) / self.total for h, l in zip(hi_sums, lo_sums))

    def cdf(self, x):
        """``P(X <= x)`` (float64 array like x)."""
        return self._sums_below(x)[0] / self.total

    def counts_between(self, points):
        """The counts between consecutive ``points`` (increasing): (len(points) - 1,) float64. At bin
        edges these are sums of whole bins, exact for integer counts."""
        return np.diff(self._sums_below(points)[0])

    def ppf(self, q):
        """The smallest x with ``cdf(x) >= q`` (the inverse of the piecewise-linear CDF), q in [0, 1];
        ``ppf(0)`` is the left end of the support (the first non-empty bin's left edge)."""
        q = np.asarray(q, dtype=np.float64)
        if np.any((q < 0) | (q > 1)) or np.isnan(q).any():
            raise ValueError("HistogramDensity.ppf: q must be in [0, 1]")
        cumulative = self._cumulative[0] / self.total
        j = np.clip(np.searchsorted(cumulative[1:], q, side="left"), 0, self.counts.size - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.clip((q - cumulative[j]) / self.mass[j], 0.0, 1.0)
        x = self.edges[j] + np.where(self.mass[j] > 0, fraction, 0.0) * self.widths[j]
        return np.clip(x, *self.support)

    def mean(self):
        return self._mean

    def var(self):
        return self._var

    def std(self):
        return math.sqrt(self._var)

    def absolute_deviation(self, center):
        """``E|X - center|``: from the partial moments on each side of ``center``."""
        below = self.partial_moments(-np.inf, center)
        above = self.partial_moments(center, np.inf)
        return float((center * below[0] - below[1]) + (above[1] - center * above[0]))

    def folded(self):
        """The density of ``|X|``: piecewise uniform on the edges ``|e_j|`` (and 0), since both
        ``p(a)`` and ``p(-a)`` are uniform between consecutive ones."""
        edges = np.unique(np.abs(np.concatenate([self.edges, [0.0] if self.edges[0] < 0 < self.edges[-1] else []])))
        positive = self.counts_between(edges)
        negative = -self.counts_between(-edges)
        return HistogramDensity(np.maximum(positive + negative, 0.0), edges)


def _histogram_density(density, caller):
    if not isinstance(density, HistogramDensity):
        raise TypeError(f"{caller}: expected a HistogramDensity, got {type(density).__name__}")
    return density


def _extremes(density, extremes, caller):
    """``(minimum, maximum)``: the given exact extremes, else the density's support."""
    if extremes is None:
        return density.support
    minimum, maximum = (float(v) for v in extremes)
    if not (math.isfinite(minimum) and math.isfinite(maximum) and minimum <= maximum):
        raise ValueError(f"{caller}: extremes must be finite with minimum <= maximum, got {extremes!r}")
    return minimum, maximum


def minmax_quantizer_histogram(density, bits, symmetric=False, extremes=None):
    """Min-max on a histogram: the interval ``extremes`` (the data's exact minimum and maximum,
    which a calibration histogram keeps beside its counts), else the support of the non-empty bins."""
    density = _histogram_density(density, "minmax_quantizer_histogram")
    return minmax_quantizer(np.array(_extremes(density, extremes, "minmax_quantizer_histogram")), bits, symmetric)


def percentile_quantizer_histogram(density, bits, percentile=99.99, symmetric=False):
    """:func:`percentile_quantizer` on a histogram: the percentiles read from its CDF (linear inside
    a bin); symmetric: ``a`` = the ``p`` percentile of ``|x|`` (:meth:`HistogramDensity.folded`)."""
    density = _histogram_density(density, "percentile_quantizer_histogram")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile_quantizer_histogram: percentile must be in (50, 100], got {percentile}")
    if symmetric:
        a = float(density.folded().ppf(percentile / 100.0))
        return quantizer_from_interval(-a, a, bits, symmetric=True)
    lo, hi = density.ppf([1.0 - percentile / 100.0, percentile / 100.0])
    return quantizer_from_interval(lo, hi, bits)


def aciq_quantizer_histogram(density, bits, prior="gaussian", symmetric=False, mean=None, std=None):
    """:func:`aciq_quantizer` on a histogram: ACIQ's spread from the histogram's moments.

    ``mean``, ``std``: the data's exact mean and standard deviation when known (a calibration
    histogram keeps the exact sum and sum of squares), else the density's (its variance includes
    the ``w^2 / 12`` of each bin). Laplace: ``b = E|X - mean|`` under the density
    (:meth:`HistogramDensity.absolute_deviation`).
    """
    density = _histogram_density(density, "aciq_quantizer_histogram")
    mean = density.mean() if mean is None else float(mean)
    if prior == "gaussian":
        spread = density.std() if std is None else float(std)
    elif prior == "laplace":
        spread = density.absolute_deviation(mean)
    else:
        raise ValueError(f"aciq_quantizer_histogram: prior must be 'gaussian' or 'laplace', got {prior!r}")
    return aciq_quantizer_from_spread(mean, spread, bits, prior, symmetric)


def mse_search_quantizer_histogram(density, bits, symmetric=False, num_candidates=24, extremes=None,
                                   progress=None):
    """:func:`mse_search_quantizer` on a histogram: the same candidate intervals
    (:func:`mse_search_intervals`, from ``extremes`` or the support), each scored by
    :func:`expected_mse` under the histogram's density (the mean squared error of the binned data,
    values spread uniformly inside their bin) instead of the samples' empirical error."""
    density = _histogram_density(density, "mse_search_quantizer_histogram")
    minimum, maximum = _extremes(density, extremes, "mse_search_quantizer_histogram")
    return _mse_search(lambda quantizer: expected_mse(density, quantizer), minimum, maximum, bits, symmetric,
                       num_candidates, progress, "mse_search_quantizer_histogram")


def kl_quantizer_histogram(density, bits=8, num_bins=2048, extremes=None):
    """:func:`kl_quantizer` on a histogram: the histogram of ``|x|`` (:meth:`HistogramDensity.folded`)
    re-binned into ``num_bins`` equal bins over ``[0, max |x|]`` (``max |x|`` from ``extremes`` or
    the support), then TensorRT's threshold search :func:`kl_threshold` and its symmetric
    narrow-range codes. A histogram whose bins already are those ``num_bins`` bins gives exactly
    :func:`kl_quantizer`'s counts."""
    density = _histogram_density(density, "kl_quantizer_histogram")
    if bits < 2:
        raise ValueError(f"kl_quantizer_histogram: needs bits >= 2 (narrow signed codes), got {bits}")
    minimum, maximum = _extremes(density, extremes, "kl_quantizer_histogram")
    amax = max(abs(minimum), abs(maximum))
    if amax == 0.0:
        raise ValueError("kl_quantizer_histogram: all values are 0")
    counts = density.folded().counts_between(np.linspace(0.0, amax, num_bins + 1))  # np.histogram's edges
    threshold, _ = kl_threshold(np.maximum(counts, 0.0), amax / num_bins, 2**(bits - 1))
    return signed_quantizer(bits, threshold / (2**(bits - 1) - 1), narrow_range=True)
