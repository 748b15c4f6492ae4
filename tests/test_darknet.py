"""The Darknet cfg parser and .weights reader/writer.

Independent truths: the published cfg files' text (values read off the files by hand
below), Darknet's format as parser.c defines it (a weights file assembled here byte by
byte with struct, following load_weights_upto / load_convolutional_weights), OpenCV's
Darknet importer (which layers it sees as convolutions), and byte equality for the
round trip.
"""
import struct

import cv2
import numpy as np
import pytest

from refquant import darknet

CFG_DIR = "refquant/cfg"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_net_hyperparameters_are_typed_values_of_the_cfg():
    """[net] of yolov2-tiny-voc.cfg, values read off the file by hand."""
    net = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg")
    h = net.hyperparameters
    assert (h["batch"], h["subdivisions"], h["width"], h["height"], h["channels"]) == (1, 1, 416, 416, 3)
    assert isinstance(h["batch"], int) and isinstance(h["momentum"], float)
    assert (h["momentum"], h["decay"], h["learning_rate"], h["max_batches"]) == (0.9, 0.0005, 0.001, 40200)
    assert (h["angle"], h["saturation"], h["exposure"], h["hue"]) == (0.0, 1.5, 1.5, 0.1)
    assert h["policy"] == "steps"
    assert h["steps"] == (-1, 100, 20000, 30000) and h["scales"] == (0.1, 10.0, 0.1, 0.1)
    assert net.input_shape == (3, 416, 416)
    assert h["burn_in"] == 0  # absent from this cfg: Darknet's default


def test_layers_follow_the_cfg_sections():
    """Layer i is the i-th section after [net]; options typed as written in yolov2-voc.cfg;
    the convolution indices are those OpenCV's importer names conv_i."""
    cfg = f"{CFG_DIR}/yolov2-voc.cfg"
    net = darknet.load(cfg)
    types = [layer.type for layer in net.layers]
    assert len(types) == 32 and types[25] == "route" and types[27] == "reorg" and types[31] == "region"
    assert net.inputs[25] == [16] and net.inputs[28] == [27, 24]  # layers=-9 at 25, layers=-1,-4 at 28
    assert net.layers[27].stride == 2
    conv = net.layers[26]
    assert (conv.filters, conv.size, conv.stride, conv.padding, conv.batch_normalize, conv.activation) == \
        (64, 1, 1, 0, True, "leaky")  # size=1 pad=1 -> padding size//2 = 0
    region = net.layers[31]
    assert region.anchors.ravel().tolist() == [1.3221, 1.73145, 3.19275, 4.00944, 5.05587, 8.09892,
                                               9.47112, 4.84053, 11.2364, 10.0071]
    assert (region.classes, region.num, region.softmax, region.rescore) == (20, 5, 1, 1)
    cv_convs = {int(n.split("_")[1]) for n in cv2.dnn.readNetFromDarknet(cfg).getLayerNames()
                if n.startswith("conv_")}
    assert cv_convs == {i for i, t in enumerate(types) if t == "convolutional"}


def test_yolov3_tiny_masks_and_routes():
    """yolov3-tiny.cfg: the two [yolo] masks, 'layers = -1, 8' with spaces, upsample stride 2."""
    net = darknet.load(f"{CFG_DIR}/yolov3-tiny.cfg")
    assert net.layers[16].mask.tolist() == [3, 4, 5] and net.layers[23].mask.tolist() == [0, 1, 2]
    assert net.inputs[17] == [13] and net.inputs[20] == [19, 8]
    assert net.layers[19].stride == 2
    assert net.output_layers() == [16, 23]


def test_comments_whitespace_and_line_endings(tmp_path):
    """Darknet's read_cfg: whitespace removed everywhere, '#' and ';' lines skipped, CRLF accepted."""
    text = ("# a comment\r\n[net]\r\n width = 64\r\nheight=32 \r\n\tchannels=3\r\n; other comment\r\n\r\n"
            "[convolutional]\r\nfilters = 4\r\nsize=3\r\n#size=5\r\npad=1\r\nactivation = leaky\r\n"
            "[maxpool]\r\nsize=2\r\nstride=2\r\n")
    net = darknet.load(write(tmp_path, "c.cfg", text))
    assert net.input_shape == (3, 32, 64)
    assert (net.layers[0].filters, net.layers[0].size, net.layers[0].padding) == (4, 3, 1)
    assert net.layers[0].activation == "leaky" and not net.layers[0].batch_normalize
    assert net.output_shapes() == [(4, 32, 64), (4, 16, 32)]


