"""Integrals of a Gaussian over an interval, accurate far in the tails and on tiny intervals.

The masses, means and variances of a truncated normal, from which the PGM's density, its EM steps
and the expected quantization error are all built (docs/SPECIFICATION.md, section 2). Log-space masses, the scaled
complementary error function in the tails and a Gauss-Legendre rule on narrow intervals keep full
precision 40 or 3000 standard deviations out and on intervals 1e-8 wide.
"""
import math

import numba
import numpy as np

_SQRT2 = math.sqrt(2.0)


_SQRT_PI = math.sqrt(math.pi)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@numba.njit(cache=True)
def _two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth's two-sum)."""
    total = a + b
    virtual = total - a
    return total, (a - (total - virtual)) + (b - virtual)


@numba.njit(cache=True)
def _two_product(a, b):
    """``(p, e)`` with ``p = fl(a * b)`` and ``p + e = a * b`` exactly (Dekker's product: each factor
    split at 2**27 + 1 into halves whose products are exact)."""
    product = a * b
    a_high = 134217729.0 * a
    a_high = a_high - (a_high - a)
    a_low = a - a_high
    b_high = 134217729.0 * b
    b_high = b_high - (b_high - b)
    b_low = b - b_high
    return product, ((a_high * b_high - product) + a_high * b_low + a_low * b_high) + a_low * b_low


@numba.njit(cache=True)
def _erfcx(x):
    """``exp(x^2) erfc(x)`` for ``x >= 0``, to a few ulps.

    Below 26, ``erfc`` (C library) has not underflowed; ``x^2`` is split exactly as
    ``square + error`` (:func:`_two_product`) so that ``exp(x^2)`` does not inherit the rounding of
    ``x^2`` (which would cost ``x^2`` ulps). From 26 on, the asymptotic series
    ``erfcx(x) = 1/(x sqrt(pi)) sum_n (-1)^n (2n-1)!! / (2x^2)^n`` (Abramowitz & Stegun 7.1.23)
    has converged to double precision within 11 terms.
    """
    if x < 26.0:
        square, error = _two_product(x, x)
        return math.exp(square) * (1.0 + error) * math.erfc(x)
    inverse = 0.5 / (x * x)
    term = 1.0
    total = 1.0
    for n in range(1, 12):
        term *= -(2 * n - 1) * inverse
        total += term
    return total / (x * _SQRT_PI)


# An interval is "narrow" when the exponent of phi varies by at most about 2 * _NARROW_LIMIT over
# it. There the closed forms lose digits to cancellation (the variance's error grows like
# 1 / width^2, a far interval's mean offset like 1 / (1 - d)), while a 16-point Gauss-Legendre
# rule on exp(quadratic) with a range <= 4 is exact to ~1e-17 (Taylor remainder 2**32 / 32!).
# Past the limit the factor d = exp(-(beta^2 - alpha^2) / 2) of the tail integrals is below
# exp(-2), so their differences keep all but a bit or two.
_NARROW_LIMIT = 2.0


_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(16)
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = _LEGENDRE_NODES[8:].copy(), _LEGENDRE_WEIGHTS[8:].copy()  # y > 0


# Laplace's continued fraction for the Mills ratio converges fast enough from here on (at most
# _CF_TERMS terms reach 1e-17 at x = 2); below it the direct forms cancel at most a factor ~6.
_CF_START = 2.0


_CF_TERMS = 120


_SQRT_PI_OVER_2 = math.sqrt(math.pi / 2.0)


# Which point of the interval a kernel's mean is measured from (in the standardised frame):
_ANCHOR_MU = 0      # the Gaussian's own mean (z = 0)
_ANCHOR_LOW = 1     # the end nearer the Gaussian's mean (after mirroring: the lower end)
_ANCHOR_CENTRE = 2  # the midpoint of the interval


@numba.njit(cache=True)
def _half_square(x, error):
    """``(x + error)^2 / 2`` as ``head + tail``: ``head = fl(x*x) / 2`` (exact halving) and the
    rounding of ``x*x`` (:func:`_two_product`) plus ``x * error`` in ``tail``, so that
    ``exp(-head) * (1 - tail)`` keeps a few ulps where ``exp(-fl(x*x)/2)`` would lose ``x^2`` ulps."""
    square, rounding = _two_product(x, x)
    return 0.5 * square, 0.5 * rounding + x * error


