"""The histogram read as a piecewise-uniform density (:class:`HistogramDensity`).

Calibration accumulates activations into histograms; the baselines of
:mod:`refquant.quantizers.baselines` read percentiles, moments and errors from this density
(docs/SPECIFICATION.md, sections 7 and 11.3).
"""
import math

import numpy as np


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
