"""Golden vectors: fixed, seeded inputs and refquant's outputs, to test another implementation
(docs/SPECIFICATION.md, section 16). :mod:`~refquant.golden.format` (the directory's files and the comparison rule),
:mod:`~refquant.golden.export`, :mod:`~refquant.golden.check`, and the vectors' definitions
(:mod:`~refquant.golden.numeric_vectors`, :mod:`~refquant.golden.network_vectors`, listed in
:mod:`~refquant.golden.vectors`).
"""
