"""The rules every input boundary of refquant applies, each written once (docs/SPECIFICATION.md,
section 17): how a text file is read, how a number written in a file or an argument is parsed,
which values are finite, and how large an allocation may be before it is refused.

Every refusal is a :class:`InputError` (a ``ValueError``) or an ``OSError`` whose message starts
with where the input came from (file, file:line, or an argument) and says what was expected; the
boundaries (:mod:`refquant.darknet`, :mod:`refquant.plan`, :mod:`refquant.data.voc`,
:mod:`refquant.cli`, :mod:`refquant.golden.check`) add the key, layer or element.
"""
import json
import math
import os
import re

import numpy as np


class InputError(ValueError):
    """Input that refquant refuses; the message names its file (and line, key, layer) or argument."""


BYTE_ORDER_MARK = "\ufeff"


def read_text(path, what="file"):
    """The text of ``path`` decoded as UTF-8, a leading byte-order mark dropped.

    Editors on Windows write a UTF-8 byte-order mark; it is not part of the first line (a names
    file would otherwise name a class ``'\\ufeffcircle'``). Any other encoding is refused naming
    the file and the offset of the first byte that is not UTF-8; an unreadable file is an
    ``OSError`` naming it.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {error.start} is "
                         f"{data[error.start:error.start + 1]!r})") from None
    return text[1:] if text.startswith(BYTE_ORDER_MARK) else text


def read_json(path, what="JSON file"):
    """The JSON document in ``path`` (:func:`read_text`), with the JSON rules refquant adds:
    ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json accepts, JSON does not), numbers
    that overflow a float (``1e999``) and a nesting deeper than :data:`MAX_JSON_DEPTH` are refused
    naming the file (and line)."""
    path = os.fspath(path)
    text = read_text(path, what)

    def refuse_constant(name):
        raise InputError(f"{path}: {name} is not a JSON number; the {what} must hold finite numbers")

    def finite_float(literal):
        value = float(literal)
        if not math.isfinite(value):
            raise InputError(f"{path}: the number {literal} overflows a float; the {what} must hold finite numbers")
        return value

    try:
        data = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply; not a {what}") from None
    except InputError:
        raise
    except ValueError as error:  # an integer of more digits than Python converts (int_max_str_digits)
        raise InputError(f"{path}: not a {what} ({error})") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise InputError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; not a {what}")
    return data


MAX_JSON_DEPTH = 32
"""Deepest nesting of a JSON file refquant reads (a plan needs 5)."""


def _depth(value, level=1):
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


# -- numbers written as text ---------------------------------------------------------------------

INTEGER_TEXT = re.compile(r"[+-]?[0-9]+\Z", re.ASCII)
"""An integer as C's ``atoi`` reads a whole field: ASCII digits with an optional sign. Python's
``int`` would also take ``1_0`` and non-ASCII digits (``١٠``), which no Darknet reads as 10."""

DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z", re.ASCII)
"""A decimal number as C's ``atof`` reads a whole field, without its ``nan``, ``inf`` and
hexadecimal forms: ASCII digits, a point, an exponent."""

INT32_RANGE = (-2**31, 2**31 - 1)
"""Darknet stores its integer options in C ``int``."""


def parse_integer(text):
    """``text`` as an int (:data:`INTEGER_TEXT`, within :data:`INT32_RANGE`); ValueError otherwise."""
    if not INTEGER_TEXT.match(text):
        raise ValueError(f"{text!r} is not an integer (ASCII digits with an optional sign)")
    value = int(text)
    if not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
        raise ValueError(f"{text} does not fit a 32-bit integer")
    return value


def parse_decimal(text):
    """``text`` as a finite float (:data:`DECIMAL_TEXT`); ValueError for nan, inf, an overflow."""
    if not DECIMAL_TEXT.match(text):
        raise ValueError(f"{text!r} is not a decimal number (ASCII digits, '.', exponent; no nan or inf)")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def check_range(value, bounds, what):
    """``value`` if inside ``bounds`` = (low, high, open_low, open_high) else InputError naming ``what``.

    ``low``/``high`` may be None (unbounded); ``open_*`` excludes the bound itself."""
    low, high, open_low, open_high = bounds
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if below or above:
        raise InputError(f"{what}={value}: expected {describe_range(bounds)}")
    return value


def describe_range(bounds):
    """``a value in [0, 1)``, ``a value > 0``: a range as the messages print it."""
    low, high, open_low, open_high = bounds
    if high is None:
        return f"a value {'>' if open_low else '>='} {low}"
    if low is None:
        return f"a value {'<' if open_high else '<='} {high}"
    return f"a value in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def at_least(low):
    """Bounds for :func:`check_range`: ``value >= low``."""
    return (low, None, False, False)


def above(low):
    """Bounds for :func:`check_range`: ``value > low``."""
    return (low, None, True, False)


def between(low, high, open_high=False):
    """Bounds for :func:`check_range`: ``low <= value <= high`` (``< high`` if ``open_high``)."""
    return (low, high, False, open_high)


# -- arrays --------------------------------------------------------------------------------------

def count_nonfinite(values):
    """Number of NaN and infinite entries of a float array."""
    return int(values.size - np.count_nonzero(np.isfinite(values)))


SCALE_LIMIT = 1e150
"""The magnitudes a density, a quantizer and the data they are fitted to may have: every value
within ``[-SCALE_LIMIT, SCALE_LIMIT]`` and every spread (a std, a step, the data's range) within
``[1 / SCALE_LIMIT, SCALE_LIMIT]``, so that the squares the fits and the error formulas hold
(variances, second moments, squared errors) are normal float64 numbers, neither infinite nor
flushed to 0. Float64 reaches 1.8e308; its square root, 1.3e154, less a margin for sums."""


def check_scale(values, caller, name, spread=False):
    """Refuse ``values`` outside :data:`SCALE_LIMIT`: magnitudes above it, or (``spread``) positive
    spreads below its inverse. ``ValueError`` naming the caller, the argument and the bound."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    if values.size and values.max() > SCALE_LIMIT:
        raise ValueError(f"{caller}: {name} reaches {values.max():.3g}; refquant computes with their squares "
                         f"in float64, so magnitudes must be at most {SCALE_LIMIT:g} (rescale the data)")
    if spread and values.size and values.min() < 1.0 / SCALE_LIMIT:
        raise ValueError(f"{caller}: {name} is {values.min():.3g}; refquant computes with squares in float64, so "
                         f"a spread must be at least {1.0 / SCALE_LIMIT:g} (rescale the data)")


def finite_samples(samples, caller, name="samples"):
    """``samples`` as a flat float64 array: real numbers (not booleans, strings or ragged lists), at
    least one, all finite, within :data:`SCALE_LIMIT`; otherwise a ``ValueError`` (``TypeError`` for
    a non-numeric type) naming the caller, how many values are bad and where the first is."""
    try:
        array = np.asarray(samples)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"{caller}: {name} must be an array of real numbers ({error})") from None
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{caller}: {name} must hold real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{caller}: {name} is empty")
    if not np.isfinite(array).all():
        first = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{caller}: {name} holds {int(np.isnan(array).sum())} NaN and "
                         f"{int(np.isinf(array).sum())} infinite values among {array.size} (first at flat "
                         f"index {first}); remove them")
    check_scale(array, caller, name)
    return array


