"""Densities of a layer's weights or activations: the piecewise Gaussian model (PGM) fitted by EM,
the Gaussian mixture it is compared with, and the histogram density of binned data.

Reading order: :mod:`~refquant.density.pgm` (the model, a scipy.stats-like distribution),
:mod:`~refquant.density.em` (fitting with given breakpoints), :mod:`~refquant.density.breakpoints`
(choosing them by BIC), :mod:`~refquant.density.truncated_normal` (the integrals everything is built
from), :mod:`~refquant.density.mixture`, :mod:`~refquant.density.histogram`, and
:mod:`~refquant.density.plots`. The rules are docs/SPECIFICATION.md, sections 2 and 3.
"""
