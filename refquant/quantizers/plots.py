"""Plots of quantization intervals and errors.

- :func:`plot_quantizer`: the density with the quantization grid and the interval over it.
- :func:`plot_error_vs_clipping`: expected error against the clipping value, several widths.
- :func:`plot_granular_vs_clipping`: the two parts of the error against the clipping value.
- :func:`plot_method_errors`: the error of every method side by side, per layer.

The clipping curves use signed symmetric codes (zero point 0): clipping value ``c = hi``,
``step = c / qmax``. Every function takes ``ax=None`` (then makes a new figure) and returns the Axes.
"""
import matplotlib.pyplot as plt
import numpy as np

from refquant.quantizers.error import expected_mse
from refquant.quantizers.optimal import optimal_quantizer
from refquant.quantizers.uniform import code_range, signed_quantizer


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    return ax


def _log_clip_axis(ax):
    """A log x axis labelled at 1, 2 and 5 times the powers of ten in plain numbers: matplotlib's
    default labels every minor tick as ``3 x 10^0`` there, and the labels overlap."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_quantizer(dist, quantizer, ax=None, num_points=2000):
    """The density ``dist.pdf`` with the levels of ``quantizer`` (vertical lines up to the density)
    and its interval ``[lo, hi]`` shaded; the title gives step, zero point and expected error."""
    ax = _axes(ax)
    low, high = (float(v) for v in dist.ppf(np.array([1e-4, 1.0 - 1e-4])))
    width = quantizer.hi - quantizer.lo
    x = np.linspace(min(low, quantizer.lo - 0.05 * width), max(high, quantizer.hi + 0.05 * width), num_points)
    ax.plot(x, dist.pdf(x), color="C0", label="density")
    ax.axvspan(quantizer.lo, quantizer.hi, color="C1", alpha=0.15, label="interval [lo, hi]")
    levels = quantizer.levels
    ax.vlines(levels, 0.0, dist.pdf(levels), color="C3", linewidth=0.8 if levels.size <= 64 else 0.3,
              label=f"{levels.size} levels")
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    ax.set_title(f"step {quantizer.step:.4g}, zero point {quantizer.zero_point:.4g}, "
                 f"E[(x - Q(x))^2] = {expected_mse(dist, quantizer):.3g}", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def clipping_errors(dist, bits, clip_values):
    """``(granular, clipping)`` expected errors, each (C,), of the signed symmetric quantizers with
    ``hi = clip_values`` (``step = c / qmax``)."""
    _, qmax = code_range(bits, signed=True)
    parts = np.array([expected_mse(dist, signed_quantizer(bits, c / qmax), split=True) for c in clip_values])
    return parts[:, 0], parts[:, 1]


def _clip_range(dist, optima, num_points):
    """Clipping values from half the smallest to twice the largest optimum (log-spaced)."""
    his = [quantizer.hi for quantizer in optima]
    return np.geomspace(0.5 * min(his), 2.0 * max(his), num_points)


def plot_error_vs_clipping(dist, bits=(2, 4, 8), ax=None, num_points=120):
    """Expected error (log scale) against the clipping value for each bit width, optimum marked."""
    ax = _axes(ax)
    optima = [optimal_quantizer(dist, b, symmetric=True) for b in bits]
    clip_values = _clip_range(dist, optima, num_points)
    for color, b, best in zip((f"C{k}" for k in range(10)), bits, optima):
        granular, clipping = clipping_errors(dist, b, clip_values)
        ax.plot(clip_values, granular + clipping, color=color, label=f"{b} bits")
        ax.plot([best.hi], [expected_mse(dist, best)], "o", color=color, markeredgecolor="k",
                label=f"{b}-bit optimum, c = {best.hi:.3g}")
    _log_clip_axis(ax)
    ax.set_yscale("log")
    ax.set_xlabel("clipping value c (interval [-c - step, c], signed codes)")
    ax.set_ylabel("expected squared error")
    ax.legend(fontsize=8)
    return ax


def plot_granular_vs_clipping(dist, bits, ax=None, num_points=120):
    """Granular, clipping and total expected error against the clipping value at ``bits``."""
    ax = _axes(ax)
    best = optimal_quantizer(dist, bits, symmetric=True)
    clip_values = _clip_range(dist, [best], num_points)
    granular, clipping = clipping_errors(dist, bits, clip_values)
    ax.plot(clip_values, granular, label="granular (inside [lo, hi])")
    ax.plot(clip_values, clipping, label="clipping (outside)")
    ax.plot(clip_values, granular + clipping, "k", label="total")
    ax.axvline(best.hi, color="grey", linestyle=":", label=f"optimum c = {best.hi:.3g}")
    _log_clip_axis(ax)
    ax.set_yscale("log")
    ax.set_xlabel("clipping value c")
    ax.set_ylabel("expected squared error")
    ax.set_title(f"{bits} bits", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def plot_method_errors(errors, ax=None):
    """Grouped bars (log scale): ``errors[layer][method]`` = squared error, one group per layer
    (e.g. from :func:`refquant.quantizers.baselines.method_errors`), one colour per method."""
    ax = _axes(ax)
    layers = list(errors)
    if not layers:
        raise ValueError("plot_method_errors: errors is empty")
    methods = list(dict.fromkeys(m for layer in layers for m in errors[layer]))
    width = 0.8 / len(methods)
    positions = np.arange(len(layers))
    for k, method in enumerate(methods):
        heights = [errors[layer].get(method, np.nan) for layer in layers]
        ax.bar(positions + (k - (len(methods) - 1) / 2) * width, heights, width, label=method)
    ax.set_xticks(positions)
    ax.set_xticklabels(layers, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("squared error")
    ax.legend(fontsize=7, ncol=2)
    return ax
