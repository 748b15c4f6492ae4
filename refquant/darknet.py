"""Darknet's two file formats: the ``.cfg`` network description and the ``.weights`` binary.

Sources, pjreddie/darknet: ``read_cfg`` and ``parse_network_cfg`` in ``src/parser.c``
(sections, comments, options), ``option_list.c`` (``key=value``), ``parse_net_options``
(the ``[net]`` hyperparameters), and ``load_weights_upto`` / ``save_weights_upto``
with ``load_convolutional_weights`` / ``save_convolutional_weights`` (the binary).

The cfg, as Darknet reads it: every whitespace character is removed from a line
(``strip`` in ``src/utils.c``, so ``anchors = 1, 2`` is ``anchors=1,2``); empty
lines and lines starting with ``#`` or ``;`` are comments; ``[name]`` opens a
section; anything else is ``key=value`` in the current section. The first section
is ``[net]`` (or ``[network]``); the i-th section after it is layer i. Unlike
Darknet, which prints a warning and goes on, refquant refuses an unknown
section, an unknown or repeated key, a missing required key and a malformed
value, naming file, line and key (:class:`CfgError`). Numbers are read strictly
(:func:`refquant.validate.parse_integer`, :func:`refquant.validate.parse_decimal`):
Darknet's ``atoi``/``atof`` read the longest prefix (``size=3x`` is 3, ``nan`` is
NaN), refquant takes the whole value as ASCII decimal, finite, within the key's
range (:data:`KEY_RANGES`), and refuses a network whose parameters and one
image's activations would need more than
:data:`refquant.validate.MAX_ALLOCATION_BYTES` before allocating any of it.

The weights file, all little-endian: int32 major, minor, revision; the images seen
so far, ``seen``, as a 64-bit integer when ``major*10 + minor >= 2`` (and major,
minor < 1000) and as a 32-bit one otherwise; then, for every convolutional layer
in order, float32 biases (filters), and when ``batch_normalize=1`` scales,
rolling mean, rolling variance (filters each), then the weights
(filters x channels x size x size); for every connected layer, biases, weights
(outputs x inputs, or inputs x outputs when major or minor exceeds 1000), then the
batch-norm vectors. Nothing else: the file must be exactly that long. Unlike
Darknet, a file with NaN or infinite values or a negative rolling variance is
refused, naming the layer and the count (``check_values=False`` reads it anyway).
"""
import os

import numpy as np

from refquant import atomic, validate
from refquant.yolo.connected import ConnectedLayer
from refquant.yolo.convolutional import ConvolutionalLayer
from refquant.yolo.detection import DetectionLayer
from refquant.yolo.maxpool import MaxpoolLayer
from refquant.yolo.network import Network
from refquant.yolo.region import RegionLayer
from refquant.yolo.reorg import ReorgLayer
from refquant.yolo.route import RouteLayer
from refquant.yolo.shortcut import ShortcutLayer
from refquant.yolo.upsample import UpsampleLayer
from refquant.yolo.yolo_head import YoloLayer


class CfgError(validate.InputError):
    """A cfg or weights file that refquant cannot read; the message names file, line and key."""


LAYER_TYPES = {
    "convolutional": ConvolutionalLayer, "conv": ConvolutionalLayer,
    "maxpool": MaxpoolLayer, "max": MaxpoolLayer,
    "route": RouteLayer,
    "reorg": ReorgLayer,
    "upsample": UpsampleLayer,
    "shortcut": ShortcutLayer,
    "region": RegionLayer,
    "yolo": YoloLayer,
    "connected": ConnectedLayer, "conn": ConnectedLayer,
    "detection": DetectionLayer,
}
"""cfg section name -> layer class (Darknet's ``string_to_layer_type`` spellings)."""

NET_SECTIONS = ("net", "network")

