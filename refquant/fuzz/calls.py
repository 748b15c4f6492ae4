"""The fuzzed call boundaries (see :mod:`refquant.fuzz`): the numeric APIs given hostile arrays and
arguments, and the command line given hostile argument values.

What an accepted call must give is stated here, independently of refquant's own checks: a
fitted density or a quantizer with finite parameters (steps > 0, integer codes); an argument
value that means something for its option (a rate that is a finite number in its range, a count
of at least one, a path that is not empty).
"""
import contextlib
import io
import math

import numpy as np

from refquant.fuzz import classify, mutators

NUMERIC = "numeric APIs (PGM fit, optimal quantizer, ...)"
CLI = "CLI arguments"

SPECIAL_VALUES = (np.nan, np.inf, -np.inf, 1e300, -1e300, 1e308, 5e-324)


# -- hostile arguments -----------------------------------------------------------------------------

def hostile_samples(rng):
    """(description, samples): normal samples at a scale from 1e-300 to 1e300, with an extreme or
    non-finite value injected, or a degenerate shape or type."""
    kind = rng.random()
    if kind < 0.12:
        value = mutators.choose(rng, ([], None, "abc", ["1", "2"], [[1.0, 2.0], [3.0]], 3.5, True, {"x": 1}))
        return f"samples {value!r}", value
    n = int(mutators.choose(rng, (1, 2, 3, 10, 100, 1000)))
    if kind < 0.2:
        value = float(mutators.choose(rng, (0.0, 1.0, -7.5, 1e300, 5e-324)))
        return f"{n} samples all {value!r}", np.full(n, value)
    scale = 10.0 ** int(mutators.choose(rng, (-300, -200, -30, -5, 0, 5, 30, 200, 300)))
    offset = float(mutators.choose(rng, (0.0, 0.0, 1e300, -1e10)))
    x = rng.standard_normal(n) * scale + offset
    description = f"{n} samples N({offset:g}, {scale:g}^2)"
    if rng.random() < 0.35:
        value = float(mutators.choose(rng, SPECIAL_VALUES))
        x[int(rng.integers(n))] = value
        description += f", one set to {value!r}"
    if rng.random() < 0.1:
        x = x.astype(np.int64) if np.all(np.isfinite(x)) and np.all(np.abs(x) < 2**62) else x
        description += f", dtype {x.dtype}"
    if rng.random() < 0.1 and n % 2 == 0:
        x = x.reshape(2, -1)
        description += ", 2-D"
    return description, x


HOSTILE_BITS = (0, 1, 2, 3, 4, 8, 9, 16, 32, 64, -1, 2.5, True, "8", None, np.int64(4), np.float64(4.0), 2**70)


def _quantizer_problem(quantizer):
    from refquant.quantizers.uniform import UniformQuantizer
    if not isinstance(quantizer, UniformQuantizer):
        return f"returned {type(quantizer).__name__}, not a UniformQuantizer"
    if not (math.isfinite(quantizer.step) and quantizer.step > 0 and math.isfinite(quantizer.zero_point)):
        return f"returned {quantizer}"
    if not (type(quantizer.qmin) is int and type(quantizer.qmax) is int and quantizer.qmin < quantizer.qmax):
        return f"returned codes [{quantizer.qmin!r}, {quantizer.qmax!r}]"
    return None


def _density_problem(density):
    parameters = density.to_dict()
    for name, values in parameters.items():
        if not all(math.isfinite(v) for v in values):
            return f"fitted {name} {values} not finite"
    if any(v <= 0 for v in parameters["stds"]) or any(v < 0 for v in parameters["weights"]):
        return f"fitted stds {parameters['stds']}, weights {parameters['weights']}"
    if abs(sum(parameters["weights"]) - 1) > 1e-6:
        return f"fitted weights sum to {sum(parameters['weights'])}"
    return None


