"""The golden-vector directory's format and its comparison rule (docs/SPECIFICATION.md, section 16).

- ``manifest.json``: ``format``, ``format_version``, ``refquant_version``, ``numpy_version``,
  ``comparison``, ``files`` (every other file with its sha256 and size) and ``vectors``: per vector
  its ``file``, ``description``, ``definitions``, ``seeds``, ``parameters`` and ``arrays``; per array
  its ``role`` (``"input"``: what an implementation is given; ``"output"``: what it must produce),
  ``shape``, ``dtype``, ``tolerance`` (``rtol``, ``atol`` and ``why``) and ``meaning`` (one line:
  what the array is, with its units, order and conventions; :func:`meaning_of`).
- ``<vector>.npz``: the arrays, named ``case/name``, readable by ``numpy.load(path,
  allow_pickle=False)``, written with a fixed timestamp (byte-identical exports).
- ``network.cfg``, ``network.weights``, ``plan_<name>.json``: the small network and its plans.

Comparison (:func:`compare`): shapes and dtypes equal; ``|got - expected| <= atol + rtol |expected|``
element by element, NaN only where NaN is expected, infinities equal; booleans and text exactly, and
integers exactly unless their tolerance is non-zero (only the ``network`` vector's
``histograms/<layer>/counts``, atol 4). :func:`load` splits a stored vector into its inputs and outputs.
"""
import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from refquant.atomic import atomic_write

FORMAT = "refquant-golden-vectors"


FORMAT_VERSION = 3
"""3: every array's manifest entry also carries ``meaning``, one line saying what the array is (units,
order, conventions), from the vector's ``meanings`` (:func:`meaning_of`); every fitted density also
has a ``bounded`` array (the pieces fitted on the std's bound, specification section 3.3); values
changed where version 2 was wrong: ``expected_error``'s partial moments on narrow intervals (now to
a few ulps), ``optimal_quantizers``' tied zero points (the smallest wins), and the fits that stopped
at ``max_iter`` (now the bounded maximum of the likelihood).
2: the defining functions are named by their modules of the one-concept-per-module layout
(``refquant.density.pgm.PiecewiseGaussian.fit`` where version 1 had ``refquant.pgm.PiecewiseGaussian.fit``);
every array is as in version 1."""


MANIFEST = "manifest.json"


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: reproducible archives


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|got - expected| <= atol + rtol * |expected|`` element by element; ``why`` justifies it."""
    rtol: float
    atol: float
    why: str

    def to_dict(self):
        return {"rtol": self.rtol, "atol": self.atol, "why": self.why}


EXACT = Tolerance(0.0, 0.0, "exact: integers, booleans, text, or floats that the rule defines bit for bit")


DRAWN = Tolerance(0.0, 0.0, "exact: drawn from numpy.random.default_rng(seed) or written literally")


@dataclasses.dataclass(frozen=True)
class Vector:
    """One golden vector: ``inputs() -> {name: array}`` regenerates the inputs from the seeds;
    ``outputs(inputs) -> {name: array}`` computes refquant's outputs from (stored) inputs.
    ``tolerances``: {key: Tolerance} for every float array; ``meanings``: {key: one line saying
    what the array is} for every array. A key names arrays as :func:`stated_for` resolves it."""
    name: str
    description: str
    definitions: tuple
    seeds: dict
    parameters: dict
    inputs: object
    outputs: object
    tolerances: dict
    meanings: dict


def stated_for(table, name):
    """What ``table`` states for array ``name``, or None: the entry of the array's full name, else
    of its longest trailing part that has one (``"means"`` for ``"leaky/means"``), else of its first
    component (``"float"`` for ``"float/3"``). The one rule by which tolerances and meanings are found."""
    parts = name.split("/")
    for key in ["/".join(parts[k:]) for k in range(len(parts))] + [parts[0]]:
        if key in table:
            return table[key]
    return None


def tolerance_of(vector, name, array):
    """The tolerance of array ``name`` of ``vector``: the one stated for it; integers without one,
    booleans and text are exact; a float array must have one."""
    if array.dtype.kind in "bUS":
        return EXACT
    stated = stated_for(vector.tolerances, name)
    if stated is not None:
        return stated
    if array.dtype.kind in "iu":
        return EXACT
    raise KeyError(f"golden vector {vector.name}: no tolerance stated for float array {name!r}")


def meaning_of(vector, name):
    """The meaning of array ``name`` of ``vector``: the one line stated for it (:func:`stated_for`).
    Every array must have one: KeyError if none is stated, ValueError if it is empty or not one line."""
    meaning = stated_for(vector.meanings, name)
    if meaning is None:
        raise KeyError(f"golden vector {vector.name}: no meaning stated for array {name!r}")
    if not isinstance(meaning, str) or not meaning.strip() or "\n" in meaning or "\r" in meaning:
        raise ValueError(f"golden vector {vector.name}: the meaning of array {name!r} must be one non-empty line, "
                         f"got {meaning!r}")
    return meaning


def write_npz(path, arrays):
    """An ``np.savez``-compatible archive (stored, not compressed) with fixed member timestamps,
    written all or nothing (:func:`refquant.atomic.atomic_write`)."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    atomic_write(path, write)


