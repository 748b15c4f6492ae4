"""The README's demo table is what ``refquant demo`` printed on the shipped model.

``docs/demo/`` holds the ``results.json``, ``report.md`` and plots of the run the README quotes.
Independent truths: the shipped weights' sha256 (hashlib), the shipped model's test mAP as
``refquant eval`` computes it (recorded in ``data/models/shapes-tiny-yolo.json`` and checked
against a fresh evaluation by tests/test_evaluate.py; the demo computes its FP32 row by another
path: its own letterboxing, batching and decoding call); the README's text.
"""
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from refquant.demo import experiment, report
from refquant.detection.evaluate import shipped_model

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "docs" / "demo"


RUNS = {"demo": "<!-- demo-table -->"}
"""Each committed run (a folder of docs/) and the README marker its printed summary follows."""


def load_results(folder):
    return json.loads((ROOT / "docs" / folder / "results.json").read_text())


@pytest.fixture(scope="module")
def results():
    return load_results("demo")


@pytest.mark.parametrize("folder", sorted(RUNS))
def test_readme_shows_the_printed_summary(folder):
    """The fenced block after each marker is, line for line, the summary that run printed: caption
    (test images, rule, first/last widths, time, machine, date), table, integer check, targets."""
    readme = (ROOT / "README.md").read_text()
    assert readme.count(RUNS[folder]) == 1
    block = textwrap.dedent(readme.split(RUNS[folder], 1)[1].split("```", 2)[1])
    assert block.strip("\n").splitlines() == report.summary_lines(load_results(folder))


@pytest.mark.parametrize("folder", sorted(RUNS))
def test_every_run_used_the_shipped_weights_and_whole_test_split(folder):
    results = load_results(folder)
    assert results["model"]["weights_sha256"] == hashlib.sha256(shipped_model(".weights").read_bytes()).hexdigest()
    assert results["test_images"] == results["test_split_images"] == 500
    assert all(r["integer_mAP"] == r["mAP"] for r in results["rows"] if r["mode"] != "float")
    assert results["targets"] == report.target_checks(results["rows"])


def test_default_run_has_every_row_of_the_papers_table(results):
    """The default run (no budget options) has FP32, every PTQ method at every width, QAT at 4 bits."""
    kinds = {(r["method"], r["mode"], r["weight_bits"]) for r in results["rows"]}
    expected = {("float", "float", 32), ("pgm", "qat", 4)} | {(m, "ptq", b) for m in experiment.PTQ_METHODS
                                                              for b in experiment.BITS}
    assert expected <= kinds
    assert results["settings"]["quick"] is False
    budgets = {"qat_iterations": experiment.QAT_ITERATIONS, "qat_batch": experiment.QAT_BATCH, "refit_every": experiment.REFIT_EVERY,
               "qat_learning_rate": experiment.QAT_LEARNING_RATE, "qat_step_at": experiment.QAT_STEP_AT,
               "calibration_images": experiment.CALIBRATION_IMAGES, "bits": list(experiment.BITS)}
    assert {key: results["settings"][key] for key in budgets} == budgets


def test_fp32_row_is_the_evaluated_mAP(results):
    """The demo's FP32 mAP equals ``refquant eval``'s test mAP of the same weights."""
    record = json.loads(shipped_model(".json").read_text())
    fp32 = next(r for r in results["rows"] if r["method"] == "float")
    assert fp32["mAP"] == pytest.approx(100 * record["test_mAP"], abs=1e-9)


def test_integer_rows_and_targets_are_consistent(results):
    """Every quantized row ran the integer network with the same mAP as the simulation; the target
    verdicts are those the rows give (recomputed, not copied)."""
    quantized = [r for r in results["rows"] if r["mode"] != "float"]
    assert quantized and all(r["integer_mAP"] == r["mAP"] for r in quantized)
    assert results["targets"] == report.target_checks(results["rows"])


def test_report_and_figures_committed(results):
    for name in results["figures"] + ["report.md"]:
        assert (RUN / name).is_file(), name
