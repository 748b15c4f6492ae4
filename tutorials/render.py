"""Execute the tutorial notebooks and write executed copies for reading.

    python tutorials/render.py [OUT_DIR] [--size full|small] [--only NAME ...] [--timeout SECONDS]
    python tutorials/render.py --strip

The notebooks in ``tutorials/`` are committed without outputs. This command runs each one top
to bottom in a fresh kernel of the Python interpreter running it (so the refquant installed
there is the one the notebooks import) and writes the executed copy, outputs and figures
included, to ``OUT_DIR`` (default ``tutorials/rendered/``, git-ignored) under the same name.

Sizes. Every notebook reads the environment variable :data:`SIZE_VARIABLE`
(``REFQUANT_TUTORIAL_SIZE``): ``full`` (the default, what a reader should run) or ``small``
(fewer samples, smaller tensors and images, so that the test suite runs each notebook in
seconds). ``--size`` sets it for the kernels started here.

``--strip`` clears the outputs and execution counts of the committed notebooks in place: run it
after editing a notebook in Jupyter, before committing (``tests/test_tutorials.py`` fails on a
committed output).

The test suite (``tests/test_tutorials.py``) uses :func:`execute` from this file, so a notebook
runs the same way under the tests and here.
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = TUTORIALS_DIR / "rendered"
SIZE_VARIABLE = "REFQUANT_TUTORIAL_SIZE"
SIZES = ("full", "small")
DEFAULT_TIMEOUT = 600
"""Seconds one cell may run before the execution is abandoned."""

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class TutorialError(RuntimeError):
    """A notebook cell failed; the message names the notebook and cell, with its source and error."""


def tutorial_notebooks(directory=TUTORIALS_DIR):
    """The tutorial notebooks ``NN_name.ipynb`` of ``directory``, in their numbered order."""
    return sorted(Path(directory).glob("[0-9][0-9]_*.ipynb"))


def this_python_kernel():
    """A kernel manager whose kernel is ``sys.executable -m ipykernel_launcher``.

    The kernel spec directories are emptied so that jupyter_client falls back on ipykernel's
    native spec, built from ``sys.executable``: a ``python3`` kernel spec installed for another
    interpreter (in ``~/.local/share/jupyter`` for instance) is never picked up.
    """
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def kernel_environment(size):
    """The environment of a kernel started here: this process's, plus :data:`SIZE_VARIABLE`."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return {**os.environ, SIZE_VARIABLE: size}


def _failed_cell(notebook):
    """(index, cell) of the first code cell holding an error output, or (None, None)."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return index, cell
    return None, None


def _error_text(cell, error):
    """``name: value`` and the traceback of a failed cell, without terminal colour codes."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            traceback = _ANSI_ESCAPE.sub("", "\n".join(out.get("traceback", [])))
            return f"{out.get('ename')}: {out.get('evalue')}\n{traceback}"
    return _ANSI_ESCAPE.sub("", str(error))


def execute(path, size="full", timeout=DEFAULT_TIMEOUT):
    """Run the notebook at ``path`` top to bottom in a fresh kernel; return the executed notebook.

    The kernel is :func:`this_python_kernel`, its working directory the notebook's folder, its
    environment :func:`kernel_environment` ``(size)``. A failing cell raises
    :class:`TutorialError` naming the notebook and the cell (its 1-based position among all
    cells), with the cell's source and the error with its traceback.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    # The kernel logs errors only: its warnings (the unencrypted local TCP connection, the parent
    # process leaving at the end) are about the machinery, not the notebook, and came once per notebook.
    client = NotebookClient(notebook, km=this_python_kernel(), timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    try:
        client.execute(env=kernel_environment(size))
    except CellExecutionError as error:
        index, cell = _failed_cell(notebook)
        if cell is None:
            raise TutorialError(f"{path.name}: {_ANSI_ESCAPE.sub('', str(error))}") from None
        raise TutorialError(f"{path.name}, cell {index + 1} of {len(notebook.cells)} failed.\n"
                            f"--- source ---\n{cell.source}\n--- error ---\n{_error_text(cell, error)}") from None
    return notebook


def render(out_dir=DEFAULT_OUT_DIR, size="full", paths=None, timeout=DEFAULT_TIMEOUT, log=print):
    """Execute ``paths`` (default every tutorial notebook) and write each executed copy to ``out_dir``.

    Returns the paths written. Stops at the first failing notebook (:class:`TutorialError`),
    after writing the ones before it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = tutorial_notebooks() if paths is None else [Path(p) for p in paths]
    written = []
    for path in paths:
        start = time.perf_counter()
        notebook = execute(path, size=size, timeout=timeout)
        target = out_dir / path.name
        nbformat.write(notebook, target)
        written.append(target)
        log(f"{path.name}: executed in {time.perf_counter() - start:.1f} s -> {target}")
    return written


def strip_outputs(path):
    """Clear the outputs and execution counts of the notebook at ``path``, in place.

    Returns True if the file changed.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs, cell.execution_count = [], None
            changed = True
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    if changed:
        nbformat.write(notebook, path)
    return changed


def _selected(only):
    """The tutorial notebooks whose file name contains one of ``only`` (all when empty)."""
    notebooks = tutorial_notebooks()
    if not only:
        return notebooks
    chosen = [path for path in notebooks if any(name in path.name for name in only)]
    unmatched = [name for name in only if not any(name in path.name for path in notebooks)]
    if unmatched:
        raise SystemExit(f"render.py: --only {', '.join(unmatched)} matches none of "
                         f"{', '.join(path.name for path in notebooks)}")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description="Execute the refquant tutorial notebooks and write "
                                                 "executed copies for reading.")
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT_DIR),
                        help=f"folder for the executed copies (default {DEFAULT_OUT_DIR})")
    parser.add_argument("--size", choices=SIZES, default="full",
                        help=f"sets {SIZE_VARIABLE} for the notebooks (default full)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only the notebooks whose file name contains NAME (repeatable)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help=f"seconds a cell may run (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--strip", action="store_true",
                        help="clear the outputs of the committed notebooks in place, then exit")
    args = parser.parse_args(argv)
    paths = _selected(args.only)
    if args.strip:
        for path in paths:
            print(f"{path.name}: {'stripped' if strip_outputs(path) else 'no outputs'}")
        return 0
    try:
        render(args.out_dir, args.size, paths, args.timeout)
    except TutorialError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
