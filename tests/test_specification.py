"""docs/SPECIFICATION.md cannot drift from the code: every function, class or constant it names
as a definition exists, every file it names exists, every constant it quotes has that value,
and every module the specification is about is referenced.

Truth: the text of docs/SPECIFICATION.md itself, read independently of the code it describes.
"""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "SPECIFICATION.md"

# `refquant/intconv.py` — `requantize_code`, `requantize_leaky_code`
REFERENCE = re.compile(r"`(refquant/[\w/]+\.py)` — ((?:`[\w.]+`(?:,\s+)?)+)")
NAME = re.compile(r"`([\w.]+)`")
CONSTANT_ROW = re.compile(r"^\| `(refquant/[\w/]+\.py)` — `(\w+)` \| `([^`]+)` \|", re.MULTILINE)
PATH = re.compile(r"`((?:refquant|tests)/[\w/]+\.py)`")

REQUIRED_MODULES = [
    "refquant/rounding.py", "refquant/density/truncated_normal.py", "refquant/density/em.py",
    "refquant/density/breakpoints.py", "refquant/density/pgm.py", "refquant/density/mixture.py",
    "refquant/density/histogram.py", "refquant/quantizers/uniform.py", "refquant/quantizers/error.py",
    "refquant/quantizers/optimal.py", "refquant/quantizers/baselines.py", "refquant/folding.py", "refquant/plan.py",
    "refquant/ptq.py", "refquant/qat.py", "refquant/integer/conv.py", "refquant/integer/requantize.py",
    "refquant/integer/lowering.py", "refquant/integer/simulation.py", "refquant/integer/network.py",
    "refquant/darknet.py", "refquant/yolo/batchnorm.py", "refquant/yolo/convolutional.py", "refquant/yolo/maxpool.py",
    "refquant/yolo/reorg.py", "refquant/yolo/route.py", "refquant/yolo/upsample.py", "refquant/yolo/region.py",
    "refquant/yolo/activations.py", "refquant/yolo/network.py", "refquant/detection/boxes.py",
    "refquant/detection/decode.py", "refquant/detection/metrics.py", "refquant/train.py",
    "refquant/golden/format.py", "refquant/golden/export.py", "refquant/golden/check.py",
    "refquant/validate.py", "refquant/atomic.py", "refquant/export/onnx.py",
    "refquant/integer/profiles/__init__.py", "refquant/integer/profiles/lowered.py",
    "refquant/integer/profiles/exact.py", "refquant/integer/profiles/gemmlowp.py",
    "refquant/integer/profiles/float_scale.py",
]


def module_of(path):
    return importlib.import_module(path[:-3].replace("/", "."))


def references():
    """[(file path, dotted name within it)] for every definition reference of the specification."""
    text = SPEC.read_text(encoding="utf-8")
    found = []
    for path, names in REFERENCE.findall(text):
        found += [(path, name) for name in NAME.findall(names)]
    return found


def resolve(path, dotted):
    target = module_of(path)
    for attribute in dotted.split("."):
        target = getattr(target, attribute)
    return target


def test_specification_exists_and_references_enough():
    """The specification references many definitions, and every module it is meant to cover."""
    found = references()
    assert len(found) >= 120, f"only {len(found)} references parsed: has the reference format changed?"
    referenced = {path for path, _ in found}
    missing = [module for module in REQUIRED_MODULES if module not in referenced]
    assert not missing, f"docs/SPECIFICATION.md never references {missing}"


@pytest.mark.parametrize("path, name", references(), ids=lambda value: str(value))
def test_every_referenced_definition_exists(path, name):
    """Importing the module and fetching the attribute succeeds for every ``path — name`` reference."""
    assert (ROOT / path).is_file(), f"{path} does not exist"
    resolve(path, name)


def test_every_named_file_exists():
    """Every backticked ``refquant/...py`` or ``tests/...py`` path names a real file."""
    paths = set(PATH.findall(SPEC.read_text(encoding="utf-8")))
    assert paths
    for path in sorted(paths):
        assert (ROOT / path).is_file(), f"docs/SPECIFICATION.md names {path}, which does not exist"


def test_quoted_constants_have_their_values():
    """Every row of the constants table quotes the value the code has."""
    rows = CONSTANT_ROW.findall(SPEC.read_text(encoding="utf-8"))
    assert len(rows) >= 15
    for path, name, quoted in rows:
        assert resolve(path, name) == ast.literal_eval(quoted), f"{path} {name}: the spec says {quoted}"


def test_golden_vectors_named_in_the_specification_exist():
    """The golden-vector table lists exactly the vectors refquant.golden exports."""
    from refquant.golden import vectors
    text = SPEC.read_text(encoding="utf-8")
    table = text[text.index("| vector | sections | what |"):]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert listed == list(vectors.VECTORS)