def _hostile_density(rng):
    """(description, density or a constructor call to fail): a valid PGM or one with extreme parameters."""
    from refquant.density.pgm import PiecewiseGaussian
    means = mutators.choose(rng, ([-0.5, 0.5], [0.0, 1e300], [-1e-300, 1e-300], [0.0, 0.0]))
    stds = mutators.choose(rng, ([1.0, 1.0], [1e-300, 1.0], [1e300, 1e-10], [5e-324, 5e-324]))
    breakpoint = float(mutators.choose(rng, (0.0, 1e300, -1e-300)))
    weights = mutators.choose(rng, ([0.5, 0.5], [1.0, 0.0], [1e-300, 1.0]))
    description = f"PGM(breakpoints=[{breakpoint!r}], weights={weights}, means={means}, stds={stds})"
    return description, lambda: PiecewiseGaussian([breakpoint], weights, means, stds)


# -- numeric families: each returns (description, call, names, accept) ------------------------------

def _fit(rng):
    from refquant.density.pgm import PiecewiseGaussian
    description, x = hostile_samples(rng)
    breakpoints = mutators.choose(rng, ("auto", "auto", [0.0], [], [math.nan], [1.0, 0.0], [1e300], "kink"))
    return (f"PiecewiseGaussian.fit({description}, breakpoints={breakpoints!r})",
            lambda: PiecewiseGaussian.fit(x, breakpoints, max_iter=200),
            ("fit", "samples", "breakpoints", "x "), _density_problem)


def _fit_histogram(rng):
    from refquant.density.pgm import PiecewiseGaussian
    bins = int(mutators.choose(rng, (1, 2, 10, 50)))
    edges = np.linspace(-3, 3, bins + 1) * 10.0 ** int(mutators.choose(rng, (-300, 0, 300)))
    counts = rng.integers(0, 100, bins).astype(float)
    description = f"{bins} bins over {edges[0]:g}..{edges[-1]:g}"
    draw = rng.random()
    if draw < 0.2:
        counts[int(rng.integers(bins))] = float(mutators.choose(rng, (-1.0, math.nan, math.inf, 0.5)))
        description += ", a count set to a non-count"
    elif draw < 0.35:
        edges[int(rng.integers(bins + 1))] = float(mutators.choose(rng, SPECIAL_VALUES))
        description += ", an edge set to an extreme"
    elif draw < 0.45:
        counts[:] = 0
        description += ", all counts 0"
    elif draw < 0.5:
        edges = edges[::-1].copy()
        description += ", edges decreasing"
    return (f"PiecewiseGaussian.fit_histogram({description})",
            lambda: PiecewiseGaussian.fit_histogram(counts, edges, "auto", max_iter=200),
            ("fit_histogram", "counts", "bin_edges", "edges", "breakpoints"), _density_problem)


def _construct(rng):
    description, make = _hostile_density(rng)
    return description, make, ("breakpoints", "weights", "means", "stds", "PiecewiseGaussian"), _density_problem


def _optimal(rng):
    from refquant.quantizers.optimal import optimal_quantizer
    description, make = _hostile_density(rng)
    bits = mutators.choose(rng, HOSTILE_BITS)
    symmetric = bool(rng.random() < 0.3)

    def call():
        return optimal_quantizer(make(), bits, symmetric=symmetric)
    return (f"optimal_quantizer({description}, bits={bits!r}, symmetric={symmetric})", call,
            ("optimal_quantizer", "bits", "dist", "breakpoints", "weights", "means", "stds", "PiecewiseGaussian"),
            _quantizer_problem)


def _baseline(rng):
    from refquant.quantizers import baselines
    name = mutators.choose(rng, ("minmax_quantizer", "percentile_quantizer", "aciq_quantizer",
                                 "mse_search_quantizer", "kl_quantizer"))
    function = getattr(baselines, name)
    description, x = hostile_samples(rng)
    bits = mutators.choose(rng, HOSTILE_BITS)
    options = {"mse_search_quantizer": {"num_candidates": 6}, "kl_quantizer": {"num_bins": 256}}.get(name, {})
    return (f"{name}({description}, bits={bits!r})", lambda: function(x, bits, **options),
            (name, "bits", "samples"), _quantizer_problem)


