"""The demo's figures: mAP per method and width, per-layer intervals and errors, detections.
Each plotting function takes an optional Axes; figures are drawn without pyplot.
"""
import math

import numpy as np
from matplotlib.figure import Figure

from refquant.demo.experiment import METHOD_NAMES, quantized_name
from refquant.demo.report import _find


def plot_map_table(rows, ax=None):
    """mAP (%) against the width, one line of markers per method and mode, FP32 as a dashed line.

    Points rather than bars, so that the axis can start near the lowest value without
    exaggerating the differences (the axis range is printed on it)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    bits = sorted({r["weight_bits"] for r in rows if r["mode"] != "float"}, reverse=True)
    series = list(dict.fromkeys((r["method"], r["mode"]) for r in rows if r["mode"] != "float"))
    positions = {b: k for k, b in enumerate(bits)}
    spread = min(0.12, 0.8 / max(len(series), 1))  # the methods side by side at each width, never overlapping
    values = [r["mAP"] for r in rows]
    for k, (method, mode) in enumerate(series):
        found = [r for r in rows if r["method"] == method and r["mode"] == mode]
        x = [positions[r["weight_bits"]] + (k - (len(series) - 1) / 2) * spread for r in found]
        y = [r["mAP"] for r in found]
        size = 7 if mode == "ptq" else 12
        ax.plot(x, y, marker="o" if mode == "ptq" else "*", markersize=size,
                linestyle="-" if mode == "ptq" else "none", color=f"C{k}",
                label=f"{METHOD_NAMES[method]} ({mode.upper()})")
        for xi, yi in zip(x, y):  # upright above the marker: one column of text per method
            ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(0, size / 2 + 2), fontsize=7,
                        rotation=90, ha="center", va="bottom", color=f"C{k}")
    fp32 = _find(rows, "float", "float", 32)
    if fp32:
        ax.axhline(fp32["mAP"], color="k", linestyle="--", linewidth=1, label=f"FP32 {fp32['mAP']:.1f}")
    if values:  # room above the highest marker for its label
        lo, hi = min(values), max(values)
        span = max(hi - lo, 1.0)
        ax.set_ylim(lo - 0.06 * span, hi + 0.22 * span)
    ax.set_xticks(range(len(bits)))
    ax.set_xticklabels([f"{b}-bit" for b in bits])
    ax.set_xlim(-0.5, len(bits) - 0.5)
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP of each method and width (weights and activations alike)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the points
    return ax


def plot_layer_intervals(statistics, plans, index, kind, ax=None, legend=True):
    """One layer: its values' histogram (activations: the calibration histogram; weights: the folded
    tensor), the fitted PGM (from ``plans``' PGM plan), and each plan's interval as vertical lines.

    ``plans``: {method: QuantizationPlan} at one width; ``kind``: ``"activations"`` or ``"weights"``.
    ``legend``: the Axes' own legend (each interval's ends); False for a grid sharing one
    (:func:`interval_legend_handles`), the PGM interval then in the title.
    """
    import matplotlib.pyplot as plt

    from refquant.density.plots import plot_density
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    if kind == "activations":
        histogram = statistics.histograms[index]
        data = (histogram.counts.astype(np.float64), histogram.edges)
    else:
        data = statistics.weights(index).ravel()
    density = plans["pgm"].densities.get((kind, index)) if "pgm" in plans else None
    if density is not None:
        plot_density(data, density, ax=ax, scale="log", bins=100, points=600)
    else:
        counts, edges = data if isinstance(data, tuple) else np.histogram(data, 100)
        ax.stairs(counts / counts.sum() / np.diff(edges), edges, fill=True, color="0.75")
        ax.set_yscale("log")
    for k, (method, plan) in enumerate(plans.items()):
        quantizer = (plan.activations if kind == "activations" else plan.weights)[index]
        for end in quantizer.interval:
            ax.axvline(end, color=f"C{k}", linewidth=1.2, linestyle="-" if method == "pgm" else ":",
                       label=f"{METHOD_NAMES[method]} [{quantizer.lo:.3g}, {quantizer.hi:.3g}]" if end == quantizer.lo
                       else None)
    layer = statistics.net.layers[index]
    if legend:
        ax.set_title(f"layer {index} [{layer.type}] {kind}", fontsize=8)
        ax.legend(fontsize=5, loc="upper right")
    else:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        pgm = (plans["pgm"].activations if kind == "activations" else plans["pgm"].weights)[index] \
            if "pgm" in plans else None
        interval = f", PGM [{pgm.lo:.3g}, {pgm.hi:.3g}]" if pgm is not None else ""
        ax.set_title(f"layer {index} [{layer.type}] {kind}{interval}", fontsize=9)
    return ax


def interval_legend_handles(methods):
    """(handles, labels) of one legend for a grid of :func:`plot_layer_intervals` panels drawn with
    ``legend=False``: the data, the fitted PGM, its pieces and breakpoints, each method's interval ends."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color="0.6", alpha=0.8), Line2D([], [], color="k", linewidth=1.2),
               Patch(color="C1", alpha=0.3), Line2D([], [], color="k", linestyle="--", linewidth=0.8)]
    labels = ["data (histogram)", "fitted PGM", "PGM pieces (shaded, one colour each)", "PGM breakpoints"]
    for k, method in enumerate(methods):
        handles.append(Line2D([], [], color=f"C{k}", linewidth=1.2, linestyle="-" if method == "pgm" else ":"))
        labels.append(f"{METHOD_NAMES[method]} interval")
    return handles, labels


