"""Golden vectors: fixed, seeded inputs and refquant's outputs, to test another implementation.

``refquant golden export DIR`` writes them; ``refquant golden check DIR`` recomputes every one
and reports each mismatch with its location. ``docs/SPECIFICATION.md`` states the rules the
vectors exercise; this module only runs refquant's own functions (listed per vector under
``definitions``) on fixed inputs.

The directory
-------------
- ``manifest.json``: ``format``, ``format_version``, ``refquant_version``, ``numpy_version``,
  ``comparison`` (the rule below), ``files`` (every other file with its sha256 and size) and
  ``vectors``: per vector its ``file``, ``description``, ``definitions``, ``seeds``,
  ``parameters`` and ``arrays``; per array its ``role`` (``"input"``: what an implementation is
  given; ``"output"``: what it must produce from those inputs), ``shape``, ``dtype`` and
  ``tolerance`` (``rtol``, ``atol`` and ``why``).
- ``<vector>.npz``: the arrays, named ``case/name``. ``numpy.load(path, allow_pickle=False)``
  reads them (no object arrays; text is fixed-width unicode). The archives are written with a
  fixed timestamp, so two exports on the same machine are byte-identical.
- ``network.cfg`` and ``network.weights``: the small network of the ``network`` and
  ``integer_network`` vectors, in Darknet's formats; ``plan_<name>.json``: its quantization
  plans (:meth:`refquant.qat.QuantizationPlan.load`), the same numbers as the ``plans/`` arrays.

Comparison (:func:`compare`): shapes and dtypes equal; element by element
``|got - expected| <= atol + rtol * |expected|``, NaN only where NaN is expected, infinities
equal. Boolean and text arrays compare exactly, integer arrays too (the calibration histogram
counts alone have a tolerance); every float array has its own tolerance, stated with its
reason in :data:`VECTORS` and in the manifest.

Check (:func:`check`): every file against its sha256; every vector's inputs regenerated from
its seeds and compared with the stored ones; its outputs recomputed FROM THE STORED INPUTS
(as another implementation would compute them) and compared with the stored outputs; the
``network.cfg``, ``network.weights`` and plan files against the arrays they duplicate.

Testing another implementation: feed it each vector's ``input`` arrays, compare what it
produces with the ``output`` arrays under the manifest's tolerances. From Python,
:func:`load` splits a vector by role and :func:`compare` applies a tolerance.
"""
import argparse
import dataclasses
import hashlib
import json
import math
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

import refquant
from refquant import darknet, decode, intconv, intervals, metrics, qat
from refquant.integer_network import IntegerNetwork
from refquant.pgm import ConvergenceWarning, PiecewiseGaussian, _bin_statistics
from refquant.rounding import round_half_even, rounding_right_shift
from refquant.train import sgd_update, trainable
from refquant.yolo import batchnorm
from refquant.yolo.maxpool import maxpool_forward
from refquant.yolo.region import RegionLayer
from refquant.yolo.reorg import reorg_forward
from refquant.yolo.upsample import upsample_forward

FORMAT = "refquant-golden-vectors"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: reproducible archives


