"""Darknet's ``[detection]`` layer, the YOLOv1 head (forward and its exact backward; no loss).

Source: pjreddie/darknet ``src/detection_layer.c`` (``make_detection_layer``,
``forward_detection_layer``, ``backward_detection_layer``) and ``parse_detection``.
Input and output (N, K, 1, 1) with K = side*side*((1 + coords)*num + classes), laid out
per image as [class scores of every cell (side*side x classes)], [confidence of every
cell and box (side*side x num)], [boxes (side*side x num x coords)]. The forward pass
copies its input, then with ``softmax=1`` takes the softmax over the classes of each cell.
The YOLOv1 training loss is not implemented (refquant trains v2 networks).
"""
import numpy as np


class DetectionLayer:
    """``[detection]``: parse_detection's keys with Darknet's defaults."""

    type = "detection"
    cfg_keys = {
        "classes": ("int", 1), "coords": ("int", 1), "rescore": ("int", 0), "num": ("int", 1),
        "side": ("int", 7), "softmax": ("int", 0), "sqrt": ("int", 0), "max": ("int", 90),
        "coord_scale": ("float", 1.0), "forced": ("int", 0), "object_scale": ("float", 1.0),
        "noobject_scale": ("float", 1.0), "class_scale": ("float", 1.0), "jitter": ("float", 0.2),
        "random": ("int", 0), "reorg": ("int", 0),
    }

    def __init__(self, classes=1, coords=1, rescore=0, num=1, side=7, softmax=0, sqrt=0, max=90,
                 coord_scale=1.0, forced=0, object_scale=1.0, noobject_scale=1.0, class_scale=1.0,
                 jitter=0.2, random=0, reorg=0):
        if min(classes, coords, num, side) < 1:
            raise ValueError(f"detection: classes, coords, num, side must be >= 1, got "
                             f"{classes}, {coords}, {num}, {side}")
        if softmax not in (0, 1):
            raise ValueError(f"detection: softmax must be 0 or 1, got {softmax}")
        self.classes, self.coords, self.num, self.side = classes, coords, num, side
        self.softmax = softmax
        self.rescore, self.sqrt, self.max_boxes, self.forced, self.random = rescore, sqrt, max, forced, random
        self.coord_scale, self.object_scale = coord_scale, object_scale
        self.noobject_scale, self.class_scale, self.jitter = noobject_scale, class_scale, jitter
        self.params = {}
        self.grads = {}
        self.output = None

    @property
    def inputs(self):
        """K = side*side*((1 + coords)*num + classes) (the assert in make_detection_layer)."""
        return self.side * self.side * ((1 + self.coords) * self.num + self.classes)

    def output_shape(self, input_shape):
        """(K, 1, 1) -> (K, 1, 1); ValueError if the input does not hold K values."""
        if int(np.prod(input_shape)) != self.inputs:
            raise ValueError(f"detection: input {tuple(input_shape)} holds {int(np.prod(input_shape))} "
                             f"values, expected side*side*((1+coords)*num+classes) = {self.inputs}")
        return tuple(input_shape)

    def _classes(self, a):
        return a.reshape(a.shape[0], -1)[:, :self.side * self.side * self.classes].reshape(
            a.shape[0], self.side * self.side, self.classes)

    def forward(self, x, training=False):
        """Copy of x, with the per-cell softmax over classes when softmax=1."""
        self.output_shape(x.shape[1:])
        y = np.array(x, copy=True)
        if self.softmax:
            z = self._classes(x)
            e = np.exp(z - z.max(axis=2, keepdims=True))
            self._classes(y)[...] = e / e.sum(axis=2, keepdims=True)
        self.output = y
        return y

    def backward(self, dout):
        """dL/dx: identity, and p * (g - sum(p * g)) on the classes when softmax=1."""
        dx = np.array(dout, copy=True)
        if self.softmax:
            p = self._classes(self.output)
            g = self._classes(np.asarray(dout))
            self._classes(dx)[...] = p * (g - (p * g).sum(axis=2, keepdims=True))
        return dx
