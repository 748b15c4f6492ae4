"""Which instructions refquant's kernels may use: the features of the CPU Numba compiles for.

One rule for every kernel that needs an instruction set beyond the baseline (AVX-512 VNNI,
``refquant.integer.vnni``; AMX, ``refquant.integer.amx``; AVX-512F, ``refquant.yolo.direct``):
LLVM refuses an intrinsic the target CPU lacks, and code cached for another CPU must not use one
the host happens to have.
"""
import functools

import numba
from llvmlite import binding as llvm_binding


@functools.lru_cache(maxsize=1)
def _host_features():
    """The host CPU's LLVM features that are on (asked once: the call costs about 0.2 ms, and the
    convolution asks at every forward)."""
    return frozenset(name for name, on in llvm_binding.get_host_cpu_features().items() if on)


def compiles_for(*features):
    """Whether the CPU Numba compiles for has every LLVM feature named (e.g. ``"avx512vnni"``).

    That is the host's CPU unless ``NUMBA_CPU_NAME`` names another (a portable cache, e.g.
    ``generic``), in which case only the features ``NUMBA_CPU_FEATURES`` lists (``+name``) count.
    """
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        listed = set((numba.config.CPU_FEATURES or "").split(","))
        return all(f"+{feature}" in listed for feature in features)
    return _host_features().issuperset(features)
