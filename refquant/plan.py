"""The quantization plan: one uniform quantizer per quantized tensor of a network, and its JSON
file (docs/SPECIFICATION.md, section 11.2). Also the files of a quantized model (the folded Darknet cfg and weights
beside the plan's JSON): :func:`save_quantized`, :func:`load_quantized`.
"""
import dataclasses
import json
import math
import os

import numpy as np

from refquant import atomic, darknet, validate
from refquant.density.pgm import PiecewiseGaussian
from refquant.folding import folded_cfg_text, is_folded
from refquant.quantizers.uniform import UniformQuantizer
from refquant.yolo.network import NETWORK_INPUT, Network

DEFAULT_BITS_FIRST_LAST = 8
"""Width of the first and last convolution (weights and output) unless told otherwise."""


MIN_BITS, MAX_BITS = 2, 8
"""Widths accepted for weights and activations (int8 weights, activation codes within int16)."""


CODE_LAYERS = ("maxpool", "reorg", "upsample")
"""Layers that move codes without changing their grid."""


HEAD_LAYERS = ("region",)
"""Heads that run in float on the dequantized codes of their input."""


INTEGER_ACTIVATIONS = ("linear", "leaky", "relu")
"""Convolution activations with an integer form (requantization with one or two multipliers)."""


PLAN_FORMAT = "refquant-quantization-plan"


LAYER_ENTRY_KEYS = ("weight_shape", "weights", "weight_channel_steps", "activations", "weights_density",
                    "activations_density")
"""The optional keys of a plan's layer entry (:meth:`QuantizationPlan.to_dict`)."""


PLAN_LAYER_TYPES = tuple(sorted({layer_class.type for layer_class in darknet.LAYER_TYPES.values()}))
"""Layer types a plan may list: the ``type`` of every layer class of :data:`refquant.darknet.LAYER_TYPES`."""


PLAN_VERSION = 1


def input_quantizer():
    """The network input's grid: 8-bit codes 0..255, step 1/255, zero point 0 (8-bit images)."""
    return UniformQuantizer(1.0 / 255.0, 0, 0, 255)


def quantizer_bits(quantizer):
    """Bits needed for the codes of ``quantizer``: ``ceil(log2(qmax - qmin + 1))``."""
    return int(math.ceil(math.log2(quantizer.num_levels)))


def quantizer_to_dict(quantizer):
    """A UniformQuantizer as its plan JSON object (section 11.2), read back by :func:`quantizer_from_dict`."""
    return {"step": quantizer.step, "zero_point": quantizer.zero_point,
            "qmin": quantizer.qmin, "qmax": quantizer.qmax}


QUANTIZER_KEYS = ("step", "zero_point", "qmin", "qmax")


def quantizer_from_dict(data, where):
    """A UniformQuantizer from its JSON object, every field type- and range-checked (the JSON
    schema of section 11.2): step a finite number > 0, zero_point a finite number, qmin < qmax
    integers of int32 codes; ValueError naming ``where`` and the key."""
    validate.json_object(data, where, required=QUANTIZER_KEYS)
    step = validate.json_number(data["step"], f"{where}.step", validate.above(0))
    zero_point = data["zero_point"]
    if isinstance(zero_point, int) and not isinstance(zero_point, bool):  # an integer code stays an int
        zero_point = validate.json_integer(zero_point, f"{where}.zero_point", validate.between(*validate.INT32_RANGE))
    else:
        zero_point = validate.json_number(zero_point, f"{where}.zero_point")
    qmin = validate.json_integer(data["qmin"], f"{where}.qmin", validate.between(*validate.INT32_RANGE))
    qmax = validate.json_integer(data["qmax"], f"{where}.qmax", validate.between(*validate.INT32_RANGE))
    if qmin >= qmax:
        raise validate.InputError(f"{where}: qmin={qmin} must be below qmax={qmax}")
    try:
        return UniformQuantizer(step, zero_point, qmin, qmax)
    except (TypeError, ValueError) as error:
        raise validate.InputError(f"{where}: {error}") from None


def _density_from_dict(data, where):
    """A PiecewiseGaussian from its JSON object: four lists of finite numbers, then the model's
    own checks (sizes, order, weights summing to 1), ValueError naming ``where``."""
    validate.json_object(data, where, required=("breakpoints", "weights", "means", "stds"))
    for key in ("breakpoints", "weights", "means", "stds"):
        for position, value in enumerate(validate.json_list(data[key], f"{where}.{key}")):
            validate.json_number(value, f"{where}.{key}[{position}]")
    try:
        return PiecewiseGaussian.from_dict(data)
    except (KeyError, TypeError, ValueError, ArithmeticError) as error:
        raise validate.InputError(f"{where}: {error}") from None