# ================================================================================================
# Tolerances and vectors
# ================================================================================================

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
    ``tolerances``: {key: Tolerance} for every float array, the key being the array's name, a
    trailing part of it (``"means"`` for ``"leaky/means"``) or its first component (``"float"``)."""
    name: str
    description: str
    definitions: tuple
    seeds: dict
    parameters: dict
    inputs: object
    outputs: object
    tolerances: dict


def tolerance_of(vector, name, array):
    """The tolerance of array ``name`` of ``vector``: the one stated for it; integers without one,
    booleans and text are exact; a float array must have one."""
    if array.dtype.kind in "bUS":
        return EXACT
    parts = name.split("/")
    for key in ["/".join(parts[k:]) for k in range(len(parts))] + [parts[0]]:
        if key in vector.tolerances:
            return vector.tolerances[key]
    if array.dtype.kind in "iu":
        return EXACT
    raise KeyError(f"golden vector {vector.name}: no tolerance stated for float array {name!r}")


# ================================================================================================
# 1. Rounding
# ================================================================================================

def _rounding_inputs():
    rng = np.random.default_rng(1)
    ties = np.arange(-5, 5) + 0.5
    special = np.array([0.0, -0.0, 0.49999999999999994, -0.49999999999999994, 1.4999999999999998,
                        2.0**52 - 0.5, -(2.0**52 - 0.5), 2.0**52, 1e300, -1e300, np.inf, -np.inf])
    x = np.concatenate([ties, special, rng.normal(0.0, 10.0, 32)])
    shifts = np.array([0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 5, 31, 61, 62, 62, 62, 62], dtype=np.int64)
    values = np.array([7, 1, 3, -1, -3, 2, 6, -2, -6, 12, -12, -48, 2**31 + 2**30, 2**61 + 2**60,
                       2**62, -2**62, 2**61, -(2**63)], dtype=np.int64)
    random_shifts = rng.integers(0, 63, 64)
    random_values = rng.integers(-2**53, 2**53, 64)
    return {"round_half_even/x": x,
            "rounding_right_shift/value": np.concatenate([values, random_values]).astype(np.int64),
            "rounding_right_shift/shift": np.concatenate([shifts, random_shifts]).astype(np.int64)}


def _rounding_outputs(inputs):
    return {"round_half_even/y": round_half_even(inputs["round_half_even/x"]),
            "rounding_right_shift/result": rounding_right_shift(inputs["rounding_right_shift/value"],
                                                                inputs["rounding_right_shift/shift"])}


# ================================================================================================
# 2. Densities: PGM fits, the density functions, expected error, optimal quantizers
# ================================================================================================

DENSITIES = {
    "normal": ([], [1.0], [0.0], [1.0]),
    "shifted": ([], [1.0], [0.3], [1.7]),
    "leaky": ([0.0], [0.4, 0.6], [0.02, 0.1], [0.06, 0.6]),
    "weights": ([-0.08, 0.08], [0.07, 0.86, 0.07], [-0.05, 0.0, 0.05], [0.06, 0.05, 0.06]),
    "far": ([], [1.0], [50.0], [0.1]),
}
"""Densities given as (breakpoints, weights, means, stds): a standard normal, a shifted one,
a leaky-ReLU-like two-piece model split at 0, a weight-like model (centre and two tails) and a
narrow normal far from 0 (cancellation in the error formulas)."""


def density(name):
    """The :class:`~refquant.pgm.PiecewiseGaussian` of :data:`DENSITIES` ``[name]``."""
    return PiecewiseGaussian(*DENSITIES[name])


def _density_arrays(prefix, model):
    return {f"{prefix}/breakpoints": np.array(model.breakpoints), f"{prefix}/weights": np.array(model.weights),
            f"{prefix}/means": np.array(model.means), f"{prefix}/stds": np.array(model.stds)}


def _density_from(prefix, arrays):
    return PiecewiseGaussian(arrays[f"{prefix}/breakpoints"], arrays[f"{prefix}/weights"],
                             arrays[f"{prefix}/means"], arrays[f"{prefix}/stds"])


PGM_CASES = {
    # case: (generating density, number of samples, seed, breakpoints given or "auto", source)
    "gaussian": ("shifted", 5000, 11, [], "samples"),
    "leaky": ("leaky", 20000, 12, [0.0], "samples"),
    "weights_auto": ("weights", 20000, 13, "auto", "samples"),
    "leaky_histogram": ("leaky", 20000, 14, [0.0], "histogram"),
}
PGM_MAX_PIECES = 3
HISTOGRAM_EDGES = np.concatenate([[-np.inf], np.arange(-6, 61) * 0.05, [np.inf]])
"""Bin edges of the histogram case: 0.05 wide from -0.3 to 3 (0 is an edge), overflow bins."""


def _pgm_inputs():
    arrays = {}
    for case, (generator, n, seed, breakpoints, source) in PGM_CASES.items():
        arrays.update(_density_arrays(f"{case}/generating", density(generator)))
        samples = density(generator).sample(n, rng=seed)
        if source == "samples":
            arrays[f"{case}/samples"] = samples
        else:
            counts, _ = np.histogram(samples, HISTOGRAM_EDGES)
            arrays[f"{case}/counts"] = counts.astype(np.int64)
            arrays[f"{case}/bin_edges"] = HISTOGRAM_EDGES.copy()
        if breakpoints == "auto":
            arrays[f"{case}/max_pieces"] = np.array(PGM_MAX_PIECES, dtype=np.int64)
        else:
            arrays[f"{case}/given_breakpoints"] = np.array(breakpoints, dtype=np.float64)
    return arrays


def _pgm_outputs(inputs):
    out = {}
    for case, (_, _, _, breakpoints, source) in PGM_CASES.items():
        given = "auto" if breakpoints == "auto" else inputs[f"{case}/given_breakpoints"]
        if source == "samples":
            x = inputs[f"{case}/samples"]
            model = PiecewiseGaussian.fit(x, given, max_pieces=PGM_MAX_PIECES)
            count, mean, variance = _bin_statistics(np.ascontiguousarray(x), np.array(model.breakpoints))
            out.update({f"{case}/piece_count": count.astype(np.int64), f"{case}/piece_mean": mean,
                        f"{case}/piece_variance": variance})
        else:
            model = PiecewiseGaussian.fit_histogram(inputs[f"{case}/counts"], inputs[f"{case}/bin_edges"], given,
                                                    max_pieces=PGM_MAX_PIECES)
        out.update(_density_arrays(case, model))
        info = model.fit_info
        out.update({f"{case}/log_likelihood": np.array(info.log_likelihood), f"{case}/bic": np.array(info.bic),
                    f"{case}/n_parameters": np.array(info.n_parameters, dtype=np.int64)})
        if info.selection:
            out[f"{case}/selection_pieces"] = np.array([row[0] for row in info.selection], dtype=np.int64)
            out[f"{case}/selection_log_likelihood"] = np.array([row[2] for row in info.selection])
            out[f"{case}/selection_bic"] = np.array([row[3] for row in info.selection])
    return out


_FIT = ("a maximum-likelihood estimate: refquant stops at a moment residual of 1e-9, and plain EM run to 1e-11 "
        "or SQUAREM to 1e-13 agree with it to 1e-9 (means in units of the piece's std); 1e-6 leaves room for "
        "another stopping rule")
PGM_TOLERANCES = {
    "samples": Tolerance(1e-12, 1e-15, "drawn by inverting the cdf (scipy's ndtri_exp): a few ulps across "
                                       "scipy versions"),
    "bin_edges": DRAWN,
    "given_breakpoints": DRAWN,
    "breakpoints": Tolerance(1e-12, 0.0, "given, or quantiles of the samples (numpy.quantile, linear): float "
                                         "rounding only"),
    "weights": Tolerance(1e-12, 0.0, "pi_k = n_k / n, exact counts"),
    "means": Tolerance(1e-6, 1e-8, _FIT),
    "stds": Tolerance(1e-6, 0.0, _FIT),
    "log_likelihood": Tolerance(1e-9, 0.0, "at the maximum the likelihood is flat: parameter errors of 1e-6 "
                                            "change it by ~1e-12 relative"),
    "bic": Tolerance(1e-9, 0.0, "-2 log L + p log n, as log_likelihood"),
    "selection_log_likelihood": Tolerance(5e-3, 0.0, "the rows of K not chosen are fits with the search budget "
                                                      "(150 EM steps): short of their maxima, by an amount that "
                                                      "depends on the EM path (plain EM: 1.5e-3 lower here); "
                                                      "only the choice they lead to is meant to match closely"),
    "selection_bic": Tolerance(5e-3, 0.0, "as selection_log_likelihood"),
    "piece_mean": Tolerance(1e-12, 1e-15, "sample means: summation order only"),
    "piece_variance": Tolerance(1e-10, 1e-15, "shifted-data variance: summation order only"),
}
for _part in ("breakpoints", "weights", "means", "stds"):
    PGM_TOLERANCES[f"generating/{_part}"] = DRAWN
for _case in PGM_CASES:
    for _part in ("breakpoints", "weights", "means", "stds"):
        PGM_TOLERANCES[f"{_case}/generating/{_part}"] = DRAWN


# -- the density functions and the expected error --------------------------------------------------

ERROR_DENSITIES = ("normal", "leaky", "weights", "far")


def _error_quantizers(model):
    """(step, zero_point, qmin, qmax) rows scaled to ``model``: signed 4-bit and narrow 8-bit,
    unsigned 4- and 2-bit with integer zero points, free 3-bit and 1-bit grids."""
    mean, std = model.mean(), model.std()
    rows = [(2.5 * std / 8, 0, -8, 7), (4.0 * std / 127, 0, -127, 127)]
    for bits, span in ((4, 6.0), (2, 3.0)):
        qmax = 2**bits - 1
        step = span * std / qmax
        zero_point = int(np.clip(round_half_even(-(mean - 0.5 * span * std) / step), 0, qmax))
        rows.append((step, zero_point, 0, qmax))
    step = 0.586 * std
    rows.append((step, 3.5 - mean / step, 0, 7))
    rows.append((1.596 * std, 0.5 - mean / (1.596 * std), 0, 1))
    return rows


def _evaluation_points(model):
    mean, std = model.mean(), model.std()
    points = np.linspace(mean - 6 * std, mean + 6 * std, 25)
    near = np.concatenate([model.breakpoints, model.breakpoints - 1e-9, model.breakpoints + 1e-9])
    return np.sort(np.concatenate([points, near]))


def _error_inputs():
    arrays = {}
    for name in ERROR_DENSITIES:
        model = density(name)
        arrays.update(_density_arrays(name, model))
        arrays[f"{name}/x"] = _evaluation_points(model)
        points = arrays[f"{name}/x"]
        std = model.std()
        lo = np.concatenate([points[:-1], [-np.inf, -np.inf, points[12]], model.breakpoints, points[[3, 20]]])
        hi = np.concatenate([points[1:], [np.inf, points[12], np.inf], model.breakpoints + 1e-8 * std,
                             points[[3, 20]] + 1e-6 * std])
        arrays[f"{name}/lo"], arrays[f"{name}/hi"] = lo, hi
        rows = np.array(_error_quantizers(model), dtype=np.float64)
        arrays[f"{name}/quantizer_step"] = rows[:, 0]
        arrays[f"{name}/quantizer_zero_point"] = rows[:, 1]
        arrays[f"{name}/quantizer_qmin"] = rows[:, 2].astype(np.int64)
        arrays[f"{name}/quantizer_qmax"] = rows[:, 3].astype(np.int64)
    return arrays


def _quantizers_from(arrays, prefix):
    """UniformQuantizers from the arrays ``<prefix>step``, ``zero_point``, ``qmin``, ``qmax``."""
    columns = [arrays[prefix + key] for key in ("step", "zero_point", "qmin", "qmax")]
    return [intervals.UniformQuantizer(float(s), float(z), int(lo), int(hi)) for s, z, lo, hi in zip(*columns)]


def _error_outputs(inputs):
    out = {}
    for name in ERROR_DENSITIES:
        model = _density_from(name, inputs)
        out[f"{name}/pdf"] = model.pdf(inputs[f"{name}/x"])
        out[f"{name}/cdf"] = model.cdf(inputs[f"{name}/x"])
        out[f"{name}/mean"] = np.array(model.mean())
        out[f"{name}/var"] = np.array(model.var())
        out[f"{name}/m0"], out[f"{name}/m1"], out[f"{name}/m2"] = model.partial_moments(inputs[f"{name}/lo"],
                                                                                        inputs[f"{name}/hi"])
        split = [intervals.expected_mse(model, q, split=True) for q in _quantizers_from(inputs, f"{name}/quantizer_")]
        out[f"{name}/granular"] = np.array([s[0] for s in split])
        out[f"{name}/clipping"] = np.array([s[1] for s in split])
    return out


ERROR_TOLERANCES = {
    "breakpoints": DRAWN, "weights": DRAWN, "means": DRAWN, "stds": DRAWN,
    "x": Tolerance(1e-15, 1e-15, "numpy.linspace of the density's mean and std"),
    "lo": Tolerance(1e-15, 1e-15, "from x"), "hi": Tolerance(1e-15, 1e-15, "from x"),
    "quantizer_step": Tolerance(1e-15, 0.0, "scaled by the density's std"),
    "quantizer_zero_point": Tolerance(1e-13, 1e-13, "from the density's mean and std"),
    "pdf": Tolerance(1e-12, 0.0, "exp of a log-density: a few ulps"),
    "cdf": Tolerance(1e-12, 1e-300, "masses to a few ulps (log space, erfcx in the tails)"),
    "mean": Tolerance(1e-12, 1e-15, "truncated-normal means to a few ulps"),
    "var": Tolerance(1e-11, 0.0, "law of total variance, truncated-normal variances to ~1e-15"),
    "m0": Tolerance(1e-10, 1e-300, "truncated-normal masses to a few ulps, 1e-8-wide intervals by Gauss-Legendre"),
    "m1": Tolerance(1e-10, 1e-300, "as m0"),
    "m2": Tolerance(1e-10, 1e-300, "as m0"),
    "granular": Tolerance(1e-9, 1e-16, "sum over cells of m2 - 2 c m1 + c^2 m0: cancellation up to 12 (c/step)^2 "
                                       "~ 2e5 times eps"),
    "clipping": Tolerance(1e-9, 1e-16, "as granular"),
}


# -- optimal quantizers --------------------------------------------------------------------------

OPTIMAL_MODES = {
    # mode: keyword arguments of refquant.intervals.optimal_quantizer
    "symmetric": {"symmetric": True},
    "unsigned": {"zero_representable": True},
    "free": {"zero_representable": False},
    "pow2_symmetric": {"symmetric": True, "pow2_step": True},
    "pow2_unsigned": {"zero_representable": True, "pow2_step": True},
}
OPTIMAL_CASES = ([("normal", "free", bits) for bits in (1, 2, 3, 4)]
                 + [("normal", mode, bits) for mode in ("symmetric", "unsigned") for bits in (2, 4, 8)]
                 + [("normal", "pow2_symmetric", 4)]
                 + [("leaky", "unsigned", bits) for bits in (2, 4, 8)]
                 + [("leaky", "pow2_unsigned", 4), ("leaky", "free", 4)]
                 + [("weights", "symmetric", bits) for bits in (2, 4, 8)]
                 + [("weights", "pow2_symmetric", 4), ("weights", "unsigned", 4)])
"""(density, mode, bits): Max's (1960) free-offset cases for N(0,1) (2 to 16 levels), and the
constraints of the method: symmetric signed weights, unsigned activations with an integer zero
point, power-of-two steps."""


def _optimal_inputs():
    arrays = {}
    for name in ("normal", "leaky", "weights"):
        arrays.update(_density_arrays(f"densities/{name}", density(name)))
    arrays["cases/density"] = np.array([c[0] for c in OPTIMAL_CASES])
    arrays["cases/mode"] = np.array([c[1] for c in OPTIMAL_CASES])
    arrays["cases/bits"] = np.array([c[2] for c in OPTIMAL_CASES], dtype=np.int64)
    return arrays


def _optimal_outputs(inputs):
    models = {name: _density_from(f"densities/{name}", inputs) for name in ("normal", "leaky", "weights")}
    rows = []
    for name, mode, bits in zip(inputs["cases/density"], inputs["cases/mode"], inputs["cases/bits"]):
        model = models[str(name)]
        q = intervals.optimal_quantizer(model, int(bits), **OPTIMAL_MODES[str(mode)])
        granular, clipping = intervals.expected_mse(model, q, split=True)
        rows.append((q.step, float(q.zero_point), q.qmin, q.qmax, granular + clipping, granular, clipping))
    table = np.array(rows, dtype=np.float64)
    pow2 = np.char.startswith(inputs["cases/mode"], "pow2")
    return {"cases/step": table[:, 0], "cases/zero_point": table[:, 1],
            "cases/qmin": table[:, 2].astype(np.int64), "cases/qmax": table[:, 3].astype(np.int64),
            "cases/mse": table[:, 4], "cases/granular": table[:, 5], "cases/clipping": table[:, 6],
            "cases/step_is_power_of_two": pow2 & (np.frexp(table[:, 0])[0] == 0.5)}


OPTIMAL_TOLERANCES = {
    "breakpoints": DRAWN, "weights": DRAWN, "means": DRAWN, "stds": DRAWN,
    "step": Tolerance(1e-5, 0.0, "a numerical minimum: the refinement stops within ~1e-7 in log step; an "
                                 "independent search that reaches the error to 1e-10 finds the step to ~1e-5"),
    "zero_point": Tolerance(0.0, 1e-4, "integers in every mode but 'free' (then a real offset found to ~1e-5 codes)"),
    "mse": Tolerance(1e-8, 0.0, "the error at a minimum is flat: a step off by 1e-5 changes it by ~1e-9"),
    "granular": Tolerance(1e-3, 1e-12, "granular and clipping parts trade off to first order in the step"),
    "clipping": Tolerance(1e-3, 1e-12, "as granular; clipping varies like exp(-c^2/2) in the clipping point c"),
}


# ================================================================================================
# 3. Fake quantization
# ================================================================================================

FAKE_QUANTIZERS = [
    (0.25, 3, 0, 15),          # power-of-two step, odd zero point: exact ties
    (0.1, 0, -8, 7),           # signed 4-bit, step not a power of two
    (0.125, 0, -127, 127),     # narrow signed 8-bit
    (0.5, 2.5, 0, 7),          # real zero point (free offset)
    (1.0 / 255.0, 0, 0, 255),  # the network input grid
    (0.0625, 128, 0, 255),     # 8-bit affine
]


def _fake_inputs():
    rng = np.random.default_rng(3)
    arrays = {"quantizers/step": np.array([q[0] for q in FAKE_QUANTIZERS]),
              "quantizers/zero_point": np.array([q[1] for q in FAKE_QUANTIZERS], dtype=np.float64),
              "quantizers/qmin": np.array([q[2] for q in FAKE_QUANTIZERS], dtype=np.int64),
              "quantizers/qmax": np.array([q[3] for q in FAKE_QUANTIZERS], dtype=np.int64)}
    for index, (step, zero_point, qmin, qmax) in enumerate(FAKE_QUANTIZERS):
        levels = step * (np.arange(qmin, qmax + 1) - zero_point)
        lo, hi = levels[0], levels[-1]
        x = np.concatenate([levels, levels[:-1] + 0.5 * step, [lo - step, hi + step, lo, hi, -np.inf, np.inf],
                            rng.uniform(lo - 2 * step, hi + 2 * step, 32)])
        arrays[f"q{index}/x"] = x
        arrays[f"q{index}/x32"] = x.astype(np.float32)
    return arrays


def _fake_outputs(inputs):
    out = {}
    for index, quantizer in enumerate(_quantizers_from(inputs, "quantizers/")):
        x = inputs[f"q{index}/x"]
        out[f"q{index}/codes"] = quantizer.quantize(x)
        out[f"q{index}/fake"] = quantizer.fake(x)
        out[f"q{index}/straight_through"] = quantizer.straight_through_mask(x)
        out[f"q{index}/fake32"] = quantizer.fake(inputs[f"q{index}/x32"])
    return out


FAKE_TOLERANCES = {
    "step": DRAWN, "zero_point": DRAWN, "x": DRAWN, "x32": DRAWN,
    "fake": Tolerance(0.0, 0.0, "exact: step * (code - zero_point) in float64"),
    "fake32": Tolerance(0.0, 0.0, "exact: the float64 level rounded to float32"),
}


# ================================================================================================
# 4. Integer convolution and requantization
# ================================================================================================

CONV_CASES = {
    # case: (x dtype, x range, x shape, w shape, w range, stride, pad, with bias)
    "uint8_3x3": (np.uint8, (0, 255), (1, 3, 9, 9), (4, 3, 3, 3), (-127, 127), 1, 1, True),
    "int8_stride2": (np.int8, (-8, 7), (2, 5, 7, 8), (6, 5, 3, 3), (-8, 7), 2, 0, True),
    "int16_1x1": (np.int16, (-30, 225), (1, 4, 5, 6), (3, 4, 1, 1), (-128, 127), 1, 0, False),
    "uint8_5x5": (np.uint8, (0, 15), (1, 2, 11, 10), (3, 2, 5, 5), (-7, 7), 2, 2, True),
}
MULTIPLIER_REALS = np.array([1.0, 0.5, 0.75, 1.5, 3.0, 2.0**-30, 1e-10, 0.1, 1.0 / 3.0,
                             1.0 - 2.0**-24, 1.0 - 2.0**-23, 2.0**-62, 1.7e-19, 4.0e6])
"""Real multipliers of the quantize_multiplier table: powers of two, a carry into the 23rd bit
(1 - 2**-24 rounds up to 2**22), tiny values (shift capped at 62), a large one."""


def _conv_inputs():
    rng = np.random.default_rng(4)
    arrays = {}
    for case, (dtype, x_range, x_shape, w_shape, w_range, stride, pad, with_bias) in CONV_CASES.items():
        arrays[f"{case}/x"] = rng.integers(x_range[0], x_range[1] + 1, x_shape).astype(dtype)
        arrays[f"{case}/w"] = rng.integers(w_range[0], w_range[1] + 1, w_shape).astype(np.int8)
        bias = rng.integers(-2000, 2001, w_shape[0]) if with_bias else np.zeros(w_shape[0])
        arrays[f"{case}/bias"] = bias.astype(np.int32)
        arrays[f"{case}/stride"] = np.array(stride, dtype=np.int64)
        arrays[f"{case}/pad"] = np.array(pad, dtype=np.int64)
        # a multiplier that spreads the accumulators over about 8-bit codes
        scale = float(np.abs(x_range).max()) * float(np.abs(w_range).max()) * np.prod(w_shape[1:])
        arrays[f"{case}/real_multiplier"] = np.array(float(rng.uniform(40.0, 80.0)) / scale)
        arrays[f"{case}/zero_point"] = np.array(int(rng.integers(0, 64)), dtype=np.int64)
        arrays[f"{case}/qmin"] = np.array(0, dtype=np.int64)
        arrays[f"{case}/qmax"] = np.array(255, dtype=np.int64)
    arrays["multipliers/real"] = np.concatenate([MULTIPLIER_REALS, 10.0 ** rng.uniform(-6, 1, 24)])
    arrays["ties/acc"] = np.arange(-24, 25, dtype=np.int32)
    arrays["ties/shift"] = np.array(2, dtype=np.int64)
    arrays["ties/zero_point"] = np.array(8, dtype=np.int64)
    arrays["ties/qmin"] = np.array(0, dtype=np.int64)
    arrays["ties/qmax"] = np.array(15, dtype=np.int64)
    arrays["bias/values"] = np.concatenate([rng.normal(0.0, 0.5, 16), [0.0, 0.5 * 0.02 * 0.01, -1.5 * 0.02 * 0.01]])
    arrays["bias/step_x"] = np.array(0.02)
    arrays["bias/step_w"] = np.full(19, 0.01)
    arrays["rescale/codes"] = rng.integers(0, 256, (1, 3, 4, 4)).astype(np.uint8)
    arrays["rescale/zero_point"] = np.array(17, dtype=np.int64)
    arrays["rescale/step_in"] = np.array(0.043)
    arrays["rescale/step_out"] = np.array(0.1)
    arrays["rescale/out_zero_point"] = np.array(5, dtype=np.int64)
    return arrays


def _scalar(array):
    return array.item()


def _conv_outputs(inputs):
    out = {}
    for case in CONV_CASES:
        x, w, bias = inputs[f"{case}/x"], inputs[f"{case}/w"], inputs[f"{case}/bias"]
        stride, pad = _scalar(inputs[f"{case}/stride"]), _scalar(inputs[f"{case}/pad"])
        acc = intconv.conv2d_reference(x, w, stride, pad, bias=bias)
        fast = intconv.conv2d(x, w, stride, pad, bias=bias)
        if not np.array_equal(acc, fast):  # two kernels of refquant itself: must never happen
            raise AssertionError(f"golden {case}: refquant.intconv.conv2d differs from conv2d_reference")
        out[f"{case}/acc"] = acc
        real = _scalar(inputs[f"{case}/real_multiplier"])
        zero_point, qmin, qmax = (_scalar(inputs[f"{case}/{k}"]) for k in ("zero_point", "qmin", "qmax"))
        multiplier, shift, negative_multiplier, negative_shift = intconv.leaky_multipliers(real)
        out[f"{case}/requantization"] = np.array([multiplier, shift, negative_multiplier, negative_shift],
                                                 dtype=np.int64)
        out[f"{case}/codes_linear"] = intconv.requantize(acc, multiplier, shift, zero_point, qmin, qmax)
        out[f"{case}/codes_leaky"] = intconv.requantize_leaky(acc, multiplier, shift, negative_multiplier,
                                                              negative_shift, zero_point, qmin, qmax)
        out[f"{case}/codes_relu"] = intconv.requantize_leaky(acc, multiplier, shift, 0, 0, zero_point, qmin, qmax)
    pairs = np.array([intconv.quantize_multiplier(r) for r in inputs["multipliers/real"]], dtype=np.int64)
    out["multipliers/multiplier"], out["multipliers/shift"] = pairs[:, 0], pairs[:, 1]
    out["ties/codes"] = intconv.requantize_shift(inputs["ties/acc"], _scalar(inputs["ties/shift"]),
                                                 _scalar(inputs["ties/zero_point"]), _scalar(inputs["ties/qmin"]),
                                                 _scalar(inputs["ties/qmax"]))
    out["bias/quantized"] = intconv.quantize_bias(inputs["bias/values"], _scalar(inputs["bias/step_x"]),
                                                  inputs["bias/step_w"])
    real = _scalar(inputs["rescale/step_in"]) / _scalar(inputs["rescale/step_out"])
    multiplier, shift = intconv.quantize_multiplier(real)
    out["rescale/requantization"] = np.array([multiplier, shift], dtype=np.int64)
    out["rescale/rescaled"] = intconv.rescale_codes(inputs["rescale/codes"], _scalar(inputs["rescale/zero_point"]),
                                                 multiplier, shift, _scalar(inputs["rescale/out_zero_point"]), 0, 255)
    return out


CONV_TOLERANCES = {
    "real_multiplier": DRAWN, "real": DRAWN, "values": DRAWN, "step_x": DRAWN, "step_w": DRAWN,
    "step_in": DRAWN, "step_out": DRAWN,
}


# ================================================================================================
# 5. Layers: Darknet's maxpool, reorg, upsample, batch norm, folding, SGD update
# ================================================================================================

MAXPOOL_CASES = {"size2_stride2": (2, 2), "size2_stride1": (2, 1), "size3_stride2": (3, 2), "size3_stride1": (3, 1)}
"""(size, stride) with Darknet's default padding size - 1, on a 7 x 9 input (odd sizes: the
implicit padding decides the last window)."""

_FOLD_CFG = """[net]
width=6
height=5
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


