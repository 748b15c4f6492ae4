"""Plots of a network: a layer's activation maps, per-layer statistics, the layer table.

Every plotting function takes ``ax=None`` (a new figure is made when None) and returns
the matplotlib Axes it drew on. :func:`layer_statistics` computes what
:func:`plot_activation_statistics` and :func:`plot_gradient_statistics` draw.
"""
import matplotlib.pyplot as plt
import numpy as np

from refquant.yolo.network import NETWORK_INPUT


def _axes(ax, figsize=(8, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def activation_map_grid(output, image=0, channels=None, columns=None):
    """Tile channel maps of one image into a 2-D array (NaN between tiles).

    ``output`` (N, C, H, W); ``channels`` a list of channel indices (default the first 16).
    Each map is scaled to [0, 1] by its own min and max so that every map is visible.
    Returns (grid (rows*(H+1)-1, columns*(W+1)-1), channels used).
    """
    maps = np.asarray(output[image], dtype=np.float64)
    channels = list(range(min(16, maps.shape[0]))) if channels is None else list(channels)
    columns = columns or int(np.ceil(np.sqrt(len(channels))))
    rows = int(np.ceil(len(channels) / columns))
    height, width = maps.shape[1:]
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for k, c in enumerate(channels):
        m = maps[c]
        span = m.max() - m.min()
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        r, q = divmod(k, columns)
        grid[r * (height + 1):r * (height + 1) + height, q * (width + 1):q * (width + 1) + width] = m
    return grid, channels


def plot_activation_maps(output, image=0, channels=None, title=None, ax=None):
    """Show the channel maps of one layer's ``output`` (N, C, H, W) for one image, tiled."""
    ax = _axes(ax, figsize=(6, 6))
    grid, channels = activation_map_grid(output, image, channels)
    ax.imshow(grid, cmap="viridis", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"channels {channels[0]}..{channels[-1]} of image {image} (each scaled to its range)")
    return ax


def layer_statistics(net, x, dout=None, training=False):
    """Per-layer statistics of the activations (and gradients, given ``dout``) for a batch ``x``.

    Runs ``net.forward(x, training, return_all=True)`` and, with ``dout`` (an array for the
    last layer or {layer: array}), ``net.backward(dout, return_all=True)``. Returns a dict of
    (L,) arrays: ``mean``, ``std``, ``min``, ``max`` of each layer's output, ``zero_fraction``
    (share of exact zeros), and with dout ``gradient_rms`` (root mean square of dL/d output,
    NaN for layers no gradient reaches); plus ``types`` (list of layer types).
    """
    outputs = net.forward(x, training=training, return_all=True)
    stats = {
        "types": [layer.type for layer in net.layers],
        "mean": np.array([float(np.mean(o, dtype=np.float64)) for o in outputs]),
        "std": np.array([float(np.std(o, dtype=np.float64)) for o in outputs]),
        "min": np.array([float(np.min(o)) for o in outputs]),
        "max": np.array([float(np.max(o)) for o in outputs]),
        "zero_fraction": np.array([float(np.mean(o == 0)) for o in outputs]),
    }
    if dout is not None:
        _, deltas = net.backward(dout, return_all=True)
        stats["gradient_rms"] = np.array([np.nan if d is None else float(np.sqrt(np.mean(np.square(d, dtype=np.float64))))
                                          for d in deltas])
    return stats


def plot_activation_statistics(stats, ax=None):
    """Mean +- std of every layer's output (error bars) with its min and max (markers)."""
    ax = _axes(ax)
    layers = np.arange(len(stats["mean"]))
    ax.errorbar(layers, stats["mean"], yerr=stats["std"], fmt="o", capsize=3, label="mean +- std")
    ax.plot(layers, stats["min"], "v", color="gray", label="min")
    ax.plot(layers, stats["max"], "^", color="gray", label="max")
    ax.set_xticks(layers)
    ax.set_xticklabels([f"{i} {t[:4]}" for i, t in enumerate(stats["types"])], rotation=90)
    ax.set_xlabel("layer")
    ax.set_ylabel("activation")
    ax.legend()
    return ax


def plot_gradient_statistics(stats, ax=None):
    """Root mean square of dL/d(output) per layer, on a log scale (needs ``gradient_rms``)."""
    if "gradient_rms" not in stats:
        raise ValueError("stats has no gradient_rms: call layer_statistics with dout")
    ax = _axes(ax)
    layers = np.arange(len(stats["gradient_rms"]))
    ax.semilogy(layers, stats["gradient_rms"], "o-")
    ax.set_xticks(layers)
    ax.set_xticklabels([f"{i} {t[:4]}" for i, t in enumerate(stats["types"])], rotation=90)
    ax.set_xlabel("layer")
    ax.set_ylabel("RMS of dL/d output")
    return ax


def layer_table_rows(net, input_shape=None):
    """Rows (layer, type, filters, size/stride, input, output, parameters) of the layer table."""
    input_shape = net.input_shape if input_shape is None else tuple(input_shape)
    shapes = net.output_shapes(input_shape)
    rows = []
    for i, layer in enumerate(net.layers):
        sources = net.inputs[i]
        in_shape = input_shape if sources[0] == NETWORK_INPUT else shapes[sources[0]]
        filters = str(layer.filters) if hasattr(layer, "filters") else ""
        size = f"{layer.size}x{layer.size}/{layer.stride}" if hasattr(layer, "size") else ""
        if getattr(layer, "multi_input", False):
            size = "from " + ",".join(str(j) for j in sources)
        params = int(sum(p.size for p in layer.params.values()))
        rows.append([str(i), layer.type, filters, size, "x".join(map(str, in_shape)),
                     "x".join(map(str, shapes[i])), f"{params:,}"])
    return rows


def plot_layer_table(net, input_shape=None, ax=None):
    """The network's layer table (shapes C x H x W and parameter counts) drawn as a table."""
    rows = layer_table_rows(net, input_shape)
    ax = _axes(ax, figsize=(9, 0.3 * len(rows) + 1))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["layer", "type", "filters", "size/stride", "input", "output",
                                               "params"], loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title(f"{net.name}: {net.parameter_count():,} parameters")
    return ax
