"""The rounding rule against Python's exact rational arithmetic.

Independent truth: ``round(Fraction(v, 2**s))`` is Python's built-in rounding of an exact
rational number, which rounds half to even (language reference, ``round``).
"""
from fractions import Fraction

import numpy as np

from refquant.rounding import round_half_even, rounding_right_shift


def test_round_half_even_on_ties():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -2.5001])
    expected = [round(Fraction(v)) for v in x.tolist()]
    assert round_half_even(x).tolist() == expected


def test_rounding_right_shift_matches_exact_rational_rounding():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.arange(-300, 301), rng.integers(-2**40, 2**40, 2000)]).astype(np.int64)
    for shift in [0, 1, 2, 3, 7, 15, 31]:
        got = rounding_right_shift(values, shift)
        expected = [round(Fraction(int(v), 2**shift)) for v in values]
        assert got.tolist() == expected, shift


def test_rounding_right_shift_is_exact_beyond_float64():
    # 2**60 + 3 is not representable in float64; the integer rule must still be exact.
    value = np.int64(2**60 + 3)
    assert int(rounding_right_shift(value, 1)) == round(Fraction(2**60 + 3, 2))
