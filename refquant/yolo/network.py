"""A Darknet network: layers in cfg order, the wiring between them, forward and backward.

Source: pjreddie/darknet ``src/network.c`` (``forward_network``, ``backward_network``)
and ``parse_network_cfg`` in ``src/parser.c``. Layer i is the i-th section after
``[net]``; its input is layer i-1's output (the network's input for layer 0),
except for multi-input layers (route, shortcut) whose ``inputs`` list the layers
they read. Backward runs the layers in reverse and adds every input gradient to
the gradient of the layer that produced that input, as Darknet's ``net.delta``
accumulation does.
"""
import copy
import math

import numpy as np

from refquant import threads

NETWORK_INPUT = -1
"""The index standing for the network's input in a layer's ``inputs``."""


class NetworkShapeError(ValueError):
    """An input or layer shape that does not fit; ``layer_index`` names the layer (or None)."""

    def __init__(self, message, layer_index=None):
        super().__init__(message)
        self.layer_index = layer_index


class Network:
    """Layers plus wiring. Build with ``refquant.darknet.load`` rather than directly.

    Attributes: ``layers`` (list), ``inputs`` (list of lists of layer indices, -1 = the
    network input), ``input_shape`` (C, H, W) from the cfg's ``[net]``, ``hyperparameters``
    (typed ``[net]`` options), ``dtype``, ``seen`` (images seen in training, stored in the
    weights file), ``weights_header`` (major, minor, revision), ``name``.
    """

    def __init__(self, layers, input_shape, dtype=np.float32, seed=0, hyperparameters=None, name="network",
                 max_bytes=None):
        """Wire ``layers``, check every shape at ``input_shape`` and initialise the parameters.

        NetworkShapeError (with ``layer_index``) if a layer cannot take its input; with
        ``max_bytes``, NetworkSizeError before any parameter is allocated if the parameters and
        one image's activations would need more (:func:`memory_estimate`).
        """
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"network dtype must be float32 or float64, got {self.dtype}")
        self.layers = list(layers)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.hyperparameters = dict(hyperparameters or {})
        self.name = name
        self.seen = 0
        self.weights_header = (0, 2, 0)
        self.inputs = []
        for index, layer in enumerate(self.layers):
            if getattr(layer, "multi_input", False):
                try:
                    self.inputs.append(list(layer.resolve(index)))
                except ValueError as error:
                    raise NetworkShapeError(str(error), index) from None
            else:
                self.inputs.append([index - 1])
        if max_bytes is not None:
            check_memory(self, max_bytes)
        rng = np.random.default_rng(seed)
        shapes = [self.input_shape]
        for index, layer in enumerate(self.layers):
            in_shapes = [self.input_shape if j == NETWORK_INPUT else shapes[j + 1] for j in self.inputs[index]]
            if hasattr(layer, "build"):
                layer.build(in_shapes[0], dtype=self.dtype, rng=rng)
            shapes.append(self._layer_output_shape(index, in_shapes))
        self.training = False
        self._has_forward = False  # backward needs the caches of a forward pass
        self._consumers = self._count_consumers()

    # ------------------------------------------------------------ shapes

    def _layer_output_shape(self, index, in_shapes):
        layer = self.layers[index]
        try:
            arg = in_shapes if getattr(layer, "multi_input", False) else in_shapes[0]
            return tuple(int(v) for v in layer.output_shape(arg))
        except ValueError as error:
            text = str(error)
            for prefix in (f"{layer.type}: ", f"[{layer.type}] layer: "):
                text = text[len(prefix):] if text.startswith(prefix) else text
            raise NetworkShapeError(f"layer {index} [{layer.type}]: {text}", index) from None

    def output_shapes(self, input_shape=None):
        """Output shape (C, H, W) of every layer for inputs of ``input_shape`` (default the cfg's).

        NetworkShapeError naming the first layer that cannot take its input.
        """
        input_shape = self.input_shape if input_shape is None else tuple(int(v) for v in input_shape)
        if len(input_shape) != 3:
            raise NetworkShapeError(f"{self.name}: input shape must be (C, H, W), got {input_shape}")
        if input_shape[0] != self.input_shape[0]:
            raise NetworkShapeError(f"{self.name}: input has {input_shape[0]} channels, the network "
                                    f"takes {self.input_shape[0]} ([net] channels)")
        shapes = []
        for index in range(len(self.layers)):
            in_shapes = [input_shape if j == NETWORK_INPUT else shapes[j] for j in self.inputs[index]]
            shapes.append(self._layer_output_shape(index, in_shapes))
        return shapes

    def stride(self):
        """The total downsampling factor: input width / last layer's output width at the cfg's size."""
        return self.input_shape[2] // self.output_shapes()[-1][2]

    def _count_consumers(self):
        consumers = [0] * (len(self.layers) + 1)
        for inputs in self.inputs:
            for j in inputs:
                consumers[j + 1] += 1
        return consumers

    def output_layers(self):
        """Indices of the layers whose output no other layer reads (the heads)."""
        return [i for i in range(len(self.layers)) if self._consumers[i + 1] == 0]

    # ------------------------------------------------------------ passes

    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array (N, C, H, W), got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{self.name}: input must be a float array, got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[0] < 1:
            raise NetworkShapeError(f"{self.name}: input must have shape (N, C, H, W) with N >= 1, got {x.shape}")
        self.output_shapes(x.shape[1:])  # every layer checked before any computation
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x, training=False, return_all=False):
        """x (N, C, H, W) float -> the last layer's output, or every layer's with ``return_all``.

        Any H, W that the layers accept (every multiple of the network's stride does); x is
        converted to the network's dtype. training=True normalises with batch statistics and
        updates the rolling averages (Darknet's training forward). The shapes of all layers are
        checked before anything is computed (NetworkShapeError naming the layer).
        """
        x = self._check_input(x)
        threads.fit()  # the thread pools sized to the cores free now (refquant.threads)
        self.training = bool(training)
        self._has_forward = False
        outputs = []
        for index, layer in enumerate(self.layers):
            sources = [x if j == NETWORK_INPUT else outputs[j] for j in self.inputs[index]]
            if getattr(layer, "multi_input", False):
                outputs.append(layer.forward(sources, training=training))
            else:
                outputs.append(layer.forward(sources[0], training=training))
        self._has_forward = True
        return outputs if return_all else outputs[-1]

    def backward(self, dout, return_all=False, input_gradient=True):
        """dL/d(output) -> dL/dx (N, C, H, W), filling every layer's ``grads``.

        ``dout``: an array for the last layer, or a dict {layer index: array} for networks
        with several heads (yolov3-tiny). Uses the mode (training/inference) of the last
        forward. With ``return_all``, returns (dx, [dL/d output of every layer]).
        ``input_gradient=False`` skips dL/dx where a convolution reads the input (returns
        None then), as Darknet's training does; the parameter gradients are unchanged.
        """
        if not self._has_forward:
            raise RuntimeError(f"{self.name}: backward needs a forward pass first (none since the last "
                               f"clear_caches or failed forward)")
        deltas = [None] * len(self.layers)
        if isinstance(dout, dict):
            for index, grad in dout.items():
                deltas[index] = np.asarray(grad, dtype=self.dtype)
        else:
            deltas[-1] = np.asarray(dout, dtype=self.dtype)
        input_delta = None
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            if deltas[index] is None:  # a layer no gradient reaches (e.g. a head without dout)
                if hasattr(layer, "zero_grads"):
                    layer.zero_grads()
                continue
            if not input_gradient and self.inputs[index] == [NETWORK_INPUT] and layer.type == "convolutional":
                layer.backward(deltas[index], input_gradient=False)
                continue
            grads = layer.backward(deltas[index])
            if not getattr(layer, "multi_input", False):
                grads = [grads]
            for j, grad in zip(self.inputs[index], grads):
                if j == NETWORK_INPUT:
                    input_delta = grad if input_delta is None else input_delta + grad
                elif deltas[j] is None:
                    deltas[j] = grad
                else:
                    deltas[j] = deltas[j] + grad
        if input_delta is None and input_gradient:
            raise ValueError(f"{self.name}: backward reached no path to the input from the given gradients")
        return (input_delta, deltas) if return_all else input_delta

    _CACHE_ATTRIBUTES = ("_cache", "_columns", "_y", "_input_shape", "_channels", "input", "output", "_workspace")
    """Layer attributes that only hold what a forward pass keeps for backward (or scratch space)."""

    def clear_caches(self):
        """Drop what the last forward kept for backward (inputs, columns, outputs) to free memory;
        the next forward recreates them."""
        self._has_forward = False
        for layer in self.layers:
            for name in self._CACHE_ATTRIBUTES:
                if name in vars(layer):
                    vars(layer)[name] = {} if name == "_workspace" else None

    def copy(self):
        """An independent deep copy of the network (parameters, hyperparameters, wiring), without
        the forward caches, which can be large; this network keeps its own."""
        stashed, has_forward = {}, self._has_forward
        for index, layer in enumerate(self.layers):
            for name in self._CACHE_ATTRIBUTES:
                if name in vars(layer):
                    stashed[(index, name)] = vars(layer)[name]
        try:
            self.clear_caches()
            return copy.deepcopy(self)
        finally:
            for (index, name), value in stashed.items():
                vars(self.layers[index])[name] = value
            self._has_forward = has_forward

    # ------------------------------------------------------------ description

    def parameters(self):
        """[(layer index, name, array)] of every stored parameter, in layer order."""
        return [(i, name, p) for i, layer in enumerate(self.layers) for name, p in layer.params.items()]

    def parameter_count(self):
        """Total number of stored values (weights, biases, batch-norm vectors)."""
        return int(sum(p.size for _, _, p in self.parameters()))

    def summary(self, input_shape=None):
        """Darknet's layer table: one line per layer with its input and output shapes.

        Columns as ``parse_network_cfg`` prints them (layer, filters, size/stride, input
        W x H x C -> output W x H x C, BFLOPs for convolutions), plus the parameter count.
        """
        input_shape = self.input_shape if input_shape is None else tuple(input_shape)
        shapes = self.output_shapes(input_shape)
        lines = ["layer     filters    size              input                output                            params"]
        total_flops = 0
        for index, layer in enumerate(self.layers):
            in_shape = input_shape if self.inputs[index][0] == NETWORK_INPUT else shapes[self.inputs[index][0]]
            line, flops = describe_layer(layer, self.inputs[index], in_shape, shapes[index])
            total_flops += flops
            count = int(sum(p.size for p in layer.params.values()))
            lines.append(f"{index:5d} {line:<78s}{count:>10d}")
        lines.append(f"total: {len(self.layers)} layers, {self.parameter_count()} parameters, "
                     f"{total_flops / 1e9:.3f} BFLOPs at {input_shape[2]} x {input_shape[1]} x {input_shape[0]}")
        return "\n".join(lines)


