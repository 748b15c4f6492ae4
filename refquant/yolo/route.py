"""Darknet's ``[route]`` layer: concatenation of earlier layers' outputs along channels.

Source: pjreddie/darknet ``src/route_layer.c`` and ``parse_route`` in ``src/parser.c``.
``layers=`` lists layer indices; a negative index is relative to the route's own
index (``if(index < 0) index = params.index + index``), so in layer 16 ``-9``
means layer 7. Darknet copies each input's flat per-image buffer one after the
other, which is the channel concatenation when all inputs share H and W (Darknet
sets the output shape to 0x0x0 otherwise; here that is an error). Backward adds
each slice of the gradient to the layer it came from. The forward is dtype-generic.
"""
import numpy as np


def resolve_route_index(index, own_index):
    """Absolute layer index of a route/shortcut reference (negative = relative, Darknet's rule)."""
    return own_index + index if index < 0 else index


def route_forward(inputs):
    """list of (N, C_k, H, W) arrays -> (N, sum C_k, H, W), any dtype."""
    return inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=1)


def route_backward(dout, channels):
    """Split dL/dy (N, sum C_k, H, W) back into the inputs' gradients, C_k = ``channels[k]``."""
    return np.split(dout, np.cumsum(channels)[:-1], axis=1)


class RouteLayer:
    """``[route]``: cfg key layers (required). ``inputs`` holds the absolute indices once built."""

    type = "route"
    cfg_keys = {"layers": ("ints", None)}
    multi_input = True

    def __init__(self, layers):
        if len(layers) == 0:
            raise ValueError("route: layers must name at least one layer")
        self.layers = list(layers)
        self.inputs = None
        self.params = {}
        self.grads = {}
        self._channels = None

    def resolve(self, own_index):
        """Set ``self.inputs`` to absolute indices; ValueError unless each is an earlier layer."""
        inputs = [resolve_route_index(i, own_index) for i in self.layers]
        for given, absolute in zip(self.layers, inputs):
            if not 0 <= absolute < own_index:
                raise ValueError(f"route {own_index}: layers={given} refers to layer {absolute}, "
                                 f"expected an earlier layer (0..{own_index - 1})")
        self.inputs = inputs
        return inputs

    def output_shape(self, input_shapes):
        """list of (C_k, H, W) -> (sum C_k, H, W); ValueError if the H, W differ."""
        first = input_shapes[0]
        for index, shape in zip(self.inputs or range(len(input_shapes)), input_shapes):
            if tuple(shape[1:]) != tuple(first[1:]):
                raise ValueError(f"route: layer {index} outputs {shape[1]}x{shape[2]} but the first input "
                                 f"outputs {first[1]}x{first[2]}; concatenation needs equal sizes")
        return (sum(s[0] for s in input_shapes), first[1], first[2])

    def forward(self, inputs, training=False):
        """list of (N, C_k, H, W) -> (N, sum C_k, H, W)."""
        self.output_shape([x.shape[1:] for x in inputs])
        self._channels = [x.shape[1] for x in inputs]
        return route_forward(inputs)

    def backward(self, dout):
        """dL/dy -> list of dL/dx_k, one per input."""
        return route_backward(dout, self._channels)
