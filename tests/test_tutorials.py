"""The tutorial notebooks: committed without outputs, and each runs top to bottom in a fresh kernel.

Independent truths: nbformat's JSON schema for the notebook files; the kernel's own report of
``sys.executable`` and of its environment, against this process's; and for every notebook, a
fresh ipykernel (nbclient) executing every cell, where any exception, including the notebooks'
own ``assert`` statements on what they claim (Max's 1960 table, bit-exact integer arithmetic,
finite differences), fails the test with the cell's source and error.

The notebooks run at ``REFQUANT_TUTORIAL_SIZE=small`` (seconds each); ``python
tutorials/render.py`` runs them at full size.
"""
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
EXPECTED = ["01_distributions.ipynb", "02_optimal_intervals.ipynb", "03_integer_convolution.ipynb",
            "04_yolo_forward_backward.ipynb", "05_quantizing_a_detector.ipynb"]


def _load_render():
    """tutorials/render.py as a module (the tutorials folder is not a package)."""
    spec = importlib.util.spec_from_file_location("refquant_tutorials_render", TUTORIALS / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


def _new_notebook(*sources):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return notebook


def test_the_tutorials_are_found():
    """Truth: the file names this test expects. Guards the glob against silently running nothing."""
    found = [path.name for path in render.tutorial_notebooks()]
    assert all(name in found for name in EXPECTED), f"expected {EXPECTED} among {found}"


@pytest.mark.parametrize("path", render.tutorial_notebooks(), ids=lambda path: path.stem)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    """Truth: nbformat's schema (validate), and empty outputs / execution counts in every code cell."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec must be python3"
    dirty = [index + 1 for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; "
                       f"run `python tutorials/render.py --strip` before committing")


def test_kernel_is_this_interpreter_with_the_size_variable(tmp_path):
    """Truth: the kernel reports its own sys.executable and environment; they must be this process's
    interpreter and the size given. Also checks that render() writes the executed copy with outputs."""
    source = tmp_path / "00_probe.ipynb"
    nbformat.write(_new_notebook("import os, sys\nprint(sys.executable)\nprint(os.environ['REFQUANT_TUTORIAL_SIZE'])"),
                   source)
    written = render.render(tmp_path / "rendered", size="small", paths=[source], log=lambda message: None)
    assert written == [tmp_path / "rendered" / "00_probe.ipynb"]
    executed = nbformat.read(written[0], as_version=4)
    lines = executed.cells[0].outputs[0].text.split()
    assert Path(lines[0]).resolve() == Path(sys.executable).resolve()
    assert lines[1] == "small"
    assert nbformat.read(source, as_version=4).cells[0].outputs == [], "render must not touch the source"


def test_failing_cell_reports_notebook_cell_source_and_error(tmp_path):
    """Truth: a hand-made notebook whose second cell divides by zero; the error must name the
    notebook, the cell number, its source and the exception."""
    path = tmp_path / "00_broken.ipynb"
    nbformat.write(_new_notebook("x = 1", "y = x + 1\nz = y / 0"), path)
    with pytest.raises(render.TutorialError) as caught:
        render.execute(path, size="small")
    message = str(caught.value)
    assert "00_broken.ipynb, cell 2 of 2" in message
    assert "z = y / 0" in message
    assert "ZeroDivisionError" in message


def test_strip_outputs_clears_outputs_and_counts(tmp_path):
    """Truth: a notebook written with an output and an execution count; after stripping, none."""
    notebook = _new_notebook("print(1)")
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    notebook.cells[0].execution_count = 1
    path = tmp_path / "00_dirty.ipynb"
    nbformat.write(notebook, path)
    assert render.strip_outputs(path) is True
    cleaned = nbformat.read(path, as_version=4)
    assert cleaned.cells[0].outputs == [] and cleaned.cells[0].execution_count is None
    assert render.strip_outputs(path) is False


def test_unknown_size_is_refused():
    """Truth: the two sizes the notebooks understand; anything else is a ValueError naming them."""
    with pytest.raises(ValueError, match="full"):
        render.kernel_environment("medium")


@pytest.mark.slow
@pytest.mark.parametrize("path", render.tutorial_notebooks(), ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path):
    """Truth: a fresh kernel executes every cell, the notebook's own asserts included, without error."""
    try:
        executed = render.execute(path, size="small", timeout=300)
    except render.TutorialError as error:
        pytest.fail(str(error), pytrace=False)
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "a code cell was not executed"