def _uniform(rng):
    from refquant.quantizers.uniform import UniformQuantizer
    hostile = (math.nan, math.inf, -1.0, 0.0, 5e-324, 1e300, 1.0, 0.5, True, "1", None, 2**40, -2**40, 3)
    step, zero_point, qmin, qmax = (mutators.choose(rng, hostile) for _ in range(4))
    if rng.random() < 0.4:
        qmin, qmax = mutators.choose(rng, ((0, 255), (-128, 127), (5, 5), (3, 1), (0.0, 255.0), (-2**31, 2**31 - 1)))
    return (f"UniformQuantizer(step={step!r}, zero_point={zero_point!r}, qmin={qmin!r}, qmax={qmax!r})",
            lambda: UniformQuantizer(step, zero_point, qmin, qmax),
            ("UniformQuantizer", "step", "zero_point", "qmin", "qmax"), _quantizer_problem)


def _expected_mse(rng):
    from refquant.quantizers.error import expected_mse
    from refquant.quantizers.uniform import UniformQuantizer
    description, make = _hostile_density(rng)
    step = float(mutators.choose(rng, (1.0, 1e-300, 1e300, 0.01)))
    codes = mutators.choose(rng, ((0, 255), (-128, 127), (-2**31, 2**31 - 1)))

    def call():
        return expected_mse(make(), UniformQuantizer(step, 0, *codes))

    def problem(value):
        return None if isinstance(value, float) and math.isfinite(value) and value >= 0 else f"returned {value!r}"
    return (f"expected_mse({description}, step {step!r}, codes {codes})", call,
            ("expected_mse", "dist", "quantizer", "breakpoints", "weights", "means", "stds", "PiecewiseGaussian",
             "step"), problem)


NUMERIC_FAMILIES = (_fit, _fit, _fit_histogram, _construct, _optimal, _optimal, _baseline, _baseline, _uniform,
                    _expected_mse)


def numeric_cases(budget, seed, folder):
    rng = np.random.default_rng(seed)
    for _ in range(budget):
        description, call, names, accept = mutators.choose(rng, NUMERIC_FAMILIES)(rng)
        yield classify(NUMERIC, description, call, names, accept=accept, type_errors=True, seconds=30.0)


# -- command line ----------------------------------------------------------------------------------

