"""ONNX export of a quantized detector (docs/SPECIFICATION.md, section 11.9): the plan's network as an
ONNX graph that onnxruntime runs with its integer kernels, in the arithmetic of refquant's
``float-scale`` profile (:mod:`refquant.integer.profiles.float_scale`), so that onnxruntime's codes
equal ``IntegerNetwork.build(net, plan, profile="float-scale")``'s.

The graph is built from the parameters the integer network runs, the folded network lowered by
the float-scale profile (``LoweredNetwork.build(net, plan, profile="float-scale")``: the weight
codes, the int32 biases of :func:`refquant.integer.requantize.quantize_bias`, the pre-activation
grids, the weight steps per tensor or per output channel); every scale is stored as the float32 the
profile uses (:func:`refquant.integer.profiles.float_scale.engine_step`). Layer by layer (default
domain at opset :data:`OPSET`, ``com.microsoft`` at version 1):

- input: uint8 codes (N, C, H, W) of the plan's input grid, ``plan.input.quantize(images)``
  (section 11.5), named :data:`INPUT`. Codes, not float images: the input's rounding is then
  refquant's (a float64 division by ``1/255``), not a float32 ``QuantizeLinear``'s;
- convolution: ``QLinearConv`` with int8 weight codes (zero point 0; one scale per tensor, or one
  per output channel with ``per_channel=True``, which a plan with per-channel steps needs) and the
  int32 bias. Linear: onto the output grid. Leaky: onto the pre-activation grid
  (:func:`refquant.integer.profiles.float_scale.preactivation_grid`), then
  ``com.microsoft.QLinearLeakyRelu`` (alpha 0.1) onto the output grid. Relu: onto the output grid,
  then ``Max`` with the zero point's code (the profile's clamp at the zero point);
- maxpool: ``MaxPool`` on the codes, pads ``[p // 2, p // 2, p - p // 2, p - p // 2]`` for Darknet's total
  padding p (section 8.5: padded positions never win);
- reorg: ``Reshape``, ``Transpose``, ``Reshape`` in Darknet's index order (section 8.6);
- upsample (scale 1): ``Reshape``, ``Expand``, ``Reshape`` (nearest neighbour);
- route: its input (one input) or ``com.microsoft.QLinearConcat`` onto the route's grid (several);
- a grid narrower than uint8 (fewer than 8 bits): ``Clip`` to ``[qmin, qmax]`` after the operator
  producing its codes (onnxruntime's integer operators saturate to the type, 0..255);
- the region head's input: ``DequantizeLinear`` to float32, output :data:`HEAD_INPUT`, beside its
  codes, output :data:`HEAD_CODES`. The head itself (section 8.8) is not exported.

``onnx`` is an optional dependency (``pip install refquant[onnx]``), imported inside the functions
that build a model; importing this module does not import it.
"""
import numpy as np

import refquant
from refquant import atomic
from refquant.integer.lowering import LoweredNetwork
from refquant.integer.profiles.float_scale import engine_step
from refquant.integer.requantize import LEAKY_SLOPE
from refquant.plan import HEAD_LAYERS
from refquant.yolo.network import NETWORK_INPUT

PROFILE = "float-scale"
"""The arithmetic profile whose lowering the graph is built from, and whose codes onnxruntime reproduces."""


OPSET = 13
"""Opset of the default ONNX domain: ``MaxPool``, ``Clip`` and ``Max`` take uint8 from opset 12 on,
``QuantizeLinear``/``DequantizeLinear`` per channel from 13."""


MICROSOFT_OPSET = 1
"""Version of onnxruntime's ``com.microsoft`` domain (``QLinearLeakyRelu``, ``QLinearConcat``)."""


IR_VERSION = 7
"""ONNX IR version of the file (the one opset 13 came with: readable by onnxruntime 1.6 and later)."""


INPUT = "input_codes"
"""The graph's input: uint8 codes (N, C, H, W) of the plan's input grid."""


HEAD_INPUT = "head_input"
"""Output: the region head's input dequantized to float32 (N, C, H, W)."""


