"""Numba's cache of compiled functions lives in refquant's cache folder, never inside the package.

Truth: the file system, as a fresh Python process leaves it. Cache files written beside the
sources of an installed package survive ``pip uninstall`` (pip removes only what it installed), and
the leftover ``refquant/`` folder then shadows a later editable install as an empty namespace
package; so no ``.nbi``/``.nbc`` file may appear under the package's folder.
"""
import os
import subprocess
import sys
from pathlib import Path

import refquant

PACKAGE = Path(refquant.__file__).resolve().parent

SCRIPT = """
import numpy as np
import numba
from refquant.rounding import rounding_right_shift
from refquant.integer.requantize import requantize_code
print(numba.config.CACHE_DIR)
print(int(rounding_right_shift(np.int64(5), 1)), int(requantize_code(np.int32(100), 3, 2, 0, 0, 255)))
"""


def cache_files(folder):
    return {p for p in Path(folder).rglob("*") if p.suffix in (".nbi", ".nbc")}


def test_compiled_functions_are_cached_outside_the_package(tmp_path):
    before = cache_files(PACKAGE)
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env["REFQUANT_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    cache_dir, values = result.stdout.splitlines()
    assert Path(cache_dir) == tmp_path / "cache" / "numba"
    assert values == "2 75"  # 5 / 2 = 2.5 -> 2 (half to even); 100 * 3 / 4 = 75
    assert cache_files(tmp_path / "cache" / "numba"), "nothing was cached in refquant's cache folder"
    assert cache_files(PACKAGE) == before, "Numba wrote cache files inside the package"


def test_numba_cache_dir_from_the_environment_wins(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    result = subprocess.run([sys.executable, "-c", "import numba, refquant; print(numba.config.CACHE_DIR)"],
                            env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert Path(result.stdout.strip()) == tmp_path / "mine"