def test_defaults_are_darknets(tmp_path):
    """Omitted keys take parse_* defaults: conv activation logistic, stride 1; maxpool size = stride,
    padding = size - 1; upsample stride 2."""
    text = "[net]\nwidth=8\nheight=8\nchannels=2\n[conv]\nfilters=3\nsize=1\n[max]\nstride=2\n[upsample]\n"
    net = darknet.load(write(tmp_path, "d.cfg", text))
    conv, pool, up = net.layers
    assert (conv.activation, conv.stride, conv.padding) == ("logistic", 1, 0)
    assert (pool.size, pool.stride, pool.padding) == (2, 2, 1)
    assert up.stride == 2
    assert net.output_shapes() == [(3, 8, 8), (3, 4, 4), (3, 8, 8)]


def test_weights_file_layout_assembled_by_hand(tmp_path):
    """A file built with struct per load_weights_upto: int32 major, minor, revision, size_t seen, then
    per conv biases, [scales, rolling mean, rolling variance], weights (filters, c, size, size)."""
    cfg = write(tmp_path, "w.cfg", "[net]\nwidth=4\nheight=4\nchannels=2\n"
                "[convolutional]\nbatch_normalize=1\nfilters=2\nsize=1\nactivation=linear\n"
                "[convolutional]\nfilters=1\nsize=1\nactivation=linear\n")
    floats = list(range(1, 2 + 2 + 2 + 2 + 4 + 1 + 2 + 1))
    data = struct.pack("<iiiQ", 0, 2, 5, 123456789012) + struct.pack(f"<{len(floats)}f", *floats)
    path = tmp_path / "w.weights"
    path.write_bytes(data)
    net = darknet.load(cfg, str(path))
    first, second = net.layers[0].params, net.layers[1].params
    assert first["biases"].tolist() == [1, 2] and first["scales"].tolist() == [3, 4]
    assert first["rolling_mean"].tolist() == [5, 6] and first["rolling_variance"].tolist() == [7, 8]
    assert first["weights"].reshape(2, 2).tolist() == [[9, 10], [11, 12]]
    assert second["biases"].tolist() == [13] and second["weights"].ravel().tolist() == [14, 15]
    assert net.seen == 123456789012 and net.weights_header == (0, 2, 5)
    out = tmp_path / "again.weights"
    darknet.save_weights(net, out)
    assert out.read_bytes() == data


def test_old_header_has_a_32_bit_seen(tmp_path):
    """major*10 + minor < 2 (e.g. 0.1): seen is a 32-bit int (load_weights_upto); round trip exact."""
    cfg = write(tmp_path, "o.cfg", "[net]\nwidth=4\nheight=4\nchannels=1\n[conv]\nfilters=1\nsize=1\n")
    data = struct.pack("<iiii", 0, 1, 0, 640) + struct.pack("<2f", 0.5, -2.0)
    (tmp_path / "o.weights").write_bytes(data)
    net = darknet.load(cfg, str(tmp_path / "o.weights"))
    assert net.seen == 640 and net.layers[0].params["weights"].ravel().tolist() == [-2.0]
    darknet.save_weights(net, tmp_path / "o2.weights")
    assert (tmp_path / "o2.weights").read_bytes() == data


