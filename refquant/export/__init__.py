"""Exports of a quantized network to formats other engines run: ONNX (:mod:`refquant.export.onnx`,
docs/SPECIFICATION.md, section 11.9). Each needs an optional package, imported only when an export runs.
"""
