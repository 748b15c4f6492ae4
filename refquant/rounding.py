"""The one rounding rule of refquant: round half to even.

Every place that turns a real number into an integer code goes through this
module: the quantizer (``refquant.quantizers``), the requantization of int32
accumulators (``refquant.integer``), the integer network and its float
simulation. Changing the rule here changes it everywhere, and nowhere else.

Why half to even: it is IEEE 754's default rounding (``numpy.rint``,
C's ``nearbyint``), the rule of PyTorch's ``fake_quantize_per_tensor_affine``
and of fbgemm's ``Quantize``, and it is unbiased on ties, which matter for
integer-valued inputs such as ``acc * 2**-shift`` where exact halves are
common. (TFLite and gemmlowp round half away from zero instead, with a 31-bit
multiplier where refquant's has 22 bits; their codes can differ from refquant's by
one, never more: docs/SPECIFICATION.md, section 1.)
"""
import numba
import numpy as np


@numba.extending.register_jitable
def round_half_even(x):
    """Nearest integer to ``x``, ties to the even neighbour (IEEE 754 default).

    ``x``: float array or scalar. Returns floats holding integer values
    (``np.rint``), so the caller chooses the integer dtype after clipping.
    A plain function in Python; ``register_jitable`` lets Numba kernels call
    the same rule (``np.rint`` compiles to the same IEEE instruction).
    """
    return np.rint(x)


@numba.vectorize(["int64(int64, int64)"], nopython=True, cache=True)
def rounding_right_shift(value, shift):
    """Integer ``value / 2**shift`` rounded half to even, in exact integer arithmetic.

    The integer twin of :func:`round_half_even`: for any int64 ``value`` and
    ``0 <= shift <= 62``, ``rounding_right_shift(v, s) == round_half_even(v / 2**s)``
    whenever the division is exact in float64, and it stays exact where float64
    is not. A NumPy ufunc (broadcasts over arrays) that Numba kernels can call.

    floor = value >> shift (arithmetic shift floors, also for negatives);
    remainder = value - floor * 2**shift lies in [0, 2**shift);
    round up if remainder > half, or remainder == half and floor is odd.
    """
    if shift <= 0:
        return value
    floor = value >> shift
    remainder = value - (floor << shift)
    half = np.int64(1) << (shift - 1)
    if remainder > half or (remainder == half and (floor & 1) == 1):
        return floor + 1
    return floor