HEAD_CODES = "head_codes"
"""Output: the region head's input codes, uint8 (N, C, H, W)."""


LAYER_CODES = "layer{index}"
"""With ``layer_codes=True``, the name of layer ``index``'s output codes (one more output per layer)."""


def _onnx():
    """The ``onnx`` package, or ModuleNotFoundError saying how to install it."""
    try:
        import onnx
    except ImportError as error:
        raise ModuleNotFoundError(f"ONNX export needs the onnx package, which is not installed ({error}): "
                                  f"pip install refquant[onnx]") from None
    return onnx


def export_onnx(net, plan, path, per_channel=False, layer_codes=False):
    """Write the ONNX model of ``net`` quantized by ``plan`` (:func:`onnx_model`) to ``path``, all or
    nothing (:func:`refquant.atomic.write_bytes`). Returns the ``onnx.ModelProto``."""
    model = onnx_model(net, plan, per_channel=per_channel, layer_codes=layer_codes)
    atomic.write_bytes(path, model.SerializeToString())
    return model


def onnx_model(net, plan, per_channel=False, layer_codes=False):
    """The ONNX model of ``net`` (a float network; folded here, ``net`` is unchanged) quantized by ``plan``.

    Input :data:`INPUT`: uint8 codes (N, C, H, W) of ``plan.input``, (C, H, W) the network's input
    shape, N free. Outputs :data:`HEAD_INPUT` (float32) and :data:`HEAD_CODES` (uint8), the input of
    the last layer if it is a region head, else the last layer's output; with ``layer_codes``
    also every layer's codes (:data:`LAYER_CODES`). ``per_channel``: the weight scales as one
    float32 per output channel (equal values for a per-tensor plan), else one per tensor.
    ValueError naming the layer for what the export cannot express (a grid outside uint8 codes).
    """
    onnx = _onnx()
    network = LoweredNetwork.build(net, plan, profile=PROFILE)
    graph = _Graph(onnx)
    shapes = network.net.output_shapes()
    graph.code_input(INPUT, network.plan.input, ("N",) + tuple(network.input_shape), "the network's input")
    names = []
    for index, layer in enumerate(network.layers):
        sources = [INPUT if j == NETWORK_INPUT else names[j] for j in network.inputs[index]]
        if layer.type in HEAD_LAYERS:
            names.append(None)
            continue
        j = network.inputs[index][0]
        input_shape = tuple(network.input_shape) if j == NETWORK_INPUT else shapes[j]
        names.append(_layer(graph, network, index, sources, input_shape, per_channel))
    last = len(network.layers) - 1
    index = network.inputs[last][0] if network.layers[last].type in HEAD_LAYERS else last
    codes = INPUT if index == NETWORK_INPUT else names[index]
    shape = ("N",) + tuple(network.input_shape if index == NETWORK_INPUT else shapes[index])
    graph.dequantized_output(codes, HEAD_INPUT, HEAD_CODES, shape)
    if layer_codes:
        for index, name in enumerate(names):
            if name is not None:
                graph.code_output(name, LAYER_CODES.format(index=index), ("N",) + tuple(shapes[index]))
    return graph.model(network.net.name, _description(network, per_channel, network.plan.input),
                       _metadata(network, per_channel, network.plan.input))


def convolution_model(net, plan, index, per_channel=False):
    """The ONNX model of convolution ``index`` of ``net`` quantized by ``plan``, alone.

    Input :data:`INPUT`: uint8 codes (N, C, H, W) of the convolution's input grid (H, W free).
    Outputs: ``"codes"``, the layer's output codes; for a leaky layer also ``"preactivation"``,
    the codes of ``QLinearConv`` on the pre-activation grid. The same nodes as in :func:`onnx_model`.
    """
    onnx = _onnx()
    network = LoweredNetwork.build(net, plan, profile=PROFILE)
    kind = network.layers[index].type if 0 <= index < len(network.layers) else None
    if kind != "convolutional":
        raise ValueError(f"{network.net.name}: layer {index} {f'[{kind}] ' if kind else ''}is not a convolution "
                         f"(convolutions: {[i for i, layer in enumerate(network.layers) if layer.type == 'convolutional']})")
    conv = network.fixed[index]
    graph = _Graph(onnx)
    channels = conv.weight_codes.shape[1]
    graph.code_input(INPUT, conv.input_grid, ("N", channels, "H", "W"), f"layer {index}'s input")
    out = _convolution(graph, conv, INPUT, f"layer{index}", per_channel)
    outputs = [("codes", out)]
    if conv.activation == "leaky":
        outputs.append(("preactivation", f"layer{index}_preactivation"))
    for name, tensor in outputs:
        graph.code_output(tensor, name, ("N", conv.weight_codes.shape[0], "H_out", "W_out"))
    return graph.model(f"{network.net.name} layer {index}", _description(network, per_channel, conv.input_grid),
                       _metadata(network, per_channel, conv.input_grid))