def _one_layer_network():
    """A float64 network of one batch-normalised convolution (for folding and the SGD update)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "one_layer.cfg"
        path.write_text(_FOLD_CFG)
        return darknet.load(path, dtype=np.float64)


def _layers_inputs():
    rng = np.random.default_rng(5)
    arrays = {"maxpool/x": rng.integers(0, 4, (2, 3, 7, 9)).astype(np.int16),
              "reorg/x": rng.integers(-100, 100, (2, 8, 6, 4)).astype(np.int16),
              "upsample/x": rng.integers(0, 256, (1, 2, 3, 4)).astype(np.uint8),
              "batchnorm/z": rng.normal(0.5, 2.0, (3, 4, 10)),
              "batchnorm/rolling_mean": rng.normal(0.0, 1.0, 4),
              "batchnorm/rolling_variance": rng.uniform(0.5, 2.0, 4)}
    net = _one_layer_network()
    for name, param in net.layers[0].params.items():
        shape = param.shape
        value = rng.uniform(0.5, 2.0, shape) if name in ("rolling_variance", "scales") else rng.normal(0, 0.5, shape)
        arrays[f"parameters/{name}"] = value
    for name in ("biases", "scales", "weights"):
        arrays[f"sgd/gradient/{name}"] = rng.normal(0.0, 1.0, arrays[f"parameters/{name}"].shape)
        arrays[f"sgd/update/{name}"] = rng.normal(0.0, 0.1, arrays[f"parameters/{name}"].shape)
    arrays["sgd/hyperparameters"] = np.array([0.001, 0.9, 0.0005])  # learning rate, momentum, decay
    arrays["sgd/batch"] = np.array(64, dtype=np.int64)
    return arrays


def _layers_outputs(inputs):
    out = {}
    for case, (size, stride) in MAXPOOL_CASES.items():
        out[f"maxpool/{case}"], out[f"maxpool/{case}_argmax"] = maxpool_forward(inputs["maxpool/x"], size, stride,
                                                                                 size - 1)
    out["reorg/stride2"] = reorg_forward(inputs["reorg/x"], 2)
    out["upsample/stride2"] = upsample_forward(inputs["upsample/x"], 2)
    z = inputs["batchnorm/z"]
    mean, variance = batchnorm.batch_statistics(z)
    out["batchnorm/mean"], out["batchnorm/variance"] = mean, variance
    out["batchnorm/xhat"] = batchnorm.normalize(z, mean, variance)
    out["batchnorm/rolling_mean_next"] = batchnorm.rolling_update(inputs["batchnorm/rolling_mean"].copy(), mean)
    out["batchnorm/rolling_variance_next"] = batchnorm.rolling_update(inputs["batchnorm/rolling_variance"].copy(),
                                                                      variance)
    net = _one_layer_network()
    for name in net.layers[0].params:
        net.layers[0].params[name][...] = inputs[f"parameters/{name}"]
    folded = qat.fold_batchnorm(net).layers[0].params
    out["fold/weights"], out["fold/biases"] = folded["weights"], folded["biases"]
    gradients = {(0, name): inputs[f"sgd/gradient/{name}"] for _, name, _ in trainable(net)}
    updates = {(0, name): inputs[f"sgd/update/{name}"].copy() for _, name, _ in trainable(net)}
    rate, momentum, decay = inputs["sgd/hyperparameters"]
    sgd_update(net, gradients, updates, float(rate), float(momentum), float(decay), _scalar(inputs["sgd/batch"]))
    for _, name, param in trainable(net):
        out[f"sgd/parameter_next/{name}"] = param.copy()
        out[f"sgd/update_next/{name}"] = updates[(0, name)]
    return out


_LAYERS_FLOAT = Tolerance(1e-13, 1e-15, "float64 arithmetic of a few operations per value")
LAYERS_TOLERANCES = {
    "z": DRAWN, "rolling_mean": DRAWN, "rolling_variance": DRAWN, "hyperparameters": DRAWN,
    "parameters/biases": DRAWN, "parameters/scales": DRAWN, "parameters/weights": DRAWN,
    "parameters/rolling_mean": DRAWN, "parameters/rolling_variance": DRAWN,
    "sgd/gradient/biases": DRAWN, "sgd/gradient/scales": DRAWN, "sgd/gradient/weights": DRAWN,
    "sgd/update/biases": DRAWN, "sgd/update/scales": DRAWN, "sgd/update/weights": DRAWN,
    "mean": Tolerance(1e-13, 1e-15, "a sum of 30 values: summation order only"),
    "variance": Tolerance(1e-13, 1e-15, "as mean"),
    "xhat": _LAYERS_FLOAT, "rolling_mean_next": _LAYERS_FLOAT, "rolling_variance_next": _LAYERS_FLOAT,
    "fold/weights": _LAYERS_FLOAT, "fold/biases": _LAYERS_FLOAT,
    "sgd/parameter_next/biases": _LAYERS_FLOAT, "sgd/parameter_next/scales": _LAYERS_FLOAT,
    "sgd/parameter_next/weights": _LAYERS_FLOAT, "sgd/update_next/biases": _LAYERS_FLOAT,
    "sgd/update_next/scales": _LAYERS_FLOAT, "sgd/update_next/weights": _LAYERS_FLOAT,
}


# ================================================================================================
# 6. The region head: forward, loss, backward
# ================================================================================================

REGION_CASES = {
    # yolov2-tiny-voc.cfg's [region] options (3 classes, 2 anchors), and the logistic-class variant
    "softmax": dict(anchors=(1.08, 1.19, 3.42, 4.41), bias_match=1, classes=3, num=2, softmax=1, rescore=1,
                    object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6),
    "logistic": dict(anchors=(1.08, 1.19, 3.42, 4.41), bias_match=0, classes=3, num=2, softmax=0, rescore=0,
                     object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6),
}
REGION_SEEN = (0, 20000)  # below and above Darknet's 12800: with and without the pull towards the anchors


def _region_inputs():
    rng = np.random.default_rng(6)
    arrays = {"x": rng.normal(0.0, 1.5, (2, 2 * 8, 5, 5))}
    # image 0: two boxes; image 1: three, two of them in the same cell
    arrays["truths/0"] = np.array([[0.31, 0.42, 0.2, 0.3, 0], [0.71, 0.23, 0.55, 0.4, 2]])
    arrays["truths/1"] = np.array([[0.5, 0.5, 0.9, 0.8, 1], [0.52, 0.47, 0.1, 0.12, 0], [0.13, 0.88, 0.2, 0.15, 2]])
    return arrays


def _region_outputs(inputs):
    out = {}
    truths = [inputs["truths/0"], inputs["truths/1"]]
    for case, options in REGION_CASES.items():
        layer = RegionLayer(**options)
        out[f"{case}/y"] = layer.forward(inputs["x"])
        for seen in REGION_SEEN:
            loss, dout = layer.loss(truths, seen=seen)
            out[f"{case}/seen{seen}/loss"] = np.array(loss)
            out[f"{case}/seen{seen}/delta"] = layer.delta
            out[f"{case}/seen{seen}/dout"] = dout
            out[f"{case}/seen{seen}/dx"] = layer.backward(dout)
    return out


_REGION_FLOAT = Tolerance(1e-10, 1e-12, "float64 logistic, softmax, exp and log of O(1) values")
REGION_TOLERANCES = {"x": DRAWN, "truths/0": DRAWN, "truths/1": DRAWN, "y": _REGION_FLOAT, "loss": _REGION_FLOAT,
                     "delta": _REGION_FLOAT, "dout": _REGION_FLOAT, "dx": _REGION_FLOAT}


# ================================================================================================
# 7. A small network: float forward, batch-norm folding, calibration, plans; the integer network
# ================================================================================================

NETWORK_CFG = """# refquant golden vectors: a small YOLOv2-style network with every layer type of the integer network
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[route]
layers=-5

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[reorg]
stride=2