class NetworkSizeError(NetworkShapeError):
    """A network too large to build; ``layer_index`` names its largest layer (None: the input)."""


def memory_estimate(net):
    """[(layer index, parameter bytes, output bytes)], the input first (index None): what
    ``net``'s parameters and one image's activations need, from the shapes alone (before
    :meth:`Network.__init__` allocates them).

    Parameters: the values ``layer.build`` allocates (``stored_values``); activations: the
    input and every layer's output for one image. Training triples the parameters (gradients,
    momentum) and multiplies the activations by the batch: this is the least a run needs.
    """
    itemsize = net.dtype.itemsize
    shapes = [net.input_shape]
    parts = [(None, 0, itemsize * math.prod(net.input_shape))]
    for index, layer in enumerate(net.layers):
        in_shapes = [net.input_shape if j == NETWORK_INPUT else shapes[j + 1] for j in net.inputs[index]]
        shapes.append(net._layer_output_shape(index, in_shapes))
        values = layer.stored_values(in_shapes[0]) if hasattr(layer, "stored_values") else 0
        parts.append((index, itemsize * values, itemsize * math.prod(shapes[-1])))
    return parts


def check_memory(net, max_bytes):
    """NetworkSizeError when :func:`memory_estimate` exceeds ``max_bytes``, naming the input size
    and the layer that needs the most (its ``layer_index`` when parameters dominate)."""
    parts = memory_estimate(net)
    parameters = sum(part[1] for part in parts)
    activations = sum(part[2] for part in parts)
    total = parameters + activations
    if total <= max_bytes:
        return
    from refquant.validate import format_bytes  # the network module stays importable on its own
    channels, height, width = net.input_shape
    index, stored, output = max(parts[1:], key=lambda part: part[1] + part[2])
    layer = net.layers[index]
    keys = {"convolutional": f"filters={getattr(layer, 'filters', '?')}, size={getattr(layer, 'size', '?')}",
            "connected": f"output={getattr(layer, 'outputs', '?')}"}.get(layer.type, "its output shape")
    raise NetworkSizeError(
        f"the network needs {format_bytes(total)} ({total} bytes), above the limit of {format_bytes(max_bytes)} "
        f"(REFQUANT_MAX_BYTES): {format_bytes(parameters)} of parameters and {format_bytes(activations)} of "
        f"activations for one image of [net] width={width}, height={height}, channels={channels}; the largest "
        f"layer is {index} [{layer.type}] ({keys}) with {format_bytes(stored)} of parameters and "
        f"{format_bytes(output)} of output", index if parameters >= activations else None)


