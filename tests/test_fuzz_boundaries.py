"""The input boundaries under a bounded fuzz budget (refquant.fuzz; the long run is
benchmarks/fuzz_boundaries.py): every seeded malformed input is refused by name or accepted sound.

Truth: the acceptance checks of refquant.fuzz, independent of refquant's validation (C's strtod
for cfg numbers, numpy.isfinite for loaded parameters, the image size for boxes, a changed golden
file that must be reported); and, for the fuzz itself, hand-made calls whose outcome is known.
"""

import pytest

from refquant import darknet, fuzz, validate
from refquant.fuzz import boundaries, calls, mutators

BUDGETS = {"Darknet cfg text": 160, "Darknet .weights": 80, "VOC XML, images, names, image sets": 160,
           "quantization plan JSON": 120, "golden vector directory": 40, "training checkpoint": 40,
           "CLI arguments": 120}
"""Cases per boundary here (about 20 s); the long run tries 12,000."""

NUMERIC = "numeric APIs (PGM fit, optimal quantizer, ...)"

@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    # 5 s per case before a case counts as a hang: the slowest sound case takes under half a second here
    return fuzz.run({**BUDGETS, NUMERIC: 60}, seed=2026, workdir=tmp_path_factory.mktemp("fuzz"), time_limit=5.0)


@pytest.mark.parametrize("boundary", list(BUDGETS))
def test_every_input_is_refused_by_name_or_accepted_sound(outcomes, boundary):
    mine = [outcome for outcome in outcomes if outcome.boundary == boundary]
    failures = [f"{o.kind}: {o.case} -> {o.detail}" for o in mine if o.kind in fuzz.FAILURES]
    assert not failures, "\n".join(failures)
    kinds = {outcome.kind for outcome in mine}
    # the mutations reach both sides of the boundary: not a fuzz that only ever breaks the input
    assert len(mine) == BUDGETS[boundary] and {"clean", "valid"} <= kinds


def test_numeric_apis_refuse_by_name_or_answer_soundly(outcomes):
    """The PGM fits, the optimal quantizer, the baselines and the error formulas: every hostile input
    (scales of 1e-300 and 1e300, degenerate densities, 2**32 codes, ragged or non-numeric samples)
    is refused by a ValueError or TypeError naming the function, or answered with a finite value."""
    mine = [outcome for outcome in outcomes if outcome.boundary == NUMERIC]
    failures = [f"{o.kind}: {o.case} -> {o.detail}" for o in mine if o.kind in fuzz.FAILURES]
    assert not failures, "\n".join(failures)
    assert len(mine) == 60 and {"clean", "valid"} <= {outcome.kind for outcome in mine}


def test_the_fuzz_runs_are_reproducible(tmp_path):
    """Same seed, same cases and outcomes; another seed, other cases."""
    budgets = {"Darknet cfg text": 15, "quantization plan JSON": 15}
    first = fuzz.run(budgets, 7, tmp_path / "a")
    again = fuzz.run(budgets, 7, tmp_path / "b")
    other = fuzz.run(budgets, 8, tmp_path / "c")
    strip = [(o.case.replace(str(tmp_path / "a"), ""), o.kind) for o in first]
    assert strip == [(o.case.replace(str(tmp_path / "b"), ""), o.kind) for o in again]
    assert [o.case for o in other] != [o.case for o in first]


# -- the fuzz can fail: removing a guard is found -------------------------------------------------

def test_the_fuzz_finds_weights_loaded_with_nan_when_the_check_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(darknet, "check_parameters", lambda arrays, net, path: None)
    found = fuzz.run({"Darknet .weights": 40}, 2026, tmp_path)
    garbage = [o for o in found if o.kind == "garbage"]
    assert garbage and all("non-finite" in o.detail or "negative" in o.detail for o in garbage)


def test_the_fuzz_finds_python_only_numbers_when_the_cfg_parser_is_lenient(tmp_path, monkeypatch):
    """With Python's int and float in place of the strict parsers, 1_0, nan and full-width digits
    are read as numbers: the cfg fuzz must call that garbage."""
    monkeypatch.setattr(validate, "parse_integer", int)
    monkeypatch.setattr(validate, "parse_decimal", float)
    found = fuzz.run({"Darknet cfg text": 160}, 2026, tmp_path)
    assert any(o.kind == "garbage" for o in found)


def test_classify_on_known_calls():
    """Hand-made calls, one per outcome kind."""
    def refuse_by_name():
        raise ValueError("/x/y.cfg:3: expected a number")

    def refuse_anonymously():
        raise ValueError("could not convert string to float")

    def crash():
        return {}["key"]

    def hang():
        while True:
            pass
    assert fuzz.classify("b", "c", refuse_by_name, ["/x/y.cfg"]).kind == "clean"
    assert fuzz.classify("b", "c", refuse_anonymously, ["/x/y.cfg"]).kind == "unclear"
    assert fuzz.classify("b", "c", crash, ["/x/y.cfg"]).kind == "unclear"
    assert fuzz.classify("b", "c", lambda: float("nan"), ["x"], accept=lambda v: "nan" if v != v else None).kind \
        == "garbage"
    assert fuzz.classify("b", "c", lambda: 1.0, ["x"], accept=lambda v: None).kind == "valid"
    outcome = fuzz.classify("b", "c", hang, ["x"], seconds=0.2)
    assert outcome.kind == "garbage" and "no answer within 0.2 s" in outcome.detail


@pytest.mark.parametrize("text, whole", [("1", True), ("-2.5e3", True), (".5", True), ("5.", True),
                                         ("1_0", False), ("\u0661\u0660", False), ("nan", False), ("inf", False),
                                         ("1e999", False), ("3x", False), ("", False), ("0x10", True)])
def test_c_oracle_reads_numbers_as_glibc_strtod(text, whole):
    """The oracle is C's strtod itself (glibc reads hexadecimal floats, 0x10 = 16)."""
    assert boundaries.c_reads_whole_finite_number(text) is whole


def test_mutators_say_what_they_changed():
    import numpy as np
    rng = np.random.default_rng(0)
    description, mutated, token = mutators.cfg_value(rng, b"[net]\nwidth=416\nheight=416\n")
    assert token in mutators.HOSTILE_NUMBERS and repr(token) in description or token in description
    assert mutated.decode("utf-8", errors="surrogateescape").count("=") == 2
    description, mutated = mutators.json_value(np.random.default_rng(3), b'{"a": [1, 2], "b": {"c": 3}}')
    assert description and mutated != b'{"a": [1, 2], "b": {"c": 3}}'
    assert calls.hostile_samples(np.random.default_rng(1))[0]


def test_the_readme_quotes_the_table_of_docs_robustness():
    """The README's fuzz table is the one docs/robustness.md records with its run (same rows)."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent

    def rows(text):
        table = text[text.index("<!-- fuzz-table -->"):]
        return [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][:10]
    readme, record = rows((root / "README.md").read_text()), rows((root / "docs" / "robustness.md").read_text())
    assert readme == record and len(readme) == 10 and readme[-1].startswith("| **total** | 12000 |")