def conv_indices(net_or_types):
    """Indices of the convolutional layers (from a Network or a list of layer types)."""
    types = _layer_types(net_or_types)
    return [i for i, kind in enumerate(types) if kind == "convolutional"]


def _layer_types(net_or_types):
    if isinstance(net_or_types, Network):
        return [layer.type for layer in net_or_types.layers]
    return list(net_or_types)


def quantized_outputs(net):
    """Indices of the layers with their own output grid: convolutions and multi-input routes."""
    return [i for i, layer in enumerate(net.layers)
            if layer.type == "convolutional" or (layer.type == "route" and len(net.inputs[i]) > 1)]


@dataclasses.dataclass
class QuantizationPlan:
    """Per-layer quantizers of a network (docs/SPECIFICATION.md, section 11.2).

    ``input``: the input grid; ``weights``: {conv index: signed quantizer}; ``activations``:
    {conv or multi-input route index: output quantizer}; ``layer_types`` and ``weight_shapes``
    ({conv index: (M, C, k, k)}) identify the network the plan belongs to (:meth:`check`);
    ``method`` and ``options`` (the widths and flags it was made with) let a plan be refitted;
    ``densities``: {(``"weights"`` or ``"activations"``, index): PiecewiseGaussian} fitted by
    the ``"pgm"`` method; ``network``: the network's name; ``channel_steps``: {conv index: (M,)
    tuple of per-output-channel weight steps} for the layers whose weights are quantized per
    channel (codes and zero point those of ``weights[index]``, one step per output channel; absent:
    the layer's one step, :meth:`weight_steps`). Saved as JSON (:meth:`save`).
    """

    input: UniformQuantizer
    weights: dict
    activations: dict
    layer_types: list
    weight_shapes: dict
    method: str = "manual"
    options: dict = dataclasses.field(default_factory=dict)
    densities: dict = dataclasses.field(default_factory=dict)
    network: str = ""
    channel_steps: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def for_network(cls, net, weights, activations, input=None, method="manual", options=None,
                    densities=None):
        """A plan for ``net`` from given quantizers (e.g. hand-made ones); checked against ``net``."""
        plan = cls(input=input_quantizer() if input is None else input, weights=dict(weights),
                   activations=dict(activations), layer_types=[layer.type for layer in net.layers],
                   weight_shapes={i: tuple(net.layers[i].params["weights"].shape) for i in conv_indices(net)},
                   method=method, options=dict(options or {}), densities=dict(densities or {}),
                   network=net.name)
        plan.check(net)
        return plan

    # -- validation ------------------------------------------------------------------------------

    def check(self, net):
        """ValueError naming the layer unless the plan fits ``net`` and every quantizer is usable.

        Usable: weights signed with zero point 0 and codes within int8; activations with an
        integer zero point inside their codes, at most 256 codes; every convolution and
        multi-input route covered; the input grid integer with at most 256 codes.
        """
        types = [layer.type for layer in net.layers]
        if types != list(self.layer_types):
            raise ValueError(f"plan for {self.network or 'a network'} has layers {self.layer_types}, "
                             f"but {net.name} has {types}")
        for index in conv_indices(net):
            shape = tuple(net.layers[index].params["weights"].shape)
            if tuple(self.weight_shapes.get(index, ())) != shape:
                raise ValueError(f"plan: layer {index} [convolutional] has weights {shape} in {net.name}, "
                                 f"the plan was made for {self.weight_shapes.get(index)}")
            if index not in self.weights:
                raise ValueError(f"plan: layer {index} [convolutional] has no weight quantizer")
            _check_weight_grid(self.weights[index], f"plan: layer {index} [convolutional] weights")
        expected = set(quantized_outputs(net))
        for index in sorted(expected):
            if index not in self.activations:
                raise ValueError(f"plan: layer {index} [{types[index]}] has no output quantizer")
            _check_code_grid(self.activations[index], f"plan: layer {index} [{types[index]}] outputs")
        extra = set(self.activations) - expected
        if extra:
            index = min(extra)
            raise ValueError(f"plan: layer {index} [{types[index] if index < len(types) else '?'}] has an "
                             f"output quantizer but keeps its input's grid (only convolutions and "
                             f"multi-input routes have their own)")
        extra = set(self.weights) - set(conv_indices(net))
        if extra:
            raise ValueError(f"plan: weight quantizers for layers {sorted(extra)}, which are not convolutions")
        for index, steps in self.channel_steps.items():
            where = f"plan: layer {index} [{types[index] if 0 <= index < len(types) else '?'}] weight_channel_steps"
            if index not in self.weights:
                raise ValueError(f"{where}: only a convolution with a weight quantizer has per-channel steps")
            steps = np.asarray(steps, np.float64)
            if steps.shape != self.weight_shapes[index][:1] or not np.all(np.isfinite(steps)) or not np.all(steps > 0):
                raise ValueError(f"{where}: expected {self.weight_shapes[index][0]} finite steps > 0 (one per "
                                 f"output channel), got shape {steps.shape}")
        _check_code_grid(self.input, "plan: input")
        return self

    def weight_steps(self, index):
        """(M,) float64: the weight step of every output channel of convolution ``index``:
        ``channel_steps[index]`` if the layer is quantized per channel, else its one step repeated."""
        if index in self.channel_steps:
            return np.asarray(self.channel_steps[index], np.float64)
        return np.full(self.weight_shapes[index][0], self.weights[index].step)

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self):
        """Plain data for ``json.dump``: the inverse of :meth:`from_dict`."""
        layers = []
        for index, kind in enumerate(self.layer_types):
            entry = {"index": index, "type": kind}
            if index in self.weights:
                entry["weight_shape"] = list(self.weight_shapes[index])
                entry["weights"] = quantizer_to_dict(self.weights[index])
            if index in self.channel_steps:  # written only when present: per-tensor plans stay as they were
                entry["weight_channel_steps"] = [float(step) for step in self.channel_steps[index]]
            if index in self.activations:
                entry["activations"] = quantizer_to_dict(self.activations[index])
            for kind_name in ("weights", "activations"):
                density = self.densities.get((kind_name, index))
                if density is not None:
                    entry[f"{kind_name}_density"] = density.to_dict()
            layers.append(entry)
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "network": self.network,
                "method": self.method, "options": dict(self.options),
                "input": quantizer_to_dict(self.input), "layers": layers}

    @classmethod
    def from_dict(cls, data, where="plan"):
        """Rebuild a plan from :meth:`to_dict`'s output, checked against the JSON schema of
        section 11.2 (types, ranges, finite values, the layers consistent with each other);
        ValueError naming ``where`` and the key for anything else."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise validate.InputError(f"{where}: not a refquant quantization plan "
                                      f"(expected \"format\": \"{PLAN_FORMAT}\")")
        validate.json_object(data, where, required=("format", "version", "input", "layers"),
                             optional=("network", "method", "options"))
        version = data["version"]
        if isinstance(version, bool) or version != PLAN_VERSION:
            raise validate.InputError(f"{where}: plan version {version!r}, this refquant reads {PLAN_VERSION}")
        weights, activations, shapes, densities, types, channel_steps = {}, {}, {}, {}, [], {}
        for position, entry in enumerate(validate.json_list(data["layers"], f"{where}: layers")):
            at = f"{where}: layers[{position}]"
            validate.json_object(entry, at, required=("index", "type"), optional=LAYER_ENTRY_KEYS)
            if validate.json_integer(entry["index"], f"{at}.index") != position:
                raise validate.InputError(f"{at}.index: expected {position} (layers in order), got {entry['index']}")
            kind = validate.json_string(entry["type"], f"{at}.type")
            if kind not in PLAN_LAYER_TYPES:
                raise validate.InputError(f"{at}.type: {kind!r} is not a layer type; expected one of "
                                          f"{', '.join(PLAN_LAYER_TYPES)}")
            types.append(kind)
            if ("weights" in entry) != ("weight_shape" in entry) or ("weights" in entry and kind != "convolutional"):
                raise validate.InputError(f"{at}: weights and weight_shape go together, on a convolutional layer only")
            if "weights" in entry:
                weights[position] = quantizer_from_dict(entry["weights"], f"{at}.weights")
                shape = validate.json_list(entry["weight_shape"], f"{at}.weight_shape", length=4)
                shapes[position] = tuple(validate.json_integer(v, f"{at}.weight_shape[{k}]", validate.at_least(1))
                                         for k, v in enumerate(shape))
            if "weight_channel_steps" in entry:
                if "weights" not in entry:
                    raise validate.InputError(f"{at}.weight_channel_steps: needs the layer's weights quantizer")
                steps = validate.json_list(entry["weight_channel_steps"], f"{at}.weight_channel_steps",
                                           length=shapes[position][0])
                channel_steps[position] = tuple(
                    validate.json_number(v, f"{at}.weight_channel_steps[{k}]", validate.above(0))
                    for k, v in enumerate(steps))
            if "activations" in entry:
                if kind not in ("convolutional", "route"):
                    raise validate.InputError(f"{at}.activations: a [{kind}] layer keeps its input's grid")
                activations[position] = quantizer_from_dict(entry["activations"], f"{at}.activations")
            for kind_name in ("weights", "activations"):
                if f"{kind_name}_density" in entry:
                    densities[(kind_name, position)] = _density_from_dict(entry[f"{kind_name}_density"],
                                                                          f"{at}.{kind_name}_density")
        options = validate.json_object(data.get("options", {}), f"{where}: options")
        return cls(input=quantizer_from_dict(data["input"], f"{where}: input"), weights=weights,
                   activations=activations, layer_types=types, weight_shapes=shapes,
                   method=validate.json_string(data.get("method", "manual"), f"{where}: method"),
                   options=dict(options), densities=densities,
                   network=validate.json_string(data.get("network", ""), f"{where}: network"),
                   channel_steps=channel_steps)

    def save(self, path):
        """Write the plan as JSON to ``path``, all or nothing (:func:`refquant.atomic.write_text`)."""
        atomic.write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path, net=None):
        """Read a plan written by :meth:`save` (:meth:`from_dict`), and with ``net`` check it fits
        (:meth:`check`); ValueError naming the file for anything malformed or not fitting."""
        path = os.fspath(path)
        plan = cls.from_dict(validate.read_json(path, "quantization plan"), where=path)
        if net is not None:
            try:
                plan.check(net)
            except ValueError as error:
                raise validate.InputError(f"{path}: {error}") from None
        return plan


def per_channel_plan(net, plan):
    """``plan`` with every convolution's weights quantized per output channel, symmetric max-abs
    (docs/SPECIFICATION.md, section 11.2): ``step[m] = max |W[m]| / qmax_w`` over the output channel's
    weights of ``net`` (the folded network, float64), ``qmax_w`` the layer's weight grid's largest code;
    an all-zero channel keeps the layer's step. Codes, zero point (0) and widths stay the plan's; so do
    every other field. Returns a new plan (``plan`` is unchanged), checked against ``net``.
    """
    plan.check(net)
    channel_steps = {}
    for index in conv_indices(net):
        weights = net.layers[index].params["weights"].astype(np.float64)
        largest = np.abs(weights.reshape(weights.shape[0], -1)).max(axis=1)
        grid = plan.weights[index]
        steps = np.where(largest > 0, largest / grid.qmax, grid.step)
        channel_steps[index] = tuple(float(step) for step in steps)
    return dataclasses.replace(plan, channel_steps=channel_steps).check(net)


def _check_weight_grid(quantizer, where):
    if not isinstance(quantizer, UniformQuantizer):
        raise TypeError(f"{where}: expected a UniformQuantizer, got {type(quantizer).__name__}")
    if quantizer.zero_point != 0 or quantizer.qmin < -128 or quantizer.qmax > 127:
        raise ValueError(f"{where}: weights need signed codes within int8 and zero point 0, got "
                         f"codes [{quantizer.qmin}, {quantizer.qmax}] zero point {quantizer.zero_point}")


def _check_code_grid(quantizer, where):
    if not isinstance(quantizer, UniformQuantizer):
        raise TypeError(f"{where}: expected a UniformQuantizer, got {type(quantizer).__name__}")
    if not isinstance(quantizer.zero_point, int) or not quantizer.qmin <= quantizer.zero_point <= quantizer.qmax:
        raise ValueError(f"{where}: the zero point must be an integer code in [qmin, qmax] = "
                         f"[{quantizer.qmin}, {quantizer.qmax}] (0 representable), got {quantizer.zero_point}")
    if quantizer.num_levels > 256:
        raise ValueError(f"{where}: at most 8-bit codes (256 levels), got {quantizer.num_levels} levels")


def check_supported(net):
    """ValueError naming the first layer the quantized network cannot run.

    Supported: convolutions with a linear, leaky or relu activation, routes, maxpool, reorg,
    upsample with scale 1, and a region head that no other layer reads.
    """
    consumers = {j for inputs in net.inputs for j in inputs}
    for index, layer in enumerate(net.layers):
        kind = layer.type
        where = f"{net.name}: layer {index} [{kind}]"
        if kind == "convolutional":
            if layer.activation not in INTEGER_ACTIVATIONS:
                raise ValueError(f"{where}: activation {layer.activation!r} has no integer form "
                                 f"(supported: {', '.join(INTEGER_ACTIVATIONS)})")
        elif kind in HEAD_LAYERS:
            if index in consumers:
                raise ValueError(f"{where}: a head must be an output layer, but another layer reads it")
        elif kind == "upsample" and layer.scale != 1:
            raise ValueError(f"{where}: scale={layer.scale} would leave the grid; only scale=1 is supported")
        elif kind not in CODE_LAYERS and kind != "route":
            raise ValueError(f"{where}: not supported by the quantized network (supported: convolutional, "
                             f"route, {', '.join(CODE_LAYERS)}, region)")
        if any(j != NETWORK_INPUT and net.layers[j].type in HEAD_LAYERS for j in net.inputs[index]):
            raise ValueError(f"{where} reads a head's output")


def output_grids(net, plan):
    """The grid of every layer's output codes: list of UniformQuantizer, None for a head.

    Convolutions and multi-input routes: their plan quantizer; maxpool, reorg, upsample and
    single-input routes: their input's grid (:func:`check_supported` first, then the plan).
    """
    check_supported(net)
    plan.check(net)
    grids = []
    for index, layer in enumerate(net.layers):
        sources = [plan.input if j == NETWORK_INPUT else grids[j] for j in net.inputs[index]]
        if index in plan.activations:
            grids.append(plan.activations[index])
        elif layer.type in HEAD_LAYERS:
            grids.append(None)
        else:
            grids.append(sources[0])
    return grids


def layer_bits(net, weight_bits, activation_bits, first_bits=DEFAULT_BITS_FIRST_LAST,
               last_bits=DEFAULT_BITS_FIRST_LAST):
    """{layer index: (weight bits or None, activation bits)} for every quantized output.

    The first and last convolutions get ``first_bits`` / ``last_bits`` for both (None: the
    general widths); routes get ``activation_bits``.
    """
    for name, bits in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                       ("first_bits", first_bits), ("last_bits", last_bits)):
        if bits is None and name in ("first_bits", "last_bits"):
            continue
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    convs = conv_indices(net)
    widths = {}
    for index in quantized_outputs(net):
        bits = (int(weight_bits) if index in convs else None, int(activation_bits))
        if index == convs[-1] and last_bits is not None:
            bits = (int(last_bits), int(last_bits))
        if index == convs[0] and first_bits is not None:
            bits = (int(first_bits), int(first_bits))
        widths[index] = bits
    return widths


def save_quantized(folded, plan, cfg_path, prefix):
    """Save a quantized model without pickle: ``<prefix>.cfg`` (:func:`folded_cfg_text` of the
    network's cfg ``cfg_path``), ``<prefix>.weights`` (Darknet's format, the folded float32
    parameters) and ``<prefix>.plan.json`` (:meth:`QuantizationPlan.save`). Returns the three paths.

    ``folded``: a folded network (e.g. ``TrainingResult.folded``) built from ``cfg_path``; the
    plan is checked against it first.
    """
    if not is_folded(folded):
        raise ValueError(f"{folded.name}: save_quantized writes a folded network; call fold_batchnorm first")
    plan.check(folded)
    prefix = os.fspath(prefix)
    paths = (prefix + ".cfg", prefix + ".weights", prefix + ".plan.json")
    atomic.write_text(paths[0], folded_cfg_text(cfg_path))
    check = darknet.build_network(paths[0])
    if [layer.type for layer in check.layers] != [layer.type for layer in folded.layers]:
        raise ValueError(f"{cfg_path}: its layers are not those of {folded.name}")
    darknet.save_weights(folded, paths[1])
    plan.save(paths[2])
    return paths


def load_quantized(prefix, dtype=np.float32):
    """Read what :func:`save_quantized` wrote: ``(folded network, plan)``, the plan checked
    against the network (ValueError naming the file otherwise)."""
    prefix = os.fspath(prefix)
    folded = darknet.load(prefix + ".cfg", prefix + ".weights", dtype=dtype)
    if not is_folded(folded):
        raise ValueError(f"{prefix}.cfg: has batch-normalized convolutions; not a folded network")
    return folded, QuantizationPlan.load(prefix + ".plan.json", net=folded)