[route]
layers=-1,-4

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=linear

[region]
anchors=1.08,1.19,3.42,4.41
bias_match=1
classes=3
coords=4
num=2
softmax=1
rescore=1
object_scale=5
noobject_scale=1
class_scale=1
coord_scale=1
thresh=.6
"""
NETWORK_SEED = 7
CALIBRATION_IMAGES = 8
PLANS = {
    # plan name: (weight bits, activation bits, pow2_step) of refquant.qat.quantization_plan, method "pgm"
    "pgm_w4a4": (4, 4, False),
    "pgm_pow2_w8a8": (8, 8, True),
}


def network_from(params, cfg_text=NETWORK_CFG, dtype=np.float32):
    """The network of :data:`NETWORK_CFG` with the parameters ``{"params/<layer>/<name>": array}``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.cfg"
        path.write_text(cfg_text)
        net = darknet.load(path, dtype=dtype)
    for index, name, _ in darknet.weights_layout(net):
        net.layers[index].params[name][...] = params[f"params/{index}/{name}"]
    net.name = "network.cfg"
    return net


def _network_parameters():
    """Darknet's seeded initialisation, then random batch-norm statistics, scales and biases."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.cfg"
        path.write_text(NETWORK_CFG)
        net = darknet.load(path, seed=NETWORK_SEED)
    rng = np.random.default_rng(NETWORK_SEED)
    for layer in net.layers:
        if layer.type == "convolutional":
            m = layer.filters
            layer.params["biases"][:] = rng.normal(0.0, 0.2, m)
            if layer.batch_normalize:
                layer.params["scales"][:] = rng.uniform(0.5, 1.5, m)
                layer.params["rolling_mean"][:] = rng.normal(0.0, 0.3, m)
                layer.params["rolling_variance"][:] = rng.uniform(0.5, 2.0, m)
    return {f"params/{index}/{name}": net.layers[index].params[name].copy()
            for index, name, _ in darknet.weights_layout(net)}


def _network_images():
    """Calibration images (on the 8-bit grid k/255) and two test images: one on the grid, one
    off it with values outside [0, 1] (input rounding and saturation)."""
    rng = np.random.default_rng(NETWORK_SEED + 1)
    calibration = (rng.integers(0, 256, (CALIBRATION_IMAGES, 3, 32, 32)) / 255.0).astype(np.float32)
    on_grid = (rng.integers(0, 256, (1, 3, 32, 32)) / 255.0).astype(np.float32)
    off_grid = rng.uniform(-0.1, 1.1, (1, 3, 32, 32)).astype(np.float32)
    return calibration, np.concatenate([on_grid, off_grid])


def _network_inputs():
    calibration, images = _network_images()
    return dict(_network_parameters(), calibration_images=calibration, images=images)


def plan_arrays(prefix, plan):
    """A quantization plan as arrays ``<prefix>/...`` (input grid, weight and activation grids)."""
    weights, activations = sorted(plan.weights), sorted(plan.activations)
    arrays = {f"{prefix}/input_grid": np.array([plan.input.step]),
              f"{prefix}/input_codes": np.array([plan.input.zero_point, plan.input.qmin, plan.input.qmax], np.int64),
              f"{prefix}/weight_layers": np.array(weights, dtype=np.int64),
              f"{prefix}/weight_step": np.array([plan.weights[i].step for i in weights]),
              f"{prefix}/weight_codes": np.array([[plan.weights[i].qmin, plan.weights[i].qmax] for i in weights],
                                                 dtype=np.int64),
              f"{prefix}/activation_layers": np.array(activations, dtype=np.int64),
              f"{prefix}/activation_step": np.array([plan.activations[i].step for i in activations]),
              f"{prefix}/activation_codes": np.array(
                  [[plan.activations[i].zero_point, plan.activations[i].qmin, plan.activations[i].qmax]
                   for i in activations], dtype=np.int64)}
    return arrays


def plan_from(prefix, arrays, net, name):
    """The :class:`refquant.qat.QuantizationPlan` of :func:`plan_arrays`' arrays, for ``net``."""
    zero_point, qmin, qmax = (int(v) for v in arrays[f"{prefix}/input_codes"])
    grid = intervals.UniformQuantizer(float(arrays[f"{prefix}/input_grid"][0]), zero_point, qmin, qmax)
    weights = {int(i): intervals.UniformQuantizer(float(s), 0, int(c[0]), int(c[1])) for i, s, c in zip(
        arrays[f"{prefix}/weight_layers"], arrays[f"{prefix}/weight_step"], arrays[f"{prefix}/weight_codes"])}
    activations = {int(i): intervals.UniformQuantizer(float(s), int(c[0]), int(c[1]), int(c[2])) for i, s, c in zip(
        arrays[f"{prefix}/activation_layers"], arrays[f"{prefix}/activation_step"],
        arrays[f"{prefix}/activation_codes"])}
    return qat.QuantizationPlan.for_network(net, weights, activations, input=grid, method=name)


