"""The uniform quantizer (docs/SPECIFICATION.md, section 4).

:class:`UniformQuantizer`: integer codes in ``[qmin, qmax]``, a step and a zero point;
``quantize``, ``dequantize``, fake quantization and the straight-through gradient rule.
``fake_with_mask`` (one Numba pass) stands beside ``fake_with_mask_reference`` (``fake`` then
``straight_through_mask``), equal bit for bit. Rounding is :func:`refquant.rounding.round_half_even`.
"""
import dataclasses
import math

import numba
import numpy as np

from refquant.rounding import round_half_even
from refquant.validate import check_scale

MAX_BITS = 16


@dataclasses.dataclass(frozen=True)
class UniformQuantizer:
    """The uniform quantizer ``Q(x) = step * (clip(round(x/step) + zero_point, qmin, qmax) - zero_point)``.

    ``step``: float > 0. ``qmin < qmax``: integer codes. ``zero_point``: the code of the value 0.

    An integer ``zero_point`` (stored as ``int``) makes 0 exactly representable and the formula
    above is literally the one used (PyTorch's ``fake_quantize_per_tensor_affine`` and the
    project's integer network use the same). A real ``zero_point`` is allowed for the classic
    free-offset problem (Max 1960); then, with ``z = floor(zero_point)`` and
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
        for name in ("step", "zero_point"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"UniformQuantizer: {name} must be a real number, got {value!r}")
        step = float(self.step)
        if not (math.isfinite(step) and step > 0.0):
            raise ValueError(f"UniformQuantizer: step must be a finite float > 0, got {self.step!r}")
        check_scale(step, "UniformQuantizer", "step", spread=True)
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

    def fake_with_mask_reference(self, x):
        """``(fake(x), straight_through_mask(x))``: the reference of :meth:`fake_with_mask`."""
        return self.fake(x), self.straight_through_mask(x)

    # -- the optimized kernel of training -------------------------------------------------------

    def fake_with_mask(self, x):
        """``(fake(x), straight_through_mask(x))`` in one parallel pass (Numba): the training kernel.

        Equal bit for bit to :meth:`fake_with_mask_reference` (the same float64 operations in the same
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
        nan_at = _fake_quantize_kernel(flat, *self.kernel_arguments(), out, mask)
        if nan_at >= 0:
            raise _nan_error(nan_at)
        return out.reshape(x.shape), mask.reshape(x.shape)

    def kernel_arguments(self):
        """``(step, fraction, whole, qmin, qmax, zero_point, lo, hi)`` as floats: the grid as the Numba
        kernels take it (:func:`fake_value`, :func:`straight_through_value`)."""
        whole, fraction = self._split_zero_point()
        return (float(self.step), float(fraction), float(whole), float(self.qmin), float(self.qmax),
                float(self.zero_point), float(self.lo), float(self.hi))


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
    n_blocks = -(-n // _BLOCK)
    nan_at = n
    for block in numba.prange(n_blocks):
        start, stop = block * _BLOCK, min(n, (block + 1) * _BLOCK)
        seen_nan = False
        # branch-free, so that LLVM vectorises it; a NaN's out and mask are put right after (rare)
        for i in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wrap-around test
            value = np.float64(x[i])
            seen_nan |= value != value
            out[i] = fake_value(value, step, fraction, whole, qmin, qmax, zero_point)
            mask[i] = straight_through_value(value, lo, hi)
        first = n
        if seen_nan:
            for i in range(start, stop):
                if x[i] != x[i]:
                    first = min(first, i)
                    out[i] = 0
                    mask[i] = False
        nan_at = min(nan_at, first)  # a prange reduction (at the loop body's top level): the smallest wins
    return nan_at if nan_at < n else -1


_BLOCK = 16384
"""Elements per parallel task of :func:`_fake_quantize_kernel`."""


@numba.njit(cache=True, inline="always")
def fake_value(value, step, fraction, whole, qmin, qmax, zero_point):
    """Fake quantization of one float64 value, the rule of :meth:`UniformQuantizer.quantize` then
    :meth:`~UniformQuantizer.dequantize` in the same float64 operations:
    ``code = min(max(rint(value / step + fraction) + whole, qmin), qmax)``, ``step * (code - zero_point)``
    (arguments from :meth:`UniformQuantizer.kernel_arguments`; NaN is the caller's to refuse)."""
    code = min(max(round_half_even(value / step + fraction) + whole, qmin), qmax)
    return step * (code - zero_point)


@numba.njit(cache=True, inline="always")
def straight_through_value(value, lo, hi):
    """The straight-through mask of one value, :meth:`UniformQuantizer.straight_through_mask`: ``lo <= value <= hi``."""
    return (value >= lo) and (value <= hi)


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


def _check_bits(bits, caller="bits", low=1):
    """``bits`` an int in ``[low, MAX_BITS]``: ``TypeError`` for another type (a float, even a whole
    one, or a bool), ``ValueError`` out of range, both naming the caller."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{caller}: bits must be an int, got {bits!r} ({type(bits).__name__})")
    if not low <= bits <= MAX_BITS:
        raise ValueError(f"{caller}: bits must be an int in [{low}, {MAX_BITS}], got {bits!r}")