@numba.njit(cache=True)
def _tail_integrals(x):
    """``(T0, T1, U2)``: ``T_j = integral_0^inf y^j exp(-x y - y^2/2) dy``, ``j = 0, 1, 2``, ``x >= 0``.

    ``T0`` is the Mills ratio ``R(x) = sqrt(pi/2) erfcx(x/sqrt2)``; by parts ``T1 = 1 - x R`` and
    ``U2 = R - x T1``, both of which cancel for large x. With Laplace's continued fraction
    ``R = 1/(x + 1/(x + 2/(x + 3/(x + ...))))`` write ``c = 1/(x + 2 q)``, ``q = 1/(x + 3/(x + 4/...))``:
    then ``1/R = x + c`` so ``T1 = R c`` and ``1 - x c = 2 q c`` so ``U2 = 2 q T1``, with no
    subtraction (Abramowitz & Stegun 26.2.14 for the fraction).
    """
    t0 = _SQRT_PI_OVER_2 * _erfcx(x / _SQRT2)
    if x < _CF_START:
        c = 1.0 / t0 - x
        q = 0.5 * (1.0 / c - x)
    else:
        tail = x
        for k in range(_CF_TERMS, 1, -1):  # tail = x + (k+1) / tail, down to x + 3/(x + 4/...)
            tail = x + (k + 1) / tail
        q = 1.0 / tail
        c = 1.0 / (x + 2.0 * q)
    t1 = t0 * c
    return t0, t1, 2.0 * q * t1


@numba.njit(cache=True)
def _narrow_moments(centre, centre_error, half_width):
    """``(log mass, mass, offset, variance)`` of N(0,1) on ``[centre - h, centre + h]``, narrow;
    ``offset`` is the mean minus ``centre``.

    With ``z = centre + y``, ``phi(z) = phi(centre) exp(-centre y - y^2/2)``: the mass is
    ``phi(centre) h I0`` and the moments of y are ``I1/I0``, ``I2/I0`` with
    ``Ij = integral_{-1}^{1} (h t)^j exp(-centre h t - (h t)^2/2) dt`` by Gauss-Legendre, the
    nodes taken in pairs ``+-t`` (``cosh``, ``sinh`` of ``centre h t``) so that ``I1`` does not
    cancel when ``centre`` is small. ``I2/I0 - (I1/I0)^2`` keeps its digits: the offset's square
    is at most a tenth of ``I2/I0`` here.
    """
    i0 = 0.0
    i1 = 0.0
    i2 = 0.0
    for node, weight in zip(_LEGENDRE_NODES, _LEGENDRE_WEIGHTS):
        y = half_width * node
        gauss = weight * math.exp(-0.5 * y * y)
        tilt = centre * y
        even = gauss * math.cosh(tilt)
        i0 += even
        i1 -= gauss * math.sinh(tilt) * y
        i2 += even * y * y
    offset = i1 / i0
    head, tail = _half_square(centre, centre_error)
    log_mass = -head - tail - _LOG_SQRT_2PI + math.log(2.0 * half_width * i0)
    mass = math.exp(-head) * (1.0 - tail) * (2.0 * half_width * i0) / math.sqrt(2.0 * math.pi)
    return log_mass, mass, offset, i2 / i0 - offset * offset


