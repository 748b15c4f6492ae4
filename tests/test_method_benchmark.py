"""The README's table of the method on fresh trees is what benchmarks/bench_method.py printed.

Truth: the rows of every demo run stored in docs/method-benchmark.json (each run's own mAPs),
summarised again here by the script's own summary; the README's text, line for line.
"""
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("bench_method", ROOT / "benchmarks" / "bench_method.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, json.loads((ROOT / "docs" / "method-benchmark.json").read_text())


def test_summary_is_recomputed_from_the_runs(benchmark):
    module, record = benchmark
    results = [{"rows": rows, "machine": record["machine"]} for rows in record["runs"].values()]
    recomputed = json.loads(json.dumps(module.summary(results)))  # tuples become lists, as stored
    assert recomputed == record["summary"]
    assert [int(seed) for seed in record["runs"]] == record["seeds"] and len(record["seeds"]) >= 3
    assert not set(record["seeds"]) & {9001, 9002, 9003, 0}, "report seeds must not be the tuning seeds"


def test_readme_shows_the_printed_table(benchmark):
    _, record = benchmark
    readme = (ROOT / "README.md").read_text()
    block = textwrap.dedent(readme.split("<!-- method-table -->", 1)[1].split("```", 2)[1])
    assert block.strip("\n").splitlines() == record["lines"]


def test_every_run_is_a_default_demo_with_integer_equal_to_simulation(benchmark):
    _, record = benchmark
    for rows in record["runs"].values():
        quantized = [r for r in rows if r["mode"] != "float"]
        assert {(r["method"], r["mode"], r["weight_bits"]) for r in quantized} >= {("pgm", "qat", 4)} | {
            (m, "ptq", b) for m in ("pgm", "pgm-paper", "minmax", "percentile", "aciq") for b in (8, 6, 4)}
        assert all(r["integer_mAP"] == r["mAP"] for r in quantized)