def _description(network, per_channel, input_grid):
    return (f"refquant {refquant.__version__}: {network.name}, plan method {network.plan.method!r}, "
            f"{'per-channel' if per_channel else 'per-tensor'} weight scales; the float-scale profile's "
            f"arithmetic (docs/SPECIFICATION.md, sections 11.8-11.9). Input {INPUT}: uint8 codes of the "
            f"grid of step {input_grid.step!r}, zero point {input_grid.zero_point}.")


def _metadata(network, per_channel, input_grid):
    """The model's ``metadata_props``: what produced it, and the input grid (float64 step written
    exactly, ``repr``) that turns images into :data:`INPUT` codes, ``quantize`` of section 4."""
    return {"refquant.version": refquant.__version__, "refquant.profile": PROFILE,
            "refquant.plan_method": network.plan.method,
            "refquant.weight_scales": "per-channel" if per_channel else "per-tensor",
            "refquant.input_step": repr(float(input_grid.step)), "refquant.input_zero_point": str(input_grid.zero_point),
            "refquant.input_qmin": str(input_grid.qmin), "refquant.input_qmax": str(input_grid.qmax)}


def _layer(graph, network, index, sources, input_shape, per_channel):
    """Add layer ``index``'s nodes reading ``sources`` (the first of shape ``input_shape``, (C, H, W));
    returns the name of its output codes."""
    layer = network.layers[index]
    name = f"layer{index}"
    kind = layer.type
    if kind == "convolutional":
        return _convolution(graph, network.fixed[index], sources[0], name, per_channel)
    if kind == "route":
        if len(sources) == 1:
            return sources[0]
        return _route(graph, network.fixed[index], sources, name)
    if kind == "maxpool":
        return _maxpool(graph, layer, sources[0], name, f"layer {index} [maxpool]")
    if kind == "reorg":
        return _reorg(graph, layer.stride, sources[0], input_shape, name)
    if kind == "upsample":
        return _upsample(graph, layer.stride, sources[0], input_shape, name)
    raise ValueError(f"layer {index} [{kind}]: no ONNX form")  # output_grids refused it already


def _convolution(graph, conv, source, name, per_channel):
    """``QLinearConv`` (+ ``QLinearLeakyRelu`` or ``Max``) of a convolution as the float-scale profile
    lowers it (``refquant.integer.profiles.lowered.ProfileConvolution``)."""
    where = f"layer {conv.index} [convolutional]"
    weights = graph.constant(f"{name}_weights", conv.weight_codes.astype(np.int8))
    steps = np.asarray(conv.weight_steps, np.float64)
    if not per_channel:
        if np.any(steps != steps[0]):
            raise ValueError(f"{where}: the plan quantizes the weights per output channel; export with "
                             f"per_channel=True (refquant export onnx --per-channel)")
        steps = steps[0]
    weight_scale = graph.constant(f"{name}_weights_scale", engine_step(steps))
    weight_zero_point = graph.constant(f"{name}_weights_zero_point", np.zeros(steps.shape, np.int8))
    bias = graph.constant(f"{name}_bias", conv.bias.astype(np.int32))
    leaky = conv.activation == "leaky"
    linear_grid = conv.linear_grid  # the pre-activation grid of a leaky layer, else the output grid
    linear = {"leaky": f"{name}_preactivation", "relu": f"{name}_linear"}.get(conv.activation, name)
    padding = [conv.padding] * 4
    graph.codes_node("QLinearConv", [source, *graph.grid_constants(source), weights, weight_scale, weight_zero_point,
                                     *graph.grid_constants_of(linear_grid, linear), bias], linear, linear_grid, where,
                     kernel_shape=[conv.size, conv.size], strides=[conv.stride, conv.stride], pads=padding)
    if leaky:
        return graph.codes_node("QLinearLeakyRelu", [linear, *graph.grid_constants(linear),
                                                     *graph.grid_constants_of(conv.output_grid, name)],
                                name, conv.output_grid, where, domain="com.microsoft", alpha=float(LEAKY_SLOPE))
    if conv.activation == "relu":
        zero = graph.constant(f"{name}_zero_code", np.array(conv.output_grid.zero_point, np.uint8))
        return graph.codes_node("Max", [linear, zero], name, conv.output_grid, where)
    return linear


