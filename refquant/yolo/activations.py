"""Darknet's activation functions and their derivatives (``src/activations.h``).

Darknet computes every derivative from the layer's *output* ``y``, not its input
(``gradient_array(l.output, ...)`` in ``convolutional_layer.c``), so each
activation here is a pair ``activate(x) -> y`` and ``gradient(y) -> dy/dx``. For
the functions kept here that is exact: leaky and relu are positive exactly where
their input is, and the logistic's derivative is ``y (1 - y)``.

    linear    y = x                                 dy/dx = 1
    leaky     y = x if x > 0 else 0.1 x              dy/dx = 1 if y > 0 else 0.1
    relu      y = x if x > 0 else 0                  dy/dx = 1 if y > 0 else 0
    logistic  y = 1 / (1 + exp(-x))                  dy/dx = y (1 - y)
    tanh      y = (exp(2x) - 1) / (exp(2x) + 1)      dy/dx = 1 - y**2

At exactly 0 the derivative is the one Darknet uses (the left one for leaky and
relu). The scalar definitions :func:`activate_value` and :func:`gradient_value`
are the only place the formulas live; the array functions and the fused
convolution kernels (``refquant.yolo.convolutional``) all call them.
"""
import numba
import numpy as np

LEAKY_SLOPE = 0.1
"""Negative slope of Darknet's ``leaky`` (``leaky_activate``: ``.1*x``)."""

ACTIVATION_CODES = {"linear": 0, "leaky": 1, "relu": 2, "logistic": 3, "tanh": 4}
"""cfg ``activation=`` name -> the integer code the Numba kernels dispatch on."""


def activation_code(name):
    """The kernel code of activation ``name``; ValueError listing the supported names otherwise."""
    if name not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATION_CODES)}")
    return ACTIVATION_CODES[name]


@numba.njit(cache=True, inline="always")
def activate_value(x, code):
    """y = f(x) for one value; ``code`` from :data:`ACTIVATION_CODES`."""
    if code == 1:
        return x if x > 0 else LEAKY_SLOPE * x
    if code == 2:
        return x if x > 0 else 0.0 * x
    if code == 3:
        return 1.0 / (1.0 + np.exp(-x))
    if code == 4:
        return np.tanh(x)
    return x


@numba.njit(cache=True, inline="always")
def gradient_value(y, code):
    """dy/dx for one value, computed from the output ``y`` as Darknet does."""
    if code == 1:
        return 1.0 if y > 0 else LEAKY_SLOPE
    if code == 2:
        return 1.0 if y > 0 else 0.0
    if code == 3:
        return y * (1.0 - y)
    if code == 4:
        return 1.0 - y * y
    return 1.0


@numba.njit(cache=True, inline="always")
def _activate_range(x, out, start, stop, code):
    for i in range(start, stop):
        out[i] = activate_value(x[i], code)


@numba.njit(cache=True, inline="always")
def _gradient_times_range(y, dout, out, start, stop, code):
    for i in range(start, stop):
        out[i] = dout[i] * gradient_value(y[i], code)


_CHUNK = 1 << 14


@numba.njit(cache=True, parallel=True)
def _activate_flat(x, code, out):
    for chunk in numba.prange((x.size + _CHUNK - 1) // _CHUNK):
        start, stop = chunk * _CHUNK, min(x.size, (chunk + 1) * _CHUNK)
        # a literal code per call keeps the inner loop branch-free
        if code == 1:
            _activate_range(x, out, start, stop, 1)
        elif code == 0:
            _activate_range(x, out, start, stop, 0)
        elif code == 2:
            _activate_range(x, out, start, stop, 2)
        elif code == 3:
            _activate_range(x, out, start, stop, 3)
        else:
            _activate_range(x, out, start, stop, 4)


@numba.njit(cache=True, parallel=True)
def _gradient_times_flat(y, dout, code, out):
    for chunk in numba.prange((y.size + _CHUNK - 1) // _CHUNK):
        start, stop = chunk * _CHUNK, min(y.size, (chunk + 1) * _CHUNK)
        if code == 1:
            _gradient_times_range(y, dout, out, start, stop, 1)
        elif code == 0:
            _gradient_times_range(y, dout, out, start, stop, 0)
        elif code == 2:
            _gradient_times_range(y, dout, out, start, stop, 2)
        elif code == 3:
            _gradient_times_range(y, dout, out, start, stop, 3)
        else:
            _gradient_times_range(y, dout, out, start, stop, 4)


def activate(x, name):
    """f(x) elementwise; ``x`` a float array of any shape, returns a new array of x's dtype."""
    code = activation_code(name)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _activate_flat(x.reshape(-1), code, out.reshape(-1))
    return out


def gradient(y, name):
    """dy/dx elementwise from the output ``y`` (any shape)."""
    return backward(y, np.ones_like(y), name)


def backward(y, dout, name):
    """dL/dx = dL/dy * f'(x), with f' evaluated from the output ``y``; same shape as ``y``."""
    code = activation_code(name)
    y = np.ascontiguousarray(y)
    dout = np.ascontiguousarray(dout, dtype=y.dtype)
    out = np.empty_like(y)
    _gradient_times_flat(y.reshape(-1), dout.reshape(-1), code, out.reshape(-1))
    return out
