"""Arithmetic profiles of the integer network: what happens after the int32 accumulator
(docs/SPECIFICATION.md, section 11.8). ``exact`` is refquant's own rule; ``gemmlowp``,
``gemmlowp-single`` and ``float-scale`` follow deployed engines.
"""
