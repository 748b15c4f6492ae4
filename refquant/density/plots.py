"""Plots of densities and their fits.

- :func:`plot_density`: the data's histogram with the fitted density, linear or log scale,
  breakpoints marked and each piece shaded in its own colour.
- :func:`plot_qq`: the data's quantiles against the model's (a straight line when it fits).
- :func:`plot_comparison`: a PGM and a Gaussian mixture fitted to the same data.
- :func:`plot_layer_grid`: one small density plot per layer of a network.

``data`` is samples or a histogram ``(counts, bin_edges)``. Every function takes an optional
matplotlib ``ax`` (a new figure when None) and returns the Axes; the grid takes or returns a Figure.
"""
import math

import matplotlib.pyplot as plt
import numpy as np

_DATA_COLOUR = "0.75"


_PIECE_COLOURS = plt.get_cmap("tab10").colors


def _as_histogram(data, bins):
    """``(density (B,), bin_edges (B+1,), n, samples or None)`` of samples or of a histogram.

    ``density[j] = counts[j] / (n * width_j)``: numpy's ``density=True`` convention; infinite bins
    get density 0 (they cannot be drawn) but count in ``n``.
    """
    if isinstance(data, tuple) and len(data) == 2:
        counts, bin_edges = (np.asarray(a, dtype=np.float64) for a in data)
        if counts.ndim != 1 or bin_edges.shape != (counts.size + 1,):
            raise ValueError(f"data: a histogram must be (counts (B,), bin_edges (B+1,)), got shapes "
                             f"{counts.shape} and {bin_edges.shape}")
        samples = None
    else:
        samples = np.asarray(data, dtype=np.float64).reshape(-1)
        if samples.size == 0 or not np.all(np.isfinite(samples)):
            raise ValueError("data: samples must be non-empty and finite")
        counts, bin_edges = np.histogram(samples, bins=bins)
        counts = counts.astype(np.float64)
    n = counts.sum()
    with np.errstate(invalid="ignore"):
        width = np.diff(bin_edges)
        density = np.where(np.isfinite(width), counts / (n * width), 0.0)
    return density, bin_edges, n, samples


def _plot_range(bin_edges, model):
    """The finite x-range to draw: the finite bin edges, widened to the model's 0.1%..99.9% if those
    are inside the histogram's infinite outer bins."""
    finite = bin_edges[np.isfinite(bin_edges)]
    lo, hi = finite[0], finite[-1]
    if not np.isfinite(bin_edges[0]):
        lo = min(lo, float(model.ppf(1e-3)))
    if not np.isfinite(bin_edges[-1]):
        hi = max(hi, float(model.ppf(1 - 1e-3)))
    return lo, hi


def _new_axes(ax):
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _draw_histogram(ax, density, bin_edges):
    """The finite bins as a filled step outline (only the outer bins can be infinite)."""
    first = 1 if np.isinf(bin_edges[0]) else 0
    last = density.size - 1 if np.isinf(bin_edges[-1]) else density.size
    ax.stairs(density[first:last], bin_edges[first:last + 1], fill=True, color=_DATA_COLOUR,
              label="data")


def _curve_points(model, lo, hi, points):
    """``points`` evenly spaced values in [lo, hi], plus each breakpoint and the float just below
    it, so that the density's jumps are drawn vertical."""
    x = np.linspace(lo, hi, points)
    breakpoints = getattr(model, "breakpoints", np.empty(0))
    inside = breakpoints[(breakpoints > lo) & (breakpoints < hi)]
    return np.union1d(x, np.concatenate([inside, np.nextafter(inside, -np.inf)]))


def _set_scale(ax, scale, density, curves):
    if scale == "log":
        positive = np.concatenate([density[density > 0], *[c[c > 0] for c in curves]])
        ax.set_yscale("log")
        if positive.size:
            ax.set_ylim(max(positive.min(), positive.max() * 1e-7) * 0.5, positive.max() * 2.0)
    elif scale != "linear":
        raise ValueError(f"scale must be 'linear' or 'log', got {scale!r}")


def plot_density(data, model, ax=None, *, scale="linear", bins=200, points=2000, title=None):
    """Histogram of ``data`` (as a density) with ``model.pdf`` over it, on a linear or log y-scale.

    For a :class:`~refquant.density.pgm.PiecewiseGaussian`, each piece's area under the density is shaded
    in its own colour and each breakpoint is a dashed vertical line. ``bins``: for samples, as
    ``numpy.histogram``. ``points``: resolution of the density curve. Returns the Axes.
    """
    ax = _new_axes(ax)
    density, bin_edges, _, _ = _as_histogram(data, bins)
    lo, hi = _plot_range(bin_edges, model)
    x = _curve_points(model, lo, hi, points)
    y = model.pdf(x)
    _draw_histogram(ax, density, bin_edges)
    if hasattr(model, "breakpoints"):
        piece = model.piece_of(x)
        for k in range(model.n_pieces):
            if np.any(piece == k):
                ax.fill_between(x[piece == k], y[piece == k], color=_PIECE_COLOURS[k % 10],
                                alpha=0.3, linewidth=0, label=f"piece {k}: mass {model.weights[k]:.3g}")
        for b in model.breakpoints:
            ax.axvline(b, color="k", linestyle="--", linewidth=0.8)
    ax.plot(x, y, color="k", linewidth=1.2, label=_model_label(model))
    _set_scale(ax, scale, density, [y])
    return _finish(ax, lo, hi, title)