NET_KEYS = {
    "batch": ("int", 1), "subdivisions": ("int", 1),
    "width": ("int", None), "height": ("int", None), "channels": ("int", None),
    "learning_rate": ("float", 0.001), "momentum": ("float", 0.9), "decay": ("float", 0.0001),
    "policy": ("str", "constant"), "burn_in": ("int", 0), "power": ("float", 4.0),
    "max_batches": ("int", 0), "step": ("int", 1), "scale": ("float", 1.0),
    "steps": ("ints", ()), "scales": ("floats", ()), "gamma": ("float", 1.0),
    "time_steps": ("int", 1), "notruth": ("int", 0), "random": ("int", 0),
    "adam": ("int", 0), "B1": ("float", 0.9), "B2": ("float", 0.999), "eps": ("float", 1e-7),
    "inputs": ("int", lambda o: o["height"] * o["width"] * o["channels"]),
    "max_crop": ("int", lambda o: 2 * o["width"]), "min_crop": ("int", lambda o: o["width"]),
    "max_ratio": ("float", lambda o: o["max_crop"] / o["width"] if o["width"] else 0.0),
    "min_ratio": ("float", lambda o: o["min_crop"] / o["width"] if o["width"] else 0.0),
    "center": ("int", 0), "clip": ("float", 0.0),
    "angle": ("float", 0.0), "aspect": ("float", 1.0), "saturation": ("float", 1.0),
    "exposure": ("float", 1.0), "hue": ("float", 0.0),
}
"""``[net]`` keys of ``parse_net_options`` with Darknet's defaults. width, height and
channels are required here (refquant networks take images)."""

LEARNING_RATE_POLICIES = ("constant", "step", "steps", "exp", "poly", "sig", "random")

_KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string",
               "ints": "comma-separated integers", "floats": "comma-separated numbers"}


KEY_RANGES = {
    "batch": validate.at_least(1), "subdivisions": validate.at_least(1), "width": validate.at_least(1),
    "height": validate.at_least(1), "channels": validate.at_least(1), "inputs": validate.at_least(1),
    "learning_rate": validate.at_least(0), "momentum": validate.between(0, 1), "decay": validate.at_least(0),
    "burn_in": validate.at_least(0), "power": validate.at_least(0), "max_batches": validate.at_least(0),
    "step": validate.at_least(1), "gamma": validate.at_least(0),
    "time_steps": validate.at_least(1), "B1": validate.between(0, 1), "B2": validate.between(0, 1),
    "eps": validate.above(0), "max_crop": validate.at_least(0), "min_crop": validate.at_least(0),
    "max_ratio": validate.at_least(0), "min_ratio": validate.at_least(0), "clip": validate.at_least(0),
    "aspect": validate.above(0), "saturation": validate.above(0), "exposure": validate.above(0),
    "hue": validate.between(0, 1), "jitter": validate.between(0, 1, open_high=True),
    "anchors": validate.above(0), "ignore_thresh": validate.between(0, 1), "truth_thresh": validate.between(0, 1),
}
"""The range of every numeric cfg key that has one, in any section, each element of a list alike.

Where Darknet states no range these are the values its code is defined for: a momentum or
an Adam ``B1``/``B2`` above 1 diverges, ``saturation`` and ``exposure`` are scale factors
drawn as ``s`` or ``1/s`` (``rand_scale``), ``hue`` a shift of the hue circle, ``jitter`` a
fraction of the image that a crop may remove from each side (1 would leave nothing), anchors
box sizes in grid cells. Every float must also be finite, every integer a C ``int``."""


def _parse_scalar(text, kind):
    return validate.parse_integer(text) if kind == "int" else validate.parse_decimal(text)


def parse_value(text, kind):
    """Convert one cfg value; ``kind`` in int, float, str, ints, floats. ValueError if malformed.

    Numbers must be ASCII decimal and finite (:func:`refquant.validate.parse_integer`,
    :func:`refquant.validate.parse_decimal`)."""
    if kind == "str":
        return text
    if kind in ("int", "float"):
        return _parse_scalar(text, kind)
    if kind in ("ints", "floats"):
        items = text.split(",")
        if items and items[-1] == "":
            items = items[:-1]  # Darknet tolerates a trailing comma
        return tuple(_parse_scalar(item, kind[:-1]) for item in items)
    raise ValueError(f"unknown value kind {kind!r}")