@numba.njit(cache=True)
def _right_side_moments(alpha, alpha_error, beta, width):
    """``(log mass, mass, offset, variance)`` of N(0,1) on ``[alpha, beta]``,
    ``0 <= alpha < beta <= inf``; ``offset`` is the mean minus ``alpha``.

    With ``y = z - alpha``, ``phi(z) = phi(alpha) exp(-alpha y - y^2/2)`` and, for ``d =
    exp(-(beta^2 - alpha^2)/2)``, ``w = beta - alpha``, the integrals over ``[0, w]`` are the tail
    integrals of :func:`_tail_integrals` at alpha less those at beta shifted by w::

        J0 = T0(a) - d T0(b)
        J1 = T1(a) - d (T1(b) + w T0(b))
        J2 = U2(a) - d (U2(b) + 2 w T1(b) + w^2 T0(b))

    mass ``phi(alpha) J0``, offset ``J1/J0``, variance ``J2/J0 - offset^2``. Nothing underflows
    before the ratios are taken, and the mean's offset from the interval's end keeps its digits
    however far out the interval lies.
    """
    t0a, t1a, u2a = _tail_integrals(alpha)
    if math.isinf(beta):
        j0, j1, j2 = t0a, t1a, u2a
    else:
        d = math.exp(-0.5 * width * (alpha + beta))
        t0b, t1b, u2b = _tail_integrals(beta)
        j0 = t0a - d * t0b
        j1 = t1a - d * (t1b + width * t0b)
        j2 = u2a - d * (u2b + 2.0 * width * t1b + width * width * t0b)
    offset = j1 / j0
    head, tail = _half_square(alpha, alpha_error)
    log_mass = -head - tail - _LOG_SQRT_2PI + math.log(j0)
    mass = math.exp(-head) * (1.0 - tail) * j0 / math.sqrt(2.0 * math.pi)
    return log_mass, mass, offset, max(j2 / j0 - offset * offset, 0.0)


@numba.njit(cache=True)
def _straddling_moments(alpha, beta):
    """``(log mass, mass, mean, variance)`` of N(0,1) on ``[alpha, beta]``, ``alpha < 0 < beta``.

    ``erf(beta/sqrt2) - erf(alpha/sqrt2)`` adds two terms of the same sign: no cancellation; the
    interval is not narrow, so it holds at least ``erf(1)`` of a unit's mass about 0 and the
    variance ``1 + (alpha phi(alpha) - beta phi(beta)) / mass - mean^2`` cancels at most a few bits.
    """
    mass = 0.5 * (math.erf(beta / _SQRT2) - math.erf(alpha / _SQRT2))
    phi_alpha = 0.0 if math.isinf(alpha) else math.exp(-0.5 * alpha * alpha - _LOG_SQRT_2PI)
    phi_beta = 0.0 if math.isinf(beta) else math.exp(-0.5 * beta * beta - _LOG_SQRT_2PI)
    alpha_phi = 0.0 if math.isinf(alpha) else alpha * phi_alpha
    beta_phi = 0.0 if math.isinf(beta) else beta * phi_beta
    mean = (phi_alpha - phi_beta) / mass
    second = 1.0 + (alpha_phi - beta_phi) / mass
    return math.log(mass), mass, mean, max(second - mean * mean, 0.0)


@numba.njit(cache=True)
def _anchored_moments(alpha, alpha_error, beta, beta_error, width):
    """The one kernel: ``(log_mass, mass, anchor, sign, offset, variance)`` of N(0,1) on
    ``[alpha, beta]``.

    ``alpha + alpha_error`` and ``beta + beta_error`` are the standardised ends to twice the
    working precision (:func:`standardise`); ``width`` is ``beta - alpha`` computed accurately by
    the caller (NaN: take the difference). The mean is ``sign * (point + offset)`` where the
    point is, by ``anchor``: 0 (``_ANCHOR_MU``); the interval's end nearer 0 (``_ANCHOR_LOW``:
    alpha, or beta when ``sign`` is -1, the interval mirrored to the right of 0); its midpoint
    (``_ANCHOR_CENTRE``). Returning the offset from a point of the interval, not the mean
    itself, is what keeps a narrow or far interval's mean to a few ulps once the caller adds the
    point back in its own units. An empty interval gives ``(-inf, 0, _ANCHOR_MU, 1, 0, 0)``.
    """
    if not alpha < beta:
        return -np.inf, 0.0, _ANCHOR_MU, 1.0, 0.0, 0.0
    sign = 1.0
    lo, lo_error, hi, hi_error = alpha, alpha_error, beta, beta_error
    if beta <= 0.0:  # wholly on the left: mirror onto [-beta, -alpha], the mean changes sign
        sign = -1.0
        lo, lo_error, hi, hi_error = -beta, -beta_error, -alpha, -alpha_error
    if math.isnan(width):
        width = hi - lo
    if math.isfinite(lo) and math.isfinite(hi):
        half_width = 0.5 * width
        total, total_error = _two_sum(lo, hi)
        centre = 0.5 * total
        if half_width * (abs(centre) + half_width) <= _NARROW_LIMIT:
            centre_error = 0.5 * (total_error + lo_error + hi_error)
            log_mass, mass, offset, variance = _narrow_moments(centre, centre_error, half_width)
            return log_mass, mass, _ANCHOR_CENTRE, sign, offset, variance
    if lo < 0.0:
        log_mass, mass, mean, variance = _straddling_moments(lo, hi)
        return log_mass, mass, _ANCHOR_MU, sign, mean, variance
    log_mass, mass, offset, variance = _right_side_moments(lo, lo_error, hi, width)
    return log_mass, mass, _ANCHOR_LOW, sign, offset, variance


