"""The per-tensor sensitivity tool (refquant.diagnosis) and ``refquant diagnose``.

Truths: a hand computation on a one-convolution network (weights and outputs rounded to their
grids by hand with NumPy); the float network's own forward (Network.forward) for the head-input
SQNR of a tensor that nothing downstream re-quantizes; expected_mse and empirical_mse called
directly for the predicted and measured errors.
"""
import json
import warnings

import numpy as np
import pytest

from refquant import cli, ptq
from refquant.data.voc import load_voc
from refquant.demo.experiment import letterboxed_inputs, mean_average_precision
from refquant.diagnosis.plots import plot_predicted_errors, plot_sensitivity
from refquant.diagnosis.sensitivity import partially_quantized_outputs, sensitivity, sensitivity_lines
from refquant.quantizers.error import empirical_mse, expected_mse
from refquant.quantizers.uniform import UniformQuantizer, signed_quantizer
from refquant.testing import cfg_section, cfg_text, load_cfg, maxpool, net_section


def test_partially_quantized_outputs_by_hand():
    """One 1x1 linear convolution (weight 0.3, bias 0.1) then a 2x2 maxpool on a 4x4 ramp: the weight
    on a 0.25 grid becomes 0.25; the output on a 0.5 grid is rounded half to even, clipped to
    [0, 2]; the maxpool reads the rounded values; the network's own parameters are unchanged."""
    text = cfg_text(net_section(size=4, channels=1),
                    cfg_section("convolutional", filters=1, size=1, stride=1, pad=0, activation="linear"),
                    maxpool())
    net = load_cfg(text, dtype=np.float64)
    conv = net.layers[0]
    conv.params["weights"][...] = 0.3
    conv.params["biases"][...] = 0.1
    x = (np.arange(16, dtype=np.float64) / 2).reshape(1, 1, 4, 4)
    weight_grid = signed_quantizer(8, 0.25)
    output_grid = UniformQuantizer(0.5, 0, 0, 4)
    conv_out = 0.25 * x + 0.1                                      # weight 0.3 -> 0.25
    rounded = np.clip(np.round(conv_out / 0.5), 0, 4) * 0.5        # np.round is half to even
    pooled = rounded.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))
    outputs = partially_quantized_outputs(net, x, {0: weight_grid}, {0: output_grid})
    np.testing.assert_array_equal(outputs[0], rounded)
    np.testing.assert_array_equal(outputs[1], pooled)
    np.testing.assert_array_equal(partially_quantized_outputs(net, x, {0: weight_grid})[0], conv_out)
    np.testing.assert_array_equal(partially_quantized_outputs(net, x)[0], 0.3 * x + 0.1)
    assert np.all(conv.params["weights"] == 0.3)


@pytest.fixture(scope="module")
def shipped(shipped_calibration):
    statistics, tree, names = shipped_calibration
    records = load_voc(tree, "val", names)[:12]
    inputs = letterboxed_inputs(records, 128, 128, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ptq.quantization_plan(statistics, 6, 6, "pgm")
    score = lambda heads: mean_average_precision(heads, records, statistics.net, names)[0]  # noqa: E731
    float_mAP, rows = sensitivity(statistics, plan, inputs, score, batch_size=5, progress=False)
    return statistics, plan, inputs, score, float_mAP, rows


def test_sensitivity_rows_against_direct_computations(shipped):
    statistics, plan, inputs, score, float_mAP, rows = shipped
    folded = statistics.net
    assert float_mAP == pytest.approx(score(folded.forward(inputs, training=False)), abs=1e-9)
    assert {(r.layer, r.kind) for r in rows} == ({(i, "weights") for i in plan.weights}
                                                | {(i, "activations") for i in plan.activations})
    head_input = folded.inputs[-1][0]
    reference = folded.forward(inputs, training=False, return_all=True)
    for r in rows:
        quantizer = (plan.weights if r.kind == "weights" else plan.activations)[r.layer]
        assert r.delta == pytest.approx(r.mAP - float_mAP, abs=1e-12)
        assert r.predicted_mse == pytest.approx(expected_mse(statistics.density(r.kind, r.layer), quantizer), rel=1e-12)
        if r.kind == "weights":
            assert r.measured_mse == pytest.approx(empirical_mse(statistics.weights(r.layer), quantizer), rel=1e-12)
        else:
            values = reference[r.layer].astype(np.float64)
            assert r.measured_mse == pytest.approx(np.mean((values - quantizer.fake(values)) ** 2), rel=1e-9)
    # The head's input itself quantized: its noise is that layer's own rounding, nothing downstream.
    last = next(r for r in rows if r.kind == "activations" and r.layer == head_input)
    y = reference[head_input].astype(np.float64)
    q = plan.activations[head_input].fake(reference[head_input]).astype(np.float32).astype(np.float64)
    assert last.sqnr_db == pytest.approx(10 * np.log10(np.mean(y ** 2) / np.mean((y - q) ** 2)), abs=1e-6)
    lines = sensitivity_lines(float_mAP, rows)
    assert len(lines) == len(rows) + 2 and f"{float_mAP:.2f}" in lines[0]


def test_sensitivity_plots_show_the_rows(shipped):
    *_, rows = shipped
    ax = plot_sensitivity(rows)
    assert sorted(p.get_width() for p in ax.patches) == pytest.approx(sorted(r.delta for r in rows))
    ax = plot_predicted_errors(rows)
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(sorted(map(tuple, offsets)), sorted((r.predicted_mse, r.measured_mse) for r in rows))


def test_refquant_diagnose_writes_its_table(tmp_path, capsys):
    out = tmp_path / "diag"
    assert cli.main(["diagnose", "--images", "4", "--calibration-images", "4", "--bits", "8", "--out", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "sensitivity.json").read_text())
    assert record["split"] == "val" and len(record["tensors"]) == printed.count(" weights ") + printed.count(" activations ")
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["diagnose", "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err
    assert cli.main(["diagnose", "--images", "4", "--out", str(out)]) == 2  # its own earlier output: refused
    assert "--out" in capsys.readouterr().err and (out / "sensitivity.json").exists()
