"""The YOLOv2 detection head: Darknet's ``[region]`` layer and its training loss.

Source of truth: pjreddie/darknet ``src/region_layer.c`` (``forward_region_layer``,
``backward_region_layer_gpu``, ``get_region_box``, ``delta_region_box``,
``delta_region_class``, ``entry_index``), ``src/box.c`` (``box_iou``) and
``src/parser.c`` (``parse_region``), master branch.

Layout (``entry_index``): the input and output are (N, num*K, H, W) with
K = coords + 1 + classes. Anchor n owns channels n*K .. n*K + K - 1, in order
x, y, w, h (box), objectness, then the class scores. Viewed as
(N, num, K, H, W) every entry is ``out[b, n, k, row, col]``.

Forward: logistic on x, y and objectness; softmax over the classes of each
anchor and cell (logistic instead when ``softmax=0``); w and h stay raw.

Decoding (``get_region_box``, defined in :func:`refquant.detection.decode.region_boxes`),
relative to the image:
    bx = (col + x) / W,  by = (row + y) / H,
    bw = exp(w) * anchor_w / W,  bh = exp(h) * anchor_h / H.

Which Darknet: pjreddie master writes the loss deltas in *output* space
(``delta = scale * (target - output)``) and applies the logistic slope to x, y
and objectness only in ``backward_region_layer_gpu``; its CPU
``backward_region_layer`` has that code commented out (so CPU training passes
no gradient at all). We follow the GPU path, the one that trains. Older Darknet and the AlexeyAB fork fold the slope
into the delta itself; the gradient reaching the input is the same, the
printed cost is not.
"""
import warnings

import numpy as np

from refquant.detection.boxes import darknet_iou
from refquant.detection.decode import region_boxes
from refquant.yolo import activations

PRIOR_SEEN_LIMIT = 12800
"""Darknet pulls every box towards its anchor centred in its cell while fewer
than this many images have been seen (``if(*(net.seen) < 12800)``)."""

PRIOR_SCALE = 0.01
"""Scale of that pull (``delta_region_box(..., .01, ...)``)."""

TRUTHS_READ = 30
"""``forward_region_layer`` reads at most 30 truths per image (``for(t = 0; t < 30; ++t)``)."""


def softmax(z, axis):
    """Darknet's ``softmax`` (blas.c): exp(z - max) / sum exp(z - max) along ``axis``."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis):
    """log of :func:`softmax`, computed stably: z - max - log(sum exp(z - max))."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_logistic(z):
    """log logistic(z) = -log(1 + exp(-z)), stable for both signs of z."""
    return -np.logaddexp(0.0, -z)


def box_targets(truth, col, row, anchor, grid):
    """Darknet's ``delta_region_box`` targets of a box for the prediction at (row, col).

    ``truth``: (..., 4) relative (x, y, w, h); ``col``, ``row``: cell indices and
    ``anchor``: (..., 2) anchor (w, h) in grid cells, all broadcasting with truth[..., 0];
    ``grid``: (W, H). Returns (..., 4):
    tx = x W - col, ty = y H - row, tw = log(w W / anchor_w), th = log(h H / anchor_h).
    """
    w, h = grid
    return np.stack([truth[..., 0] * w - col, truth[..., 1] * h - row,
                     np.log(truth[..., 2] * w / anchor[..., 0]),
                     np.log(truth[..., 3] * h / anchor[..., 1])], axis=-1)


def _divide_floored(numerator, denominator, dtype, what):
    """numerator / denominator, the denominator floored so that the quotient is finite in ``dtype``.

    Used where dL/d(output) = g / (d output / d input) must be formed for an
    activation whose slope underflowed to 0 in ``dtype``: a class probability
    near the smallest normal number (a logit gap beyond ~87 in float32), or a
    saturated logistic class score (y == 1.0 exactly, z beyond ~17 in float32, ~37
    in float64). Warns, naming the head, because the gradient of those entries is
    then lost.
    """
    # |numerator| <= bound, so the quotient stays below 1 / (2 tiny), finite in ``dtype``.
    bound = max(1.0, float(np.max(np.abs(numerator), initial=0.0)))
    floor = 2 * bound * float(np.finfo(dtype).tiny)
    small = denominator < floor
    if np.any(small & (numerator != 0)):
        warnings.warn(f"{what}: {int(np.count_nonzero(small & (numerator != 0)))} entries have an "
                      f"activation slope below {floor:g} (saturated); their gradient is lost",
                      RuntimeWarning, stacklevel=3)
    return numerator / np.maximum(denominator, floor)