@numba.njit(cache=True)
def _truncated_moments(alpha, beta, width):
    """``(log_mass, mean, variance)`` of N(0,1) on ``[alpha, beta]`` in the standardised frame
    (the EM's kernel; ``width`` NaN means ``beta - alpha``)."""
    log_mass, _, anchor, sign, offset, variance = _anchored_moments(alpha, 0.0, beta, 0.0, width)
    if anchor == _ANCHOR_CENTRE:
        point = 0.5 * (alpha + beta) * sign
    elif anchor == _ANCHOR_LOW:
        point = beta if sign < 0.0 else alpha
        point *= sign
    else:
        point = 0.0
    return log_mass, sign * (point + offset), variance


@numba.njit(cache=True)
def standardise(x, mu, sigma):
    """``(z, z_error)`` with ``z + z_error = (x - mu) / sigma`` to about twice double precision
    (Knuth's two-sum for the difference, Dekker's product for the division's remainder)."""
    if not math.isfinite(x):
        return (x - mu) / sigma, 0.0
    difference, difference_error = _two_sum(x, -mu)
    z = difference / sigma
    product, product_error = _two_product(z, sigma)  # the division's remainder, exactly
    return z, ((difference - product) - product_error + difference_error) / sigma


@numba.njit(cache=True)
def _interval_moments(mu, sigma, lo, hi):
    """Scalar kernel of :func:`gaussian_interval_moments`: ``(log_mass, mass, mean, variance)``."""
    alpha, alpha_error = standardise(lo, mu, sigma)
    beta, beta_error = standardise(hi, mu, sigma)
    width = (hi - lo) / sigma if math.isfinite(hi - lo) else np.nan
    log_mass, mass, anchor, sign, offset, var_z = _anchored_moments(alpha, alpha_error, beta,
                                                                    beta_error, width)
    if log_mass == -np.inf:
        return log_mass, 0.0, 0.0, 0.0
    if anchor == _ANCHOR_CENTRE:
        point = 0.5 * (lo + hi)
    elif anchor == _ANCHOR_LOW:
        point = hi if sign < 0.0 else lo
    else:
        point = mu
    return log_mass, mass, point + sign * sigma * offset, sigma * sigma * var_z


@numba.njit(cache=True)
def _interval_moments_array(mu, sigma, lo, hi, log_mass, mass, mean, variance):
    for i in range(mu.size):
        log_mass[i], mass[i], mean[i], variance[i] = _interval_moments(mu[i], sigma[i], lo[i], hi[i])


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


@numba.njit(cache=True)
def _truncated_moments_array(alpha, beta, width, log_mass, mean, variance):
    for i in range(alpha.size):
        log_mass[i], mean[i], variance[i] = _truncated_moments(alpha[i], beta[i], width[i])


def gaussian_interval_moments(mu, sigma, lo, hi):
    """Mass, mean and variance of ``N(mu, sigma^2)`` restricted to ``[lo, hi]`` (broadcasting).

    Returns ``(log_mass, mass, mean, variance)``: ``mass = P(lo <= X <= hi)`` (0 where it
    underflows; ``log_mass`` its logarithm, finite even then); ``mean`` and ``variance`` are those
    of X given ``lo <= X <= hi`` (0 and 0 for an empty interval).

    Accuracy, checked against 50-digit mpmath from intervals 1e-12 sigma wide to 40 sigma out:
    mass and mean to a few ulps (the ends standardised to twice double precision, the mean
    computed as a point of the interval plus an offset in the interval's own units); the
    variance to ~1e-14 relative.
    """
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (mu, sigma, lo, hi)))
    shape = arrays[0].shape
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    outputs = [np.empty(flat[0].size) for _ in range(4)]
    _interval_moments_array(*flat, *outputs)
    return tuple(out.reshape(shape) for out in outputs)