def sha256(path):
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One failed comparison: where (``vector``, ``array``, ``index``) and what."""
    vector: str
    array: str
    index: tuple
    expected: object
    got: object
    detail: str

    def __str__(self):
        where = f"{self.vector}: {self.array}" if self.array else self.vector
        if self.index is not None:
            where += "[" + ", ".join(str(i) for i in self.index) + "]"
        if self.expected is None and self.got is None:
            return f"{where}: {self.detail}"
        return f"{where}: expected {self.expected!r}, got {self.got!r} ({self.detail})"


def compare(expected, got, tolerance):
    """None if ``got`` matches ``expected`` under ``tolerance``, else ``(index, expected, got, detail)``.

    Shapes and dtypes must be equal; NaN matches only NaN; for floats (and integers given a
    non-zero tolerance) ``|got - expected| <= atol + rtol * |expected|``; otherwise equality.
    """
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return None, expected.shape, got.shape, "shape differs"
    if expected.dtype != got.dtype:
        return None, expected.dtype.str, got.dtype.str, "dtype differs"
    tolerant_integers = expected.dtype.kind in "iu" and (tolerance.rtol > 0 or tolerance.atol > 0)
    if expected.dtype.kind in "fc" or tolerant_integers:
        with np.errstate(invalid="ignore", over="ignore"):
            difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            bound = tolerance.atol + tolerance.rtol * np.abs(expected.astype(np.float64))
            same = (got == expected) | (np.isnan(got) & np.isnan(expected)) | (difference <= bound)
    else:
        same = got == expected
    if np.all(same):
        return None
    bad = np.argwhere(~np.asarray(same))
    index = tuple(int(i) for i in bad[0])
    count = f"{len(bad)} of {same.size} elements differ"
    exact = tolerance.rtol == 0 and tolerance.atol == 0
    rule = "exact" if exact else f"rtol {tolerance.rtol:g}, atol {tolerance.atol:g}"
    return index, expected[index].item(), got[index].item(), f"{rule}; {count}"


def _load_npz(path):
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def load(directory, name):
    """One vector of an exported directory: ``(inputs, outputs, tolerances)``, three dicts keyed by
    array name (arrays, arrays, :class:`Tolerance`), roles and tolerances as the manifest states them.

    For a Python implementation under test: compute from ``inputs``, then
    ``compare(outputs[key], mine[key], tolerances[key])`` for every output (None = match).
    """
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if name not in manifest.get("vectors", {}):
        raise ValueError(f"{directory / MANIFEST}: no vector {name!r}; it has "
                         f"{', '.join(manifest.get('vectors', {}))}")
    entry = manifest["vectors"][name]
    arrays = _load_npz(directory / entry["file"])
    roles = {key: value["role"] for key, value in entry["arrays"].items()}
    tolerances = {key: Tolerance(**value["tolerance"]) for key, value in entry["arrays"].items()}
    return ({k: v for k, v in arrays.items() if roles.get(k) == "input"},
            {k: v for k, v in arrays.items() if roles.get(k) == "output"}, tolerances)


_OUTPUT_CACHE = {}


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _memoised_outputs(name, outputs, inputs):
    """``outputs(inputs)`` of vector ``name``, computed once per distinct inputs within this process."""
    key = (name, _digest(inputs))
    if key not in _OUTPUT_CACHE:
        _OUTPUT_CACHE[key] = outputs(inputs)
    return _OUTPUT_CACHE[key]
