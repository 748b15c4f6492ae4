"""Darknet's image operations (``src/image.c``), on float32 (3, H, W) arrays in [0, 1].

Each function is the NumPy form of the Darknet function of the same name, so that
a network trained here sees its inputs exactly as Darknet would prepare them:
``resize_image`` (bilinear with corners aligned), ``letterbox_image`` (aspect
kept, grey 0.5 borders), ``crop_image`` (indices clamped to the border),
``flip_image``, and the HSV distortion of ``distort_image`` with Darknet's
``rgb_to_hsv`` / ``hsv_to_rgb``. Arithmetic is float32, as in Darknet.
"""
import numpy as np


def resize_image(image, width, height):
    """Bilinear resize of (C, H, W) to (C, height, width), corners aligned (Darknet ``resize_image``).

    Source pixel of output column c: sx = c * (W - 1) / (width - 1), interpolated
    between columns floor(sx) and floor(sx) + 1; the last column copies the last
    source column. Rows likewise, applied after the columns. This is
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=True)``.
    """
    image = np.asarray(image, dtype=np.float32)
    if width < 1 or height < 1:
        raise ValueError(f"resize_image: target size {width}x{height}, expected positive width and height")
    part = _resize_axis(image, width, axis=2)
    return _resize_axis(part, height, axis=1)


def _resize_axis(image, size, axis):
    """Darknet's one-axis pass: out[k] = (1 - d) in[i] + d in[i + 1], i = floor(k * scale)."""
    length = image.shape[axis]
    if size == 1 or length == 1:
        index = np.full(size, length - 1)
        return np.take(image, index, axis=axis)
    scale = np.float32(length - 1) / np.float32(size - 1)
    position = np.arange(size, dtype=np.float32) * scale
    low = np.minimum(position.astype(np.int64), length - 1)
    frac = (position - low.astype(np.float32)).astype(np.float32)
    high = np.minimum(low + 1, length - 1)
    frac[-1] = 0.0  # the last output copies the last input pixel
    low[-1] = length - 1
    shape = [1, 1, 1]
    shape[axis] = size
    frac = frac.reshape(shape)
    return ((np.float32(1) - frac) * np.take(image, low, axis=axis)
            + frac * np.take(image, high, axis=axis)).astype(np.float32)


def letterbox_size(width, height, net_width, net_height):
    """Size ``(new_width, new_height)`` of an image scaled into the network input, aspect kept.

    Darknet ``letterbox_image`` and ``correct_region_boxes`` (``region_layer.c``)
    compute it identically, in C integer and float arithmetic:
    if net_width / width < net_height / height: new_width = net_width,
    new_height = height * net_width // width; else new_height = net_height,
    new_width = width * net_height // height.
    """
    if np.float32(net_width) / np.float32(width) < np.float32(net_height) / np.float32(height):
        return net_width, (height * net_width) // width
    return (width * net_height) // height, net_height


def letterbox_image(image, net_width, net_height):
    """(3, H, W) -> (3, net_height, net_width): resized with its aspect kept, centred on grey 0.5.

    Darknet ``letterbox_image``: the image is resized to :func:`letterbox_size`
    and embedded at ((net_width - new_width) // 2, (net_height - new_height) // 2).
    """
    channels, height, width = np.shape(image)
    new_width, new_height = letterbox_size(width, height, net_width, net_height)
    boxed = np.full((channels, net_height, net_width), 0.5, dtype=np.float32)
    left, top = (net_width - new_width) // 2, (net_height - new_height) // 2
    boxed[:, top:top + new_height, left:left + new_width] = resize_image(image, new_width, new_height)
    return boxed


def crop_image(image, left, top, width, height):
    """The (C, height, width) window of ``image`` at column ``left``, row ``top`` (Darknet ``crop_image``).

    The window may reach outside the image (negative ``left``, or beyond the
    border): those pixels repeat the nearest border pixel (indices clamped).
    """
    image = np.asarray(image, dtype=np.float32)
    rows = np.clip(np.arange(height) + top, 0, image.shape[1] - 1)
    cols = np.clip(np.arange(width) + left, 0, image.shape[2] - 1)
    return image[:, rows[:, None], cols[None, :]]


def flip_image(image):
    """Mirror left-right (Darknet ``flip_image``)."""
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def rgb_to_hsv(image):
    """(3, H, W) RGB -> HSV, all in [0, 1] (Darknet ``rgb_to_hsv``).

    v = max, s = (max - min) / max (0 when max = 0), hue in sixths from the
    channel holding the max, wrapped to [0, 1). Grey pixels (max = min) get
    hue 0 where Darknet computes 0/0; they have s = 0, so hsv_to_rgb ignores it.
    """
    r, g, b = np.asarray(image, dtype=np.float32)
    value = np.maximum(np.maximum(r, g), b)
    delta = value - np.minimum(np.minimum(r, g), b)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(value > 0, delta / value, 0).astype(np.float32)
        hue = np.where(r == value, (g - b) / delta,
                       np.where(g == value, 2 + (b - r) / delta, 4 + (r - g) / delta)).astype(np.float32)
    hue = np.where(hue < 0, hue + 6, hue)
    hue = np.where(delta > 0, hue / np.float32(6), 0).astype(np.float32)
    return np.stack([hue, saturation, value])


def hsv_to_rgb(image):
    """(3, H, W) HSV -> RGB (Darknet ``hsv_to_rgb``).

    h6 = 6 h, sector i = floor(h6), f = h6 - i, p = v (1 - s), q = v (1 - s f),
    t = v (1 - s (1 - f)); sectors 0..4 give (v,t,p), (q,v,p), (p,v,t), (p,q,v),
    (t,p,v) and any other sector (v,p,q), as Darknet's final ``else`` (so a hue
    of exactly 1 lands there, unlike ``colorsys`` which wraps it to sector 0).
    s = 0 gives grey v. No clipping here: saturation above 1 is allowed.
    """
    hue, saturation, value = np.asarray(image, dtype=np.float32)
    h6 = np.float32(6) * hue
    sector = np.floor(h6)
    f = h6 - sector
    p = value * (1 - saturation)
    q = value * (1 - saturation * f)
    t = value * (1 - saturation * (1 - f))
    index = np.where((sector >= 0) & (sector <= 4), sector, 5).astype(np.intp)
    choice = _HSV_SECTORS[index].transpose(2, 0, 1)  # (3, H, W): which of v, p, q, t each channel takes
    rgb = np.take_along_axis(np.stack([value, p, q, t]), choice, axis=0)
    return np.where(saturation == 0, value, rgb).astype(np.float32)


# Sector k of hsv_to_rgb -> (r, g, b) as indices into (v, p, q, t); row 5 is Darknet's final ``else``.
_HSV_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def distort_image(image, hue, saturation, exposure):
    """Shift hue by ``hue``, scale saturation and value, clip to [0, 1] (Darknet ``distort_image``).

    In HSV: s *= saturation, v *= exposure, h += hue wrapped once into [0, 1]
    (h > 1: h - 1; h < 0: h + 1); back to RGB, then every value clipped to [0, 1]
    (``constrain_image``).
    """
    hsv = rgb_to_hsv(image)
    hsv[1] *= np.float32(saturation)
    hsv[2] *= np.float32(exposure)
    shifted = hsv[0] + np.float32(hue)
    shifted = np.where(shifted > 1, shifted - 1, shifted)
    hsv[0] = np.where(shifted < 0, shifted + 1, shifted)
    return np.clip(hsv_to_rgb(hsv), 0, 1).astype(np.float32)
