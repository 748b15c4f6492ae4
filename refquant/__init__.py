"""refquant: a NumPy/Numba reference implementation of low-precision YOLO.

Training and running Darknet v2-generation detectors (tiny YOLO, YOLO) with
low-precision weights and activations: each layer's values are modelled by a
piecewise Gaussian density fitted by EM (``refquant.pgm``), the optimal
quantization interval and step are computed from it (``refquant.intervals``),
the network is trained with the quantizers in the loop (``refquant.qat``) and
the convolutions run in fixed point (``refquant.intconv``).
"""
__version__ = "0.1.0"
