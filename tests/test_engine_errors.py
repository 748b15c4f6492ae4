"""Bad input gets a clear error that names the place at fault, and never a partial network.

The expectations are written from the cfg/weights text each test builds: the file, the
line number of the offending line (or of the section header for a missing key), the key,
and for weights both byte sizes.
"""
import struct

import numpy as np
import pytest

from refquant import darknet
from refquant.darknet import CfgError
from refquant.yolo.network import NetworkShapeError

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def cfg(tmp_path, text, name="bad.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def message(excinfo):
    return str(excinfo.value)


def test_unknown_section_names_file_line_and_type(tmp_path):
    """An unsupported section is refused with file:line and the section name."""
    path = cfg(tmp_path, NET + "[convolutional]\nfilters=2\nsize=1\n\n[lstm]\noutput=3\n")
    with pytest.raises(CfgError) as e:
        darknet.load(path)
    assert f"{path}:9:" in message(e) and "[lstm]" in message(e) and "layer 1" in message(e)
    assert "refquant supports" in message(e) and "convolutional" in message(e)


def test_unknown_key_names_file_line_and_key(tmp_path):
    """A key the layer does not know (a typo) is an error, not Darknet's 'Unused field' warning."""
    path = cfg(tmp_path, NET + "[convolutional]\nfilters=2\nsize=1\nactivaton=leaky\n")
    with pytest.raises(CfgError) as e:
        darknet.load(path)
    assert f"{path}:8:" in message(e) and "'activaton'" in message(e)


def test_missing_required_key_names_section_line_and_key(tmp_path):
    path = cfg(tmp_path, NET + "\n[convolutional]\nsize=3\n")
    with pytest.raises(CfgError) as e:
        darknet.load(path)
    assert f"{path}:6:" in message(e) and "'filters'" in message(e)
    path = cfg(tmp_path, "[net]\nwidth=32\nchannels=3\n", "nohw.cfg")
    with pytest.raises(CfgError, match=r"nohw\.cfg:1: \[net\] is missing the required key 'height'"):
        darknet.load(path)
    path = cfg(tmp_path, "[net]\nwidth=0\nheight=8\nchannels=3\n[conv]\nfilters=1\nsize=1\n", "w0.cfg")
    with pytest.raises(CfgError, match=r"w0\.cfg:2: \[net\] width=0: expected a value >= 1"):
        darknet.load(path)


@pytest.mark.parametrize("line, key, kind", [
    ("size=3x", "size", "an integer"),
    ("size=2.5", "size", "an integer"),
    ("filters=", None, "key=value"),
    ("activation leaky", None, "key=value"),
])
def test_malformed_values_name_file_line_and_key(tmp_path, line, key, kind):
    path = cfg(tmp_path, NET + "[convolutional]\nfilters=2\n" + line + "\n")
    with pytest.raises(CfgError) as e:
        darknet.load(path)
    assert f"{path}:7:" in message(e) and kind in message(e)
    if key:
        assert key in message(e)


def test_malformed_list_and_unknown_activation(tmp_path):
    path = cfg(tmp_path, NET + "[conv]\nfilters=30\nsize=1\n[region]\nnum=1\nclasses=25\nanchors=1,2a\n")
    with pytest.raises(CfgError, match=r":11: \[region\] anchors='1,2a': expected comma-separated numbers"):
        darknet.load(path)
    path = cfg(tmp_path, NET + "[conv]\nfilters=2\nsize=1\nactivation=swish\n", "act.cfg")
    with pytest.raises(CfgError, match=r"act\.cfg:5: layer 0 \[conv\]: unknown activation 'swish'"):
        darknet.load(path)


def test_structure_errors(tmp_path):
    """Key before any section, repeated key, first section not [net], route to a later layer."""
    with pytest.raises(CfgError, match=r"a\.cfg:1: key 'width' appears before the first"):
        darknet.load(cfg(tmp_path, "width=3\n" + NET, "a.cfg"))
    with pytest.raises(CfgError, match=r"b\.cfg:7: key 'size' repeated in \[conv\] \(first given at line 6\)"):
        darknet.load(cfg(tmp_path, NET + "[conv]\nsize=1\nsize=3\nfilters=1\n", "b.cfg"))
    with pytest.raises(CfgError, match=r"c\.cfg:1: the first section must be \[net\]"):
        darknet.load(cfg(tmp_path, "[conv]\nsize=1\n", "c.cfg"))
    with pytest.raises(CfgError, match=r"d\.cfg:5: route 0: layers=3 refers to layer 3"):
        darknet.load(cfg(tmp_path, NET + "[route]\nlayers=3\n", "d.cfg"))


def test_shape_errors_at_build_name_the_section(tmp_path):
    """A head whose input channels do not fit, or a route of different sizes, names file:line."""
    path = cfg(tmp_path, NET + "[conv]\nfilters=124\nsize=1\n[region]\nnum=5\nclasses=20\n")
    with pytest.raises(CfgError) as e:
        darknet.load(path)
    assert f"{path}:8:" in message(e) and "layer 1 [region]" in message(e) and "125" in message(e)
    path = cfg(tmp_path, NET + "[conv]\nfilters=2\nsize=1\n[max]\nsize=2\nstride=2\n[route]\nlayers=-1,-2\n", "r.cfg")
    with pytest.raises(CfgError, match=r"r\.cfg:11: layer 2 \[route\]: layer 0 outputs 32x32 but the first input outputs 16x16"):
        darknet.load(path)


def test_weights_too_short_or_too_long_state_both_sizes(tmp_path):
    """Both sizes in the message; nothing is loaded into a network either way."""
    path = cfg(tmp_path, NET + "[conv]\nfilters=2\nsize=1\nbatch_normalize=1\n")
    needed = 20 + 4 * (2 * 4 + 2 * 3)
    header = struct.pack("<iiiQ", 0, 2, 0, 0)
    for size in (needed - 4, needed + 4, 10):
        weights = tmp_path / f"w{size}.weights"
        weights.write_bytes((header + bytes(4 * 14 + 4))[:size])
        with pytest.raises(CfgError) as e:
            darknet.load(path, str(weights))
        if size > 12:
            assert f"{size} bytes" in message(e) and f"needs {needed} bytes" in message(e)
            assert ("too short" if size < needed else "too long") in message(e)
        else:
            assert "10 bytes, too short for the weights header" in message(e)
    net = darknet.load(path, seed=0)
    before = [p.copy() for _, _, p in net.parameters()]
    with pytest.raises(CfgError):
        darknet.read_weights(str(tmp_path / f"w{needed - 4}.weights"), net)
    assert all(np.array_equal(a, p) for a, (_, _, p) in zip(before, net.parameters()))
    with pytest.raises(CfgError, match="cannot read weights file"):
        darknet.load(path, str(tmp_path / "missing.weights"))


def test_input_that_does_not_fit(tmp_path):
    """Wrong channels, rank, dtype, or a size that breaks a layer: the error names the layer."""
    net = darknet.load("refquant/cfg/yolov2-voc.cfg")
    with pytest.raises(NetworkShapeError, match="input has 1 channels, the network takes 3"):
        net.forward(np.zeros((1, 1, 64, 64), np.float32))
    with pytest.raises(NetworkShapeError, match=r"shape \(N, C, H, W\)"):
        net.forward(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(TypeError, match="float array"):
        net.forward(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(NetworkShapeError, match=r"layer 27 \[reorg\]: stride 2 needs H and W divisible by 2 and C by 4, got C=64 H=7 W=7"):
        net.forward(np.zeros((1, 3, 100, 100), np.float32))
    tiny3 = darknet.load("refquant/cfg/yolov3-tiny.cfg")
    with pytest.raises(NetworkShapeError, match=r"layer 20 \[route\]"):
        tiny3.forward(np.zeros((1, 3, 80, 80), np.float32))
    unpadded = darknet.load(cfg(tmp_path, NET + "[conv]\nfilters=2\nsize=3\n"))
    with pytest.raises(NetworkShapeError, match=r"layer 0 \[conv\w*\]: input 2x2 is smaller than the 3x3 kernel"):
        unpadded.forward(np.zeros((1, 3, 2, 2), np.float32))


def test_backward_needs_a_forward(tmp_path):
    """backward before any forward, or after clear_caches, is a RuntimeError; a forward after
    clear_caches gives the same output as before."""
    net = darknet.load(cfg(tmp_path, NET + "[conv]\nfilters=2\nsize=3\npad=1\n"))
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        net.backward(np.ones((1, 2, 8, 8), np.float32))
    y = net.forward(x)
    net.clear_caches()
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        net.backward(np.ones_like(y))
    assert np.array_equal(net.forward(x), y)
    assert net.backward(np.ones_like(y)).shape == x.shape
    twin = net.copy()  # no caches copied; the original can still run backward
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        twin.backward(np.ones_like(y))
    assert net.backward(np.ones_like(y)).shape == x.shape
    twin.layers[0].params["weights"] += 1
    assert np.array_equal(net.forward(x), y) and not np.array_equal(twin.forward(x), y)


def test_maxpool_padding_that_leaves_windows_outside(tmp_path):
    """A [maxpool] padding so large that whole windows fall outside the image is refused."""
    path = cfg(tmp_path, NET + "[maxpool]\nsize=2\nstride=1\npadding=6\n")
    with pytest.raises(CfgError, match=r":5: layer 0 \[maxpool\]: padding 6 is so large"):
        darknet.load(path)


def test_training_batch_norm_needs_two_values_per_channel():
    """Batch statistics of a single value (batch 1 at a 1x1 output) are refused, not NaN."""
    tiny = darknet.load("refquant/cfg/yolov2-tiny-voc.cfg")
    with pytest.raises(ValueError, match="needs at least 2 values per channel"):
        tiny.forward(np.zeros((1, 3, 32, 32), np.float32), training=True)
