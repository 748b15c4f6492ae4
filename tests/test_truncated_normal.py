"""Truncated-normal masses and moments against 120-digit mpmath.

The independent truth: mpmath's ``ncdf``/``npdf`` at 120 digits and the closed forms
``integral_a^b z phi = phi(a) - phi(b)``, ``integral_a^b z^2 phi = Phi(b) - Phi(a) + a phi(a) - b phi(b)``
(enough digits that their cancellation on a 1e-12-wide interval 40 sigma out leaves ~50 good ones).
The claim checked is the specification's (section 2): partial moments accurate to a few ulps on
every interval however narrow or far out, where "ulps" for m1 are measured against
``integral |x| p(x) dx`` (the sum's own conditioning: m1 of an interval straddling 0 may be a
cancellation of two halves, which no implementation can resolve better).
"""
import itertools

import mpmath
import numpy as np
import pytest

from refquant.density.pgm import PiecewiseGaussian
from refquant.density.truncated_normal import gaussian_interval_moments, standardise


@pytest.fixture(autouse=True)
def _precision():
    """120-digit mpmath for every test here, restored after (mpmath's precision is process-wide)."""
    with mpmath.workdps(120):
        yield


EPS = np.finfo(np.float64).eps
# "A few ulps": 8 units of double precision.
FEW_ULPS = 8 * EPS


def _mp(value):
    if np.isfinite(value):
        return mpmath.mpf(float(value))
    return mpmath.inf if value > 0 else -mpmath.inf


def _exact_partial_moments(mu, sigma, lo, hi):
    """``(m0, m1, m2)`` of N(mu, sigma^2) on [lo, hi] at 120 digits, from the closed forms."""
    mu, sigma = _mp(mu), _mp(sigma)
    a, b = (_mp(lo) - mu) / sigma, (_mp(hi) - mu) / sigma
    phi_a = mpmath.npdf(a) if mpmath.isfinite(a) else 0
    phi_b = mpmath.npdf(b) if mpmath.isfinite(b) else 0
    a_phi_a = a * phi_a if mpmath.isfinite(a) else 0
    b_phi_b = b * phi_b if mpmath.isfinite(b) else 0
    # Phi(b) - Phi(a) without cancellation on the right: 1 - Phi(x) = ncdf(-x).
    i0 = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
    i1 = phi_a - phi_b
    i2 = i0 + a_phi_a - b_phi_b
    return i0, mu * i0 + sigma * i1, mu * mu * i0 + 2 * mu * sigma * i1 + sigma * sigma * i2


def _cases():
    """Intervals from 1e-12 sigma wide to infinite, from inside the body to 40 sigma out, on
    either side, with one end at 0 of the data's units or measured from the mean; plus seeded
    random ones."""
    cases = []
    for mu, sigma in itertools.product([0.0, 3.0, -7.5, 40.0, 1e3], [1.0, 0.1, 1e-3]):
        for start, width, side, origin in itertools.product(
                [0.0, 0.3, 2.0, 10.0, 25.0, 40.0], [1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.5, 1.0, 1.9, 3.0, 8.0, np.inf],
                [1, -1], ["mean", "zero"]):
            edge = mu + side * start * sigma if origin == "mean" else 0.0
            lo, hi = (edge, edge + width * sigma) if side > 0 else (edge - width * sigma, edge)
            cases.append((mu, sigma, lo, hi))
    rng = np.random.default_rng(20261203)
    for _ in range(300):
        mu, sigma = rng.normal(0.0, 5.0), 10.0 ** rng.uniform(-4, 2)
        lo = mu + sigma * rng.uniform(-42.0, 42.0)
        hi = lo + sigma * 10.0 ** rng.uniform(-12, 1.5)
        cases.append((mu, sigma, lo, hi))
    return cases


def _representable(m0):
    return m0 > mpmath.mpf("1e-280")  # below this the mass itself is not held to full precision


def test_partial_moments_to_a_few_ulps_against_mpmath():
    worst = np.zeros(3)
    checked = 0
    for mu, sigma, lo, hi in _cases():
        exact = _exact_partial_moments(mu, sigma, lo, hi)
        if not _representable(exact[0]):
            continue
        got = PiecewiseGaussian.normal(mu, sigma).partial_moments(lo, hi)
        scale = [exact[0], abs(exact[1]), exact[2]]
        if lo < 0.0 < hi:  # m1's conditioning: integral of |x| p over the two halves
            scale[1] = (abs(_exact_partial_moments(mu, sigma, lo, 0.0)[1])
                        + abs(_exact_partial_moments(mu, sigma, 0.0, hi)[1]))
        errors = [float(abs(mpmath.mpf(float(g)) - e) / s) for g, e, s in zip(got, exact, scale)]
        assert max(errors) <= FEW_ULPS, (mu, sigma, lo, hi, errors)
        worst = np.maximum(worst, errors)
        checked += 1
    assert checked > 2000
    assert np.all(worst < FEW_ULPS)


@pytest.mark.parametrize("lo, hi", [(-1e-9, 0.0), (0.0, 1e-9), (0.0, 4.02e-9)])
def test_the_outside_implementations_narrow_cases(lo, hi):
    """The three intervals where an outside implementation found m1 wrong by 1e-9 relative (the
    mean computed as mu + sigma * standardised mean, cancelling): now within a few ulps, on a
    density whose mean is several sigmas away."""
    for mu, sigma in [(2.5, 0.7), (-1.3, 0.2), (0.004, 1e-3)]:
        exact = _exact_partial_moments(mu, sigma, lo, hi)
        got = PiecewiseGaussian.normal(mu, sigma).partial_moments(lo, hi)
        for g, e in zip(got, exact):
            assert abs(mpmath.mpf(float(g)) - e) <= FEW_ULPS * abs(e)


def test_standardise_is_twice_double_precision():
    rng = np.random.default_rng(7)
    for _ in range(200):
        x, mu, sigma = rng.normal(0, 10), rng.normal(0, 10), 10.0 ** rng.uniform(-5, 3)
        z, z_error = standardise(x, mu, sigma)
        exact = (_mp(x) - _mp(mu)) / _mp(sigma)
        assert abs((mpmath.mpf(z) + mpmath.mpf(z_error)) - exact) <= 1e-30 * max(abs(exact), 1)


def test_mean_stays_inside_its_interval():
    """A conditional mean outside [lo, hi] is impossible; the anchored form never leaves it."""
    rng = np.random.default_rng(11)
    mu = rng.normal(0, 3, 5000)
    sigma = 10.0 ** rng.uniform(-3, 1, 5000)
    lo = mu + sigma * rng.uniform(-40, 40, 5000)
    hi = lo + sigma * 10.0 ** rng.uniform(-12, 2, 5000)
    _, _, mean, variance = gaussian_interval_moments(mu, sigma, lo, hi)
    assert np.all((mean >= lo) & (mean <= hi))
    assert np.all((variance >= 0.0) & (variance <= (hi - lo) ** 2 / 4))