def read_cfg(path):
    """Split a cfg file into sections: list of dicts {name, line, options{key: (value, line)}}.

    Applies Darknet's ``read_cfg`` rules (see the module); CfgError on a line that is not a
    section, comment or ``key=value``, on a key before the first section, and on a repeated key.
    """
    path = os.fspath(path)
    try:
        lines = validate.read_text(path, "cfg file").splitlines()
    except OSError as error:
        raise CfgError(f"{path}: cannot read cfg file ({error.strerror})") from error
    except validate.InputError as error:
        raise CfgError(str(error)) from None
    sections = []
    for number, raw in enumerate(lines, start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"{path}:{number}: malformed section header {raw.strip()!r}, expected [name]")
            sections.append({"name": line[1:-1], "line": number, "options": {}})
            continue
        key, equals, value = line.partition("=")
        if not equals or not key or not value:
            raise CfgError(f"{path}:{number}: expected key=value, got {raw.strip()!r}")
        if not sections:
            raise CfgError(f"{path}:{number}: key {key!r} appears before the first [section]")
        options = sections[-1]["options"]
        if key in options:
            raise CfgError(f"{path}:{number}: key {key!r} repeated in [{sections[-1]['name']}] "
                           f"(first given at line {options[key][1]})")
        options[key] = (value, number)
    if not sections:
        raise CfgError(f"{path}: no sections; a cfg starts with [net]")
    return sections


def typed_options(section, cfg_keys, path):
    """Convert a section's raw options with ``cfg_keys`` {key: (kind, default)}.

    default None = required; a callable default is computed from the options before it.
    CfgError naming file, line and key for an unknown key, a missing one, a malformed value.
    """
    name, header_line, raw = section["name"], section["line"], section["options"]
    for key, (_, line) in raw.items():
        if key not in cfg_keys:
            raise CfgError(f"{path}:{line}: unknown key {key!r} in [{name}]; "
                           f"known keys: {', '.join(sorted(cfg_keys))}")
    typed = {}
    for key, (kind, default) in cfg_keys.items():
        if key in raw:
            text, line = raw[key]
            try:
                typed[key] = parse_value(text, kind)
            except ValueError as error:
                raise CfgError(f"{path}:{line}: [{name}] {key}={text!r}: expected "
                               f"{_KIND_NAMES[kind]} ({error})") from None
            if key in KEY_RANGES:
                values = typed[key] if kind in ("ints", "floats") else (typed[key],)
                for value in values:
                    try:
                        validate.check_range(value, KEY_RANGES[key], key)
                    except validate.InputError as error:
                        raise CfgError(f"{path}:{line}: [{name}] {error}") from None
        elif default is None:
            raise CfgError(f"{path}:{header_line}: [{name}] is missing the required key {key!r}")
        else:
            typed[key] = default(typed) if callable(default) else default
    return typed


def _net_hyperparameters(section, path):
    if section["name"] not in NET_SECTIONS:
        raise CfgError(f"{path}:{section['line']}: the first section must be [net] or [network], "
                       f"got [{section['name']}]")
    options = typed_options(section, NET_KEYS, path)
    if options["policy"] not in LEARNING_RATE_POLICIES:
        line = section["options"]["policy"][1]
        raise CfgError(f"{path}:{line}: [net] policy={options['policy']!r}: expected one of "
                       f"{', '.join(LEARNING_RATE_POLICIES)}")
    if options["policy"] == "steps" and (not options["steps"] or len(options["steps"]) != len(options["scales"])):
        raise CfgError(f"{path}:{section['line']}: [net] policy=steps needs steps and scales of equal, "
                       f"non-zero length, got {len(options['steps'])} steps and {len(options['scales'])} scales")
    return options


def parse_cfg(path):
    """Read a cfg into (hyperparameters, [(layer, section)]) without building parameters.

    hyperparameters: the typed ``[net]`` options. Each layer is constructed from its typed
    options; CfgError names file and line for anything wrong, including an unsupported type.
    """
    path = os.fspath(path)
    sections = read_cfg(path)
    hyperparameters = _net_hyperparameters(sections[0], path)
    layers = []
    for index, section in enumerate(sections[1:]):
        name = section["name"]
        if name in NET_SECTIONS:
            raise CfgError(f"{path}:{section['line']}: a second [{name}] section (layer {index})")
        if name not in LAYER_TYPES:
            raise CfgError(f"{path}:{section['line']}: unsupported layer type [{name}] (layer {index}); "
                           f"refquant supports {', '.join(sorted(set(LAYER_TYPES)))}")
        cls = LAYER_TYPES[name]
        options = typed_options(section, cls.cfg_keys, path)
        try:
            layer = cls(**options)
        except (ValueError, TypeError) as error:
            raise CfgError(f"{path}:{section['line']}: layer {index} [{name}]: {error}") from None
        layers.append((layer, section))
    if not layers:
        raise CfgError(f"{path}: the cfg has no layer after [net]")
    return hyperparameters, layers


