"""Tests of refquant.pgm_plots: what is drawn is what numpy, scipy and the model say it should be.

Independent truths: numpy.histogram (bar heights), numpy.quantile (QQ data quantiles),
scipy.stats.truncnorm / norm (the curves), and the breakpoints given to the model.
"""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402
from scipy import stats  # noqa: E402

from refquant.density.mixture import GaussianMixture
from refquant.density.pgm import PiecewiseGaussian
from refquant.density.plots import plot_comparison, plot_density, plot_layer_grid, plot_qq

MODEL = PiecewiseGaussian([0.0], [0.3, 0.7], [0.05, 0.5], [0.1, 1.0])


pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(scope="module")
def samples():
    y = np.random.default_rng(0).normal(0.5, 1.0, 20_000)
    return np.where(y >= 0, y, 0.1 * y)


def _scipy_pdf(model, x):
    """The PGM density from scipy.stats.truncnorm, piece by piece."""
    out = np.empty_like(x)
    piece = np.searchsorted(model.breakpoints, x, side="right")
    for k in range(model.n_pieces):
        a = (model.edges[k] - model.means[k]) / model.stds[k]
        b = (model.edges[k + 1] - model.means[k]) / model.stds[k]
        out[piece == k] = model.weights[k] * stats.truncnorm.pdf(x[piece == k], a, b, loc=model.means[k],
                                                                 scale=model.stds[k])
    return out


def _line(ax, text):
    return next(line for line in ax.get_lines() if text in line.get_label())


def test_density_plot_draws_numpy_histogram_and_the_model_density(samples):
    """Truth: numpy.histogram(density=True) for the bars, scipy's truncnorm for the curve, the
    model's breakpoints for the dashed lines, one shaded region per piece inside its piece."""
    fig, ax = plt.subplots()
    returned = plot_density(samples, MODEL, ax=ax, bins=50)
    assert returned is ax
    heights, edges = np.histogram(samples, bins=50, density=True)
    bars = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert len(bars) == 1
    np.testing.assert_allclose(bars[0].get_data().values, heights, rtol=1e-12)
    np.testing.assert_allclose(bars[0].get_data().edges, edges, rtol=1e-12)
    curve = _line(ax, "PiecewiseGaussian")
    x, y = curve.get_xdata(), curve.get_ydata()
    np.testing.assert_allclose(y, _scipy_pdf(MODEL, x), rtol=1e-10)
    assert 0.0 in x and np.nextafter(0.0, -1.0) in x  # the jump at the breakpoint is drawn vertical
    verticals = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in verticals] == [0.0]
    shaded = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(shaded) == 2
    for k, region in enumerate(shaded):
        vertices = region.get_paths()[0].vertices
        assert MODEL.edges[k] <= vertices[:, 0].min() and vertices[:, 0].max() <= MODEL.edges[k + 1]
    assert ax.get_yscale() == "linear"


def test_density_plot_on_log_scale_from_a_histogram_with_overflow_bins():
    """Truth: the definition density = count / (n * width), computed by hand; infinite outer
    bins are not drawn but count in n."""
    counts = np.array([5.0, 10.0, 30.0, 40.0, 10.0, 5.0])
    edges = np.array([-np.inf, -1.0, 0.0, 1.0, 2.0, 3.0, np.inf])
    ax = plot_density((counts, edges), MODEL, scale="log")
    bars = next(p for p in ax.patches if isinstance(p, StepPatch))
    np.testing.assert_allclose(bars.get_data().values, counts[1:-1] / (counts.sum() * 1.0))
    np.testing.assert_allclose(bars.get_data().edges, edges[1:-1])
    assert ax.get_yscale() == "log"
    assert ax.figure is not None


def test_qq_plot_points_are_numpy_quantiles_against_scipy_quantiles():
    """Truth: numpy.quantile of the data (y) and scipy.stats.norm.ppf for a one-piece model (x)."""
    x = np.random.default_rng(1).normal(2.0, 3.0, 5000)
    model = PiecewiseGaussian.normal(2.0, 3.0)
    ax = plot_qq(x, model, n_quantiles=100)
    points = _line(ax, "quantiles")
    probability = (np.arange(100) + 0.5) / 100
    np.testing.assert_allclose(points.get_ydata(), np.quantile(x, probability), rtol=1e-12)
    np.testing.assert_allclose(points.get_xdata(), stats.norm.ppf(probability, 2.0, 3.0), rtol=1e-10)


def test_qq_plot_of_a_histogram_uses_bin_edges():
    """Truth: the fraction of counts below each inner edge, inverted by scipy.stats.norm.ppf."""
    counts = np.array([10.0, 20.0, 40.0, 20.0, 10.0])
    edges = np.array([-np.inf, -1.0, 0.0, 1.0, 2.0, np.inf])
    ax = plot_qq((counts, edges), PiecewiseGaussian.normal(0.5, 1.0))
    points = _line(ax, "quantiles")
    np.testing.assert_allclose(points.get_ydata(), [-1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(points.get_xdata(), stats.norm.ppf([0.1, 0.3, 0.7, 0.9], 0.5, 1.0),
                               rtol=1e-10)


def test_comparison_plot_shows_both_models_with_their_fit_numbers(samples):
    """Truth: scipy.stats.norm for the mixture curve, truncnorm for the PGM, and the fit_info values
    in the legend."""
    pgm = PiecewiseGaussian.fit(samples, [0.0])
    mixture = GaussianMixture.fit(samples, 3)
    ax = plot_comparison(samples, pgm, mixture)
    pgm_line, mixture_line = _line(ax, "PiecewiseGaussian"), _line(ax, "GaussianMixture")
    x = mixture_line.get_xdata()
    expected = sum(w * stats.norm.pdf(x, m, s) for w, m, s in zip(mixture.weights, mixture.means, mixture.stds))
    np.testing.assert_allclose(mixture_line.get_ydata(), expected, rtol=1e-10)
    np.testing.assert_allclose(pgm_line.get_ydata(), _scipy_pdf(pgm, pgm_line.get_xdata()), rtol=1e-10)
    assert f"log L = {pgm.fit_info.log_likelihood:.6g}" in pgm_line.get_label()
    assert f"BIC = {mixture.fit_info.bic:.6g}" in mixture_line.get_label()
    assert ax.get_yscale() == "log"


def test_layer_grid_draws_one_axes_per_layer_in_order(samples):
    """Truth: the layers given, in order; a figure passed in is the one drawn into."""
    layers = {"conv1 activations": (samples, MODEL), "conv2 weights": (samples[:500], PiecewiseGaussian.normal(0.5, 1.0)),
              "conv3 activations": ((np.array([1.0, 5.0, 3.0]), np.array([-1.0, 0.0, 1.0, 2.0])), MODEL)}
    figure = plot_layer_grid(layers, columns=2)
    assert [ax.get_title().split(" (")[0] for ax in figure.axes] == list(layers)
    again = plt.figure()
    assert plot_layer_grid(list(layers.items()), figure=again) is again
    assert len(again.axes) == 3
    buffer = io.BytesIO()
    again.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_arguments_are_checked(samples):
    """Truth: the documented argument rules."""
    with pytest.raises(ValueError, match="scale must be 'linear' or 'log'"):
        plot_density(samples, MODEL, scale="logit")
    with pytest.raises(ValueError, match="layer_fits is empty"):
        plot_layer_grid({})
    with pytest.raises(ValueError, match="histogram must be"):
        plot_density((np.ones(3), np.arange(3.0)), MODEL)
    with pytest.raises(ValueError, match="non-empty and finite"):
        plot_density(np.array([1.0, np.nan]), MODEL)
