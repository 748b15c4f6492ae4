"""Batch-norm folding (docs/SPECIFICATION.md, section 11.1): a copy of the float network whose batch-normalized
convolutions are plain convolutions with bias, and the cfg text of such a network.
"""
import os

import numpy as np

from refquant import darknet
from refquant.yolo import batchnorm
from refquant.yolo.network import Network


def fold_batchnorm(net):
    """A copy of ``net`` whose batch-normalized convolutions are plain convolutions with bias.

    Folded in float64 with the engine's normaliser (docs/SPECIFICATION.md, section 11.1), then stored in
    the network's dtype. Layers without batch norm are copied unchanged. The copy shares nothing
    with ``net``; its inference-mode forward equals ``net``'s (to float rounding).
    """
    if not isinstance(net, Network):
        raise TypeError(f"fold_batchnorm: expected a refquant Network, got {type(net).__name__}")
    folded = net.copy()
    for layer in folded.layers:
        if layer.type != "convolutional" or not layer.batch_normalize:
            continue
        p = layer.params
        factor = (p["scales"].astype(np.float64)
                  * batchnorm.normalizer(p["rolling_variance"].astype(np.float64)))
        weights = p["weights"].astype(np.float64) * factor[:, None, None, None]
        biases = p["biases"].astype(np.float64) - p["rolling_mean"].astype(np.float64) * factor
        layer.batch_normalize = False
        layer.params = {"biases": biases.astype(net.dtype), "weights": weights.astype(net.dtype)}
        layer.zero_grads()
    return folded


def is_folded(net):
    """True when no convolution of ``net`` has batch norm left."""
    return not any(layer.type == "convolutional" and layer.batch_normalize for layer in net.layers)


def folded_cfg_text(cfg_path):
    """The cfg of the folded network, as text: ``cfg_path``'s sections and options in their order,
    without the ``batch_normalize`` key of the convolutions.

    Darknet's parser then reads biases and weights only for each convolution
    (``load_convolutional_weights``, src/parser.c), which is what
    :func:`refquant.darknet.save_weights` writes for a folded network: the pair is an ordinary
    Darknet model that any Darknet reader (OpenCV's included) runs as the folded float network.
    """
    lines = [f"# {os.path.basename(os.fspath(cfg_path))} with batch norm folded into the convolutions "
             f"(refquant.plan.folded_cfg_text)"]
    for section in darknet.read_cfg(cfg_path):
        lines.append(f"\n[{section['name']}]")
        lines += [f"{key}={value}" for key, (value, _) in section["options"].items()
                  if not (section["name"] in ("convolutional", "conv") and key == "batch_normalize")]
    return "\n".join(lines) + "\n"