def build_network(path, dtype=np.float32, seed=0, max_bytes=None):
    """Parse a cfg and build its Network with a seeded random initialisation (see ``load``).

    ``max_bytes``: the memory the network may need, parameters and one image's activations
    (default :data:`refquant.validate.MAX_ALLOCATION_BYTES`); CfgError with the bytes needed,
    before anything is allocated, above it."""
    path = os.fspath(path)
    hyperparameters, parsed = parse_cfg(path)
    input_shape = (hyperparameters["channels"], hyperparameters["height"], hyperparameters["width"])
    if max_bytes is None:
        max_bytes = validate.limit("REFQUANT_MAX_BYTES", validate.MAX_ALLOCATION_BYTES)
    try:
        return Network([layer for layer, _ in parsed], input_shape, dtype=dtype, seed=seed,
                       hyperparameters=hyperparameters, name=os.path.basename(path), max_bytes=max_bytes)
    except ValueError as error:
        index = getattr(error, "layer_index", None)
        where = f"{path}:{parsed[index][1]['line']}" if index is not None else path
        raise CfgError(f"{where}: {error}") from None


# ---------------------------------------------------------------- weights

HEADER_DTYPE = np.dtype("<i4")
FLOAT_DTYPE = np.dtype("<f4")
DEFAULT_HEADER = (0, 2, 0)
"""(major, minor, revision) that Darknet's ``save_weights_upto`` writes."""


def seen_is_64bit(major, minor):
    """Darknet's rule (``load_weights_upto``): ``seen`` is a size_t when
    ``(major*10 + minor) >= 2 && major < 1000 && minor < 1000``, else an int."""
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def header_size(major, minor):
    """Bytes before the first float: three int32 and the 8- or 4-byte ``seen``."""
    return 12 + (8 if seen_is_64bit(major, minor) else 4)


def weights_layout(net):
    """[(layer index, param name, shape)] in the file's order (``load_convolutional_weights``)."""
    layout = []
    for index, layer in enumerate(net.layers):
        if isinstance(layer, ConvolutionalLayer):
            names = ["biases"]
            if layer.batch_normalize:
                names += ["scales", "rolling_mean", "rolling_variance"]
            names.append("weights")
            layout += [(index, name, layer.params[name].shape) for name in names]
        elif isinstance(layer, ConnectedLayer):
            # load_connected_weights: biases, weights, then the batch-norm vectors
            names = ["biases", "weights"]
            if layer.batch_normalize:
                names += ["scales", "rolling_mean", "rolling_variance"]
            layout += [(index, name, layer.params[name].shape) for name in names]
        elif layer.params:
            raise CfgError(f"layer {index} [{layer.type}] has parameters but no Darknet weights layout")
    return layout


def _stored_transposed(layer, name, major, minor):
    """Connected weights stored (K, outputs) when major or minor > 1000 (``load_weights_upto``)."""
    return isinstance(layer, ConnectedLayer) and name == "weights" and (major > 1000 or minor > 1000)


def _float_count(layout):
    return sum(int(np.prod(shape)) for _, _, shape in layout)


