"""Tests of refquant.integer_network_plots on hand-made inputs: what is drawn is read back from the
matplotlib artists and compared with the numbers given (the truth: those hand-written numbers)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from refquant.integer import plots as integer_plots
from refquant.quantizers.uniform import UniformQuantizer

pytestmark = pytest.mark.usefixtures("close_figures")


def test_layer_sqnr_plot_draws_every_layer_and_marks_exact_ones():
    """Hand-made SQNR list: the line's y values are the dB given, an infinite SQNR is drawn above
    the others and annotated "exact"; a second call on the same Axes adds a labelled line."""
    sqnr = [(0, "convolutional", 35.0), (1, "maxpool", 35.0), (2, "convolutional", math.inf),
            (3, "region", 20.5)]
    ax = integer_plots.plot_layer_sqnr(sqnr)
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2, 3])
    y = line.get_ydata()
    assert list(y[[0, 1, 3]]) == [35.0, 35.0, 20.5] and y[2] == 45.0
    assert [t.get_text() for t in ax.texts] == ["exact"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\nconv", "1\nmaxp", "2\nconv", "3\nregi"]
    again = integer_plots.plot_layer_sqnr(sqnr[:2], ax=ax, label="4 bits")
    assert again is ax and len(ax.get_lines()) == 2 and ax.get_legend() is not None


def test_code_histogram_bars_are_the_code_frequencies():
    """Hand-made codes on a 3-bit grid with zero point 2: one bar per code, heights the fractions
    counted by hand, end bars coloured apart, the zero point marked; codes off the grid refused."""
    grid = UniformQuantizer(0.5, 2, 0, 7)
    codes = np.array([[0, 0, 2, 3], [3, 3, 7, 5]], dtype=np.uint8)
    fig, given = plt.subplots()
    ax = integer_plots.plot_code_histogram(codes, grid, ax=given)
    assert ax is given
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [2 / 8, 0, 1 / 8, 3 / 8, 0, 1 / 8, 0, 1 / 8]
    colours = [bar.get_facecolor() for bar in ax.patches]
    assert colours[0] == colours[-1] != colours[1]
    assert ax.get_lines()[0].get_xdata()[0] == 2
    with pytest.raises(ValueError, match="outside the grid"):
        integer_plots.plot_code_histogram(np.array([8]), grid)
    with pytest.raises(TypeError, match="integer-valued"):
        integer_plots.plot_code_histogram(np.array([0.5]), grid)


def test_saturation_plot_stacks_low_and_high():
    """Hand-made rates: the lower bars are 100 * the fraction at qmin, the upper ones start there
    and have height 100 * the fraction at qmax."""
    rates = [(0, "convolutional", 0.01, 0.002), (8, "route", 0.0, 0.05)]
    ax = integer_plots.plot_saturation_rates(rates)
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([1.0, 0.0, 0.2, 5.0])
    assert [b.get_y() for b in bars] == pytest.approx([0.0, 0.0, 1.0, 0.0])


def test_layer_costs_plot_shows_both_models():
    """Hand-made costs: float and integer bars per convolution on a log axis, sizes in the title."""
    costs = [{"index": 0, "bops": 64, "float_bops": 1024, "bytes": 200_000, "float_bytes": 800_000,
              "weight_bits": 8, "activation_bits": 8},
             {"index": 2, "bops": 16, "float_bops": 1024, "bytes": 50_000, "float_bytes": 400_000,
              "weight_bits": 4, "activation_bits": 4}]
    ax = integer_plots.plot_layer_costs(costs)
    assert ax.get_yscale() == "log"
    assert [b.get_height() for b in ax.patches] == [1024, 1024, 64, 16]
    assert "0.25 MB" in ax.get_title() and "1.2 MB" in ax.get_title()
    assert "W4A4" in ax.get_legend().get_texts()[1].get_text()
