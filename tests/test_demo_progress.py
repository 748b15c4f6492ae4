"""The demo's per-row progress ("row k of N, elapsed, time left"), on a hand-driven clock.

Truth: the row count worked out from the settings by hand (1 + methods x widths + QAT widths) and
the time left computed by hand from the clock's readings."""
import types

from refquant.demo import experiment


def progress_experiment(monkeypatch, methods=("pgm", "minmax"), bits=(8, 4), qat_bits=(4,)):
    clock = {"now": 100.0}
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: clock["now"])
    run = experiment.Experiment.__new__(experiment.Experiment)  # no model, no data: only the bookkeeping
    run.settings = types.SimpleNamespace(methods=methods, bits=bits, qat_bits=qat_bits)
    run.rows = []
    run.started = run._last_row_end = clock["now"]
    run.row_seconds = {"float": [], "ptq": [], "qat": []}
    return run, clock


def measured(run, clock, seconds, mode):
    clock["now"] += seconds
    run.rows.append({"mode": mode})
    return run.where(mode)


def test_row_count_elapsed_and_time_left(monkeypatch):
    run, clock = progress_experiment(monkeypatch)
    assert run.total_rows == 1 + 2 * 2 + 1
    assert measured(run, clock, 3, "float") == "[row 1 of 6, 3 s elapsed, 4 PTQ rows and 1 QAT row to go, not yet timed]"
    assert measured(run, clock, 10, "ptq") == ("[row 2 of 6, 13 s elapsed, about 30 s left + 1 QAT row not yet "
                                               "timed]")
    assert measured(run, clock, 2, "ptq") == "[row 3 of 6, 15 s elapsed, about 12 s left + 1 QAT row not yet timed]"
    measured(run, clock, 4, "ptq")
    assert measured(run, clock, 4, "ptq") == "[row 5 of 6, 23 s elapsed, 1 QAT row to go, not yet timed]"
    assert measured(run, clock, 100, "qat") == "[row 6 of 6, 2 min 03 s elapsed, done]"


def test_time_left_counts_measured_qat_rows(monkeypatch):
    run, clock = progress_experiment(monkeypatch, methods=("pgm",), bits=(8,), qat_bits=(4, 2))
    measured(run, clock, 1, "float")
    measured(run, clock, 1, "ptq")
    assert measured(run, clock, 70, "qat") == "[row 3 of 4, 1 min 12 s elapsed, about 1 min 10 s left]"


def test_duration():
    assert [experiment.duration(s) for s in (0, 59.4, 60, 125, 3600)] == ["0 s", "59 s", "1 min 00 s",
                                                                          "2 min 05 s", "60 min 00 s"]
