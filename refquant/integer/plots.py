"""Plots of the integer network: per-layer error against the float network, code histograms,
saturation rates, costs. Each function takes ``ax=None`` (a new figure when None) and returns the Axes.
"""
import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, size=(7, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def _labels(entries):
    return [f"{index}\n{kind[:4]}" for index, kind in entries]


def plot_layer_sqnr(sqnr, ax=None, label=None, title="Integer network against the float network"):
    """Bar chart of the SQNR (dB) of every layer: ``sqnr`` is ``layer_sqnr``'s list of (index, type, dB).

    Layers with an infinite SQNR (no error at all) are drawn at the top of the axis and marked "exact".
    Call again with the same ``ax`` and another ``label`` to compare plans (bars side by side
    are not used: each call draws markers joined by a line, labelled for the legend).
    """
    ax = _axes(ax)
    positions = np.arange(len(sqnr))
    values = np.array([db for _, _, db in sqnr], dtype=np.float64)
    finite = np.isfinite(values)
    top = (values[finite].max() if finite.any() else 0.0) + 10.0
    shown = np.where(np.isposinf(values), top, np.where(np.isneginf(values), 0.0, values))
    ax.plot(positions, shown, marker="o", label=label)
    for x in positions[np.isposinf(values)]:
        ax.annotate("exact", (x, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_xticks(positions)
    ax.set_xticklabels(_labels([(index, kind) for index, kind, _ in sqnr]), fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if label is not None:
        ax.legend()
    return ax


def plot_code_histogram(codes, grid, ax=None, title=None):
    """Histogram of integer ``codes`` over every code of ``grid`` (a UniformQuantizer), qmin..qmax.

    The zero point is marked; the end bars (saturated values) are drawn in another colour.
    """
    ax = _axes(ax)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iuf" or (codes.dtype.kind == "f" and not np.all(codes == np.round(codes))):
        raise TypeError("plot_code_histogram: codes must be integer-valued")
    values = codes.astype(np.int64).ravel()
    if values.size and (values.min() < grid.qmin or values.max() > grid.qmax):
        raise ValueError(f"plot_code_histogram: codes in [{values.min()}, {values.max()}] outside the "
                         f"grid's [{grid.qmin}, {grid.qmax}]")
    counts = np.bincount(values - grid.qmin, minlength=grid.num_levels)
    levels = np.arange(grid.qmin, grid.qmax + 1)
    colours = ["C0"] * levels.size
    colours[0] = colours[-1] = "C3"
    ax.bar(levels, counts / max(values.size, 1), width=1.0, color=colours, edgecolor="none")
    ax.axvline(grid.zero_point, color="k", linestyle=":", linewidth=1, label=f"zero point {grid.zero_point}")
    ax.set_xlabel(f"code (step {grid.step:.4g})")
    ax.set_ylabel("fraction of values")
    ax.set_title(title or f"codes {grid.qmin}..{grid.qmax}")
    ax.legend(fontsize=7)
    return ax


def plot_saturation_rates(rates, ax=None, title="Saturated codes per layer"):
    """Stacked bars of the fraction of codes at qmin and at qmax: ``rates`` from ``saturation_rates``."""
    ax = _axes(ax)
    positions = np.arange(len(rates))
    low = np.array([r[2] for r in rates], dtype=np.float64)
    high = np.array([r[3] for r in rates], dtype=np.float64)
    ax.bar(positions, 100 * low, label="at qmin (clipped below)", color="C0")
    ax.bar(positions, 100 * high, bottom=100 * low, label="at qmax (clipped above)", color="C3")
    ax.set_xticks(positions)
    ax.set_xticklabels(_labels([(r[0], r[1]) for r in rates]), fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("codes at an end (%)")
    upper = float((low + high).max()) * 100 if len(rates) else 1.0
    ax.set_ylim(0, max(upper * 1.15, 1e-3))
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax


def plot_layer_costs(costs, ax=None, title="Bit operations per convolution"):
    """Bit operations (log scale) of every convolution, integer beside float: ``costs`` from
    ``layer_costs``; the legend gives the model sizes."""
    ax = _axes(ax)
    positions = np.arange(len(costs))
    width = 0.4
    ax.bar(positions - width / 2, [c["float_bops"] for c in costs], width, label="float32", color="C7")
    ax.bar(positions + width / 2, [c["bops"] for c in costs], width,
           label="integer (" + ", ".join(sorted({f"W{c['weight_bits']}A{c['activation_bits']}" for c in costs})) + ")",
           color="C0")
    ax.set_yscale("log")
    ax.set_xticks(positions)
    ax.set_xticklabels([str(c["index"]) for c in costs], fontsize=7)
    ax.set_xlabel("convolution (layer index)")
    ax.set_ylabel("bit operations per image")
    size = sum(c["bytes"] for c in costs)
    float_size = sum(c["float_bytes"] for c in costs)
    ax.set_title(f"{title}\nmodel {_megabytes(size)} (float32 {_megabytes(float_size)})", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def _megabytes(n_bytes):
    """``n_bytes`` in MB with 3 significant digits."""
    return f"{n_bytes / 1e6:.3g} MB"
