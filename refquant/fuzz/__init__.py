"""Seeded fuzzing of refquant's input boundaries: malformed inputs made by mutating real files,
each outcome classified (docs/robustness.md).

A boundary is where data from outside enters refquant: the Darknet cfg and ``.weights``, a VOC
tree (annotation XML, JPEG, names, image sets), a quantization plan, a golden-vector directory,
a training checkpoint, the numeric APIs that take arrays, the command-line arguments. For each,
:mod:`refquant.fuzz.boundaries` (files) and :mod:`refquant.fuzz.calls` (numeric APIs, arguments)
draw cases from ``numpy.random.default_rng([seed, boundary])`` by mutating real inputs
(:mod:`refquant.fuzz.mutators`), and :func:`classify` runs each under a time limit:

- ``clean``: refused by a ``ValueError`` or ``OSError`` (or, for a numeric API given the wrong
  type, a ``TypeError``) whose message names the file or argument at fault;
- ``valid``: accepted, and what was returned passes the boundary's independent check (finite
  values, boxes inside the image, a C parser reading the same number, ...);
- ``unclear``: any other exception, or a refusal that does not say where;
- ``garbage``: accepted although the check fails (NaN loaded, a tampered golden file reported as
  matching, an out-of-range argument taken), or no answer within the time limit (a hang).

:func:`run` returns every outcome; :func:`table` prints the counts per boundary.
"""
import contextlib
import dataclasses
import os
import signal
import warnings

KINDS = ("clean", "valid", "unclear", "garbage")

FAILURES = ("unclear", "garbage")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One fuzz case: its boundary, what was done (``case``), the ``kind`` (:data:`KINDS`) and why."""
    boundary: str
    case: str
    kind: str
    detail: str


class Hang(BaseException):
    """Raised by the alarm inside a case that exceeds its time limit (a BaseException, so that no
    ``except Exception`` of the code under test can swallow it)."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise :class:`Hang` in the main thread after ``seconds`` (SIGALRM; POSIX)."""
    def alarm(signum, frame):
        raise Hang()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(boundary, case, call, names, accept=None, seconds=20.0, type_errors=False):
    """Run ``call()`` and classify it (see the module docstring) as an :class:`Outcome`.

    ``names``: strings of which the message of a clean refusal must contain one (the file's path,
    the argument); ``accept(result)``: None if an accepted result is sound, else what is wrong;
    ``type_errors``: a TypeError naming the argument is a clean refusal (numeric APIs).
    """
    clean_types = (ValueError, OSError, TypeError) if type_errors else (ValueError, OSError)
    seconds = min(seconds, _TIME_CAP[0]) if _TIME_CAP else seconds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence and overflow warnings are not outcomes
            with time_limit(seconds):
                result = call()
    except Hang:
        return Outcome(boundary, case, "garbage", f"no answer within {seconds:g} s")
    except clean_types as error:
        text = str(error)
        if any(name and name in text for name in names):
            return Outcome(boundary, case, "clean", _short(text))
        return Outcome(boundary, case, "unclear", f"{type(error).__name__} not naming {names[0]!r}: {_short(text)}")
    except Exception as error:  # the point of the fuzz: every other exception is reported, not raised
        return Outcome(boundary, case, "unclear", f"{type(error).__name__}: {_short(str(error))}")
    problem = accept(result) if accept is not None else None
    if problem:
        return Outcome(boundary, case, "garbage", _short(problem))
    return Outcome(boundary, case, "valid", "")


def _short(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


FUZZ_LIMITS = {"REFQUANT_MAX_BYTES": str(512 * 2**20), "REFQUANT_MAX_PIXELS": str(4 * 2**20)}
"""The resource limits during a fuzz run: lower than the defaults (4 GiB, 64 Mi pixels) so that
the size guards are exercised on a shared machine without allocating gigabytes; every shipped
cfg fits (yolov2-voc needs 270 MiB)."""


@contextlib.contextmanager
def fuzz_limits():
    saved = {key: os.environ.get(key) for key in FUZZ_LIMITS}
    os.environ.update(FUZZ_LIMITS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_TIME_CAP = []  # the time limit :func:`run` imposes on every case, if any


def run(budgets, seed, workdir, progress=None, time_limit=None):
    """Fuzz each boundary of ``budgets`` ({boundary: number of cases}) in ``workdir`` (an empty
    folder); returns the list of :class:`Outcome`. ``progress(boundary, done, total)`` is called
    after each case; ``time_limit``: seconds after which any case counts as a hang (default: each
    boundary's own, 20 s for files, 30 s for numeric calls)."""
    from refquant.fuzz import boundaries, calls
    generators = {**boundaries.BOUNDARIES, **calls.BOUNDARIES}
    unknown = sorted(set(budgets) - set(generators))
    if unknown:
        raise ValueError(f"unknown boundaries {unknown}; known: {', '.join(generators)}")
    outcomes = []
    _TIME_CAP[:] = [] if time_limit is None else [time_limit]
    with fuzz_limits():
        for position, (name, make) in enumerate(generators.items()):
            if not budgets.get(name):
                continue
            folder = os.path.join(os.fspath(workdir), name.replace(" ", "-"))
            os.makedirs(folder, exist_ok=True)
            for done, outcome in enumerate(make(budgets[name], [seed, position], folder), start=1):
                outcomes.append(outcome)
                if progress is not None:
                    progress(name, done, budgets[name])
    _TIME_CAP[:] = []
    return outcomes


def counts(outcomes):
    """{boundary: {kind: count}} in the order the boundaries were run."""
    found = {}
    for outcome in outcomes:
        row = found.setdefault(outcome.boundary, dict.fromkeys(KINDS, 0))
        row[outcome.kind] += 1
    return found


def table(outcomes):
    """The Markdown table of :func:`counts`, with a total row."""
    lines = ["| boundary | tried | clean error | valid, accepted | unclear error | silent garbage, hang |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    totals = dict.fromkeys(KINDS, 0)
    for boundary, row in counts(outcomes).items():
        lines.append(f"| {boundary} | {sum(row.values())} | " + " | ".join(str(row[k]) for k in KINDS) + " |")
        for kind in KINDS:
            totals[kind] += row[kind]
    lines.append(f"| **total** | {sum(totals.values())} | " + " | ".join(str(totals[k]) for k in KINDS) + " |")
    return "\n".join(lines)


def failure_kinds(outcomes):
    """The failures grouped by kind: {(boundary, call, what went wrong): [outcomes]}, where ``call``
    is the function or file of the case and ``what went wrong`` the exception type or the problem,
    without the numbers (``ValueError not naming 'fit'``, ``returned nan``)."""
    kinds = {}
    for outcome in outcomes:
        if outcome.kind not in FAILURES:
            continue
        call = outcome.case.split("(")[0].split(":")[0]
        what = outcome.detail.split(":")[0] if outcome.kind == "unclear" else outcome.detail.split(" ")[0:2]
        what = what if isinstance(what, str) else " ".join(what)
        kinds.setdefault((outcome.boundary, call, f"{outcome.kind}: {what}"), []).append(outcome)
    return kinds