class RegionLayer:
    """Darknet's ``[region]`` layer (YOLOv2 head): activations and the region loss.

    Options are ``parse_region``'s keys with its defaults (see ``cfg_keys``).
    Stored but unused by Darknet's region layer itself (kept for the cfg, the
    data loader and the trainer): ``jitter``, ``random``, ``absolute`` (Darknet
    always uses the absolute form, ``DOABS``), ``log``, ``sqrt``, ``classfix``,
    ``max``. Not supported (a ValueError says so): ``coords`` other than 4
    (instance masks), ``background=1``, ``tree`` (softmax tree), ``map``.

    Attributes after :meth:`loss`: ``delta`` (Darknet's ``l.delta``, see
    :meth:`loss`), ``cost`` (Darknet's printed cost), ``stats`` (Darknet's
    printed averages).
    """
    type = "region"
    cfg_keys = {
        "anchors": ("floats", ()),       # () = Darknet's default of 0.5 for every anchor
        "bias_match": ("int", 0),
        "classes": ("int", 20),
        "coords": ("int", 4),
        "num": ("int", 1),
        "softmax": ("int", 0),
        "jitter": ("float", 0.2),
        "rescore": ("int", 0),
        "object_scale": ("float", 1.0),
        "noobject_scale": ("float", 1.0),
        "class_scale": ("float", 1.0),
        "coord_scale": ("float", 1.0),
        "mask_scale": ("float", 1.0),
        "absolute": ("int", 0),
        "thresh": ("float", 0.5),
        "random": ("int", 0),
        "log": ("int", 0),
        "sqrt": ("int", 0),
        "background": ("int", 0),
        "max": ("int", 30),
        "classfix": ("int", 0),
        "tree": ("str", ""),
        "map": ("str", ""),
    }

    def __init__(self, anchors=(), bias_match=0, classes=20, coords=4, num=1, softmax=0,
                 jitter=0.2, rescore=0, object_scale=1.0, noobject_scale=1.0, class_scale=1.0,
                 coord_scale=1.0, mask_scale=1.0, absolute=0, thresh=0.5, random=0, log=0,
                 sqrt=0, background=0, max=30, classfix=0, tree="", map=""):
        def fail(key, expected, got):
            raise ValueError(f"[region] {key}: expected {expected}, got {got!r}")

        if classes < 1:
            fail("classes", "at least 1", classes)
        if num < 1:
            fail("num", "at least 1", num)
        if coords != 4:
            fail("coords", "4 (instance-mask coords > 4 are not supported by refquant)", coords)
        if background != 0:
            fail("background", "0 (background class not supported by refquant)", background)
        if tree:
            fail("tree", "no softmax tree (not supported by refquant)", tree)
        if map:
            fail("map", "no class map (not supported by refquant)", map)
        for key, value in (("bias_match", bias_match), ("softmax", softmax), ("rescore", rescore)):
            if value not in (0, 1):
                fail(key, "0 or 1", value)
        for key, value in (("object_scale", object_scale), ("noobject_scale", noobject_scale),
                           ("class_scale", class_scale), ("coord_scale", coord_scale)):
            if not value >= 0:
                fail(key, "a scale >= 0", value)
        if not 0 <= thresh <= 1:
            fail("thresh", "an IoU threshold in [0, 1]", thresh)
        if max < 1:
            fail("max", "at least 1", max)
        anchors = np.full(2 * num, 0.5) if len(anchors) == 0 else np.asarray(anchors, dtype=np.float64)
        if anchors.shape != (2 * num,):
            fail("anchors", f"2*num = {2 * num} values (w, h per anchor, in grid cells)", len(anchors))
        if not np.all(anchors > 0):
            fail("anchors", "positive values", anchors.tolist())

        self.anchors = anchors.reshape(num, 2)        # (num, 2): w, h in grid cells
        self.bias_match = bias_match
        self.classes = classes
        self.coords = coords
        self.num = num
        self.softmax = softmax
        self.jitter = jitter
        self.rescore = rescore
        self.object_scale = object_scale
        self.noobject_scale = noobject_scale
        self.class_scale = class_scale
        self.coord_scale = coord_scale
        self.mask_scale = mask_scale
        self.absolute = absolute
        self.thresh = thresh
        self.random = random
        self.log = log
        self.sqrt = sqrt
        self.classfix = classfix
        self.max_boxes = max
        self.params = {}
        self.grads = {}
        self.input = None
        self.output = None

    @property
    def entries(self):
        """K = coords + 1 + classes: the channels of one anchor."""
        return self.coords + 1 + self.classes

    def output_shape(self, input_shape):
        """(C, H, W) -> (C, H, W); C must be num * (coords + 1 + classes)."""
        c, h, w = input_shape
        if c != self.num * self.entries:
            raise ValueError(f"[region] layer: input has {c} channels, expected num*(coords+1+classes)"
                             f" = {self.num}*({self.coords}+1+{self.classes}) = {self.num * self.entries}")
        return (c, h, w)

    def _anchor_view(self, a):
        """(N, num*K, H, W) -> view (N, num, K, H, W)."""
        n, _, h, w = a.shape
        return a.reshape(n, self.num, self.entries, h, w)

    def forward(self, x, training=False):
        """x (N, num*K, H, W) raw scores -> y of the same shape and dtype.

        y[:, n, 0:2] = logistic(x), y[:, n, 2:4] = x, y[:, n, 4] = logistic(x),
        y[:, n, 5:] = softmax over the class axis (logistic when softmax=0).
        """
        if x.ndim != 4:
            raise ValueError(f"[region] layer: expected input (N, C, H, W), got shape {x.shape}")
        self.output_shape(x.shape[1:])
        z = self._anchor_view(x)
        y = np.array(x, copy=True)
        v = self._anchor_view(y)
        squashed = self._anchor_view(activations.activate(x, "logistic"))   # one pass over the tensor
        v[:, :, 0:2] = squashed[:, :, 0:2]
        v[:, :, 4] = squashed[:, :, 4]
        v[:, :, 5:] = softmax(z[:, :, 5:], axis=2) if self.softmax else squashed[:, :, 5:]
        self.input = x
        self.output = y
        return y

    def backward(self, dout):
        """dL/dy (N, num*K, H, W) -> dL/dx, the exact derivative of :meth:`forward`.

        logistic entries: dx = dy * y (1 - y) (Darknet's ``logistic_gradient`` of the output);
        w, h: dx = dy; softmax classes: dx = p * (dy - sum_c p_c dy_c).
        """
        if self.output is None or dout.shape != self.output.shape:
            raise ValueError(f"[region] layer: backward needs dout shaped like the last forward "
                             f"output {None if self.output is None else self.output.shape}, got {dout.shape}")
        dx = np.array(dout, copy=True)
        v = self._anchor_view(dx)
        through_logistic = self._anchor_view(activations.backward(self.output, dout, "logistic"))
        v[:, :, 0:2] = through_logistic[:, :, 0:2]
        v[:, :, 4] = through_logistic[:, :, 4]
        if self.softmax:
            p = self._anchor_view(self.output)[:, :, 5:]
            g = self._anchor_view(dout)[:, :, 5:]
            v[:, :, 5:] = p * (g - (p * g).sum(axis=2, keepdims=True))
        else:
            v[:, :, 5:] = through_logistic[:, :, 5:]
        self.grads = {}
        return dx

    def predicted_boxes(self):
        """Boxes of the last forward output, relative to the image: (N, num, H, W, 4) as (x, y, w, h).

        Darknet's ``get_region_box``, defined once in :func:`refquant.detection.decode.region_boxes`.
        """
        batch, _, h, w = self.output.shape
        boxes = region_boxes(self.output, self.anchors, self.classes, self.coords)[0]
        return boxes.reshape(batch, self.num, h, w, 4)

    def _check_truths(self, truths, batch):
        """Validate the truths; return them as float64 arrays (M_i, 5)."""
        if len(truths) != batch:
            raise ValueError(f"[region] loss: truths has {len(truths)} images, the last forward had {batch}")
        limit = min(self.max_boxes, TRUTHS_READ)
        checked = []
        for b, t in enumerate(truths):
            t = np.asarray(t, dtype=np.float64)
            if t.size == 0:
                t = t.reshape(0, 5)
            where = f"[region] loss: truths[{b}]"
            if t.ndim != 2 or t.shape[1] != 5:
                raise ValueError(f"{where}: expected an array (M, 5) of x, y, w, h, class, got shape {t.shape}")
            if len(t) > limit:
                raise ValueError(f"{where}: {len(t)} boxes, Darknet's region layer reads at most {limit} "
                                 f"(min(max={self.max_boxes}, 30)); the data loader must choose them")
            if not np.all(np.isfinite(t)):
                raise ValueError(f"{where}: non-finite values")
            # Darknet stops at a truth with x == 0 and indexes the cell int(x*W): x, y in (0, 1).
            if not (np.all((t[:, 0:2] > 0) & (t[:, 0:2] < 1)) and np.all((t[:, 2:4] > 0) & (t[:, 2:4] <= 1))):
                raise ValueError(f"{where}: expected 0 < x, y < 1 and 0 < w, h <= 1 (relative to the image)")
            cls = t[:, 4]
            if not np.all((cls == np.round(cls)) & (cls >= 0) & (cls < self.classes)):
                raise ValueError(f"{where}: class ids must be integers in [0, {self.classes}), got {cls.tolist()}")
            checked.append(t)
        return checked

    def loss(self, truths, seen=0):
        """Darknet's region loss of the last forward output -> (L, dL/dy).

        ``truths``: list (len N) of arrays (M_i, 5): x_centre, y_centre, w, h relative
        to the image, class id. ``seen``: Darknet's ``net.seen`` during this forward pass
        (images seen, this batch included, since Darknet increments it first).

        Darknet's deltas (``forward_region_layer``), per image, in this order, later
        writes overwriting earlier ones; delta is in output space, delta = S * (T - y):

        1. every prediction: objectness S = noobject_scale, T = 0, unless its predicted box
           has IoU > thresh with some truth (then S = 0: ignored).
        2. if seen < 12800, every prediction: x, y, w, h with S = 0.01 and targets
           (0.5, 0.5, 0, 0), i.e. its anchor centred in its cell.
        3. every truth in order, at cell (int(x W), int(y H)) and the anchor whose shape
           (anchor / (W, H), when bias_match; else the predicted w, h) has the best IoU with
           the truth's shape, both centred at 0:
           coords S = coord_scale (2 - w h), T = (x W - col, y H - row, log(w W/anchor_w),
           log(h H/anchor_h)); objectness S = object_scale, T = IoU(predicted box, truth)
           when rescore else 1; classes S = class_scale, T = one-hot (with logistic classes,
           when the anchor's class-0 delta is already non-zero, only the truth's class is set).

        L, the loss returned, is the scalar whose exact gradient, with the targets T and
        the masks S held constant (as Darknet does: the rescore IoU and the ignore mask
        are not differentiated), is minus Darknet's delta propagated through the head:

            L = sum_{x,y,w,h,obj entries} 1/2 S (T - y)^2 + sum_{anchors with a truth} class_scale * CE,
            CE = -sum_c T_c log p_c                                    (softmax classes)
            CE = -sum_c [T_c log s(z_c) + (1 - T_c) log(1 - s(z_c))]  (logistic classes)

        so -dL/d(raw input) is delta times logistic'(z) on x, y, objectness (Darknet's
        ``backward_region_layer_gpu``) and delta itself on w, h and the classes.

        Darknet's printed cost is ``self.cost`` = sum delta^2 (``pow(mag_array(l.delta), 2)``),
        with delta = ``self.delta`` in output space. On x, y, w, h and objectness entries
        delta^2 = 2 S * (its term of L); on class entries cost has class_scale^2 (T - p)^2 where
        L has class_scale * CE. They are different numbers; only L has gradient -delta.
        Both sum over the images of the batch, as Darknet's delta does (Darknet divides the
        learning rate by the batch size in its update instead). Darknet's training log prints
        the cost per image: the iteration's summed costs over its number of images
        (``train_network``: ``sum/(n*batch)``).

        Returns (L as a float, dout = dL/dy shaped like the output, in its dtype), so that
        ``backward(dout)`` is dL/d(raw input). Equal to ``loss_with_targets(*targets(truths, seen))``.
        """
        return self.loss_with_targets(*self.targets(truths, seen))

    def targets(self, truths, seen=0):
        """Darknet's masks S and targets T for the last forward output (steps 1-3 of :meth:`loss`).

        Returns (scale, target), two float64 arrays shaped like the output (N, num*K, H, W):
        Darknet's delta is scale * (target - output). Also sets ``self.stats``, the averages
        Darknet prints (``Region Avg IOU, Class, Obj, No Obj, Avg Recall, count``).
        """
        if self.output is None:
            raise ValueError("[region] loss: call forward first")
        y = self._anchor_view(self.output).astype(np.float64)
        batch = y.shape[0]
        truths = self._check_truths(truths, batch)
        boxes = self.predicted_boxes()                       # (N, num, H, W, 4)
        scale = np.zeros_like(y)                             # S
        target = np.zeros_like(y)                            # T
        stats = {"iou": 0.0, "recall": 0.0, "class": 0.0, "obj": 0.0, "count": 0}
        for b in range(batch):
            self._ignore_and_prior(boxes[b], truths[b], scale[b], target[b], seen)
            for truth in truths[b]:
                self._assign(truth, y[b], boxes[b], scale[b], target[b], stats)
        count = max(stats["count"], 1)
        self.stats = {"avg_iou": stats["iou"] / count, "class": stats["class"] / count,
                      "obj": stats["obj"] / count, "no_obj": float(y[:, :, 4].mean()),
                      "recall": stats["recall"] / count, "count": stats["count"]}
        return scale.reshape(self.output.shape), target.reshape(self.output.shape)

    def loss_with_targets(self, scale, target):
        """L and dL/dy of the last forward output for given masks S and targets T (see :meth:`loss`).

        ``scale``, ``target``: arrays shaped like the output, as :meth:`targets` returns them
        (with softmax classes, -dL/dz = S (T - p) needs T one-hot and S equal over the classes
        of an anchor, as there).
        Sets ``self.delta`` = S (T - y) (Darknet's ``l.delta``) and ``self.cost`` = sum delta^2.
        Returns (L, dout) with dout in the output's dtype.
        """
        if self.output is None or np.shape(scale) != self.output.shape or np.shape(target) != self.output.shape:
            raise ValueError(f"[region] loss: scale and target must be shaped like the last forward output "
                             f"{None if self.output is None else self.output.shape}")
        y = self._anchor_view(self.output).astype(np.float64)
        z = self._anchor_view(self.input).astype(np.float64)
        scale = self._anchor_view(np.asarray(scale, dtype=np.float64))
        target = self._anchor_view(np.asarray(target, dtype=np.float64))
        delta = scale * (target - y)
        self.delta = delta.reshape(self.output.shape).astype(self.output.dtype)
        self.cost = float(np.sum(delta ** 2))
        loss, dout = self._loss_and_gradient(y, z, scale, target)
        return loss, dout.reshape(self.output.shape).astype(self.output.dtype)

    def _ignore_and_prior(self, boxes, truths, scale, target, seen):
        """Steps 1 and 2 of :meth:`loss` for one image (scale, target: (num, K, H, W), filled in place)."""
        if len(truths):
            best_iou = darknet_iou(boxes.reshape(-1, 4), truths[:, :4]).max(axis=1).reshape(boxes.shape[:3])
        else:
            best_iou = np.zeros(boxes.shape[:3])
        scale[:, 4] = np.where(best_iou > self.thresh, 0.0, self.noobject_scale)
        target[:, 4] = 0.0
        if seen < PRIOR_SEEN_LIMIT:
            _, h, w = best_iou.shape
            col = np.arange(w)
            row = np.arange(h)[:, None]
            anchor = self.anchors[:, None, None, :]                      # (num, 1, 1, 2)
            anchor_centre = np.stack(np.broadcast_arrays(
                (col + 0.5) / w, (row + 0.5) / h, anchor[..., 0] / w, anchor[..., 1] / h), axis=-1)
            target[:, 0:4] = np.moveaxis(box_targets(anchor_centre, col, row, anchor, (w, h)), -1, 1)
            scale[:, 0:4] = PRIOR_SCALE

    def _assign(self, truth, y, boxes, scale, target, stats):
        """Step 3 of :meth:`loss` for one truth (x, y, w, h, class) of one image; in place."""
        _, _, h, w = y.shape
        col, row = int(truth[0] * w), int(truth[1] * h)
        if self.bias_match:
            shapes = self.anchors / (w, h)
        else:
            shapes = boxes[:, row, col, 2:4]
        shape_iou = darknet_iou(np.concatenate([np.zeros_like(shapes), shapes], axis=1),
                                [0.0, 0.0, truth[2], truth[3]])[:, 0]
        best_n = 0
        best = 0.0
        for n, iou in enumerate(shape_iou):       # first strict maximum, as Darknet's loop
            if iou > best:
                best, best_n = iou, n
        iou = float(darknet_iou(boxes[best_n, row, col], truth[:4])[0, 0])
        target[best_n, 0:4, row, col] = box_targets(truth[:4], col, row, self.anchors[best_n], (w, h))
        scale[best_n, 0:4, row, col] = self.coord_scale * (2 - truth[2] * truth[3])
        scale[best_n, 4, row, col] = self.object_scale
        target[best_n, 4, row, col] = iou if self.rescore else 1.0
        cls = int(truth[4])
        k = 5 + cls
        class_delta0 = scale[best_n, 5, row, col] * (target[best_n, 5, row, col] - y[best_n, 5, row, col])
        if not self.softmax and class_delta0 != 0:
            # delta_region_class with tag = !softmax: an anchor already holding a truth keeps
            # its class targets and only adds this truth's class.
            target[best_n, k, row, col] = 1.0
            scale[best_n, k, row, col] = self.class_scale
        else:
            target[best_n, 5:, row, col] = 0.0
            target[best_n, k, row, col] = 1.0
            scale[best_n, 5:, row, col] = self.class_scale
            stats["class"] += float(y[best_n, k, row, col])
        stats["iou"] += iou
        stats["recall"] += float(iou > 0.5)
        stats["obj"] += float(y[best_n, 4, row, col])
        stats["count"] += 1

    def _loss_and_gradient(self, y, z, scale, target):
        """L and dL/dy (float64, (N, num, K, H, W)) from the masks S and targets T."""
        loss = 0.5 * np.sum(scale[:, :, 0:5] * (target[:, :, 0:5] - y[:, :, 0:5]) ** 2)
        dout = np.zeros_like(y)
        dout[:, :, 0:5] = scale[:, :, 0:5] * (y[:, :, 0:5] - target[:, :, 0:5])
        s, t, p, zc = scale[:, :, 5:], target[:, :, 5:], y[:, :, 5:], z[:, :, 5:]
        if self.softmax:
            # CE = -sum_c T_c log p_c; only anchors holding a truth have S > 0.
            loss += -np.sum(s * t * log_softmax(zc, axis=2))
            dout[:, :, 5:] = _divide_floored(-s * t, p, self.output.dtype, "[region] softmax classes")
        else:
            loss += -np.sum(s * (t * log_logistic(zc) + (1 - t) * log_logistic(-zc)))
            slope = activations.gradient(self._anchor_view(self.output)[:, :, 5:], "logistic").astype(np.float64)
            dout[:, :, 5:] = _divide_floored(s * (p - t), slope, self.output.dtype, "[region] logistic classes")
        return float(loss), dout

