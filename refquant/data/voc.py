"""Reader of a Pascal VOC tree (``VOCdevkit/VOC2007``-style), with safe XML parsing.

A VOC tree is a directory holding::

    Annotations/<id>.xml         one annotation per image
    JPEGImages/<id>.jpg          the image
    ImageSets/Main/<split>.txt   the ids of a split (train, val, trainval, test), one per line

Class names come from a names file (one per line, as Darknet's ``voc.names``);
a class's id is its line number from 0. Boxes stay in the VOC pixel convention
(1-based, inclusive; :mod:`refquant.detection.boxes`).

Annotation XML is parsed by expat with every document type declaration refused:
a document that declares a DTD (where entities are declared) is rejected before
any declaration is read, so neither entity expansion ("billion laughs") nor
external entities (local files, URLs) can happen. VOC annotations never have a
DTD. Errors name the file and line.

The other rules of this boundary (docs/SPECIFICATION.md, section 17): text files (names,
image sets) are UTF-8, a byte-order mark tolerated (:func:`refquant.validate.read_text`); an
element that a VOC annotation has once (``<size>``, ``<width>``, an object's ``<name>``,
``<bndbox>``, ``<xmin>``, ...) is refused when repeated, rather than the first one used; a box
must lie inside its image, ``1 <= xmin <= xmax <= width`` and likewise in y (VOC pixels are
1-based and inclusive); an image whose header states more than
:data:`refquant.validate.MAX_IMAGE_PIXELS` pixels is refused before it is decoded.
"""
import warnings
from pathlib import Path
from xml.etree import ElementTree
from xml.parsers import expat

import numpy as np
from PIL import Image, UnidentifiedImageError

from refquant import validate


