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

# Numba's thread pool: OpenMP (GNU libgomp) where Numba has it, else the work-queue layer.
# Starting a parallel loop costs about 1 to 2 microseconds with OpenMP and 130 with the work-queue
# layer on a 2-core virtual machine (its workers sleep between loops and a sleeping vCPU wakes
# slowly), and a training step or an integer network starts dozens of loops (benchmarks/bench_qat.py,
# bench_integer_network.py). But libgomp's threads spin after each loop (300000 turns by default),
# where they fight OpenBLAS's threads and other processes for the cores: that made tiny YOLO inference
# 1.8x slower. GOMP_SPINCOUNT=10000 (tens of microseconds) keeps the quick start between the loops of
# a pass and lets the cores go soon after (benchmarks/bench_sharing.py). libgomp reads it when it is
# loaded, i.e. at the first parallel loop. NUMBA_THREADING_LAYER or GOMP_SPINCOUNT in the environment win.
ENVIRONMENT_SET = []
"""Names of the environment variables refquant itself put in ``os.environ`` at import (they reach
child processes too: a benchmark removes them from a peer's environment)."""
if "NUMBA_THREADING_LAYER" not in os.environ:
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "10000"
        ENVIRONMENT_SET.append("GOMP_SPINCOUNT")
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