def _finish(ax, lo, hi, title):
    """The common frame of a density plot: x range, axis labels, title, legend."""
    ax.set_xlim(lo, hi)
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def _model_label(model):
    name = type(model).__name__
    if hasattr(model, "breakpoints"):
        breakpoints = ", ".join(f"{b:.3g}" for b in model.breakpoints)
        return f"{name}, K={model.n_pieces}" + (f", breakpoints {breakpoints}" if breakpoints else "")
    return f"{name}, K={model.n_components}"


def plot_qq(data, model, ax=None, *, n_quantiles=200, title=None):
    """Quantile-quantile plot: the data's quantiles (y) against the model's (x), with ``y = x``.

    Samples: the empirical quantiles at probabilities ``(i - 1/2) / n_quantiles``
    (``numpy.quantile``) against ``model.ppf`` at the same probabilities. A histogram: each finite
    inner bin edge (y) against ``model.ppf`` of the fraction of counts below it (x).
    Returns the Axes.
    """
    ax = _new_axes(ax)
    if isinstance(data, tuple) and len(data) == 2:
        counts, bin_edges = (np.asarray(a, dtype=np.float64) for a in data)
        fraction = np.cumsum(counts)[:-1] / counts.sum()
        keep = (fraction > 0) & (fraction < 1) & np.isfinite(bin_edges[1:-1])
        observed = bin_edges[1:-1][keep]
        expected = model.ppf(fraction[keep])
    else:
        samples = np.asarray(data, dtype=np.float64).reshape(-1)
        probability = (np.arange(n_quantiles) + 0.5) / n_quantiles
        observed = np.quantile(samples, probability)
        expected = model.ppf(probability)
    ax.plot(expected, observed, ".", markersize=3, color="C0", label="quantiles")
    lo = min(expected.min(), observed.min())
    hi = max(expected.max(), observed.max())
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8, label="y = x")
    if hasattr(model, "breakpoints"):
        for b in model.breakpoints:
            ax.axvline(b, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"{type(model).__name__} quantile")
    ax.set_ylabel("data quantile")
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_comparison(data, pgm, mixture, ax=None, *, scale="log", bins=200, points=2000, title=None):
    """The PGM and the Gaussian mixture fitted to the same data, over its histogram.

    The legend gives each model's log-likelihood and BIC when the model carries ``fit_info``
    (``PiecewiseGaussian.fit`` / ``GaussianMixture.fit``). Log scale by default: the tails are
    where the two differ and where clipping error is decided. Returns the Axes.
    """
    ax = _new_axes(ax)
    density, bin_edges, _, _ = _as_histogram(data, bins)
    lo, hi = _plot_range(bin_edges, pgm)
    x = _curve_points(pgm, lo, hi, points)
    _draw_histogram(ax, density, bin_edges)
    curves = []
    for model, colour, style in ((pgm, "C3", "-"), (mixture, "C0", "--")):
        y = model.pdf(x)
        curves.append(y)
        ax.plot(x, y, color=colour, linestyle=style, linewidth=1.2,
                label=_model_label(model) + _fit_summary(model))
    for b in pgm.breakpoints:
        ax.axvline(b, color="C3", linestyle=":", linewidth=0.8)
    _set_scale(ax, scale, density, curves)
    return _finish(ax, lo, hi, title)


def _fit_summary(model):
    info = getattr(model, "fit_info", None)
    if info is None:
        return ""
    return f"\nlog L = {info.log_likelihood:.6g}, BIC = {info.bic:.6g}"


def plot_layer_grid(layer_fits, figure=None, *, columns=4, scale="log", bins=100, points=600):
    """One density plot (:func:`plot_density`, no legend) per layer, in a grid.

    ``layer_fits``: a mapping (or sequence of pairs) ``name -> (data, model)``, in network order,
    e.g. ``{"conv1 weights": (w1, pgm1), "conv1 activations": ((counts, edges), pgm2), ...}``.
    ``figure``: a matplotlib Figure to draw into (cleared), or None for a new one sized to the
    grid. Returns the Figure; its axes are in ``figure.axes``, one per layer in order.
    """
    items = list(layer_fits.items()) if hasattr(layer_fits, "items") else list(layer_fits)
    if not items:
        raise ValueError("layer_fits is empty: nothing to plot")
    rows = math.ceil(len(items) / columns)
    if figure is None:
        figure = plt.figure(figsize=(3.2 * min(columns, len(items)), 2.4 * rows))
    else:
        figure.clear()
    for index, (name, (data, model)) in enumerate(items):
        ax = figure.add_subplot(rows, min(columns, len(items)), index + 1)
        plot_density(data, model, ax=ax, scale=scale, bins=bins, points=points)
        ax.get_legend().remove()
        ax.set_title(f"{name} (K={getattr(model, 'n_pieces', getattr(model, 'n_components', '?'))})",
                     fontsize="small")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize="x-small")
    figure.tight_layout()
    return figure
