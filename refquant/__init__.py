"""refquant: a NumPy/Numba reference implementation of low-precision YOLO.

Training and running Darknet v2-generation detectors (tiny YOLO, YOLO) with
low-precision weights and activations: each layer's values are modelled by a
piecewise Gaussian density fitted by EM (``refquant.density.pgm``), the optimal
quantization interval and step are computed from it (``refquant.quantizers``),
the network is trained with the quantizers in the loop (``refquant.qat``) and
the convolutions run in fixed point (``refquant.integer``).
"""
import os

import numba

__version__ = "0.1.0"


def cache_dir():
    """Where refquant keeps what it can make again: ``$REFQUANT_CACHE``, else
    ``$XDG_CACHE_HOME/refquant``, else ``~/.cache/refquant`` (the XDG base-directory rule)."""
    from pathlib import Path
    if os.environ.get("REFQUANT_CACHE"):
        return Path(os.environ["REFQUANT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "refquant"
    return Path.home() / ".cache" / "refquant"


# Numba's compiled-function cache goes to refquant's cache folder, not beside the sources: inside
# an installed package it would be left behind by `pip uninstall` (pip removes only the files it
# installed), and the leftover `refquant/` folder of cache files then shadows an editable install
# as an empty namespace package. Set before any submodule compiles; NUMBA_CACHE_DIR wins.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(cache_dir() / "numba")

# Numba's default OpenMP threading layer keeps its threads spinning after each parallel
# kernel, where they fight OpenBLAS's threads for the cores: on 2 cores that made tiny YOLO
# inference 1.8x slower than with the work-queue layer (benchmarks/bench_engine.py). The
# work-queue layer forbids launching parallel kernels from two Python threads at once, which
# refquant never does. An explicit NUMBA_THREADING_LAYER in the environment wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