def _route(graph, route, sources, name):
    """``com.microsoft.QLinearConcat`` of several inputs onto the route's grid (axis 1)."""
    inputs = list(graph.grid_constants_of(route.output_grid, name))
    for source in sources:
        inputs += [source, *graph.grid_constants(source)]
    return graph.codes_node("QLinearConcat", inputs, name, route.output_grid, f"layer {route.index} [route]",
                            domain="com.microsoft", axis=1)


def _maxpool(graph, layer, source, name, where):
    """``MaxPool`` with Darknet's total padding p split ``p // 2`` before, the rest after."""
    before, after = layer.padding // 2, layer.padding - layer.padding // 2
    if after >= layer.size:  # onnxruntime refuses a pad as large as the kernel
        raise ValueError(f"{where}: padding {layer.padding} puts {after} rows after the image, not fewer than "
                         f"size {layer.size}, which ONNX's MaxPool cannot pad")
    graph.same_grid(name, source)
    return graph.node("MaxPool", [source], name, kernel_shape=[layer.size, layer.size],
                      strides=[layer.stride, layer.stride], pads=[before, before, after, after])


def _reorg(graph, stride, source, input_shape, name):
    """Darknet's reorg (``refquant.yolo.reorg.reorg_forward``): the image's codes read as
    (C/s^2, H, s, W, s), transposed to (s, s, C/s^2, H, W), read as (C s^2, H/s, W/s)."""
    channels, height, width = input_shape
    s = stride
    grid = graph.constant(f"{name}_grid_shape", np.array([0, channels // (s * s), height, s, width, s], np.int64))
    out = graph.constant(f"{name}_shape", np.array([0, channels * s * s, height // s, width // s], np.int64))
    graph.node("Reshape", [source, grid], f"{name}_grid")
    graph.node("Transpose", [f"{name}_grid"], f"{name}_transposed", perm=[0, 3, 5, 1, 2, 4])
    graph.same_grid(name, source)
    return graph.node("Reshape", [f"{name}_transposed", out], name)


def _upsample(graph, stride, source, input_shape, name):
    """Nearest-neighbour upsampling by ``stride`` (scale 1): (C, H, 1, W, 1) broadcast to
    (C, H, s, W, s), read as (C, H s, W s)."""
    channels, height, width = input_shape
    s = stride
    spread = graph.constant(f"{name}_spread_shape", np.array([0, channels, height, 1, width, 1], np.int64))
    expand = graph.constant(f"{name}_expand_shape", np.array([1, 1, 1, s, 1, s], np.int64))
    out = graph.constant(f"{name}_shape", np.array([0, channels, height * s, width * s], np.int64))
    graph.node("Reshape", [source, spread], f"{name}_spread")
    graph.node("Expand", [f"{name}_spread", expand], f"{name}_expanded")
    graph.same_grid(name, source)
    return graph.node("Reshape", [f"{name}_expanded", out], name)


UINT8_CODES = (0, 255)
"""The codes of an ONNX uint8 tensor, to which onnxruntime's integer operators saturate."""


def _checked_grid(grid, where):
    """``grid`` if its codes are uint8 codes (0 <= qmin <= zero point <= qmax <= 255, an integer zero
    point), else ValueError naming ``where`` (the ``"kl"`` method's signed codes, for one)."""
    if not (isinstance(grid.zero_point, int) and UINT8_CODES[0] <= grid.qmin <= grid.zero_point <= grid.qmax
            <= UINT8_CODES[1]):
        raise ValueError(f"{where}: ONNX export needs unsigned 8-bit codes (0 <= qmin <= zero point <= qmax "
                         f"<= 255, an integer zero point), got codes [{grid.qmin}, {grid.qmax}] zero point "
                         f"{grid.zero_point!r}")
    return grid


class _Graph:
    """An ONNX graph under construction: nodes, initializers, and the grid of every code tensor
    (whose float32 scale and uint8 zero point become initializers on first use)."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.grids = {}  # tensor name -> UniformQuantizer of its codes
        self._grid_constants = {}

    def constant(self, name, value):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, output, domain="", **attributes):
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], name=output, domain=domain,
                                                     **attributes))
        return output

    def codes_node(self, op, inputs, name, grid, where, domain="", **attributes):
        """Node ``op`` writing tensor ``name``, codes of ``grid`` (uint8 codes: ValueError naming ``where``
        otherwise). When ``grid`` has fewer codes than uint8's 0..255, ``op`` writes ``<name>_saturated``
        (saturated to 0..255 by onnxruntime's integer kernels) and ``Clip(qmin, qmax)`` writes ``name``."""
        self.grids[name] = _checked_grid(grid, where)
        if (grid.qmin, grid.qmax) == UINT8_CODES:
            return self.node(op, inputs, name, domain=domain, **attributes)
        saturated = self.node(op, inputs, f"{name}_saturated", domain=domain, **attributes)
        low = self.constant(f"{name}_qmin", np.array(grid.qmin, np.uint8))
        high = self.constant(f"{name}_qmax", np.array(grid.qmax, np.uint8))
        return self.node("Clip", [saturated, low, high], name)

    def same_grid(self, name, source):
        self.grids[name] = self.grids[source]

    def grid_constants(self, name):
        """(scale, zero point) initializers of tensor ``name``'s grid (:meth:`grid_constants_of`)."""
        return self.grid_constants_of(self.grids[name], name)

    def grid_constants_of(self, grid, name):
        """(scale, zero point) initializers of ``grid``: float32 ``engine_step(step)``, uint8; made on
        first use (named after tensor ``name``), shared by every tensor on the same grid."""
        key = (float(grid.step), grid.zero_point)
        if key not in self._grid_constants:
            prefix = f"{name}_grid"
            self._grid_constants[key] = (self.constant(f"{prefix}_scale", engine_step(grid.step)),
                                         self.constant(f"{prefix}_zero_point", np.array(grid.zero_point, np.uint8)))
        return self._grid_constants[key]

    def code_input(self, name, grid, shape, where):
        self.grids[name] = _checked_grid(grid, where)
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, self.onnx.TensorProto.UINT8, list(shape)))

    def code_output(self, tensor, name, shape):
        """Graph output ``name`` holding the codes of ``tensor`` (an Identity node when the names differ)."""
        if tensor != name:
            self.node("Identity", [tensor], name)
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, self.onnx.TensorProto.UINT8, list(shape)))

    def dequantized_output(self, tensor, name, codes_name, shape):
        """Outputs ``name``: ``DequantizeLinear(tensor)`` (float32), and ``codes_name``: its codes."""
        self.node("DequantizeLinear", [tensor, *self.grid_constants(tensor)], name)
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, list(shape)))
        self.code_output(tensor, codes_name, shape)

    def model(self, name, description, metadata):
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid("com.microsoft", MICROSOFT_OPSET)],
                                  producer_name="refquant", producer_version=refquant.__version__,
                                  doc_string=description)
        model.ir_version = IR_VERSION
        helper.set_model_props(model, metadata)
        self.onnx.checker.check_model(model)
        return model
