"""The shapes data set generator (refquant.data.shapes).

Independent truths: byte-for-byte comparison of two generations from one seed; the VOC reader
(refquant.data.voc) reading the tree back; hand-worked rasterization of an axis-aligned square;
the shoelace area of every shape against its anti-aliased pixel coverage; a hand-made ownership
map for the visible boxes and flags; and the file system after an interrupted generation.
"""
import json
from collections import Counter

import numpy as np
import pytest

import refquant.data.shapes as shapes
from refquant.data.shapes import (
    SHAPE_NAMES,
    _annotate,
    generate,
    polygon_area,
    rasterize,
    render_image,
    shape_polygons,
    shapes_dataset,
)
from refquant.data.voc import load_image, load_voc, read_names

TINY = {"seed": 5, "size": 96, "train": 6, "val": 2, "test": 4}


def tree_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    """Independent truth: two generations with one seed are identical file for file, byte for byte;
    another seed gives other images."""
    first = tree_files(generate(tmp_path / "a", progress=False, **TINY))
    second = tree_files(generate(tmp_path / "b", progress=False, **TINY))
    other = tree_files(generate(tmp_path / "c", progress=False, **{**TINY, "seed": 6}))
    assert first == second
    assert len(first) == 12 * 2 + 4 + 2  # images + annotations, 4 image sets, names, manifest
    assert first["JPEGImages/000001.jpg"] != other["JPEGImages/000001.jpg"]


def test_reader_reads_the_tree_back(tmp_path):
    """Independent truth: refquant.data.voc reads the generated tree: names, splits (trainval =
    train + val, ids disjoint), every image decodes at its annotated size, boxes inside the image."""
    root = generate(tmp_path / "t", progress=False, **TINY)
    names = read_names(root / "shapes.names")
    assert names == list(SHAPE_NAMES)
    splits = {split: load_voc(root, split, names) for split in ("train", "val", "trainval", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 4]
    ids = {s: [r["id"] for r in records] for s, records in splits.items()}
    assert ids["trainval"] == ids["train"] + ids["val"]
    assert not set(ids["trainval"]) & set(ids["test"])
    for record in splits["trainval"] + splits["test"]:
        image = load_image(record["image_path"], (record["width"], record["height"]))
        assert image.shape == (3, 96, 96)
        for obj in record["objects"]:
            xmin, ymin, xmax, ymax = obj["box"]
            assert 1 <= xmin <= xmax <= 96 and 1 <= ymin <= ymax <= 96
    assert json.loads((root / "manifest.json").read_text())["seed"] == 5


def test_rasterize_axis_aligned_square_hand_worked():
    """Hand-worked: the square [10, 20) x [5, 15) covers exactly pixels columns 10..19, rows 5..14
    (pixel (c, r) is [c, c + 1) x [r, r + 1)): alpha 1 there, 0 elsewhere."""
    square = np.array([[10.0, 5.0], [20.0, 5.0], [20.0, 15.0], [10.0, 15.0]])
    alpha, window = rasterize(square, None, 32)
    canvas = np.zeros((32, 32))
    canvas[window] = alpha
    expected = np.zeros((32, 32))
    expected[5:15, 10:20] = 1
    np.testing.assert_array_equal(canvas, expected)


def perimeter(points):
    return float(np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1).sum())


@pytest.mark.parametrize("label", SHAPE_NAMES)
def test_coverage_matches_shoelace_area(label):
    """Independent truth: the shoelace area of the polygon (minus its hole). Pillow fills every fine
    pixel its outline touches, so the coverage may exceed the area by up to half a fine pixel's
    diagonal (sqrt(2)/2 / SUPERSAMPLE image pixels) along the perimeter; it is never short of it
    (by more than 2 pixels of rounding), for shapes lying inside a 160 image."""
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 5:
        outline, hole = shape_polygons(label, rng, 160)
        if outline.min() < 0 or outline.max() > 160:
            continue
        alpha, _ = rasterize(outline, hole, 160)
        area = polygon_area(outline) - (polygon_area(hole) if hole is not None else 0)
        edge = perimeter(outline) + (perimeter(hole) if hole is not None else 0)
        assert -2 <= alpha.sum() - area <= edge * np.sqrt(2) / 2 / shapes.SUPERSAMPLE + 2
        checked += 1


def test_annotation_from_a_hand_made_ownership_map():
    """Hand-made map, size 100: object 0 (area 200) owns columns 10..29 of rows 10..14 (100 pixels,
    50 % visible: not difficult); object 1 (area 400) owns a 3x3 block (9 pixels, visible 2.25 %:
    difficult, and its 3-pixel side is under 9); object 2 owns 4 pixels, under the 6 needed: not
    annotated. Boxes are 1-based inclusive."""
    owner = np.full((100, 100), -1, dtype=np.int16)
    owner[10:15, 10:30] = 0
    owner[50:53, 60:63] = 1
    owner[90:92, 90:92] = 2
    shapes_drawn = [{"label": "star", "area": 200.0, "truncated": False},
                    {"label": "ring", "area": 400.0, "truncated": True},
                    {"label": "cross", "area": 50.0, "truncated": False}]
    objects = _annotate(owner, shapes_drawn, 100)
    assert [(o["label"], o["box"], o["difficult"], o["truncated"]) for o in objects] == [
        ("star", (11, 11, 30, 15), False, False), ("ring", (61, 51, 63, 53), True, True)]
    assert objects[0]["visible"] == 0.5


