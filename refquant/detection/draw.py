"""Drawing detections onto an image with Pillow (``refquant detect``).

Boxes are VOC pixel boxes (1-based, inclusive; :mod:`refquant.detection.boxes`): pixel
(xmin, ymin) is drawn at 0-based (xmin - 1, ymin - 1). Each label keeps one
colour, spread around the hue circle in the order the labels are given.
"""
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from refquant import atomic


def label_colours(labels):
    """One RGB colour (ints 0..255) per label, evenly spaced hues, full saturation."""
    labels = list(dict.fromkeys(labels))
    return {label: tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(k / max(len(labels), 1), 0.9, 1.0))
            for k, label in enumerate(labels)}


def draw_detections(image, detections, labels=None, path=None, line_width=None):
    """Draw boxes with ``label score`` captions; return the Pillow image, and save a PNG if ``path``.

    ``image``: a Pillow image, a file path, or an array (3, H, W) float in [0, 1]
    (the network's layout) or (H, W, 3) uint8. ``detections``: dicts with
    ``label``, ``score``, ``box`` (VOC pixels), e.g. from
    :func:`refquant.detection.decode.detections` at the drawing threshold.
    ``labels``: all class names, to fix the colours (default: those present).
    ``line_width``: default max(1, height // 160) (Darknet draws ``im.h * .006``).
    """
    canvas = _as_pillow(image).convert("RGB").copy()
    colours = label_colours(labels if labels is not None else [d["label"] for d in detections])
    width = line_width or max(1, canvas.height // 160)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for detection in sorted(detections, key=lambda d: d["score"]):  # best drawn last, on top
        colour = colours.get(detection["label"], (255, 255, 255))
        xmin, ymin, xmax, ymax = (float(v) - 1 for v in detection["box"])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
        caption = f"{detection['label']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), caption, font=font)
        text_top = ymin - (bottom - top) - 2 if ymin - (bottom - top) - 2 >= 0 else ymin
        # at the box's left edge, moved left as far as needed to stay whole inside the image
        text_left = max(0.0, min(xmin, canvas.width - 1 - ((right - left) + 2)))
        draw.rectangle([text_left, text_top, text_left + (right - left) + 2, text_top + (bottom - top) + 2],
                       fill=colour)
        draw.text((text_left + 1 - (left - xmin), text_top + 1 - top + ymin), caption, fill=(0, 0, 0), font=font)
    if path is not None:
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"{path}: expected a .png output path")
        atomic.atomic_write(path, lambda f: canvas.save(f, format="PNG"))
    return canvas


def _as_pillow(image):
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.dtype != np.uint8:
        return Image.fromarray(np.clip(np.rint(array.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8))
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return Image.fromarray(array)
    raise TypeError(f"image: expected a Pillow image, a path, a (3, H, W) float array or (H, W, 3) uint8 array, "
                    f"got {type(image).__name__} of shape {getattr(array, 'shape', None)}")
