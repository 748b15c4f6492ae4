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

# Numba's default OpenMP threading layer keeps its threads spinning after each parallel
# kernel, where they fight OpenBLAS's threads for the cores: on 2 cores that made tiny YOLO
# inference 1.8x slower than with the work-queue layer (benchmarks/bench_engine.py). The
# work-queue layer forbids launching parallel kernels from two Python threads at once, which
# refquant never does. An explicit NUMBA_THREADING_LAYER in the environment wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
