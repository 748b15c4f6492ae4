"""The expected squared quantization error under a density, in closed form, and the empirical
error of data (docs/SPECIFICATION.md, section 5): granular error inside the interval, clipping error outside.
"""
import numpy as np

from refquant.validate import finite_samples

MAX_LEVELS = 2**20
"""The most levels :func:`expected_mse` evaluates (its cells are one array: 2**20 levels take tens of MB)."""


def expected_mse(dist, quantizer, split=False):
    """``E[(X - Q(X))^2]`` for X ~ ``dist``, in closed form (no numerical integration).

    The real line splits into the quantizer's cells, each mapped to one level ``c``:

    - granular cells ``[c - step/2, c + step/2)`` intersected with ``[lo, hi]`` (the two end cells
      are half cells ``[lo, lo + step/2)`` and ``[hi - step/2, hi]``);
    - the clipping regions ``(-inf, lo)`` -> ``lo`` and ``(hi, inf)`` -> ``hi``.

    On a cell ``[a, b)``: ``integral_a^b (x - c)^2 p(x) dx = m2 - 2 c m1 + c^2 m0`` with
    ``(m0, m1, m2) = dist.partial_moments(a, b)`` (for a piecewise Gaussian: Phi and phi terms per
    cell and piece). Cell boundaries carry no mass, so the tie rule does not enter.

    Returns the total (float), or with ``split=True`` the pair ``(granular, clipping)``. At most
    ``MAX_LEVELS`` levels (a 20-bit quantizer: one array of cells per call).
    """
    if quantizer.num_levels > MAX_LEVELS:
        raise ValueError(f"expected_mse: the quantizer has {quantizer.num_levels} levels (codes {quantizer.qmin}.."
                         f"{quantizer.qmax}); at most {MAX_LEVELS} (2**20) are supported")
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
    x = finite_samples(samples, "empirical_mse")
    return float(np.mean((x - quantizer.fake(x)) ** 2))