def layer_errors(statistics, plans, kind):
    """{method: [(layer index, SQNR dB)]}: ``10 log10(variance / mean squared error)`` of each plan's
    quantizer on each layer's values (activations: under the calibration histogram's density,
    :func:`refquant.quantizers.error.expected_mse`; weights: the folded tensor's empirical error)."""
    from refquant.quantizers import error as quantizers_error
    errors = {}
    for method, plan in plans.items():
        quantizers = plan.activations if kind == "activations" else plan.weights
        entries = []
        for index in sorted(quantizers):
            if kind == "activations":
                density = statistics.histograms[index].density()
                error, variance = quantizers_error.expected_mse(density, quantizers[index]), density.var()
            else:
                values = statistics.weights(index)
                error, variance = quantizers_error.empirical_mse(values, quantizers[index]), float(np.var(values))
            entries.append((index, 10.0 * math.log10(variance / error) if error > 0 else math.inf))
        errors[method] = entries
    return errors


def plot_layer_errors(errors, ax=None, title=None):
    """SQNR (dB) per layer, one line per method: ``errors`` from :func:`layer_errors`."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for k, (method, entries) in enumerate(errors.items()):
        indices = [index for index, _ in entries]
        ax.plot(range(len(entries)), [db for _, db in entries], marker="o", color=f"C{k}",
                label=METHOD_NAMES[method])
    ax.set_xticks(range(len(indices)))
    ax.set_xticklabels([str(i) for i in indices])
    ax.set_xlabel("layer")
    ax.set_ylabel("SQNR (dB), higher is better")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_detections(image, detections, names, ax=None, title=None):
    """An image (3, H, W) float with ``detections`` drawn (:func:`refquant.detection.draw.draw_detections`)."""
    import matplotlib.pyplot as plt

    from refquant.detection.draw import draw_detections
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.asarray(draw_detections(image, detections, labels=names)))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def write_figures(experiment):
    """Every PNG of the module docstring into the output folder; returns their file names.

    The figures are drawn on ``matplotlib.figure.Figure`` objects, without pyplot, so that
    writing them neither needs nor changes a display backend."""
    out, names = experiment.out, []

    def save(figure, name):
        if figure.get_layout_engine() is None:
            figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        names.append(name)
    figure = Figure(figsize=(9, 4.5))
    plot_map_table(experiment.rows, ax=figure.subplots())
    save(figure, "map_table.png")
    if not experiment.plans:
        return names
    bits = min(b for _, b in experiment.plans)
    plans = {method: plan for (method, b), plan in experiment.plans.items() if b == bits}
    for kind in ("activations", "weights"):
        figure = densities_figure(experiment.statistics, plans, kind, bits, experiment.settings.first_bits,
                                  experiment.settings.last_bits)
        save(figure, f"densities_{kind}.png")
    figure = Figure(figsize=(12, 4))
    for ax, kind in zip(figure.subplots(1, 2), ("activations", "weights")):
        plot_layer_errors(layer_errors(experiment.statistics, plans, kind), ax=ax,
                          title=f"{kind} at {bits} bits: quantization SQNR per layer")
    save(figure, "method_errors.png")
    save(detections_figure(experiment, bits), "detections.png")
    return names


def densities_figure(statistics, plans, kind, bits, first_bits, last_bits):
    """Every quantized layer's :func:`plot_layer_intervals` panel in a grid, with one legend below it."""
    indices = sorted(next(iter(plans.values())).activations if kind == "activations"
                     else next(iter(plans.values())).weights)
    columns = min(4, len(indices))
    rows = math.ceil(len(indices) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, index in zip(axes.ravel(), indices):
        plot_layer_intervals(statistics, plans, index, kind, ax=ax, legend=False)
    for ax in axes.ravel()[len(indices):]:
        ax.set_axis_off()
    handles, labels = interval_legend_handles(plans)
    figure.legend(handles, labels, loc="outside lower center", ncol=min(5, len(labels)), fontsize=9)
    figure.suptitle(f"{kind.capitalize()}: fitted PGM and the intervals of each method at {bits} bits "
                    f"(first/last layer at {first_bits}/{last_bits})")
    return figure


def boxes(count):
    """"1 box", "3 boxes"."""
    return f"{count} box" if count == 1 else f"{count} boxes"


def detections_figure(experiment, bits):
    """Rows: a few test images; columns: FP32, PGM PTQ and PGM QAT at ``bits`` (those that ran)."""
    from refquant.data.voc import load_image
    from refquant.detection.decode import DETECTION_THRESHOLD
    columns = [("FP32", "float")] + [(quantized_name("pgm", bits, mode), ("pgm", mode, bits))
                                     for mode in ("ptq", "qat") if ("pgm", mode, bits) in experiment.detections]
    records = experiment.test_records[:experiment.settings.drawn_images]
    figure = Figure(figsize=(3 * len(columns), 3 * len(records)))
    axes = figure.subplots(len(records), len(columns), squeeze=False)
    for r, record in enumerate(records):
        image = load_image(record["image_path"], (record["width"], record["height"]))
        for c, (title, key) in enumerate(columns):
            shown = [d for d in experiment.detections[key]
                     if d["image"] == record["id"] and d["score"] >= DETECTION_THRESHOLD]
            plot_detections(image, shown, experiment.names, ax=axes[r, c],
                            title=f"{title}: {boxes(len(shown))}" if r == 0 else boxes(len(shown)))
    figure.suptitle(f"Detections with score >= {DETECTION_THRESHOLD}")
    return figure
