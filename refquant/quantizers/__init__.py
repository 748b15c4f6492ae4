"""Uniform quantizers and how their interval and step are chosen.

:mod:`~refquant.quantizers.uniform` (the quantizer every quantized tensor uses),
:mod:`~refquant.quantizers.error` (its expected error under a density),
:mod:`~refquant.quantizers.optimal` (the interval and step minimising that error),
:mod:`~refquant.quantizers.baselines` (min-max, percentile, ACIQ, MSE search, KL: the rules the
method is compared with, in one registry) and :mod:`~refquant.quantizers.plots`.
docs/SPECIFICATION.md, sections 4 to 7.
"""