def test_connected_weights_layout_and_transposed_header(tmp_path):
    """load_connected_weights: biases, weights (outputs x inputs), then scales, rolling mean,
    rolling variance; with major or minor > 1000 the weights are stored inputs x outputs."""
    cfg = write(tmp_path, "fc.cfg", "[net]\nwidth=1\nheight=1\nchannels=3\n"
                "[connected]\noutput=2\nbatch_normalize=1\nactivation=linear\n")
    weights = [[1, 2, 3], [4, 5, 6]]
    body = [10, 20] + [w for row in weights for w in row] + [7, 8, 0.5, 0.25, 2, 4]
    (tmp_path / "a.weights").write_bytes(struct.pack("<iiiQ", 0, 2, 0, 9) + struct.pack(f"<{len(body)}f", *body))
    net = darknet.load(cfg, str(tmp_path / "a.weights"))
    p = net.layers[0].params
    assert p["biases"].tolist() == [10, 20] and p["weights"].tolist() == weights
    assert p["scales"].tolist() == [7, 8] and p["rolling_mean"].tolist() == [0.5, 0.25]
    assert p["rolling_variance"].tolist() == [2, 4]
    transposed = [10, 20] + [w for column in zip(*weights) for w in column] + body[8:]
    data = struct.pack("<iiii", 0, 1001, 0, 9) + struct.pack(f"<{len(transposed)}f", *transposed)  # 32-bit seen: minor >= 1000
    (tmp_path / "t.weights").write_bytes(data)
    net = darknet.load(cfg, str(tmp_path / "t.weights"))
    assert net.layers[0].params["weights"].tolist() == weights and net.seen == 9
    darknet.save_weights(net, tmp_path / "t2.weights")
    assert (tmp_path / "t2.weights").read_bytes() == data


@pytest.mark.parametrize("cfg", [pytest.param("yolov2-tiny-voc", marks=pytest.mark.slow),
                                 pytest.param("yolov2-voc", marks=pytest.mark.slow), "yolov3-tiny", "yolov2-tiny",
                                 pytest.param("yolov1-tiny", marks=pytest.mark.slow)])
def test_round_trip_is_byte_identical(cfg, tmp_path):
    """save(load(file)) == file, byte for byte, also through a float64 network."""
    rng = np.random.default_rng(0)
    net = darknet.load(f"{CFG_DIR}/{cfg}.cfg", seed=1)
    for _, name, p in net.parameters():
        if name != "weights":  # the weights are random already
            p[...] = rng.normal(size=p.shape)
    net.seen = 2**40 + 7
    first = tmp_path / "a.weights"
    darknet.save_weights(net, first)
    for dtype in (np.float32, np.float64):
        again = tmp_path / f"b-{np.dtype(dtype).name}.weights"
        # check_values=False: the random rolling variances above are negative, refused by default
        darknet.save_weights(darknet.load(f"{CFG_DIR}/{cfg}.cfg", str(first), dtype=dtype, check_values=False), again)
        assert again.read_bytes() == first.read_bytes()
    count = net.parameter_count()
    assert first.stat().st_size == 20 + 4 * count


def test_seeded_initialisation():
    """Same seed, same parameters; another seed, others. Darknet's He scale sqrt(2/(size*size*c))."""
    a = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", seed=5)
    b = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", seed=5)
    c = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", seed=6)
    wa, wb, wc = (n.layers[13].params["weights"] for n in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)
    assert abs(wa.std() - np.sqrt(2 / (3 * 3 * 1024))) < 0.01 * np.sqrt(2 / (3 * 3 * 1024))
    assert wa.dtype == np.float32
    w64 = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg", dtype=np.float64, seed=5).layers[13].params["weights"]
    assert w64.dtype == np.float64 and np.array_equal(w64, wa)  # the same network in float64


def test_summary_has_one_line_per_layer_with_output_shapes():
    """summary(): header, one line per layer in Darknet's 'W x H x C -> W x H x C' form, totals;
    the parameter count is the weights file's float count."""
    net = darknet.load(f"{CFG_DIR}/yolov2-tiny-voc.cfg")
    lines = net.summary().splitlines()
    assert len(lines) == 1 + len(net.layers) + 1
    assert lines[1].split()[:2] == ["0", "conv"] and "416 x 416 x   3   ->   416 x 416 x  16" in lines[1]
    assert "13 x  13 x 512   ->    13 x  13 x 512" in lines[12]  # layer 11: max 2x2/1 keeps the size
    assert "0.150 BFLOPs" in lines[1]  # as Darknet prints layer 0 of yolov2-tiny-voc at 416
    assert "6.971 BFLOPs" in lines[-1]  # the sum of the per-layer figures
    assert str(net.parameter_count()) in lines[-1]
    assert "288 x 288" in net.summary((3, 288, 288)).splitlines()[1]