def test_image_statistics():
    """Over 60 images of size 160: 1 to 6 annotated objects (objects hidden below 6 pixels may be
    dropped, never added), every class present, and each kind of hardness present: small or hidden
    (difficult), truncated, occluded (visible < 90 % without touching the border)."""
    counts, labels, difficult, truncated, occluded = [], Counter(), 0, 0, 0
    for k in range(60):
        pixels, objects, quality = render_image(np.random.default_rng([0, 9, k]), 160)
        assert pixels.shape == (160, 160, 3) and pixels.dtype == np.uint8 and 45 <= quality <= 95
        counts.append(len(objects))
        labels.update(o["label"] for o in objects)
        difficult += sum(o["difficult"] for o in objects)
        truncated += sum(o["truncated"] for o in objects)
        occluded += sum(o["visible"] < 0.9 and not o["truncated"] for o in objects)
    assert 0 <= min(counts) and max(counts) <= 6 and np.mean(counts) > 2.5
    assert set(labels) == set(SHAPE_NAMES)
    assert difficult > 0 and truncated > 0 and occluded > 0
    assert difficult < 0.3 * sum(counts)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    """File system truth: an interruption (KeyboardInterrupt at the 4th image) leaves neither the
    tree nor a partial directory; the next call generates the whole tree."""
    real = shapes.render_image
    calls = []

    def interrupted(rng, size):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(rng, size)

    monkeypatch.setattr(shapes, "render_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shapes_dataset(tmp_path / "cache" / "tree", progress=False, **TINY)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(shapes, "render_image", real)
    root = shapes_dataset(tmp_path / "cache" / "tree", progress=False, **TINY)
    assert len(list((root / "JPEGImages").iterdir())) == 12
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tree"]


def test_existing_tree_is_reused_and_checked(tmp_path, monkeypatch):
    """An existing tree is returned without drawing anything; one made with other parameters, or a
    directory that is not a shapes tree, is refused with the path named."""
    root = shapes_dataset(tmp_path / "tree", progress=False, **TINY)

    def must_not_draw(rng, size):
        raise AssertionError("the cached tree should have been reused")

    monkeypatch.setattr(shapes, "render_image", must_not_draw)
    assert shapes_dataset(tmp_path / "tree", progress=False, **TINY) == root
    with pytest.raises(ValueError, match=r"manifest\.json: the tree was generated with"):
        shapes_dataset(tmp_path / "tree", progress=False, **{**TINY, "seed": 1})
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match=r"other: exists but is not a shapes data set"):
        shapes_dataset(tmp_path / "other", progress=False, **TINY)


def test_default_location_is_the_cache(tmp_path, monkeypatch):
    """With no path, the tree goes to $REFQUANT_CACHE/shapes-v1-seed<seed>-<size>px-<train>-<val>-<test>."""
    monkeypatch.setenv("REFQUANT_CACHE", str(tmp_path))
    root = shapes_dataset(progress=False, **TINY)
    assert root == tmp_path / "shapes-v1-seed5-96px-6-2-4"
    assert (root / "ImageSets" / "Main" / "train.txt").read_text().split() == [f"{k:06d}" for k in range(1, 7)]


def test_bad_parameters_are_named():
    """Hand-made: negative counts and tiny images are refused naming the argument."""
    with pytest.raises(ValueError, match="train: expected a non-negative integer"):
        shapes_dataset("/nonexistent/never", train=-1)
    with pytest.raises(ValueError, match="size: expected at least 32"):
        shapes_dataset("/nonexistent/never", size=16)


def test_refquant_data_shapes_draws_the_generators_tree(tmp_path, capsys):
    """Truth: ``generate`` called directly with the same seed and sizes (byte-identical files); the
    command refuses an existing folder with exit status 2 and a message naming it."""
    from refquant import cli
    out = tmp_path / "cli"
    assert cli.main(["data", "shapes", str(out), "--seed", "11", "--train", "2", "--val", "1", "--test", "3",
                     "--size", "48", "--no-progress"]) == 0
    direct = shapes.generate(tmp_path / "direct", seed=11, size=48, train=2, val=1, test=3, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(direct) for p in direct.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (direct / f).read_bytes() for f in files)
    assert cli.main(["data", "shapes", str(out), "--seed", "12"]) == 2
    assert str(out) in capsys.readouterr().err
