"""The fuzzed boundaries: for each, the real inputs mutated, the call that reads them, and the
independent check of what it accepts (see :mod:`refquant.fuzz`). Each generator takes
``(budget, seed, folder)`` and yields one :class:`refquant.fuzz.Outcome` per case.

The acceptance checks do not reuse refquant's validation: numbers are compared with what C's
``strtod``/``strtol`` read (Darknet's ``atof``/``atoi``), arrays with ``numpy.isfinite``, boxes
with the image size, a tampered golden file with the mismatch it must cause.
"""
import contextlib
import ctypes
import ctypes.util
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from refquant.fuzz import classify, mutators

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
PLANS = Path(__file__).resolve().parents[2] / "docs" / "demo" / "plans"
"""The demo's committed plans: a source checkout's (the plan boundary needs them)."""


def _model(suffix):
    from refquant.detection.evaluate import shipped_model
    return shipped_model(suffix)

CFG_SEEDS = (("shapes-tiny-yolo.cfg", 10), ("yolov3-tiny.cfg", 3), ("yolov2-tiny.cfg", 3),
             ("yolov2-tiny-voc.cfg", 2), ("yolov1-tiny.cfg", 1), ("yolov2-voc.cfg", 1))
"""The real cfgs mutated, with their weights in the draw (the large ones take a second to build)."""


def _seed_cfg_path(name):
    return _model(".cfg") if name == "shapes-tiny-yolo.cfg" else CFG_DIR / name


def _draw_weighted(rng, weighted):
    names = [name for name, _ in weighted]
    weights = np.array([weight for _, weight in weighted], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# -- the C library as the oracle of Darknet's numbers -----------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_LIBC.strtod.restype = ctypes.c_double
_LIBC.strtod.argtypes = (ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p))


