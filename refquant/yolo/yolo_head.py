"""The YOLOv3 detection head: Darknet's ``[yolo]`` layer (activations only).

Source of truth: pjreddie/darknet ``src/yolo_layer.c`` (``forward_yolo_layer``,
``entry_index``, ``get_yolo_box``) and ``src/parser.c`` (``parse_yolo``,
``parse_yolo_mask``), master branch.

Layout (``entry_index``): input and output are (N, n*(4+1+classes), H, W) where
n = len(mask) anchors are used by this head (out of ``num`` listed in ``anchors``).
Anchor a owns channels a*K .. a*K + K - 1, K = 4 + 1 + classes, in order
x, y, w, h, objectness, class scores.

Forward: logistic on x, y, objectness and every class score (``activate_array``
on the 2*H*W entries at 0 and the (1+classes)*H*W entries at 4); w, h stay raw.

Decoding (``get_yolo_box``), relative to the image of size (net_w, net_h):
bx = (col + x)/W, by = (row + y)/H, bw = exp(w) anchor_w/net_w, bh = exp(h) anchor_h/net_h,
anchors being in input pixels.

The v3 training loss is not implemented; Darknet's ``backward_yolo_layer`` adds its
delta to the input gradient without the logistic slope, which is not the derivative
of the forward. :meth:`YoloLayer.backward` is the exact derivative of the forward.
"""
import numpy as np

from refquant.yolo import activations


class YoloLayer:
    """Darknet's ``[yolo]`` layer: logistic activations in Darknet's layout.

    Options are ``parse_yolo``'s keys with its defaults (see ``cfg_keys``).
    ``jitter``, ``ignore_thresh``, ``truth_thresh``, ``random``, ``max`` are stored
    for the trainer (the v3 loss is not implemented); ``map`` is not supported.
    """
    type = "yolo"
    cfg_keys = {
        "mask": ("ints", ()),            # () = Darknet's default: every anchor, 0 .. num-1
        "anchors": ("floats", ()),       # () = Darknet's default of 0.5 for every anchor
        "classes": ("int", 20),
        "num": ("int", 1),
        "jitter": ("float", 0.2),
        "ignore_thresh": ("float", 0.5),
        "truth_thresh": ("float", 1.0),
        "random": ("int", 0),
        "max": ("int", 90),
        "map": ("str", ""),
    }

    def __init__(self, mask=(), anchors=(), classes=20, num=1, jitter=0.2, ignore_thresh=0.5,
                 truth_thresh=1.0, random=0, max=90, map=""):
        def fail(key, expected, got):
            raise ValueError(f"[yolo] {key}: expected {expected}, got {got!r}")

        if classes < 1:
            fail("classes", "at least 1", classes)
        if num < 1:
            fail("num", "at least 1", num)
        if map:
            fail("map", "no class map (not supported by refquant)", map)
        mask = np.arange(num) if len(mask) == 0 else np.asarray(mask, dtype=np.int64)
        if mask.ndim != 1 or np.any(mask < 0) or np.any(mask >= num):
            fail("mask", f"anchor indices in [0, num={num})", mask.tolist())
        anchors = np.full(2 * num, 0.5) if len(anchors) == 0 else np.asarray(anchors, dtype=np.float64)
        if anchors.shape != (2 * num,):
            fail("anchors", f"2*num = {2 * num} values (w, h per anchor, in input pixels)", len(anchors))
        if not np.all(anchors > 0):
            fail("anchors", "positive values", anchors.tolist())

        self.anchors = anchors.reshape(num, 2)          # (num, 2): w, h in input pixels
        self.mask = mask                                # (n,): the anchors this head predicts
        self.classes = classes
        self.num = num
        self.jitter = jitter
        self.ignore_thresh = ignore_thresh
        self.truth_thresh = truth_thresh
        self.random = random
        self.max_boxes = max
        self.params = {}
        self.grads = {}
        self.output = None

    @property
    def entries(self):
        """K = 4 + 1 + classes: the channels of one anchor."""
        return 4 + 1 + self.classes

    def output_shape(self, input_shape):
        """(C, H, W) -> (C, H, W); C must be len(mask) * (4 + 1 + classes)."""
        c, h, w = input_shape
        n = len(self.mask)
        if c != n * self.entries:
            raise ValueError(f"[yolo] layer: input has {c} channels, expected len(mask)*(4+1+classes)"
                             f" = {n}*(5+{self.classes}) = {n * self.entries}")
        return (c, h, w)

    def _anchor_view(self, a):
        """(N, n*K, H, W) -> view (N, n, K, H, W)."""
        batch, _, h, w = a.shape
        return a.reshape(batch, len(self.mask), self.entries, h, w)

    def forward(self, x, training=False):
        """x (N, n*K, H, W) -> y, same shape and dtype: logistic on entries 0, 1 and 4.., raw 2, 3."""
        if x.ndim != 4:
            raise ValueError(f"[yolo] layer: expected input (N, C, H, W), got shape {x.shape}")
        self.output_shape(x.shape[1:])
        y = np.array(x, copy=True)
        v = self._anchor_view(y)
        squashed = self._anchor_view(activations.activate(x, "logistic"))   # one pass over the tensor
        v[:, :, 0:2] = squashed[:, :, 0:2]
        v[:, :, 4:] = squashed[:, :, 4:]
        self.output = y
        return y

    def backward(self, dout):
        """dL/dy -> dL/dx = dy * y (1 - y) on entries 0, 1, 4.. (Darknet's ``logistic_gradient``); dy on w, h."""
        if self.output is None or dout.shape != self.output.shape:
            raise ValueError(f"[yolo] layer: backward needs dout shaped like the last forward "
                             f"output {None if self.output is None else self.output.shape}, got {dout.shape}")
        dx = np.array(dout, copy=True)
        v = self._anchor_view(dx)
        through_logistic = self._anchor_view(activations.backward(self.output, dout, "logistic"))
        v[:, :, 0:2] = through_logistic[:, :, 0:2]
        v[:, :, 4:] = through_logistic[:, :, 4:]
        self.grads = {}
        return dx

    def predicted_boxes(self, input_size):
        """Boxes of the last forward output relative to the image: (N, n, H, W, 4) as (x, y, w, h).

        ``input_size``: (net_w, net_h) in pixels, the network's input size (``get_yolo_box``).
        """
        net_w, net_h = input_size
        v = self._anchor_view(self.output).astype(np.float64)
        h, w = v.shape[-2:]
        anchors = self.anchors[self.mask]
        col = np.arange(w)
        row = np.arange(h)[:, None]
        return np.stack([(col + v[:, :, 0]) / w, (row + v[:, :, 1]) / h,
                         np.exp(v[:, :, 2]) * anchors[:, 0, None, None] / net_w,
                         np.exp(v[:, :, 3]) * anchors[:, 1, None, None] / net_h], axis=-1)
