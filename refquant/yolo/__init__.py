"""The float YOLO engine: one module per Darknet layer type, and the network that wires them.

    convolutional.py  [convolutional]  im2col + GEMM, batch norm (batchnorm.py), activation (activations.py)
    direct.py         the same convolution without im2col on AVX-512 (float32 "same" layers, maps >= 32x32)
    maxpool.py        [maxpool]        Darknet's implicit padding
    route.py          [route]          channel concatenation of earlier layers
    reorg.py          [reorg]          space-to-depth in Darknet's index order
    upsample.py       [upsample]       nearest neighbour
    shortcut.py       [shortcut]       residual sum
    region.py         [region]         YOLOv2 head and its loss
    yolo_head.py      [yolo]           YOLOv3 head
    connected.py      [connected]      fully connected (YOLOv1)
    detection.py      [detection]      YOLOv1 head (activations only)
    network.py        Network          forward, backward, summary
    plots.py          activation maps, per-layer statistics, the layer table
    workspace.py      the arrays a layer reuses from pass to pass

Networks are built from Darknet cfg files by ``refquant.darknet.load``.
"""
from refquant.yolo.network import Network, NetworkShapeError

__all__ = ["Network", "NetworkShapeError"]
