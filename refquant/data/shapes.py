"""The shapes data set: a small VOC-format detection tree generated from a seed.

refquant ships no image data. Instead this module draws a detection data set
that any machine regenerates byte for byte from its seed, in seconds, and writes
it as a Pascal VOC tree (``Annotations/*.xml``, ``JPEGImages/*.jpg``,
``ImageSets/Main/{train,val,trainval,test}.txt``, plus ``shapes.names``), so
that everything downstream (:mod:`refquant.data.voc`, training, evaluation)
is the code a real VOC tree goes through.

Each image (``size`` x ``size``, default 160):

- a textured background: a two-colour gradient, smooth random blotches of
  colour, sometimes stripes, a few clutter lines, pixel noise;
- 1 to 6 objects of the :data:`SHAPE_NAMES` classes, of sizes from 8 % to 50 % of
  the image (log-uniform), randomly rotated and stretched, in random colours
  (flat, shaded or striped), drawn anti-aliased one over the other, so later
  objects occlude earlier ones, and objects near the border are truncated;
- JPEG compression at a random quality (45 to 95).

Annotation follows the VOC guidelines: the box bounds the VISIBLE pixels of the
object (after occlusion and truncation), in VOC pixels (1-based, inclusive);
``truncated`` = 1 when the shape extends beyond the image; ``difficult`` = 1 when
the object is too small (longer box side < 9 % of the image) or too hidden
(less than 40 % of its area visible); objects with fewer than 6 visible pixels
are not annotated.

The data set is generated on first use into a cache directory, by writing a
temporary directory beside it and renaming it into place, so an interrupted run
never leaves a half-written tree behind.
"""
import colorsys
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

import refquant
from refquant.data.image import resize_image

VERSION = 1  # bump when the drawing changes: the cache directory name carries it
SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon")
SPLITS = ("train", "val", "test")
SMALL = 0.09  # difficult if the longer side of the visible box is below this fraction of the image
HIDDEN = 0.40  # difficult if less than this fraction of the shape's area is visible
MIN_VISIBLE_PIXELS = 6  # fewer visible pixels than this: not annotated at all
SUPERSAMPLE = 2  # shapes are drawn at twice the resolution and averaged down (anti-aliasing)


def shapes_dataset(path=None, seed=0, size=160, train=2000, val=200, test=500, progress=True):
    """Path of the shapes VOC tree for these parameters, generated on first use.

    ``path``: the tree's directory; default ``<cache>/shapes-v1-seed<seed>-<size>px-
    <train>-<val>-<test>`` under :func:`refquant.cache_dir`. An existing tree is
    reused after checking its ``manifest.json`` states the same parameters.
    ``train``, ``val``, ``test``: number of images per split. Returns a Path
    whose ``shapes.names`` lists the classes.
    """
    parameters = _parameters(seed, size, train, val, test)
    if path is None:
        path = refquant.cache_dir() / f"shapes-v{VERSION}-seed{seed}-{size}px-{train}-{val}-{test}"
    path = Path(path)
    if not path.exists():
        generate(path, seed=seed, size=size, train=train, val=val, test=test, progress=progress)
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"{path}: exists but is not a shapes data set (no manifest.json); choose another path")
    found = json.loads(manifest.read_text())
    if found != parameters:
        raise ValueError(f"{manifest}: the tree was generated with {found}, not the requested {parameters}")
    return path