def _whc(shape):
    c, h, w = shape
    return f"{w:4d} x{h:4d} x{c:4d}"


def describe_layer(layer, inputs, in_shape, out_shape):
    """(one summary line in Darknet's format, flops) for a layer."""
    kind = layer.type
    flops = 0
    if kind == "convolutional":
        flops = layer.flops(in_shape)
        text = (f"conv  {layer.filters:5d} {layer.size:2d} x{layer.size:2d} /{layer.stride:2d}  "
                f"{_whc(in_shape)}   ->  {_whc(out_shape)}  {flops / 1e9:5.3f} BFLOPs")
    elif kind == "maxpool":
        text = (f"max          {layer.size} x {layer.size} / {layer.stride}  "
                f"{_whc(in_shape)}   ->  {_whc(out_shape)}")
    elif kind == "reorg":
        text = f"reorg              /{layer.stride:2d}  {_whc(in_shape)}   ->  {_whc(out_shape)}"
    elif kind == "upsample":
        text = f"upsample           {layer.stride:2d}x  {_whc(in_shape)}   ->  {_whc(out_shape)}"
    elif kind == "route":
        text = f"{'route  ' + ' '.join(str(j) for j in inputs):<43s}->  {_whc(out_shape)}"
    elif kind == "shortcut":
        text = f"res  {inputs[1]:3d}                {_whc(in_shape)}   ->  {_whc(out_shape)}"
    elif kind == "connected":
        flops = 2 * int(np.prod(in_shape)) * layer.outputs
        text = f"{'connected':<24s}{int(np.prod(in_shape)):8d}  ->  {layer.outputs:4d}"
    elif kind == "region":
        text = f"{'detection (region)':<43s}->  {_whc(out_shape)}"
    else:
        text = f"{kind:<43s}->  {_whc(out_shape)}"
    return text, flops
