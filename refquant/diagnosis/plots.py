"""Plots of a plan's sensitivity: the mAP change of each tensor quantized alone, and each tensor's
predicted against measured squared error. Each function takes an optional Axes and returns it.
"""
import numpy as np

COLOURS = {"weights": "C0", "activations": "C3"}


def _axes(ax, size):
    if ax is not None:
        return ax
    from matplotlib.figure import Figure
    return Figure(figsize=size).add_subplot()


def _label(row):
    return f"{row.layer} {'W' if row.kind == 'weights' else 'A'}{row.bits}"


def plot_sensitivity(rows, ax=None, title="mAP change with one tensor quantized"):
    """Horizontal bars: the mAP change (points) of each tensor quantized alone, weights (W) and
    activations (A) in two colours, in layer order."""
    ax = _axes(ax, (6, 0.3 * len(rows) + 1.2))
    rows = sorted(rows, key=lambda r: (r.layer, r.kind != "weights"))
    positions = np.arange(len(rows))
    ax.barh(positions, [r.delta for r in rows], color=[COLOURS[r.kind] for r in rows])
    ax.set_yticks(positions, [_label(r) for r in rows])
    ax.invert_yaxis()
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel("mAP change (points)")
    ax.set_title(title)
    return ax


def plot_predicted_errors(rows, ax=None, title="Squared error: density's prediction and measurement"):
    """Each tensor's measured squared error against the one its density predicts (log-log), with
    the line where they agree; tensors without a density are left out."""
    ax = _axes(ax, (5, 4.5))
    shown = [r for r in rows if r.predicted_mse]
    if not shown:
        raise ValueError("plot_predicted_errors: no row has a predicted error (only the pgm method has densities)")
    for kind in ("weights", "activations"):
        chosen = [r for r in shown if r.kind == kind]
        if chosen:
            ax.scatter([r.predicted_mse for r in chosen], [r.measured_mse for r in chosen], color=COLOURS[kind],
                       label=kind)
            for r in chosen:
                ax.annotate(str(r.layer), (r.predicted_mse, r.measured_mse), textcoords="offset points",
                            xytext=(3, 3), fontsize="small")
    values = [v for r in shown for v in (r.predicted_mse, r.measured_mse) if v > 0]
    lo, hi = min(values) / 2, max(values) * 2
    ax.plot([lo, hi], [lo, hi], color="0.5", linestyle="--", linewidth=0.8, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted by the density")
    ax.set_ylabel("measured on held-out images")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return ax