def c_reads_whole_finite_number(text):
    """True if C's ``strtod`` reads all of ``text`` (ASCII) as a finite number: how Darknet's
    ``atof`` would take a whole cfg value. Python-only forms (``1_0``, non-ASCII digits) fail."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return False
    if not raw or b"\0" in raw:
        return False
    buffer = ctypes.create_string_buffer(raw)
    end = ctypes.c_char_p()
    value = _LIBC.strtod(buffer, ctypes.byref(end))
    consumed = ctypes.cast(end, ctypes.c_void_p).value - ctypes.addressof(buffer)
    return consumed == len(raw) and math.isfinite(value)


def _nonfinite_in(value):
    """A description of the first non-finite number inside ``value`` (numbers, sequences, arrays)."""
    if isinstance(value, (bool, str)) or value is None:
        return None
    if isinstance(value, (int, float, np.number)):
        return None if math.isfinite(float(value)) else repr(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return None if np.all(np.isfinite(value)) else f"array with {int(np.sum(~np.isfinite(value)))} non-finite"
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _nonfinite_in(item)
            if found:
                return found
    return None


# -- Darknet cfg -----------------------------------------------------------------------------------

def _section_attack(rng, data):
    attack = mutators.choose(rng, ("filters=100000000", "width=4000000\nheight=4000000", "[bogus]", "[net]",
                                   "unknown_key=1", "filters", "=5", "[", "size=1_0", "stride=0",
                                   "batch_normalize=2", "activation=nan", "anchors=", "layers=-99"))
    lines = data.decode("utf-8", errors="surrogateescape").split("\n")
    at = int(rng.integers(1, len(lines) + 1))
    lines.insert(at, attack)
    return f"{attack!r} inserted at line {at + 1}", "\n".join(lines).encode("utf-8", errors="surrogateescape")


def _mutate_cfg(rng, data):
    draw = rng.random()
    if draw < 0.55:
        return mutators.cfg_value(rng, data)
    if draw < 0.7:
        return (*_section_attack(rng, data), None)
    if draw < 0.8:
        return (*mutators.choose(rng, mutators.LINE_MUTATORS)(rng, data), None)
    return (*mutators.choose(rng, mutators.BYTE_MUTATORS + (mutators.latin1,))(rng, data), None)


def _cfg_accept(net, token):
    for key, value in net.hyperparameters.items():
        found = _nonfinite_in(value)
        if found:
            return f"[net] {key} accepted as {found}"
    for index, layer in enumerate(net.layers):
        for key, value in vars(layer).items():
            found = _nonfinite_in(value) if not key.startswith("_") and key != "params" else None
            if found:
                return f"layer {index} {key} accepted as {found}"
    if token is not None:
        # the mutated value was taken as a number (a str key would have refused it): C must read it whole
        for item in "".join(token.split()).split(","):
            if item and not c_reads_whole_finite_number(item) and not item.isalpha():
                return f"accepted {token!r}, which C's strtod does not read as one finite number"
    return None


def cfg_cases(budget, seed, folder):
    from refquant import darknet
    rng = np.random.default_rng(seed)
    for number in range(budget):
        name = _draw_weighted(rng, CFG_SEEDS)
        description, mutated, token = _mutate_cfg(rng, _seed_cfg_path(name).read_bytes())
        path = Path(folder) / f"case{number:05d}.cfg"
        path.write_bytes(mutated)
        yield classify("Darknet cfg text", f"{name}: {description}", lambda: darknet.build_network(path),
                       [str(path)], accept=lambda net: _cfg_accept(net, token))
        path.unlink()


# -- Darknet weights -------------------------------------------------------------------------------

def _float_positions(net):
    """[(byte offset, layer index, parameter name)] of every float of the shipped weights file."""
    from refquant import darknet
    positions, offset = [], darknet.header_size(0, 2)
    for index, name, shape in darknet.weights_layout(net):
        size = int(np.prod(shape))
        positions.append((offset, size, index, name))
        offset += 4 * size
    return positions


def _mutate_weights(rng, data, layout):
    draw = rng.random()
    if draw < 0.6:
        offset, size, index, name = layout[int(rng.integers(len(layout)))]
        if draw < 0.15:
            name_wanted = [entry for entry in layout if entry[3] == "rolling_variance"]
            offset, size, index, name = name_wanted[int(rng.integers(len(name_wanted)))]
        count = int(rng.integers(1, 4))
        value = np.float32(mutators.choose(rng, (np.nan, np.inf, -np.inf, -1e-3, -5.0, 3e38, 1e-45, 0.0)))
        out = bytearray(data)
        for _ in range(count):
            at = offset + 4 * int(rng.integers(size))
            out[at:at + 4] = value.tobytes()
        return f"{count} float(s) of layer {index} {name} set to {value}", bytes(out)
    if draw < 0.7:
        field = int(rng.integers(3))
        value = int(mutators.choose(rng, (0, 1, 2, 10, 1000, 1001, 2**31 - 1, -1)))
        out = bytearray(data)
        out[4 * field:4 * field + 4] = np.array([value], "<i4").tobytes()
        return f"header int32 {('major', 'minor', 'revision')[field]} = {value}", bytes(out)
    return mutators.choose(rng, (mutators.flip_byte, mutators.truncate, mutators.insert_bytes,
                                 mutators.delete_span, mutators.empty))(rng, data)


def _weights_accept(net):
    for index, layer in enumerate(net.layers):
        for name, values in layer.params.items():
            if not np.all(np.isfinite(values)):
                return f"layer {index} {name} loaded with {int(np.sum(~np.isfinite(values)))} non-finite values"
            if name == "rolling_variance" and np.any(values < 0):
                return f"layer {index} rolling_variance loaded with negative values"
    return None


def weights_cases(budget, seed, folder):
    from refquant import darknet
    rng = np.random.default_rng(seed)
    cfg = _model(".cfg")
    data = _model(".weights").read_bytes()
    layout = _float_positions(darknet.build_network(cfg))
    for number in range(budget):
        description, mutated = _mutate_weights(rng, data, layout)
        path = Path(folder) / f"case{number:05d}.weights"
        path.write_bytes(mutated)
        yield classify("Darknet .weights", description, lambda: darknet.load(cfg, path), [str(path)],
                       accept=_weights_accept)
        path.unlink()


# -- VOC tree --------------------------------------------------------------------------------------

XML_ATTACKS = (
    '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>\n',
    '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]>\n',
    '<?xml version="1.0"?>\n<!DOCTYPE a SYSTEM "http://example.com/a.dtd">\n')


def _mutate_xml(rng, data, size):
    draw = rng.random()
    text = data.decode("utf-8")
    if draw < 0.35:
        return mutators.xml_value(rng, data)
    if draw < 0.45:
        outside = mutators.choose(rng, (f"<xmax>{size + 1 + int(rng.integers(50))}</xmax>", "<xmin>0</xmin>",
                                        "<ymin>-3</ymin>", f"<ymax>{size * 10}</ymax>"))
        tag = outside[1:5]
        start, stop = text.find(f"<{tag}>"), text.find(f"</{tag}>")
        if start < 0:
            return "no box; unchanged", data
        return f"box {outside} in a {size}x{size} image", (text[:start] + outside + text[stop + 7:]).encode()
    if draw < 0.5:
        return "XML attack prepended", (mutators.choose(rng, XML_ATTACKS) + text.replace("<?xml", "<?x", 1)).encode()
    if draw < 0.55:
        return "class renamed to 'tree'", text.replace("<name>", "<name>tree", 1).encode()
    if draw < 0.75:
        return mutators.choose(rng, mutators.LINE_MUTATORS)(rng, data)
    return mutators.choose(rng, mutators.BYTE_MUTATORS)(rng, data)


def _annotation_accept(annotation, names):
    width, height = annotation["width"], annotation["height"]
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return f"size {width}x{height} accepted"
    for obj in annotation["objects"]:
        xmin, ymin, xmax, ymax = obj["box"]
        if not all(math.isfinite(v) for v in obj["box"]):
            return f"box {obj['box']} accepted with a non-finite coordinate"
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            return f"box {obj['box']} accepted outside the {width}x{height} image"
        if names[obj["class_id"]] != obj["label"]:
            return f"class {obj['label']!r} given id {obj['class_id']}"
    return None


def _mutate_jpeg(rng, data):
    draw = rng.random()
    start = data.find(b"\xff\xc0")
    if draw < 0.3 and start >= 0:
        height, width = (int(mutators.choose(rng, (0, 1, 9000, 12000, 65535))) for _ in range(2))
        out = bytearray(data)
        out[start + 5:start + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        return f"JPEG header size set to {width}x{height}", bytes(out)
    if draw < 0.4:
        return "PNG signature over the JPEG", b"\x89PNG\r\n\x1a\n" + data[8:]
    return mutators.choose(rng, (mutators.flip_byte, mutators.truncate, mutators.insert_bytes,
                                 mutators.delete_span, mutators.empty))(rng, data)


def _image_accept(image):
    if image.dtype != np.float32 or image.ndim != 3 or image.shape[0] != 3:
        return f"image of dtype {image.dtype} shape {image.shape} accepted"
    if not (np.all(np.isfinite(image)) and image.min() >= 0 and image.max() <= 1):
        return "image values outside [0, 1] accepted"
    if image.shape[1] * image.shape[2] > int(os.environ.get("REFQUANT_MAX_PIXELS", 64 * 2**20)):
        return f"image of {image.shape[2]}x{image.shape[1]} decoded above the pixel limit"
    return None


def _names_accept(names):
    if not names or len(set(names)) != len(names):
        return f"names {names[:5]} accepted (empty or repeated)"
    for name in names:
        if not name or name != name.strip() or "\ufeff" in name or not name.isprintable():
            return f"class name {name!r} accepted"
    return None


def _ids_accept(ids):
    for image_id in ids:
        if (not image_id or "/" in image_id or "\\" in image_id or image_id.startswith(".")
                or not image_id.isprintable()):
            return f"image id {image_id!r} accepted"
    return None


def voc_cases(budget, seed, folder):
    from refquant.data.shapes import generate
    from refquant.data.voc import load_image, read_annotation, read_image_set, read_names
    rng = np.random.default_rng(seed)
    size = 64
    tree = generate(Path(folder) / "tree", seed=int(rng.integers(2**31)), size=size, train=4, val=1, test=1,
                    progress=False)
    names_path = tree / "shapes.names"
    names = read_names(names_path)
    annotations = sorted((tree / "Annotations").glob("*.xml"))
    images = sorted((tree / "JPEGImages").glob("*.jpg"))
    image_set = (tree / "ImageSets" / "Main" / "train.txt").read_bytes()
    sets = tree / "ImageSets" / "Main"
    for number in range(budget):
        draw = rng.random()
        if draw < 0.5:
            source = annotations[int(rng.integers(len(annotations)))]
            description, mutated = _mutate_xml(rng, source.read_bytes(), size)
            path = Path(folder) / f"case{number:05d}.xml"
            path.write_bytes(mutated)
            yield classify("VOC XML, images, names, image sets", f"{source.name}: {description}",
                           lambda: read_annotation(path, names), [str(path)],
                           accept=lambda annotation: _annotation_accept(annotation, names))
        elif draw < 0.7:
            source = images[int(rng.integers(len(images)))]
            description, mutated = _mutate_jpeg(rng, source.read_bytes())
            path = Path(folder) / f"case{number:05d}.jpg"
            path.write_bytes(mutated)
            yield classify("VOC XML, images, names, image sets", f"{source.name}: {description}",
                           lambda: load_image(path), [str(path)], accept=_image_accept)
        elif draw < 0.85:
            mutate = mutators.choose(rng, mutators.BYTE_MUTATORS + mutators.LINE_MUTATORS + (mutators.latin1,))
            description, mutated = mutate(rng, names_path.read_bytes())
            path = Path(folder) / f"case{number:05d}.names"
            path.write_bytes(mutated)
            yield classify("VOC XML, images, names, image sets", f"shapes.names: {description}",
                           lambda: read_names(path), [str(path)], accept=_names_accept)
        else:
            mutate = mutators.choose(rng, mutators.BYTE_MUTATORS + mutators.LINE_MUTATORS + (_climbing_id,))
            description, mutated = mutate(rng, image_set)
            split = f"case{number:05d}"
            path = sets / f"{split}.txt"
            path.write_bytes(mutated)
            yield classify("VOC XML, images, names, image sets", f"train.txt: {description}",
                           lambda: read_image_set(tree, split), [str(path)], accept=_ids_accept)
        path.unlink()


def _climbing_id(rng, data):
    image_id = mutators.choose(rng, ("../../etc/hostname", "a/b", ".hidden", "..\\x"))
    return f"id {image_id!r} appended", data + image_id.encode() + b"\n"


# -- quantization plan -----------------------------------------------------------------------------

def _plan_accept(plan):
    from refquant.quantizers.uniform import UniformQuantizer
    quantizers = [plan.input, *plan.weights.values(), *plan.activations.values()]
    for quantizer in quantizers:
        if not isinstance(quantizer, UniformQuantizer):
            return f"a {type(quantizer).__name__} accepted as a quantizer"
        if not (math.isfinite(quantizer.step) and quantizer.step > 0 and math.isfinite(quantizer.zero_point)):
            return f"quantizer {quantizer} accepted"
        if not all(type(v) is int for v in (quantizer.qmin, quantizer.qmax)) or quantizer.qmin >= quantizer.qmax:
            return f"codes [{quantizer.qmin!r}, {quantizer.qmax!r}] accepted"
    for key, density in plan.densities.items():
        for name, values in density.to_dict().items():
            if not all(math.isfinite(v) for v in values):
                return f"density {key} {name} accepted with non-finite values"
    if not (isinstance(plan.method, str) and isinstance(plan.network, str) and isinstance(plan.options, dict)):
        return "method, network or options of the wrong type accepted"
    return None


def plan_cases(budget, seed, folder):
    from refquant import darknet
    from refquant.folding import fold_batchnorm
    from refquant.plan import QuantizationPlan
    rng = np.random.default_rng(seed)
    net = fold_batchnorm(darknet.load(_model(".cfg"), _model(".weights")))
    sources = sorted(PLANS.glob("*.plan.json"))
    if not sources:
        raise FileNotFoundError(f"{PLANS}: no *.plan.json; the plan boundary is fuzzed from a source checkout")
    for number in range(budget):
        source = sources[int(rng.integers(len(sources)))]
        mutate = mutators.choose(rng, mutators.JSON_MUTATORS + (mutators.latin1, mutators.empty))
        description, mutated = mutate(rng, source.read_bytes())
        path = Path(folder) / f"case{number:05d}.plan.json"
        path.write_bytes(mutated)
        yield classify("quantization plan JSON", f"{source.name}: {description}",
                       lambda: QuantizationPlan.load(path, net=net), [str(path)], accept=_plan_accept)
        path.unlink()


# -- golden vector directory -----------------------------------------------------------------------

GOLDEN_VECTOR = "rounding"
"""The vector recomputed in each case (the fastest); every file's hash is checked in every case."""


