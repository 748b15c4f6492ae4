"""Darknet's ``[shortcut]`` layer: y = f(alpha * x + beta * from), the residual sum.

Source: pjreddie/darknet ``src/shortcut_layer.c`` and ``shortcut_cpu`` in ``src/blas.c``.
``x`` is the previous layer's output, ``from`` the output of layer ``from=`` (negative
= relative to the shortcut's index, as for route). Darknet also allows different
spatial sizes (sampling with a stride); only equal shapes are supported here, and
anything else is an error. Backward (``backward_shortcut_layer``): with
da = dy * f'(y), dx = alpha * da and dfrom = beta * da.
"""
from refquant.yolo import activations
from refquant.yolo.route import resolve_route_index


class ShortcutLayer:
    """``[shortcut]``: cfg keys from (required), activation=linear, alpha=1, beta=1."""

    type = "shortcut"
    cfg_keys = {"from": ("int", None), "activation": ("str", "linear"),
                "alpha": ("float", 1.0), "beta": ("float", 1.0)}
    multi_input = True

    def __init__(self, activation="linear", alpha=1.0, beta=1.0, **options):
        self.source = options.pop("from")
        if options:
            raise TypeError(f"shortcut: unexpected options {sorted(options)}")
        activations.activation_code(activation)
        self.activation = activation
        self.alpha = alpha
        self.beta = beta
        self.inputs = None
        self.params = {}
        self.grads = {}
        self._y = None

    def resolve(self, own_index):
        """Set ``self.inputs`` = [previous layer, from layer] (absolute indices)."""
        source = resolve_route_index(self.source, own_index)
        if not 0 <= source < own_index:
            raise ValueError(f"shortcut {own_index}: from={self.source} refers to layer {source}, "
                             f"expected an earlier layer (0..{own_index - 1})")
        self.inputs = [own_index - 1, source]
        return self.inputs

    def output_shape(self, input_shapes):
        """[(C, H, W), (C, H, W)] -> (C, H, W); ValueError if the two shapes differ."""
        previous, source = (tuple(s) for s in input_shapes)
        if previous != source:
            raise ValueError(f"shortcut: previous layer outputs {previous} but layer "
                             f"{self.inputs[1] if self.inputs else self.source} outputs {source}; "
                             f"only equal shapes are supported")
        return previous

    def forward(self, inputs, training=False):
        """[x, from] both (N, C, H, W) -> f(alpha * x + beta * from)."""
        x, source = inputs
        self.output_shape([x.shape[1:], source.shape[1:]])
        dtype = x.dtype.type
        self._y = activations.activate(dtype(self.alpha) * x + dtype(self.beta) * source, self.activation)
        return self._y

    def backward(self, dout):
        """dL/dy -> [dL/dx, dL/dfrom]."""
        da = activations.backward(self._y, dout, self.activation)
        dtype = da.dtype.type
        return [dtype(self.alpha) * da, dtype(self.beta) * da]