def generate(path, seed=0, size=160, train=2000, val=200, test=500, progress=True):
    """Write the shapes VOC tree at ``path`` (which must not exist), atomically.

    Everything is written into a temporary directory beside ``path`` which is
    then renamed to ``path``; on any error or interruption the temporary
    directory is removed. If another process finished the same tree first, its
    tree is kept. Image k of split s is drawn from its own random stream
    ``numpy.random.default_rng([seed, s, k])``.
    """
    path = Path(path)
    parameters = _parameters(seed, size, train, val, test)
    if path.exists():
        raise FileExistsError(f"{path}: already exists; the shapes generator writes only new directories")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        _write_tree(temporary, parameters, progress)
        try:
            os.rename(temporary, path)
        except OSError:
            if not (path / "manifest.json").is_file():
                raise
            shutil.rmtree(temporary)  # a concurrent run finished first; its tree is the same
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def _parameters(seed, size, train, val, test):
    for name, value in (("seed", seed), ("size", size), ("train", train), ("val", val), ("test", test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    if size < 32:
        raise ValueError(f"size: expected at least 32 pixels, got {size}")
    return {"generator": "refquant.data.shapes", "version": VERSION, "seed": int(seed), "size": int(size),
            "train": int(train), "val": int(val), "test": int(test), "names": list(SHAPE_NAMES)}


def _write_tree(root, parameters, progress):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    (root / "shapes.names").write_text("".join(f"{name}\n" for name in SHAPE_NAMES))
    size, seed = parameters["size"], parameters["seed"]
    split_ids = {}
    total = sum(parameters[split] for split in SPLITS)
    with tqdm(total=total, desc="shapes data set", unit="image", disable=not progress) as bar:
        number = 0
        for split_index, split in enumerate(SPLITS):
            split_ids[split] = []
            for k in range(parameters[split]):
                number += 1
                image_id = f"{number:06d}"
                pixels, objects, quality = render_image(np.random.default_rng([seed, split_index, k]), size)
                Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=quality)
                (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, size, size, objects))
                split_ids[split].append(image_id)
                bar.update()
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    for split, ids in split_ids.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "manifest.json").write_text(json.dumps(parameters, indent=1) + "\n")


