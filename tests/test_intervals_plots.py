"""The interval plots draw what they claim (Agg backend).

Truths: the quantizer's own interval and levels (drawn where they are), a brute-force scan along the
plotted curve (the marked optimum lies on or below every point of it), the monotonicity of the
clipping error in the clipping value (a wider interval clips less, for every density), and the
numbers handed to the bar chart.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from refquant.density.pgm import PiecewiseGaussian
from refquant.quantizers.error import expected_mse
from refquant.quantizers.optimal import optimal_quantizer
from refquant.quantizers.plots import (
    clipping_errors,
    plot_error_vs_clipping,
    plot_granular_vs_clipping,
    plot_method_errors,
    plot_quantizer,
)
from refquant.quantizers.uniform import UniformQuantizer

WEIGHTS = PiecewiseGaussian([-1.0, 1.0], [0.2, 0.6, 0.2], [-0.5, 0.0, 0.5], [1.5, 0.7, 1.5])
LEAKY = PiecewiseGaussian([0.0], [0.5, 0.5], [0.0, 0.0], [0.1, 1.0])


pytestmark = pytest.mark.usefixtures("close_figures")


def test_plot_quantizer_draws_the_interval_and_every_level():
    """Truth: the quantizer's interval [lo, hi] and its 16 levels, each line reaching the density."""
    quantizer = optimal_quantizer(LEAKY, 4)
    ax = plot_quantizer(LEAKY, quantizer)
    span = [p for p in ax.patches if p.get_label() == "interval [lo, hi]"][0]
    xs = span.get_patch_transform().transform(span.get_path().vertices)[:, 0]  # data x, any matplotlib
    assert (xs.min(), xs.max()) == pytest.approx(quantizer.interval)
    segments = [c for c in ax.collections if c.get_label() == "16 levels"][0].get_segments()
    assert np.allclose([s[0, 0] for s in segments], quantizer.levels)
    assert np.allclose([s[1, 1] for s in segments], LEAKY.pdf(quantizer.levels))


def test_error_vs_clipping_marks_the_minimum_of_each_curve():
    """Truth: a brute-force scan along each plotted curve: the marked optimum is never above it
    (and the curve comes within 2 % of it, so the marker sits at the curve's bottom)."""
    fig, ax = plt.subplots()
    assert plot_error_vs_clipping(WEIGHTS, bits=(2, 4, 8), ax=ax) is ax
    curves = [line for line in ax.lines if line.get_label().endswith("bits")]
    markers = [line for line in ax.lines if "optimum" in line.get_label()]
    assert len(curves) == len(markers) == 3
    for curve, marker in zip(curves, markers):
        best = marker.get_ydata()[0]
        assert best <= curve.get_ydata().min() * (1 + 1e-12)
        assert curve.get_ydata().min() <= best * 1.02
        assert curve.get_xdata().min() < marker.get_xdata()[0] < curve.get_xdata().max()


def test_granular_and_clipping_parts_add_up_and_clipping_falls():
    """Truth: granular + clipping = total (drawn), and the clipping error can only fall as the
    clipping value grows (the clipped tails shrink and are mapped to a nearer level)."""
    ax = plot_granular_vs_clipping(LEAKY, 4)
    granular, clipping, total = (line.get_ydata() for line in ax.lines[:3])
    np.testing.assert_allclose(granular + clipping, total, rtol=1e-12)
    assert np.all(np.diff(clipping) <= 0)
    c = ax.lines[0].get_xdata()[10]
    g, k = clipping_errors(LEAKY, 4, [c])
    assert g[0] + k[0] == pytest.approx(expected_mse(LEAKY, UniformQuantizer(c / 7, 0, -8, 7)), rel=1e-12)


def test_method_errors_bars_show_the_given_numbers():
    """Truth: the numbers handed in, one bar each, grouped by layer, one legend entry per method."""
    errors = {"conv1": {"min-max": 3e-3, "optimal (density)": 1e-3},
              "conv2": {"min-max": 5e-4, "optimal (density)": 2e-4, "KL (TensorRT)": 4e-4}}
    ax = plot_method_errors(errors)
    heights = {(round(p.get_x() + p.get_width() / 2, 6)): p.get_height() for p in ax.patches}
    assert sorted(h for h in heights.values() if np.isfinite(h)) == sorted([3e-3, 1e-3, 5e-4, 2e-4, 4e-4])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["min-max", "optimal (density)", "KL (TensorRT)"]
    with pytest.raises(ValueError, match="empty"):
        plot_method_errors({})


def test_clipping_axis_labels_do_not_overlap(close_figures):
    """Truth: matplotlib's own bounding boxes of the drawn tick labels: on the log clipping axis
    (0.5 to 8, where matplotlib's default labels minor ticks as 3 x 10^0 and 4 x 10^0 side by
    side) no two labels overlap, and they read as plain numbers."""
    from refquant.density.pgm import PiecewiseGaussian
    ax = plot_error_vs_clipping(PiecewiseGaussian([], [1.0], [0.0], [1.0]), bits=(2, 3, 4, 6, 8))
    figure = ax.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(labels) >= 3 and all("times" not in t.get_text() and "^" not in t.get_text() for t in labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), [t.get_text() for t in labels]
