"""Golden vectors of the numeric rules: rounding, PGM fits, expected errors, optimal quantizers,
fake quantization, integer convolution and requantization (docs/SPECIFICATION.md, sections 1 to 6 and 11.4).
"""
import numpy as np

from refquant.density.em import _bin_statistics
from refquant.density.pgm import PiecewiseGaussian
from refquant.golden.format import DRAWN, Tolerance
from refquant.integer import conv, requantize
from refquant.quantizers import error, optimal, uniform
from refquant.rounding import round_half_even, rounding_right_shift


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
    """The :class:`~refquant.density.pgm.PiecewiseGaussian` of :data:`DENSITIES` ``[name]``."""
    return PiecewiseGaussian(*DENSITIES[name])


def _density_arrays(prefix, model):
    """A density's parameters; for a fitted one also ``bounded``, the pieces fitted on the std's
    bound (specification, section 3.3). A fit that stopped short of its maximum has no
    well-defined answer, so it is refused here rather than stored with a tolerance."""
    arrays = {f"{prefix}/breakpoints": np.array(model.breakpoints), f"{prefix}/weights": np.array(model.weights),
              f"{prefix}/means": np.array(model.means), f"{prefix}/stds": np.array(model.stds)}
    if model.fit_info is not None:
        if not model.fit_info.converged:
            raise AssertionError(f"golden {prefix}: the PGM fit did not reach its maximum; a golden output must be "
                                 f"well defined ({model.fit_info})")
        arrays[f"{prefix}/bounded"] = np.array(model.fit_info.bounded, dtype=np.int64)
    return arrays


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


_FIT = ("the maximum of the likelihood with every std at most 10 times the data's (specification, section 3.3), "
        "unique: refquant stops at a moment residual of 1e-9 (or finishes by the profile over the std), and plain EM "
        "run to 1e-11 or SQUAREM to 1e-13 agree with it to 1e-9 (means in units of the piece's std); 1e-6 leaves "
        "room for another stopping rule")


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
    return [uniform.UniformQuantizer(float(s), float(z), int(lo), int(hi)) for s, z, lo, hi in zip(*columns)]


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
        split = [error.expected_mse(model, q, split=True) for q in _quantizers_from(inputs, f"{name}/quantizer_")]
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


OPTIMAL_MODES = {
    # mode: keyword arguments of refquant.quantizers.optimal.optimal_quantizer
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
        q = optimal.optimal_quantizer(model, int(bits), **OPTIMAL_MODES[str(mode)])
        granular, clipping = error.expected_mse(model, q, split=True)
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
        acc = conv.conv2d_reference(x, w, stride, pad, bias=bias)
        fast = conv.conv2d(x, w, stride, pad, bias=bias)
        if not np.array_equal(acc, fast):  # two kernels of refquant itself: must never happen
            raise AssertionError(f"golden {case}: refquant.integer.conv.conv2d differs from conv2d_reference")
        out[f"{case}/acc"] = acc
        real = _scalar(inputs[f"{case}/real_multiplier"])
        zero_point, qmin, qmax = (_scalar(inputs[f"{case}/{k}"]) for k in ("zero_point", "qmin", "qmax"))
        multiplier, shift, negative_multiplier, negative_shift = requantize.leaky_multipliers(real)
        out[f"{case}/requantization"] = np.array([multiplier, shift, negative_multiplier, negative_shift],
                                                 dtype=np.int64)
        out[f"{case}/codes_linear"] = requantize.requantize(acc, multiplier, shift, zero_point, qmin, qmax)
        out[f"{case}/codes_leaky"] = requantize.requantize_leaky(acc, multiplier, shift, negative_multiplier,
                                                              negative_shift, zero_point, qmin, qmax)
        out[f"{case}/codes_relu"] = requantize.requantize_leaky(acc, multiplier, shift, 0, 0, zero_point, qmin, qmax)
    pairs = np.array([requantize.quantize_multiplier(r) for r in inputs["multipliers/real"]], dtype=np.int64)
    out["multipliers/multiplier"], out["multipliers/shift"] = pairs[:, 0], pairs[:, 1]
    out["ties/codes"] = requantize.requantize_shift(inputs["ties/acc"], _scalar(inputs["ties/shift"]),
                                                 _scalar(inputs["ties/zero_point"]), _scalar(inputs["ties/qmin"]),
                                                 _scalar(inputs["ties/qmax"]))
    out["bias/quantized"] = requantize.quantize_bias(inputs["bias/values"], _scalar(inputs["bias/step_x"]),
                                                  inputs["bias/step_w"])
    real = _scalar(inputs["rescale/step_in"]) / _scalar(inputs["rescale/step_out"])
    multiplier, shift = requantize.quantize_multiplier(real)
    out["rescale/requantization"] = np.array([multiplier, shift], dtype=np.int64)
    out["rescale/rescaled"] = requantize.rescale_codes(inputs["rescale/codes"], _scalar(inputs["rescale/zero_point"]),
                                                 multiplier, shift, _scalar(inputs["rescale/out_zero_point"]), 0, 255)
    return out


CONV_TOLERANCES = {
    "real_multiplier": DRAWN, "real": DRAWN, "values": DRAWN, "step_x": DRAWN, "step_w": DRAWN,
    "step_in": DRAWN, "step_out": DRAWN,
}
