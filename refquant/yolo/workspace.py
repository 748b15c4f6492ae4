"""Arrays a layer keeps from pass to pass instead of allocating them again.

A training step's full-size arrays (im2col columns, products, gradients, max-pooling indexes) are
tens of MB; a fresh one costs its page faults on first touch, which on a virtual machine with
transparent huge pages cost more than the pass that fills it (docs/benchmarks.md). A layer
therefore passes the array of its last pass back in, and gets it again when it still fits.
"""
import numpy as np


def reuse(array, shape, dtype):
    """``array`` if it is a C-contiguous array of exactly ``shape`` and ``dtype``, else a new empty one."""
    if (array is not None and array.shape == tuple(shape) and array.dtype == dtype
            and array.flags.c_contiguous):
        return array
    return np.empty(shape, dtype)