def annotation_xml(image_id, width, height, objects):
    """A VOC annotation document for one image; ``objects`` as :func:`render_image` returns them."""
    parts = [f"<annotation>\n\t<folder>shapes</folder>\n\t<filename>{escape(image_id)}.jpg</filename>\n"
             f"\t<source><database>refquant shapes v{VERSION}</database></source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n"
             f"\t</size>\n\t<segmented>0</segmented>\n"]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["box"]
        parts.append(f"\t<object>\n\t\t<name>{escape(obj['label'])}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>{int(obj['truncated'])}</truncated>\n"
                     f"\t\t<difficult>{int(obj['difficult'])}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
                     f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


# ---------------------------------------------------------------- drawing one image

def render_image(rng, size):
    """Draw one image: ``(pixels (size, size, 3) uint8, objects, jpeg_quality)``.

    ``objects``: list of ``{"label", "box" (xmin, ymin, xmax, ymax) VOC pixels of
    the visible part, "difficult", "truncated", "visible" (fraction of the
    shape's area visible)}`` in drawing order, unannotatable ones left out.
    """
    canvas = background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the topmost object covering each pixel
    shapes = []
    for k in range(int(rng.integers(1, 7))):
        label = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        for attempt in range(8):
            outline, hole = shape_polygons(label, rng, size)
            alpha, window = rasterize(outline, hole, size)
            # Retry a placement that would hide an earlier object almost completely.
            if attempt == 7 or not _hides_earlier(owner, window, alpha, shapes):
                break
        _paint(canvas, alpha, window, rng)
        region = owner[window]
        region[alpha >= 0.5] = k
        shapes.append({"label": label, "area": polygon_area(outline) - (polygon_area(hole) if hole is not None else 0),
                       "truncated": bool(outline.min() < 0 or outline.max() > size)})
    sigma = np.float32(rng.uniform(0.015, 0.06))
    pixels = np.clip(canvas + sigma * rng.standard_normal(canvas.shape, dtype=np.float32), 0, 1)
    objects = _annotate(owner, shapes, size)
    return (np.rint(pixels * 255).astype(np.uint8), objects, int(rng.integers(45, 96)))


def background(rng, size):
    """A textured noisy background (size, size, 3) float in [0, 1]."""
    colours = _random_colour(rng, 2).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = (np.float32(np.cos(angle)) * grid[None, :] + np.float32(np.sin(angle)) * grid[:, None] + 0.5)[..., None]
    canvas = colours[0] * (1 - ramp) + colours[1] * ramp
    cells = int(rng.integers(3, 8))  # smooth colour blotches: a coarse random grid, bilinearly upsampled
    blotches = resize_image(rng.standard_normal((3, cells, cells), dtype=np.float32), size, size).transpose(1, 2, 0)
    canvas += np.float32(rng.uniform(0.03, 0.15)) * blotches
    if rng.random() < 0.4:  # stripes
        frequency, phase, direction = rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        line = np.arange(size, dtype=np.float32) * np.float32(frequency)
        wave = np.sin(np.float32(np.cos(direction)) * line[None, :] + np.float32(np.sin(direction)) * line[:, None]
                      + np.float32(phase))
        canvas += (np.float32(rng.uniform(0.03, 0.12)) * wave[..., None]) * _random_colour(rng, 1)[0].astype(np.float32)
    return _clutter(np.clip(canvas, 0, 1), rng, size)  # pixel noise comes last, over the objects too


def _clutter(canvas, rng, size):
    """Draw 0 to 4 thin random line segments (distractors that belong to no class)."""
    count = int(rng.integers(0, 5))
    if count == 0:
        return canvas
    image = Image.fromarray(np.rint(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        points = [tuple(float(v) for v in rng.uniform(-0.1 * size, 1.1 * size, 2)) for _ in range(int(rng.integers(2, 4)))]
        colour = tuple(int(v) for v in np.rint(_random_colour(rng, 1)[0] * 255))
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(image, dtype=np.float32) / np.float32(255)


def _random_colour(rng, count):
    """``count`` random RGB colours in [0, 1], from random hue, saturation and value."""
    return np.array([colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))
                     for _ in range(count)])


def shape_polygons(label, rng, size):
    """Vertices (V, 2) in pixels of a random instance of ``label``, and its hole (or None).

    The nominal radius r is log-uniform in [4 %, 25 %] of the image (diameters 8 %
    to 50 %); the centre is uniform in [10 %, 90 %]; the shape is rotated (circles
    and rings need not be) and stretched by up to 20 % along one axis.
    """
    radius = size * math.exp(rng.uniform(math.log(0.04), math.log(0.25)))
    centre = rng.uniform(0.1 * size, 0.9 * size, 2)
    rotation = rng.uniform(0, 2 * np.pi)
    stretch = np.array([rng.uniform(0.83, 1.2), 1.0])
    outline, hole = _unit_shape(label)
    return (_place(outline, radius, stretch, rotation, centre),
            None if hole is None else _place(hole, radius, stretch, rotation, centre))


def _unit_shape(label):
    """Outline and hole of ``label`` on the unit circle scale."""
    def regular(count, radius=1.0, offset=0.0):
        angles = offset + 2 * np.pi * np.arange(count) / count
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if label == "circle":
        return regular(48), None
    if label == "square":
        return regular(4, offset=np.pi / 4) * 0.8 * math.sqrt(2), None  # half-side 0.8
    if label == "triangle":
        return regular(3, offset=-np.pi / 2) * 1.1, None
    if label == "star":
        points = regular(10, offset=-np.pi / 2)
        points[1::2] *= 0.42
        return points * 1.1, None
    if label == "cross":
        arm, half = 1.0, 0.32
        return np.array([[half, arm], [half, half], [arm, half], [arm, -half], [half, -half], [half, -arm],
                         [-half, -arm], [-half, -half], [-arm, -half], [-arm, half], [-half, half],
                         [-half, arm]]), None
    if label == "ring":
        return regular(48), regular(48, radius=0.55)
    if label == "hexagon":
        return regular(6), None
    raise ValueError(f"shape label: expected one of {SHAPE_NAMES}, got {label!r}")


def _place(points, radius, stretch, rotation, centre):
    cos, sin = math.cos(rotation), math.sin(rotation)
    scaled = points * radius * stretch
    return np.stack([cos * scaled[:, 0] - sin * scaled[:, 1], sin * scaled[:, 0] + cos * scaled[:, 1]], axis=1) + centre


def polygon_area(points):
    """Area of a simple polygon (V, 2) by the shoelace formula."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def rasterize(outline, hole, size):
    """Anti-aliased coverage of a polygon (minus its hole) within the image.

    Returns ``(alpha, window)``: alpha (h, w) float in [0, 1] over the window
    (a pair of slices of the image), drawn at :data:`SUPERSAMPLE` times the
    resolution and box-averaged down. Pixel (col, row) covers [col, col + 1) x
    [row, row + 1) in the polygon's coordinates. Pillow fills every fine pixel
    its outline touches, so edges grow by up to half a fine pixel.
    """
    low = np.clip(np.floor(outline.min(axis=0)).astype(int), 0, size)
    high = np.clip(np.ceil(outline.max(axis=0)).astype(int) + 1, 0, size)
    width, height = max(int(high[0] - low[0]), 1), max(int(high[1] - low[1]), 1)
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(mask)
    # Sample centres of the fine grid sit at half-integers of the fine pixels.
    def fine(points):
        return [tuple(p) for p in ((points - low) * SUPERSAMPLE - 0.5).tolist()]
    draw.polygon(fine(outline), fill=255)
    if hole is not None:
        draw.polygon(fine(hole), fill=0)
    alpha = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32) / np.float32(255)
    return alpha, (slice(int(low[1]), int(low[1]) + height), slice(int(low[0]), int(low[0]) + width))


def _hides_earlier(owner, window, alpha, shapes):
    """Whether covering ``alpha`` >= 0.5 would leave an earlier object under 25 % of its area visible."""
    if not shapes:
        return False
    visible = np.bincount(owner[owner >= 0], minlength=len(shapes))
    region = owner[window]
    covered = np.bincount(region[(alpha >= 0.5) & (region >= 0)], minlength=len(shapes))
    areas = np.array([s["area"] for s in shapes])
    return bool(np.any((covered > 0) & (visible - covered < 0.25 * areas)))


def _paint(canvas, alpha, window, rng):
    """Composite one object's colour (flat, shaded or striped) over ``canvas`` with ``alpha``."""
    region = canvas[window]
    local_background = region.reshape(-1, 3).mean(axis=0)
    for _ in range(10):  # a colour that stands out from the local background, when one is found
        colour = _random_colour(rng, 1)[0]
        if np.linalg.norm(colour - local_background) > 0.3:
            break
    height, width = alpha.shape
    style = rng.random()
    fill = np.broadcast_to(colour, (height, width, 3)).copy()
    if style < 0.3:  # shading: brightness ramp across the object
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * np.linspace(-0.5, 0.5, width)[None, :]
                + np.sin(angle) * np.linspace(-0.5, 0.5, height)[:, None])
        fill = fill * (1 + rng.uniform(0.3, 0.7) * ramp[..., None])
    elif style < 0.5:  # stripes of a second colour
        direction, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        phase = (np.cos(direction) * np.arange(width)[None, :] + np.sin(direction) * np.arange(height)[:, None])
        stripes = (np.floor(phase / period) % 2)[..., None] * rng.uniform(0.3, 0.7)
        fill = fill * (1 - stripes) + _random_colour(rng, 1)[0] * stripes
    canvas[window] = region * (1 - alpha[..., None]) + np.clip(fill, 0, 1) * alpha[..., None]


def _annotate(owner, shapes, size):
    """VOC objects from the ownership map: visible boxes, flags; unannotatable objects dropped."""
    objects = []
    for k, shape in enumerate(shapes):
        rows, cols = np.nonzero(owner == k)
        if rows.size < MIN_VISIBLE_PIXELS:
            continue
        box = (int(cols.min()) + 1, int(rows.min()) + 1, int(cols.max()) + 1, int(rows.max()) + 1)
        visible = rows.size / max(shape["area"], 1e-9)
        longer_side = max(box[2] - box[0] + 1, box[3] - box[1] + 1)
        objects.append({"label": shape["label"], "box": box, "truncated": shape["truncated"],
                        "difficult": bool(longer_side < SMALL * size or visible < HIDDEN),
                        "visible": float(min(visible, 1.0))})
    return objects
