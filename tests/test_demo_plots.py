"""The demo's figures are readable: no value label of the mAP plot overlaps another label or a
marker, no text leaves the figure, the density grid carries one legend (outside every panel),
detection captions stay inside the image, "1 box".

Truth: matplotlib's own renderer extents of the drawn artists (text and marker bounding boxes in
display pixels), Pillow's pixels of a drawn caption, and hand-made rows, network and images."""
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from refquant import darknet, ptq
from refquant.demo import plots
from refquant.detection.draw import draw_detections
from refquant.testing import tiny_yolo_cfg, write_cfg


def rendered(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)  # as savefig draws it
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    canvas.draw()
    return canvas.get_renderer()


def assert_inside(figure, renderer):
    """Everything drawn (matplotlib's tight bounding box: texts, tick labels, legends) within the figure."""
    drawn, box = figure.get_tightbbox(renderer), figure.bbox_inches
    tolerance = 0.01  # inches
    assert (drawn.x0 >= box.x0 - tolerance and drawn.y0 >= box.y0 - tolerance and drawn.x1 <= box.x1 + tolerance
            and drawn.y1 <= box.y1 + tolerance), f"something is drawn outside the figure: {drawn} vs {box}"


def close_rows():
    """The shipped model's record at 8 and 6 bits: every method within 0.4 points (the crowded case)."""
    methods = ("pgm", "pgm-paper", "minmax", "percentile", "aciq")
    values = {8: (79.6, 79.6, 79.8, 79.6, 79.9), 6: (79.5, 79.2, 78.9, 79.5, 78.6), 4: (75.4, 74.1, 47.4, 73.6, 70.9)}
    rows = [{"method": "float", "mode": "float", "weight_bits": 32, "mAP": 80.0}]
    for bits, found in values.items():
        rows += [{"method": m, "mode": "ptq", "weight_bits": bits, "mAP": v} for m, v in zip(methods, found)]
    return rows + [{"method": "pgm", "mode": "qat", "weight_bits": 4, "mAP": 77.6}]


def test_map_table_labels_overlap_nothing():
    figure = Figure(figsize=(9, 4.5))
    ax = plots.plot_map_table(close_rows(), ax=figure.subplots())
    renderer = rendered(figure)
    assert_inside(figure, renderer)
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) == 16
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two value labels overlap"
    markers = []
    for line in ax.lines:
        if line.get_marker() in ("o", "*"):
            radius = line.get_markersize() / 72 * figure.dpi / 2
            for x, y in ax.transData.transform(line.get_xydata()):
                markers.append((x - radius, y - radius, x + radius, y + radius))
    for box in boxes:
        for x0, y0, x1, y1 in markers:
            assert box.x1 <= x0 or box.x0 >= x1 or box.y1 <= y0 or box.y0 >= y1, "a label covers a marker"
    assert ax.get_legend() is not None
    legend = ax.get_legend().get_window_extent(renderer)
    for x0, y0, x1, y1 in markers:
        assert legend.x1 <= x0 or legend.x0 >= x1 or legend.y1 <= y0 or legend.y0 >= y1, "the legend covers a marker"


@pytest.fixture(scope="module")
def statistics_and_plans(tmp_path_factory):
    cfg = write_cfg(tmp_path_factory.mktemp("cfg"), tiny_yolo_cfg(anchors="2,2,3.5,3.5"))
    net = darknet.load(cfg, seed=3)
    images = np.random.default_rng(0).random((4, 3, 32, 32)).astype(np.float32)
    statistics = ptq.calibration_statistics(net, images, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fits short of convergence on a random network: irrelevant to the plots
        plans = {method: ptq.quantization_plan(statistics, 4, 4, method) for method in ("pgm", "minmax", "aciq")}
    return statistics, plans


@pytest.mark.parametrize("kind", ["activations", "weights"])
def test_density_grid_has_one_legend_outside_the_panels(statistics_and_plans, kind):
    statistics, plans = statistics_and_plans
    figure = plots.densities_figure(statistics, plans, kind, 4, 8, 8)
    renderer = rendered(figure)
    assert all(ax.get_legend() is None for ax in figure.axes)
    assert len(figure.legends) == 1
    legend = figure.legends[0].get_window_extent(renderer)
    for ax in figure.axes:
        if ax.axison:
            assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "PGM interval" in labels and "min-max interval" in labels and "ACIQ interval" in labels
    assert_inside(figure, renderer)


def test_layer_intervals_alone_keeps_its_legend(statistics_and_plans):
    statistics, plans = statistics_and_plans
    figure = Figure()
    ax = plots.plot_layer_intervals(statistics, plans, 0, "activations", ax=figure.subplots())
    assert ax.get_legend() is not None


def test_box_counts_agree():
    assert [plots.boxes(n) for n in (0, 1, 2)] == ["0 boxes", "1 box", "2 boxes"]


def test_caption_at_the_right_edge_stays_whole():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    detection = {"label": "triangle", "score": 0.91, "box": (50, 30, 64, 60)}
    drawn = np.asarray(draw_detections(image, [detection], labels=["triangle"]))
    font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "triangle 0.91", font=font)
    caption_row = 30 - 1 - (bottom - top) - 2 + 1  # the caption's filled band, above the box
    filled = np.flatnonzero(drawn[caption_row].any(axis=1))
    assert filled.size >= right - left + 2, "the caption was cut at the image's edge"
    assert filled[-1] <= 63 and filled[0] < 49  # moved left of the box's edge to fit