def _calibrated_plans(net, calibration_images):
    """(statistics, {plan name: plan}) of refquant's post-training calibration (method "pgm")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        statistics = qat.calibration_statistics(net, calibration_images, progress=False)
        plans = {name: qat.quantization_plan(statistics, w, a, pow2_step=pow2)
                 for name, (w, a, pow2) in PLANS.items()}
    return statistics, plans


def _network_outputs(inputs):
    net = network_from(inputs)
    out = {}
    float64_net = network_from(inputs, dtype=np.float64)
    for index, value in enumerate(float64_net.forward(inputs["images"].astype(np.float64), return_all=True)):
        out[f"float/{index}"] = value
    folded = qat.fold_batchnorm(net)
    for index in qat.conv_indices(folded):
        out[f"folded/{index}/weights"] = folded.layers[index].params["weights"]
        out[f"folded/{index}/biases"] = folded.layers[index].params["biases"]
    statistics, plans = _calibrated_plans(net, inputs["calibration_images"])
    for index, histogram in statistics.histograms.items():
        out[f"histograms/{index}/counts"] = histogram.counts
        out[f"histograms/{index}/edges"] = histogram.edges
    for (kind, index), model in sorted(statistics.densities.items()):
        out.update(_density_arrays(f"densities/{kind}/{index}", model))
    for name, plan in plans.items():
        out.update(plan_arrays(f"plans/{name}", plan))
    return out


_CALIBRATED = ("the calibration's float32 forward (BLAS summation order) moves histogram counts at bin edges; "
               "the PGM fits then move by ~1e-7 (EM tolerance 1e-9) and the optimal steps by ~1e-7")
NETWORK_TOLERANCES = {
    "images": DRAWN, "calibration_images": DRAWN,
    "float": Tolerance(1e-9, 1e-9, "float64 forward of float32 parameters: summation order only"),
    "folded/*": Tolerance(2.4e-7, 1e-38, "folded in float64, stored in float32: at most one float32 rounding apart"),
    "edges": Tolerance(0.0, 0.0, "exact: integer multiples of a power-of-two bin width"),
    "counts": Tolerance(0.0, 4.0, "the float32 forward's summation order (BLAS) can move a value lying within "
                                  "float32 rounding of a bin edge into the next bin"),
    "breakpoints": Tolerance(1e-12, 1e-12, "0 (leaky outputs), quantiles of the weights or bin edges"),
    "weights": Tolerance(1e-6, 1e-9, "fractions of counts; " + _CALIBRATED),
    "means": Tolerance(1e-5, 1e-6, _CALIBRATED),
    "stds": Tolerance(1e-5, 0.0, _CALIBRATED),
    "input_grid": Tolerance(0.0, 0.0, "exact: 1/255"),
    "weight_step": Tolerance(1e-5, 0.0, _CALIBRATED),
    "activation_step": Tolerance(1e-5, 0.0, _CALIBRATED),
}
for _index in range(13):
    for _name in ("biases", "scales", "rolling_mean", "rolling_variance", "weights"):
        NETWORK_TOLERANCES[f"params/{_index}/{_name}"] = Tolerance(0.0, 0.0, "exact: float32 parameters, seeded")
        NETWORK_TOLERANCES[f"folded/{_index}/{_name}"] = NETWORK_TOLERANCES["folded/*"]


def _integer_inputs():
    arrays = _network_inputs()
    del arrays["calibration_images"]
    network_outputs = _memoised_outputs(VECTORS["network"], _network_inputs())
    arrays.update({key: value for key, value in network_outputs.items() if key.startswith("plans/")})
    return arrays


def _integer_outputs(inputs):
    net = network_from(inputs)
    out = {}
    for name in PLANS:
        plan = plan_from(f"plans/{name}", inputs, net, name)
        integer = IntegerNetwork.build(net, plan)
        for index, fixed in enumerate(integer.fixed):
            prefix = f"{name}/fixed/{index}"
            if isinstance(fixed, qat.FixedPointConvolution):
                out[f"{prefix}/weight_codes"] = fixed.weight_codes
                out[f"{prefix}/bias"] = fixed.bias
                out[f"{prefix}/real_multiplier"] = np.array(fixed.real_multiplier)
                out[f"{prefix}/requantization"] = np.array(
                    [fixed.multiplier, fixed.shift, fixed.negative_multiplier, fixed.negative_shift], dtype=np.int64)
            elif isinstance(fixed, qat.FixedPointRoute):
                out[f"{prefix}/rescalings"] = np.array([[0, 0, 0, 0] if r is None else [1, *r]
                                                        for r in fixed.rescalings], dtype=np.int64)
        outputs = integer.run(inputs["images"])
        out[f"{name}/input_codes"] = qat.quantize_input(integer.net, plan, inputs["images"]).astype(np.uint8)
        for index, codes in enumerate(outputs[:-1]):
            out[f"{name}/codes/{index}"] = codes
        out[f"{name}/head"] = outputs[-1]
        simulated = integer.simulation().run(inputs["images"])
        for index, (codes, sim) in enumerate(zip(outputs[:-1], simulated[:-1])):
            if not np.array_equal(codes.astype(np.float64), sim):  # refquant's own invariant
                raise AssertionError(f"golden {name}: integer network and simulation differ at layer {index}")
    return out


INTEGER_TOLERANCES = dict(NETWORK_TOLERANCES)
INTEGER_TOLERANCES.update({
    "real_multiplier": Tolerance(0.0, 0.0, "exact: step_in * step_w / step_out in float64, in that order"),
    "head": Tolerance(1e-12, 1e-12, "float64 logistic and softmax of step * (codes - zero_point)"),
})


# ================================================================================================
# 8. Detections and average precision
# ================================================================================================

DETECTION_NAMES = ("a", "b", "c")
DETECTION_ANCHORS = (1.08, 1.19, 3.42, 4.41)
DETECTION_THRESHOLD = 0.2
DETECTION_NMS = 0.45


def _region_head(rng, grid=6):
    layer = RegionLayer(anchors=DETECTION_ANCHORS, classes=len(DETECTION_NAMES), num=2, softmax=1)
    x = rng.normal(0.0, 1.0, (2, 2 * 8, grid, grid))
    x[:, [4, 12]] += rng.normal(-1.0, 1.5, (2, 2, grid, grid))  # spread the objectness
    return layer.forward(x)


def _detection_inputs():
    rng = np.random.default_rng(8)
    head = _region_head(rng)
    sizes = np.array([[120, 80], [64, 96]], dtype=np.int64)
    arrays = {"head": head, "anchors": np.array(DETECTION_ANCHORS), "image_sizes": sizes,
              "network_size": np.array([96, 96], dtype=np.int64), "names": np.array(DETECTION_NAMES),
              "thresh": np.array(DETECTION_THRESHOLD), "nms": np.array(DETECTION_NMS)}
    # Ground truth: jittered copies of some of the detections (a few difficult), plus missed objects.
    found = _detections(arrays)
    chosen = rng.choice(len(found["score"]), size=min(12, len(found["score"])), replace=False)
    boxes = np.round(found["box"][chosen] + rng.normal(0.0, 2.0, (chosen.size, 4)))
    images = found["image"][chosen]
    labels = found["label"][chosen]
    missed = np.array([[5, 5, 30, 40], [40, 10, 60, 70]], dtype=np.float64)
    arrays["truth/image"] = np.concatenate([images, [0, 1]]).astype(np.int64)
    arrays["truth/label"] = np.concatenate([labels, [0, 1]]).astype(np.int64)
    arrays["truth/box"] = np.concatenate([boxes, missed])
    arrays["truth/difficult"] = np.arange(arrays["truth/image"].size) % 5 == 4
    arrays.update(HAND_CASE)
    return arrays


HAND_CASE = {
    # VOC pixel boxes. Label 0: TP (0.9), a match of a difficult object (0.8, ignored), FP on an empty
    # image region (0.7), a duplicate of the first object (0.7, after it: stable order), TP with IoU
    # 0.81 (0.6). Label 1: a match at IoU exactly 0.5 (the devkit's >=). Label 2: only a difficult object.
    "hand/detection_image": np.array([0, 0, 1, 0, 1, 0], dtype=np.int64),
    "hand/detection_label": np.array([0, 0, 0, 0, 0, 1], dtype=np.int64),
    "hand/detection_score": np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5]),
    "hand/detection_box": np.array([[1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [1, 1, 10, 10],
                                    [2, 2, 10, 10], [1, 1, 10, 20]], dtype=np.float64),
    "hand/truth_image": np.array([0, 0, 1, 0, 1], dtype=np.int64),
    "hand/truth_label": np.array([0, 0, 0, 1, 2], dtype=np.int64),
    "hand/truth_box": np.array([[1, 1, 10, 10], [20, 20, 30, 30], [1, 1, 10, 10], [1, 1, 10, 10],
                                [5, 5, 9, 9]], dtype=np.float64),
    "hand/truth_difficult": np.array([False, True, False, False, True]),
}


def _detections(inputs):
    names = [str(n) for n in inputs["names"]]
    sizes = [tuple(int(v) for v in size) for size in inputs["image_sizes"]]
    width, height = (int(v) for v in inputs["network_size"])
    found = decode.detections(inputs["head"], inputs["anchors"], names, [0, 1], sizes, width, height,
                              thresh=float(inputs["thresh"]), nms=float(inputs["nms"]), letterbox=True)
    return {"image": np.array([d["image"] for d in found], dtype=np.int64),
            "label": np.array([names.index(d["label"]) for d in found], dtype=np.int64),
            "score": np.array([d["score"] for d in found], dtype=np.float64).reshape(-1),
            "box": np.array([d["box"] for d in found], dtype=np.float64).reshape(-1, 4)}


def _as_dicts(images, labels, boxes, scores=None, difficult=None):
    rows = []
    for k in range(len(images)):
        row = {"image": int(images[k]), "label": int(labels[k]), "box": tuple(float(v) for v in boxes[k])}
        if scores is not None:
            row["score"] = float(scores[k])
        if difficult is not None:
            row["difficult"] = bool(difficult[k])
        rows.append(row)
    return rows


def _ap_arrays(prefix, found, truth, labels):
    out = {}
    for use_07, rule in ((False, "area"), (True, "eleven_point")):
        result = metrics.average_precision(found, truth, use_07_metric=use_07)
        out[f"{prefix}/ap_{rule}"] = np.array([result.get(label, math.nan) for label in labels])
        out[f"{prefix}/map_{rule}"] = np.array(result["mAP"])
    for label in labels:
        recall, precision, _ = metrics.precision_recall([d for d in found if d["label"] == label],
                                                        [t for t in truth if t["label"] == label])
        out[f"{prefix}/recall/{label}"], out[f"{prefix}/precision/{label}"] = recall, precision
    return out


def _detection_outputs(inputs):
    found = _detections(inputs)
    out = {f"detections/{key}": value for key, value in found.items()}
    boxes, objectness, class_prob = decode.region_boxes(inputs["head"], inputs["anchors"], len(inputs["names"]))
    out["region/boxes"], out["region/objectness"], out["region/class_prob"] = boxes, objectness, class_prob
    labels = list(range(len(inputs["names"])))
    detections = _as_dicts(found["image"], found["label"], found["box"], scores=found["score"])
    truth = _as_dicts(inputs["truth/image"], inputs["truth/label"], inputs["truth/box"],
                      difficult=inputs["truth/difficult"])
    out.update(_ap_arrays("ap", detections, truth, labels))
    hand_found = _as_dicts(inputs["hand/detection_image"], inputs["hand/detection_label"],
                           inputs["hand/detection_box"], scores=inputs["hand/detection_score"])
    hand_truth = _as_dicts(inputs["hand/truth_image"], inputs["hand/truth_label"], inputs["hand/truth_box"],
                           difficult=inputs["hand/truth_difficult"])
    out.update(_ap_arrays("hand", hand_found, hand_truth, labels))
    return out


_DECODED = Tolerance(1e-12, 1e-9, "float64 exp and divisions (boxes in pixels: atol 1e-9 pixel)")
_AP = Tolerance(1e-12, 1e-15, "ratios of counts, summed: float rounding only")
DETECTION_TOLERANCES = {
    "head": Tolerance(1e-12, 1e-15, "logistic and softmax of seeded normals"),
    "anchors": DRAWN, "thresh": DRAWN, "nms": DRAWN,
    "truth/box": Tolerance(0.0, 1e-6, "rounded pixel coordinates of jittered detections"),
    "hand/detection_score": DRAWN, "hand/detection_box": DRAWN, "hand/truth_box": DRAWN,
    "score": _DECODED, "box": _DECODED, "boxes": _DECODED, "objectness": _DECODED, "class_prob": _DECODED,
    "ap_area": _AP, "ap_eleven_point": _AP, "map_area": _AP, "map_eleven_point": _AP,
    "recall/0": _AP, "recall/1": _AP, "recall/2": _AP, "precision/0": _AP, "precision/1": _AP, "precision/2": _AP,
}


# ================================================================================================
# The list of vectors
# ================================================================================================

VECTORS = {vector.name: vector for vector in [
    Vector("rounding", "Round half to even on floats and the integer rounding right shift, ties and extremes.",
           ("refquant.rounding.round_half_even", "refquant.rounding.rounding_right_shift"),
           {"random": 1}, {}, _rounding_inputs, _rounding_outputs, {"x": DRAWN, "y": EXACT}),
    Vector("pgm_fits", "Samples (and a histogram) drawn from known piecewise Gaussians and the PGMs fitted "
           "to them by EM: given breakpoints, and automatic selection (K and breakpoints by BIC).",
           ("refquant.pgm.PiecewiseGaussian.fit", "refquant.pgm.PiecewiseGaussian.fit_histogram"),
           {case: spec[2] for case, spec in PGM_CASES.items()},
           {"max_pieces": PGM_MAX_PIECES, "max_iter": 20000, "tol": 1e-9, "min_piece_samples": 5,
            "cases": {case: {"generating_density": spec[0], "n": spec[1], "breakpoints": spec[3], "source": spec[4]}
                      for case, spec in PGM_CASES.items()}},
           _pgm_inputs, _pgm_outputs, PGM_TOLERANCES),
    Vector("expected_error", "Piecewise Gaussian densities: pdf, cdf, mean, variance, partial moments, and the "
           "closed-form expected squared error (granular, clipping) of given uniform quantizers.",
           ("refquant.pgm.PiecewiseGaussian.pdf", "refquant.pgm.PiecewiseGaussian.cdf",
            "refquant.pgm.PiecewiseGaussian.partial_moments", "refquant.intervals.expected_mse"),
           {}, {"densities": {name: DENSITIES[name] for name in ERROR_DENSITIES}},
           _error_inputs, _error_outputs, ERROR_TOLERANCES),
    Vector("optimal_quantizers", "The quantizer minimising the expected error, per density, constraint and width "
           "(the 'free' N(0,1) rows are Max's 1960 table).",
           ("refquant.intervals.optimal_quantizer",), {},
           {"modes": OPTIMAL_MODES}, _optimal_inputs, _optimal_outputs, OPTIMAL_TOLERANCES),
    Vector("fake_quantization", "Codes, fake-quantized values (float64 and float32) and the straight-through mask "
           "of given quantizers, on levels, exact ties, the interval ends, beyond them and +-inf.",
           ("refquant.intervals.UniformQuantizer.quantize", "refquant.intervals.UniformQuantizer.fake",
            "refquant.intervals.UniformQuantizer.straight_through_mask"),
           {"random": 3}, {}, _fake_inputs, _fake_outputs, FAKE_TOLERANCES),
    Vector("integer_convolution", "Integer correlations with int32 bias, requantization (linear, leaky, relu), "
           "22-bit multipliers, ties of the rounding shift, bias quantization and route rescaling.",
           ("refquant.intconv.conv2d_reference", "refquant.intconv.quantize_multiplier",
            "refquant.intconv.leaky_multipliers", "refquant.intconv.requantize",
            "refquant.intconv.requantize_leaky", "refquant.intconv.quantize_bias", "refquant.intconv.rescale_codes"),
           {"random": 4}, {}, _conv_inputs, _conv_outputs, CONV_TOLERANCES),
    Vector("layers", "Darknet layer semantics: maxpool with implicit padding (and its argmax on ties), reorg, "
           "upsample, batch statistics (unbiased variance), normalisation, rolling update, batch-norm folding, "
           "the SGD update.",
           ("refquant.yolo.maxpool.maxpool_forward", "refquant.yolo.reorg.reorg_forward",
            "refquant.yolo.upsample.upsample_forward", "refquant.yolo.batchnorm.batch_statistics",
            "refquant.yolo.batchnorm.normalize", "refquant.yolo.batchnorm.rolling_update",
            "refquant.qat.fold_batchnorm", "refquant.train.sgd_update"),
           {"random": 5},
           {"maxpool": {k: {"size": s, "stride": t, "padding": s - 1} for k, (s, t) in MAXPOOL_CASES.items()},
            "fold_cfg": _FOLD_CFG, "sgd_hyperparameters": ["learning_rate", "momentum", "decay"]},
           _layers_inputs, _layers_outputs, LAYERS_TOLERANCES),
    Vector("region", "The YOLOv2 region head: forward, Darknet's region loss and its gradient (before and after "
           "12800 images seen), backward.",
           ("refquant.yolo.region.RegionLayer.forward", "refquant.yolo.region.RegionLayer.loss",
            "refquant.yolo.region.RegionLayer.backward"),
           {"random": 6}, {"cases": REGION_CASES, "seen": list(REGION_SEEN)},
           _region_inputs, _region_outputs, REGION_TOLERANCES),
    Vector("network", "A small network (network.cfg, network.weights): float64 forward at every layer, batch norm "
           "folded, calibration histograms, PGM fits and the quantization plans.",
           ("refquant.yolo.network.Network.forward", "refquant.qat.fold_batchnorm",
            "refquant.qat.calibration_statistics", "refquant.qat.quantization_plan"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1},
           {"plans": {name: {"weight_bits": w, "activation_bits": a, "pow2_step": p, "method": "pgm",
                             "first_bits": 8, "last_bits": 8} for name, (w, a, p) in PLANS.items()}},
           _network_inputs, _network_outputs, NETWORK_TOLERANCES),
    Vector("integer_network", "The integer network of each plan: int8 weight codes, int32 biases, requantization "
           "pairs, route rescalings, the codes of every layer for two images, the head's output.",
           ("refquant.integer_network.IntegerNetwork.run", "refquant.qat.fixed_point_layers"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1}, {"plans": list(PLANS)},
           _integer_inputs, _integer_outputs, INTEGER_TOLERANCES),
    Vector("detection_ap", "Region-head decoding, thresholds, NMS and VOC pixel boxes (letterboxed images), then "
           "VOC AP (area and 11-point rules) on them and on a hand-worked case.",
           ("refquant.decode.detections", "refquant.decode.region_boxes", "refquant.metrics.average_precision",
            "refquant.metrics.precision_recall"),
           {"random": 8}, {"names": list(DETECTION_NAMES), "letterbox": True, "iou_threshold": 0.5},
           _detection_inputs, _detection_outputs, DETECTION_TOLERANCES),
]}


_OUTPUT_CACHE = {}


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _memoised_outputs(vector, inputs):
    """``vector.outputs(inputs)``, computed once per distinct inputs within this process."""
    key = (vector.name, _digest(inputs))
    if key not in _OUTPUT_CACHE:
        _OUTPUT_CACHE[key] = vector.outputs(inputs)
    return _OUTPUT_CACHE[key]


# ================================================================================================
# Files
# ================================================================================================

def write_npz(path, arrays):
    """An ``np.savez``-compatible archive (stored, not compressed) with fixed member timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def sha256(path):
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _array_entry(vector, name, value, role):
    return {"role": role, "shape": list(value.shape), "dtype": value.dtype.str,
            "tolerance": tolerance_of(vector, name, value).to_dict()}


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def export(directory, progress=None):
    """Write every vector, the network files and the manifest into ``directory``; returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _OUTPUT_CACHE.clear()  # every export computes afresh
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "refquant_version": refquant.__version__,
                "numpy_version": np.__version__,
                "comparison": "shapes and dtypes equal; |got - expected| <= atol + rtol * |expected| element by "
                              "element, NaN only where NaN is expected; rtol = atol = 0 means equality",
                "files": {}, "vectors": {}}
    for vector in tqdm(VECTORS.values(), desc="golden export", unit="vector",
                       disable=None if progress is None else not progress, leave=False):
        inputs = vector.inputs()
        outputs = _memoised_outputs(vector, inputs)
        clash = set(inputs) & set(outputs)
        if clash:
            raise AssertionError(f"golden {vector.name}: arrays both input and output: {sorted(clash)}")
        arrays = {**{k: np.asarray(v) for k, v in inputs.items()}, **{k: np.asarray(v) for k, v in outputs.items()}}
        file_name = f"{vector.name}.npz"
        write_npz(directory / file_name, arrays)
        manifest["vectors"][vector.name] = {
            "file": file_name, "description": vector.description, "definitions": list(vector.definitions),
            "seeds": vector.seeds, "parameters": _json_ready(vector.parameters),
            "arrays": {name: _array_entry(vector, name, value, "input" if name in inputs else "output")
                       for name, value in arrays.items()}}
        manifest["files"][file_name] = {"sha256": sha256(directory / file_name),
                                        "bytes": (directory / file_name).stat().st_size}
    for name in _network_files(directory):
        manifest["files"][name] = {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    return manifest


def _network_files(directory):
    """Write network.cfg, network.weights and the plan JSON files; returns their names."""
    inputs = VECTORS["network"].inputs()
    (directory / "network.cfg").write_text(NETWORK_CFG)
    net = network_from(inputs)
    darknet.save_weights(net, directory / "network.weights")
    outputs = _memoised_outputs(VECTORS["network"], inputs)
    for name in PLANS:
        plan_from(f"plans/{name}", outputs, net, name).save(directory / f"plan_{name}.json")
    return ["network.cfg", "network.weights"] + [f"plan_{name}.json" for name in PLANS]


# ================================================================================================
# Check
# ================================================================================================

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


def check(directory, vectors=None, progress=None):
    """Every mismatch between the golden vectors in ``directory`` and refquant: a list of :class:`Mismatch`.

    ``vectors``: names of the vectors to check (default all); the file hashes are always checked.
    """
    directory = Path(directory)
    _OUTPUT_CACHE.clear()  # recompute, never reuse an export's results
    selected = list(VECTORS) if vectors is None else list(vectors)
    unknown = sorted(set(selected) - set(VECTORS))
    if unknown:
        raise ValueError(f"golden check: unknown vectors {unknown}; known: {', '.join(VECTORS)}")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [Mismatch("manifest", "", None, None, None,
                         f"{manifest_path}: missing (run 'refquant golden export')")]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return [Mismatch("manifest", "", None, None, None,
                         f"{manifest_path}:{error.lineno}: not valid JSON ({error.msg})")]
    mismatches = _check_manifest(manifest, manifest_path)
    if mismatches:
        return mismatches
    corrupt = set()
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            mismatches.append(Mismatch(name, "", None, None, None, f"{path}: missing file"))
            corrupt.add(name)
        elif sha256(path) != entry["sha256"]:
            mismatches.append(Mismatch(name, "", None, entry["sha256"], sha256(path), "sha256 differs: the file was "
                                       "modified after export"))
    for name in tqdm(selected, desc="golden check", unit="vector",
                     disable=None if progress is None else not progress, leave=False):
        mismatches += _check_vector(directory, manifest["vectors"][name], VECTORS[name], corrupt)
    if "network" in selected:
        mismatches += _check_network_files(directory, corrupt)
    return mismatches


def _check_manifest(manifest, path):
    problems = []
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        problems.append(Mismatch("manifest", "", None, f"{FORMAT} v{FORMAT_VERSION}",
                                 f"{manifest.get('format')} v{manifest.get('format_version')}",
                                 f"{path}: not a golden-vector manifest this refquant reads"))
        return problems
    for key in ("files", "vectors"):
        if not isinstance(manifest.get(key), dict):
            problems.append(Mismatch("manifest", "", None, None, None, f"{path}: missing the {key!r} table"))
    if problems:
        return problems
    missing = set(VECTORS) - set(manifest["vectors"])
    extra = set(manifest["vectors"]) - set(VECTORS)
    for name in sorted(missing):
        problems.append(Mismatch(name, "", None, None, None, f"{path}: vector missing from the manifest"))
    for name in sorted(extra):
        problems.append(Mismatch(name, "", None, None, None, f"{path}: unknown vector (not made by this refquant)"))
    return problems


def _check_vector(directory, entry, vector, corrupt):
    path = directory / entry["file"]
    if entry["file"] in corrupt:
        return []  # reported as missing
    try:
        stored = _load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        return [Mismatch(vector.name, "", None, None, None, f"{path}: unreadable ({error})")]
    mismatches = []
    listed = entry.get("arrays", {})
    for name in sorted(set(listed) ^ set(stored)):
        where = "in the manifest but not in the file" if name in listed else "in the file but not in the manifest"
        mismatches.append(Mismatch(vector.name, name, None, None, None, f"array {where}"))
    regenerated = vector.inputs()
    for name in sorted(set(regenerated) | {n for n, e in listed.items() if e.get("role") == "input"}):
        mismatches += _check_array(vector, name, regenerated, stored, listed, "input")
    if any(m.array in regenerated for m in mismatches if "missing" in m.detail):
        return mismatches
    try:
        inputs = {name: stored[name] for name in regenerated}
        recomputed = _memoised_outputs(vector, inputs)
    except Exception as error:  # a tampered input may make refquant refuse it: that is a mismatch too
        return mismatches + [Mismatch(vector.name, "", None, None, None,
                                      f"recomputing the outputs from the stored inputs failed: {error}")]
    for name in sorted(set(recomputed) | {n for n, e in listed.items() if e.get("role") == "output"}):
        mismatches += _check_array(vector, name, recomputed, stored, listed, "output")
    return mismatches


def _check_array(vector, name, computed, stored, listed, role):
    if name not in computed:
        return [Mismatch(vector.name, name, None, None, None, f"listed as {role} but refquant makes no such array")]
    value = np.asarray(computed[name])
    if name not in stored:
        return [Mismatch(vector.name, name, None, None, None, "missing from the file")]
    found = []
    entry = listed.get(name)
    tolerance = tolerance_of(vector, name, value)
    if entry is not None:
        if entry.get("role") != role:
            found.append(Mismatch(vector.name, name, None, role, entry.get("role"), "role in the manifest"))
        if entry.get("shape") != list(stored[name].shape) or entry.get("dtype") != stored[name].dtype.str:
            found.append(Mismatch(vector.name, name, None, (entry.get("shape"), entry.get("dtype")),
                                  (list(stored[name].shape), stored[name].dtype.str), "manifest shape/dtype vs file"))
        if entry.get("tolerance") != tolerance.to_dict():
            found.append(Mismatch(vector.name, name, None, tolerance.to_dict(), entry.get("tolerance"),
                                  "tolerance in the manifest differs from this refquant's"))
    result = compare(stored[name], value, tolerance)
    if result is not None:
        index, expected, got, detail = result
        found.append(Mismatch(vector.name, name, index, expected, got, f"{role}: {detail}"))
    return found


def _check_network_files(directory, corrupt):
    """network.cfg, network.weights and the plan files against the arrays they duplicate."""
    found = []
    if "network.cfg" not in corrupt and (directory / "network.cfg").read_text() != NETWORK_CFG:
        found.append(Mismatch("network.cfg", "", None, None, None, "differs from refquant.golden.NETWORK_CFG"))
    if "network.npz" in corrupt or "network.weights" in corrupt or not (directory / "network.npz").is_file():
        return found
    try:
        stored = _load_npz(directory / "network.npz")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return found
    net = network_from({k: v for k, v in stored.items() if k.startswith("params/")})
    try:
        _, arrays = darknet.read_weights(directory / "network.weights", net)
    except darknet.CfgError as error:
        return found + [Mismatch("network.weights", "", None, None, None, str(error))]
    for (index, name), value in arrays.items():
        result = compare(stored[f"params/{index}/{name}"], np.asarray(value), EXACT)
        if result is not None:
            found.append(Mismatch("network.weights", f"params/{index}/{name}", *result))
    for name in PLANS:
        path = directory / f"plan_{name}.json"
        if f"plan_{name}.json" in corrupt:
            continue
        try:
            plan = qat.QuantizationPlan.load(path)
        except ValueError as error:
            found.append(Mismatch(path.name, "", None, None, None, str(error)))
            continue
        for key, value in plan_arrays(f"plans/{name}", plan).items():
            result = compare(stored[key], value, EXACT)
            if result is not None:
                found.append(Mismatch(path.name, key, *result))
    return found


# ================================================================================================
# Command line
# ================================================================================================

def add_arguments(parser):
    """``refquant golden export DIR`` and ``refquant golden check DIR``."""
    sub = parser.add_subparsers(dest="golden_command", required=True)
    exporter = sub.add_parser("export", help="write the golden vectors and their manifest into DIR",
                              description="Write the golden vectors (.npz), the network files and manifest.json.")
    exporter.add_argument("directory", metavar="DIR")
    checker = sub.add_parser("check", help="recompute the golden vectors in DIR and report every mismatch",
                             description="Recompute every golden vector in DIR with this refquant; exit status 1 "
                                         "and one line per mismatch (vector, array, index, expected, got) if any.")
    checker.add_argument("directory", metavar="DIR")
    checker.add_argument("--vector", action="append", choices=list(VECTORS), default=None,
                         help="check only this vector (repeatable; default: all)")
    for sub_parser in (exporter, checker):
        sub_parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """Run ``export`` or ``check``; the exit status (0 when everything matches)."""
    progress = False if args.no_progress else None
    if args.golden_command == "export":
        manifest = export(args.directory, progress=progress)
        count = sum(len(v["arrays"]) for v in manifest["vectors"].values())
        print(f"golden vectors: {len(manifest['vectors'])} vectors, {count} arrays, "
              f"{len(manifest['files'])} files in {args.directory}")
        return 0
    mismatches = check(args.directory, vectors=args.vector, progress=progress)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}")
    if mismatches:
        print(f"golden check: {len(mismatches)} mismatches in {args.directory}", file=sys.stderr)
        return 1
    print(f"golden check: every vector in {args.directory} matches refquant {refquant.__version__}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="refquant golden")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