def _finite(low=None, high=None, open_low=False, open_high=False):
    def meaning(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return ((low is None or (value > low if open_low else value >= low))
                and (high is None or (value < high if open_high else value <= high)))
    return meaning


def _whole(low=None, high=None):
    def meaning(value):
        return type(value) is int and (low is None or value >= low) and (high is None or value <= high)
    return meaning


def _path(value):
    return isinstance(value, str) and value.strip() != "" and "\0" not in value


RATE, COUNT, FRACTION, WIDTH, SEED = _finite(0), _whole(1), _finite(0, 1), _whole(2, 8), _whole(0)

OPTIONS = (
    ("train", ["--out", "OUT"], "--learning-rate", RATE), ("train", ["--out", "OUT"], "--momentum", FRACTION),
    ("train", ["--out", "OUT"], "--decay", RATE), ("train", ["--out", "OUT"], "--batch", COUNT),
    ("train", ["--out", "OUT"], "--subdivisions", COUNT), ("train", ["--out", "OUT"], "--max-batches", COUNT),
    ("train", ["--out", "OUT"], "--burn-in", _whole(0)), ("train", ["--out", "OUT"], "--power", RATE),
    ("train", ["--out", "OUT"], "--jitter", _finite(0, 1, open_high=True)),
    ("train", ["--out", "OUT"], "--hue", FRACTION), ("train", ["--out", "OUT"], "--saturation", _finite(0, None, True)),
    ("train", ["--out", "OUT"], "--exposure", _finite(0, None, True)),
    ("train", ["--out", "OUT"], "--checkpoint-every", COUNT), ("train", ["--out", "OUT"], "--seed", SEED),
    ("train", [], "--out", _path), ("train", ["--out", "OUT"], "--cfg", _path),
    ("eval", [], "--thresh", FRACTION), ("eval", [], "--nms", FRACTION), ("eval", [], "--iou", _finite(0, 1, True)),
    ("eval", [], "--limit", COUNT), ("eval", [], "--data", _path), ("eval", [], "--json", _path),
    ("detect", ["IMAGE", "--out", "OUT"], "--thresh", FRACTION),
    ("detect", ["IMAGE", "--out", "OUT"], "--nms", FRACTION),
    ("diagnose", [], "--bits", WIDTH), ("diagnose", [], "--images", COUNT),
    ("diagnose", [], "--calibration-images", COUNT), ("diagnose", [], "--first-bits", WIDTH),
    ("demo", [], "--qat-learning-rate", _finite(0, None, True)), ("demo", [], "--qat-step-at", _finite(0, 1, True)),
    ("demo", [], "--last-bits", WIDTH), ("demo", [], "--test-images", COUNT), ("demo", [], "--qat-batch", COUNT),
    ("demo", [], "--refit-every", COUNT), ("demo", [], "--seed", SEED),
    ("data shapes", ["PATH"], "--seed", SEED), ("data shapes", ["PATH", "--seed", "1"], "--size", COUNT),
    ("data shapes", ["PATH", "--seed", "1"], "--test", _whole(0)),
)
"""(command, the other arguments it needs, option, what a value of the option means)."""

RUN_PATHS = (("golden check", ["--no-progress", "--vector", "rounding"], "DIR"),
             ("eval", ["--no-progress"], "--cfg"), ("eval", ["--no-progress", "--cfg", "SHIPPED"], "--weights"),
             ("detect", ["--out", "OUT"], "image"))
"""Path arguments that reach the command itself: none of :data:`refquant.fuzz.mutators.PATHS` is
a usable file, so each command fails at that argument, after loading at most the shipped model."""


class ArgumentRefusal(ValueError):
    """The command line refused an argument: exit status 2 and this one line on stderr."""


def _outcome_of_exit(code, err):
    if code == 2 and err.count("\n") == 1:
        raise ArgumentRefusal(err.strip())
    if code != 0:
        raise RuntimeError(f"exit status {code} with {err.count(chr(10))} lines on stderr: {err[:200]!r}")


def _parsed(command, argv, option):
    from refquant.cli import build_parser
    words = command.split()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser(words[0]).parse_args(words + argv)
        except SystemExit as exit_request:
            _outcome_of_exit(exit_request.code, err.getvalue())
            raise RuntimeError("--help or an exit without an error") from None
    return getattr(args, option.lstrip("-").replace("-", "_"))


def _ran(argv):
    from refquant import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    _outcome_of_exit(code, err.getvalue())
    return code


def _value(rng, meaning):
    if meaning is _path:
        return mutators.choose(rng, mutators.PATHS)
    if rng.random() < 0.25:
        return str(mutators.choose(rng, (1, 2, 4, 8, 0.5, 0.01, 100, 0.9)))
    return mutators.choose(rng, mutators.HOSTILE_NUMBERS)


def cli_cases(budget, seed, folder):
    rng = np.random.default_rng(seed)
    for _ in range(budget):
        if rng.random() < 0.15:
            from refquant.detection.evaluate import shipped_model
            command, others, option = RUN_PATHS[int(rng.integers(len(RUN_PATHS)))]
            value = mutators.choose(rng, mutators.PATHS)
            others = [str(shipped_model(".cfg")) if a == "SHIPPED" else f"{folder}/x.png" if a == "OUT" else a
                      for a in others]
            argv = command.split() + ([value] if option in ("DIR", "image") else [option, value]) + others
            # the message names the argument, or the path as given (or as Python shows it: 'a\\x00b')
            names = [option, value, repr(value)[1:-1]]
            yield classify(CLI, f"refquant {' '.join(argv)!r}", lambda: _ran(argv), names)
            continue
        command, others, option, meaning = OPTIONS[int(rng.integers(len(OPTIONS)))]
        value = _value(rng, meaning)
        argv = [f"{folder}/out" if a == "OUT" else f"{folder}/x.jpg" if a == "IMAGE" else
                f"{folder}/tree" if a == "PATH" else a for a in others] + [option, value]

        def accept(parsed, option=option, value=value, meaning=meaning):
            return None if meaning(parsed) else f"{option} {value!r} accepted as {parsed!r}"
        yield classify(CLI, f"refquant {command} {option} {value!r}", lambda: _parsed(command, argv, option),
                       [option], accept=accept)


BOUNDARIES = {NUMERIC: numeric_cases, CLI: cli_cases}
"""Boundary name -> case generator for the call boundaries."""