# -- sizes ---------------------------------------------------------------------------------------

MAX_ALLOCATION_BYTES = 4 * 2**30
"""The most memory a network refquant builds may need, parameters and one image's activations
(4 GiB: yolov2-voc at 416x416 needs 270 MiB); ``REFQUANT_MAX_BYTES`` in the environment replaces it."""

MAX_IMAGE_PIXELS = 64 * 2**20
"""The most pixels an image may decode to (64 Mi: 8192x8192, 768 MiB as float32 RGB), checked
against the size in the file's header before any pixel is decoded; ``REFQUANT_MAX_PIXELS``
replaces it."""


def limit(name, default):
    """The limit ``name`` from the environment (a positive integer) or ``default``."""
    text = os.environ.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,20}", text.strip(), re.ASCII) or int(text) < 1:
        raise InputError(f"environment {name}={text!r}: expected a positive integer")
    return int(text)


def format_bytes(count):
    """``count`` bytes as ``12.3 GiB`` (binary units)."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"


# -- JSON values -----------------------------------------------------------------------------------
# JSON has one number type; Python's json gives int or float, and bool is an int in Python. A
# schema asks for what it means: ``true`` is not 1, ``"8"`` is not 8, ``0.001`` is not an integer.

def json_integer(value, where, bounds=None):
    """``value`` if a JSON integer (not a bool, not a float, not a string) within ``bounds``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: expected an integer, got {_shown(value)}")
    if bounds is not None:
        check_range(value, bounds, where)
    return value


def json_number(value, where, bounds=None):
    """``value`` as a float if a finite JSON number (int or float, not a bool or string) within ``bounds``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {_shown(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {value}")
    if bounds is not None:
        check_range(value, bounds, where)
    return value


def json_string(value, where):
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {_shown(value)}")
    return value


def json_object(value, where, required=(), optional=(), closed=True):
    """``value`` if a JSON object with every key of ``required`` and, when ``closed`` and keys are
    given, no key outside ``required`` + ``optional``."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object, got {_shown(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise InputError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    if closed and (required or optional):
        extra = sorted(set(value) - set(required) - set(optional))
        if extra:
            known = ", ".join(list(required) + list(optional))
            raise InputError(f"{where}: unknown key {extra[0]!r}; expected {known}")
    return value


def json_list(value, where, length=None):
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list, got {_shown(value)}")
    if length is not None and len(value) != length:
        raise InputError(f"{where}: expected a list of {length} items, got {len(value)}")
    return value


def _shown(value):
    text = json.dumps(value) if isinstance(value, (str, bool, int, float, type(None))) else type(value).__name__
    return f"{text[:60]}..." if len(text) > 60 else text