def read_weights(path, net, check_values=True):
    """Read a weights file for ``net``: (header (major, minor, revision, seen), {(i, name): float32 array}).

    CfgError, with both sizes, if the file is shorter or longer than the cfg needs, and (with
    ``check_values``, the default) naming the layer and the count for NaN or infinite values or a negative
    rolling variance (:func:`check_parameters`); nothing is assigned to ``net`` here (``load``
    assigns only after the whole file has been checked).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise CfgError(f"{path}: cannot read weights file ({error.strerror})") from error
    if len(data) < 12:
        raise CfgError(f"{path}: {len(data)} bytes, too short for the weights header (at least 16 bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, HEADER_DTYPE, 3))
    start = header_size(major, minor)
    layout = weights_layout(net)
    count = _float_count(layout)
    expected = start + 4 * count
    if len(data) != expected:
        layers = len({index for index, _, _ in layout})
        raise CfgError(f"{path}: the file has {len(data)} bytes but {net.name} needs {expected} bytes "
                       f"({start}-byte header + {count} float32 for {layers} layers with weights); "
                       f"the file is {'too short' if len(data) < expected else 'too long'}")
    seen_dtype = np.dtype("<u8") if start == 20 else np.dtype("<i4")
    seen = int(np.frombuffer(data, seen_dtype, 1, offset=12)[0])
    values = np.frombuffer(data, FLOAT_DTYPE, count, offset=start)
    arrays, offset = {}, 0
    for index, name, shape in layout:
        size = int(np.prod(shape))
        if _stored_transposed(net.layers[index], name, major, minor):
            arrays[(index, name)] = values[offset:offset + size].reshape(shape[::-1]).T
        else:
            arrays[(index, name)] = values[offset:offset + size].reshape(shape)
        offset += size
    if check_values:
        check_parameters(arrays, net, path)
    return (major, minor, revision, seen), arrays


def check_parameters(arrays, net, path):
    """CfgError naming the first layer of ``arrays`` ({(layer index, name): array}) with NaN or
    infinite values (and how many), or with a negative rolling variance (batch norm divides by
    its square root, Darknet's ``normalize_cpu``: the forward pass would be NaN)."""
    for (index, name), values in arrays.items():
        bad = validate.count_nonfinite(values)
        where = f"{path}: layer {index} [{net.layers[index].type}] {name}"
        if bad:
            raise CfgError(f"{where}: {bad} of {values.size} values are NaN or infinite; expected finite "
                           f"parameters (check_values=False reads them anyway)")
        if name == "rolling_variance" and np.any(values < 0):
            raise CfgError(f"{where}: {int(np.count_nonzero(values < 0))} of {values.size} values are negative "
                           f"(lowest {float(values.min())}); a variance is >= 0")


def load(cfg_path, weights_path=None, dtype=np.float32, seed=0, check_values=True):
    """Build the Network described by ``cfg_path``; with ``weights_path``, load Darknet weights.

    Without weights: a seeded random initialisation (``numpy.random.default_rng(seed)``,
    Darknet's scheme, see ``ConvolutionalLayer.build``). ``dtype``: np.float32 (Darknet's)
    or np.float64 (exact gradient checks). Any error leaves nothing half-built: the cfg
    and the whole weights file are checked before the network is returned; weights that are
    not finite, or a negative rolling variance, are refused unless ``check_values=False``
    (:func:`read_weights`).
    """
    net = build_network(cfg_path, dtype=dtype, seed=seed)
    if weights_path is not None:
        header, arrays = read_weights(weights_path, net, check_values=check_values)
        for (index, name), values in arrays.items():
            net.layers[index].params[name][...] = values
        net.weights_header = header[:3]
        net.seen = header[3]
    return net


def save_weights(net, path):
    """Write ``net``'s parameters in Darknet's binary format (:func:`weights_bytes`), all or nothing."""
    atomic.write_bytes(path, weights_bytes(net))


def weights_bytes(net):
    """``net``'s parameters in Darknet's binary format (see the module docstring), as bytes.

    The header is ``net.weights_header`` (major, minor, revision; (0, 2, 0) for a new network)
    and ``net.seen``; a file read by :func:`load` is written back byte for byte.
    """
    major, minor, revision = net.weights_header
    seen_dtype = np.dtype("<u8") if seen_is_64bit(major, minor) else np.dtype("<i4")
    chunks = [np.array([major, minor, revision], HEADER_DTYPE).tobytes(),
              np.array([net.seen], seen_dtype).tobytes()]
    for index, name, _ in weights_layout(net):
        values = net.layers[index].params[name]
        if _stored_transposed(net.layers[index], name, major, minor):
            values = values.T
        chunks.append(np.ascontiguousarray(values, dtype=FLOAT_DTYPE).tobytes())
    return b"".join(chunks)