def read_names(path):
    """Class names, one per non-empty line of ``path`` (Darknet's ``.names`` format).

    Returns a list of str; raises ValueError naming the file and line on a
    duplicate name or one with a control character, or when the file holds no name.
    """
    names, seen = [], {}
    for number, line in enumerate(validate.read_text(path, "names file").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not name.isprintable():
            raise ValueError(f"{path}:{number}: class name {name!r} has a control character")
        if name in seen:
            raise ValueError(f"{path}:{number}: class name {name!r} repeats line {seen[name]}")
        seen[name] = number
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no class name in the file; expected one name per line")
    return names


def is_plain_name(name):
    """True for a file stem that stays in its folder: not empty, no ``/`` or ``\\``, no leading
    ``.`` (so no ``..``), no control character. Image ids and split names must be such stems."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and name.isprintable()


def read_image_set(root, split):
    """Image ids of ``root/ImageSets/Main/<split>.txt``: first word of each non-empty line, each a
    plain file stem (ValueError naming file and line for ``../x`` or ``a/b``)."""
    if not is_plain_name(split):
        raise ValueError(f"split {split!r}: expected the plain name of a file of {Path(root) / 'ImageSets' / 'Main'}")
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image set; expected ImageSets/Main/{split}.txt in the VOC tree {root}")
    ids = []
    for number, line in enumerate(validate.read_text(path, "image set").splitlines(), start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if not is_plain_name(image_id):
            # an id names Annotations/<id>.xml and JPEGImages/<id>.jpg: it must stay inside the tree
            raise ValueError(f"{path}:{number}: image id {image_id!r} is not a plain file stem "
                             f"(no '/', '\\', leading '.' or control character)")
        ids.append(image_id)
    return ids


def parse_xml(path):
    """Parse the XML file ``path`` safely: ``(root element, {element: line number})``.

    Refuses any document type declaration (so any entity declaration) and any
    external entity, with a ValueError naming the file and line; a malformed
    document gives a ValueError naming the file, line and expat's reason.
    """
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    lines = {}

    def refuse(what):
        def handler(*args):
            raise ValueError(f"{path}:{parser.CurrentLineNumber}: the document {what}; refquant refuses DTDs "
                             "and entity declarations in XML (entity expansion, external entities)")
        return handler

    def start(tag, attributes):
        lines[builder.start(tag, attributes)] = parser.CurrentLineNumber

    parser.StartDoctypeDeclHandler = refuse("declares a document type (<!DOCTYPE ...>)")
    parser.EntityDeclHandler = refuse("declares an entity (<!ENTITY ...>)")
    parser.ExternalEntityRefHandler = refuse("refers to an external entity")
    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(Path(path).read_bytes(), True)
    except expat.ExpatError as error:
        raise ValueError(f"{path}:{error.lineno}: malformed XML: {expat.ErrorString(error.code)}") from None
    return builder.close(), lines


def read_annotation(path, names):
    """One VOC annotation file as a dict.

    Returns ``{"width", "height", "filename", "objects"}`` where each object is
    ``{"label": name, "class_id": index in names, "box": (xmin, ymin, xmax, ymax)
    floats in VOC pixels, "difficult": bool, "truncated": bool}``. ``difficult``
    and ``truncated`` default to False when absent (as the devkit's
    ``PASreadrecord``). Raises ValueError naming the file and line for a missing
    or malformed field, a reversed box or a class not in ``names``.
    """
    root, lines = parse_xml(path)
    if root.tag != "annotation":
        raise ValueError(f"{path}:{lines[root]}: root element is <{root.tag}>, expected <annotation>")
    size = _child(root, "size", path, lines)
    width = _integer(_child(size, "width", path, lines), path, lines)
    height = _integer(_child(size, "height", path, lines), path, lines)
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}:{lines[size]}: image size {width}x{height}, expected positive width and height")
    _child(size, "depth", path, lines, required=False)  # not used, but not twice either
    filename_element = _child(root, "filename", path, lines, required=False)
    filename = "" if filename_element is None else (filename_element.text or "").strip()
    class_ids = {name: index for index, name in enumerate(names)}
    objects = [_read_object(element, class_ids, path, lines, (width, height)) for element in root.findall("object")]
    return {"width": width, "height": height, "filename": filename, "objects": objects}


def load_image(path, expected_size=None):
    """An RGB image as float32 (3, H, W) in [0, 1] (byte / 255, as Darknet's ``load_image_color``).

    ``expected_size``: optional ``(width, height)`` the annotation states; a
    different size is an error. A truncated or corrupt file gives a ValueError
    naming it (Pillow's own lenient mode, ``LOAD_TRUNCATED_IMAGES``, is not used).
    """
    max_pixels = validate.limit("REFQUANT_MAX_PIXELS", validate.MAX_IMAGE_PIXELS)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (89 Mi pixels) when it opens; refquant's limit just below rules
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise validate.InputError(
                    f"{path}: its header states {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels} (REFQUANT_MAX_PIXELS); {validate.format_bytes(12 * width * height)} as float32 RGB")
            image.load()
            pixels = np.asarray(image.convert("RGB"))
    except (FileNotFoundError, validate.InputError):
        raise
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: refused, the image is too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot decode the image, truncated or corrupt ({error})") from None
    if expected_size is not None and (pixels.shape[1], pixels.shape[0]) != tuple(expected_size):
        raise ValueError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but its annotation says "
                         f"{expected_size[0]}x{expected_size[1]}")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def load_voc(root, split, names):
    """Every annotated image of a split of the VOC tree ``root``, as a list of records.

    A record is ``{"id", "image_path", "width", "height", "objects"}`` with objects
    as in :func:`read_annotation`. Images are not decoded here (see
    :func:`load_image`); a missing image file is an error now rather than later.
    """
    root = Path(root)
    records = []
    for image_id in read_image_set(root, split):
        annotation = read_annotation(root / "Annotations" / f"{image_id}.xml", names)
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        if not image_path.is_file():
            raise FileNotFoundError(f"{image_path}: image of {split} id {image_id!r} is missing")
        records.append({"id": image_id, "image_path": image_path, "width": annotation["width"],
                        "height": annotation["height"], "objects": annotation["objects"]})
    return records


def ground_truth(records):
    """The records' objects in the form :func:`refquant.detection.metrics.average_precision` takes.

    Returns a list of ``{"image": record id, "label": class name, "box", "difficult"}``.
    """
    return [{"image": record["id"], "label": obj["label"], "box": obj["box"], "difficult": obj["difficult"]}
            for record in records for obj in record["objects"]]


def _read_object(element, class_ids, path, lines, image_size):
    name_element = _child(element, "name", path, lines)
    name = (name_element.text or "").strip()
    if name not in class_ids:
        raise ValueError(f"{path}:{lines[name_element]}: class {name!r} is not in the names file "
                         f"(known: {', '.join(class_ids)})")
    box_element = _child(element, "bndbox", path, lines)
    box = tuple(_number(_child(box_element, key, path, lines), path, lines) for key in ("xmin", "ymin", "xmax", "ymax"))
    if box[0] > box[2] or box[1] > box[3]:
        raise ValueError(f"{path}:{lines[box_element]}: box {box} has xmin > xmax or ymin > ymax")
    width, height = image_size
    if box[0] < 1 or box[1] < 1 or box[2] > width or box[3] > height:
        raise ValueError(f"{path}:{lines[box_element]}: box {box} leaves the {width}x{height} image of <size>; "
                         f"expected 1 <= xmin <= xmax <= {width} and 1 <= ymin <= ymax <= {height} (VOC pixels)")
    return {"label": name, "class_id": class_ids[name], "box": box,
            "difficult": _flag(element, "difficult", path, lines),
            "truncated": _flag(element, "truncated", path, lines)}


def _child(element, tag, path, lines, required=True):
    """The one ``<tag>`` child of ``element``: ValueError naming the line if it is missing (and
    ``required``) or repeated (a VOC annotation has each field once; no reading is preferred)."""
    found = element.findall(tag)
    if len(found) > 1:
        raise ValueError(f"{path}:{lines[found[1]]}: <{element.tag}> has a second <{tag}> (first at line "
                         f"{lines[found[0]]}); expected one")
    if not found and required:
        raise ValueError(f"{path}:{lines[element]}: <{element.tag}> has no <{tag}>")
    return found[0] if found else None


def _number(element, path, lines):
    """The element's text as a finite number in ASCII decimal (:func:`refquant.validate.parse_decimal`:
    not ``nan``, ``1e999``, ``1_0`` or non-ASCII digits, which Python's ``float`` would take)."""
    try:
        return validate.parse_decimal((element.text or "").strip())
    except ValueError:
        raise ValueError(f"{path}:{lines[element]}: <{element.tag}> is {element.text!r}, expected a finite "
                         f"decimal number") from None


def _integer(element, path, lines):
    value = _number(element, path, lines)
    if value != int(value):
        raise ValueError(f"{path}:{lines[element]}: <{element.tag}> is {element.text!r}, expected an integer")
    return int(value)


def _flag(element, tag, path, lines):
    child = _child(element, tag, path, lines, required=False)
    if child is None:
        return False
    value = _integer(child, path, lines)
    if value not in (0, 1):
        raise ValueError(f"{path}:{lines[child]}: <{tag}> is {child.text!r}, expected 0 or 1")
    return bool(value)