def _linked_copy(source, target):
    """``target`` holding hard links to the files of ``source`` (a mutation replaces a file, so
    the exported originals are never changed)."""
    target.mkdir()
    for path in source.iterdir():
        os.link(path, target / path.name)


def _replace(path, data):
    path.unlink()
    path.write_bytes(data)


def _mutate_golden(rng, case):
    """Mutate the linked copy ``case``; returns (description, whether a mismatch is required)."""
    manifest = case / "manifest.json"
    files = sorted(p.name for p in case.iterdir() if p.name != "manifest.json")
    draw = rng.random()
    if draw < 0.45:
        description, mutated = mutators.choose(rng, mutators.JSON_MUTATORS)(rng, manifest.read_bytes())
        _replace(manifest, mutated)
        return f"manifest: {description}", False
    if draw < 0.55:
        document = json.loads(manifest.read_text())
        name = mutators.choose(rng, files)
        outside = mutators.choose(rng, ("../../etc/hostname", "/etc/hostname", "../manifest.json", "a/../../b"))
        document["files"][outside] = document["files"].pop(name)
        for entry in document["vectors"].values():
            entry["file"] = outside if entry["file"] == name else entry["file"]
        _replace(manifest, json.dumps(document).encode())
        return f"manifest: file {name!r} renamed {outside!r}", False
    name = mutators.choose(rng, files)
    if draw < 0.65:
        (case / name).unlink()
        return f"{name} deleted", True
    data = (case / name).read_bytes()
    at = int(rng.integers(len(data)))
    _replace(case / name, data[:at] + bytes([data[at] ^ (1 + int(rng.integers(255)))]) + data[at + 1:])
    return f"{name}: byte {at} changed (its sha256 no longer the manifest's)", True


def golden_cases(budget, seed, folder):
    from refquant.golden.check import check
    from refquant.golden.export import export
    rng = np.random.default_rng(seed)
    exported = Path(folder) / "exported"
    with contextlib.redirect_stderr(io.StringIO()):
        export(exported, progress=False)
    for number in range(budget):
        case = Path(folder) / f"case{number:05d}"
        _linked_copy(exported, case)
        description, must_mismatch = _mutate_golden(rng, case)

        def accept(mismatches, must_mismatch=must_mismatch):
            if must_mismatch and not mismatches:
                return "a tampered directory reported as matching"
            return None
        yield classify("golden vector directory", description, lambda: check(case, vectors=[GOLDEN_VECTOR]),
                       [str(case)], accept=accept)
        shutil.rmtree(case)


# -- training checkpoint ---------------------------------------------------------------------------

def _checkpoint_accept(result, net):
    state, updates = result
    for key, buffer in updates.items():
        if not np.all(np.isfinite(buffer)):
            return f"momentum buffer {key} resumed with non-finite values"
    return _weights_accept(net) or (None if isinstance(state.get("iteration"), int) else "iteration not an integer")


def checkpoint_cases(budget, seed, folder):
    """A checkpoint of the shipped model (weights, momentum buffers, the JSON naming them) written
    by ``save_checkpoint``, one of its three files mutated, then read by ``load_checkpoint``."""
    from refquant import darknet, train
    rng = np.random.default_rng(seed)
    net = darknet.load(_model(".cfg"), _model(".weights"))
    updates = {key: rng.standard_normal(buffer.shape).astype(buffer.dtype)
               for key, buffer in train.zero_updates(net).items()}
    original = Path(folder) / "original"
    original.mkdir()
    train.save_checkpoint(original, "net", net, updates, {"iteration": 7})
    for number in range(budget):
        case = Path(folder) / f"case{number:05d}"
        _linked_copy(original, case)
        target = mutators.choose(rng, sorted(p.name for p in case.iterdir()))
        data = (case / target).read_bytes()
        if target.endswith(".json"):
            mutate = mutators.choose(rng, mutators.JSON_MUTATORS + (mutators.empty,))
        else:
            mutate = mutators.choose(rng, (mutators.flip_byte, mutators.truncate, mutators.insert_bytes,
                                           mutators.delete_span, mutators.empty))
        description, mutated = mutate(rng, data)
        _replace(case / target, mutated)
        fresh = darknet.build_network(_model(".cfg"))
        yield classify("training checkpoint", f"{target}: {description}",
                       lambda: train.load_checkpoint(case, "net", fresh), [str(case)],
                       accept=lambda result: _checkpoint_accept(result, fresh))
        shutil.rmtree(case)


BOUNDARIES = {"Darknet cfg text": cfg_cases, "Darknet .weights": weights_cases,
              "VOC XML, images, names, image sets": voc_cases, "quantization plan JSON": plan_cases,
              "golden vector directory": golden_cases, "training checkpoint": checkpoint_cases}
"""Boundary name -> case generator for the file boundaries (:mod:`refquant.fuzz.calls` has the others)."""
