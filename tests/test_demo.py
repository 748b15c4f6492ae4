"""``refquant demo`` end to end on a tiny configuration: a small tiny-YOLO-like cfg
(refquant.testing.tiny_yolo_cfg) with random weights and a few generated shapes images, through
the command line, in seconds.

Independent truths, per test: ``refquant.detection.evaluate.evaluate`` (the ``refquant eval`` path, which
loads and letterboxes the images itself) on the float network, on the saved plans' simulations
and on the saved QAT model read back by ``qat.load_quantized``; the model sizes and bit
operations worked out by hand from the cfg and the weights file's size; hand-made rows for the
table and the target checks; hand-made disagreeing networks for the integer check.
"""
import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from refquant import cli, darknet, folding
from refquant import plan as plan_module
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc, read_names
from refquant.demo import experiment
from refquant.demo import report as demo_report
from refquant.detection.evaluate import evaluate
from refquant.integer import simulation
from refquant.integer.network import IntegerNetwork
from refquant.testing import randomize_batchnorm, tiny_yolo_cfg, write_cfg

pytestmark = pytest.mark.slow  # the whole demo through the command line

BITS = (8, 4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One ``refquant demo --quick`` run on the tiny configuration: (paths, results, stdout text)."""
    folder = tmp_path_factory.mktemp("demo")
    root = shapes_dataset(folder / "shapes", size=64, train=8, val=0, test=6, progress=False)
    cfg = write_cfg(folder, tiny_yolo_cfg(anchors="2,2,3.5,3.5"))
    net = randomize_batchnorm(darknet.load(cfg, seed=4), 4)  # statistics and biases of a trained network
    weights = folder / "tiny.weights"
    darknet.save_weights(net, weights)
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["demo", "--cfg", str(cfg), "--weights", str(weights), "--data", str(root), "--quick",
                         "--bits", ",".join(map(str, BITS)), "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    paths = {"root": root, "cfg": cfg, "weights": weights, "out": out, "names": root / "shapes.names"}
    return paths, results, printed.getvalue()


def test_results_schema_and_rows(run):
    """Truth: the results schema of refquant.demo's docstring, checked key by key: one FP32 row, PGM and every baseline at each
    width (post-training), PGM with QAT at 4 bits, each with its widths, method, mode, mAP in
    percent, integer_mAP equal to mAP wherever an integer network ran; settings, machine, date,
    timings and the first/last layer precision recorded."""
    _, results, _ = run
    rows = results["rows"]
    assert [(r["method"], r["mode"], r["weight_bits"]) for r in rows] == (
        [("float", "float", 32)] + [(m, "ptq", b) for b in BITS for m in experiment.PTQ_METHODS] + [("pgm", "qat", 4)])
    for r in rows:
        assert set(r) >= {"name", "weight_bits", "activation_bits", "method", "mode", "mAP", "integer_mAP",
                          "model_bytes", "bops"}
        assert 0.0 <= r["mAP"] <= 100.0 and r["activation_bits"] == r["weight_bits"]
        if r["mode"] == "float":
            assert r["integer_mAP"] is None
        else:
            assert r["integer_mAP"] == r["mAP"] and r["integer_equals_simulation"] is True
    assert results["integer_equals_simulation"] is True
    assert results["first_last_layer_bits"] == {"first": 8, "last": 8}
    assert results["test_images"] == results["test_split_images"] == 6 and results["calibration_images"] == 4
    assert {"cpu", "cores", "python", "numpy"} <= set(results["machine"]) and results["date"]
    assert results["timings_seconds"]["total"] > 0 and results["qat"]["runs"]["4"]["refits"] == [2]
    qat_options = results["qat"]["runs"]["4"]["options"]  # 3 quick updates, x0.1 after round(2/3 * 3) = 2
    assert (qat_options["policy"], qat_options["steps"], qat_options["scales"]) == ("steps", [2], [0.1])
    assert any(r["mAP"] > 0 for r in rows), "a random detector on these images still matches some boxes"


def test_rows_are_the_evaluate_path_on_the_saved_models(run):
    """Truth: refquant.detection.evaluate.evaluate (images loaded and letterboxed by refquant.decode's
    detect_records, scored by refquant.metrics) on the float network, on the saved PTQ plans (JSON
    read back) as simulation and as integer network, and on the saved QAT model read back."""
    paths, results, _ = run
    names = read_names(paths["names"])
    records = load_voc(paths["root"], "test", names)
    net = darknet.load(paths["cfg"], paths["weights"])
    rows = {(r["method"], r["mode"], r["weight_bits"]): r for r in results["rows"]}

    def mAP(network):
        return 100.0 * evaluate(network, records, names, progress=False)[0]["mAP"]
    assert rows[("float", "float", 32)]["mAP"] == pytest.approx(mAP(net), abs=1e-9)
    folded = folding.fold_batchnorm(net)
    for method, bits in (("pgm", 4), ("minmax", 8)):
        plan = plan_module.QuantizationPlan.load(paths["out"] / "plans" / f"{method}-{bits}bit.plan.json")
        assert rows[(method, "ptq", bits)]["mAP"] == pytest.approx(mAP(simulation.SimulatedNetwork(folded, plan)), abs=1e-9)
        assert rows[(method, "ptq", bits)]["integer_mAP"] == pytest.approx(mAP(IntegerNetwork(folded, plan)), abs=1e-9)
    trained, plan = plan_module.load_quantized(paths["out"] / "qat-4bit")
    assert rows[("pgm", "qat", 4)]["mAP"] == pytest.approx(mAP(IntegerNetwork(trained, plan)), abs=1e-9)


def test_sizes_and_bit_operations_by_hand(run):
    """Truth: worked out from the cfg by hand. FP32: every float32 of the weights file (its size
    less Darknet's 20-byte header). Quantized: ceil(weights * bits / 8) + 4 bytes per int32 bias,
    the first and last convolutions at 8 bits; bit operations = multiply-accumulates * weight bits
    * the bits of the convolution's input codes (the image's 8, then the previous layer's width)."""
    paths, results, _ = run
    rows = {(r["method"], r["mode"], r["weight_bits"]): r for r in results["rows"]}
    assert rows[("float", "float", 32)]["model_bytes"] == paths["weights"].stat().st_size - 20
    # (filters, inputs * k * k, output pixels) of the four convolutions at 32x32
    convs = [(8, 3 * 9, 32 * 32), (16, 8 * 9, 16 * 16), (16, 16 * 9, 8 * 8), (24, 16, 8 * 8)]
    for bits in BITS:
        weight_bits = [8, bits, bits, 8]
        input_bits = [8, 8, bits, bits]
        size = sum(math.ceil(m * k * w / 8) + 4 * m for (m, k, _), w in zip(convs, weight_bits))
        bops = sum(m * k * p * w * a for (m, k, p), w, a in zip(convs, weight_bits, input_bits))
        for method in experiment.PTQ_METHODS:
            assert rows[(method, "ptq", bits)]["model_bytes"] == size
            assert rows[(method, "ptq", bits)]["bops"] == bops
    assert rows[("float", "float", 32)]["bops"] == sum(m * k * p for m, k, p in convs) * 32 * 32


def test_files_report_and_printed_table(run):
    """Truth: the files refquant.demo's docstring lists, opened by their readers (JSON, Pillow for the PNGs, the
    plan and model loaders); the report and the printed table carry every row's mAP as in
    results.json and state the integer check."""
    paths, results, printed = run
    out = paths["out"]
    for name in ("map_table.png", "densities_activations.png", "densities_weights.png", "method_errors.png",
                 "detections.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    assert sorted(results["figures"]) == sorted(["map_table.png", "densities_activations.png",
                                                 "densities_weights.png", "method_errors.png", "detections.png"])
    assert len(list((out / "plans").glob("*.plan.json"))) == len(BITS) * len(experiment.PTQ_METHODS)
    report = (out / "report.md").read_text()
    for r in results["rows"]:
        assert f"| {r['name']} |" in report and f"{r['mAP']:.2f}" in report and f"{r['mAP']:.2f}" in printed
    assert "bit for bit" in report and "the whole test split" in report
    assert "PGM (QAT)" in printed
    header = next(line for line in printed.splitlines() if line.split()[:1] == ["FP32"])
    assert header.split() == ["FP32"] + [f"{b}-bit" for b in BITS]


def test_bad_arguments_exit_with_a_message(run, tmp_path, capsys):
    """Truth: the documented refusals: a non-empty output folder, a missing weights file, an unknown
    method, a learning-rate step outside the run; each returns 2 and names the option."""
    paths, _, _ = run
    base = ["demo", "--cfg", str(paths["cfg"]), "--data", str(paths["root"]), "--quick", "--no-progress"]
    assert cli.main(base + ["--weights", str(paths["weights"]), "--out", str(paths["out"])]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(base + ["--weights", str(tmp_path / "missing.weights"), "--out", str(tmp_path / "a")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert cli.main(base + ["--weights", str(paths["weights"]), "--methods", "pgm,magic",
                            "--out", str(tmp_path / "b")]) == 2
    assert "--methods" in capsys.readouterr().err
    assert cli.main(base + ["--weights", str(paths["weights"]), "--qat-step-at", "1.5",
                            "--out", str(tmp_path / "c")]) == 2
    assert "--qat-step-at" in capsys.readouterr().err


def test_integer_check_catches_a_disagreement(run):
    """Truth: two hand-made disagreeing models: the integer network of one plan against the
    simulation of another (8-bit against 4-bit activations) must raise IntegerMismatchError."""
    paths, _, _ = run
    net = darknet.load(paths["cfg"], paths["weights"])
    folded = folding.fold_batchnorm(net)
    eight = plan_module.QuantizationPlan.load(paths["out"] / "plans" / "pgm-8bit.plan.json")
    four = plan_module.QuantizationPlan.load(paths["out"] / "plans" / "pgm-4bit.plan.json")
    inputs = np.random.default_rng(0).random((3, 3, 32, 32)).astype(np.float32)
    integer = IntegerNetwork(folded, eight)
    a, b = experiment.paired_head_outputs(integer, integer.simulation(), inputs, 2, "same", progress=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(experiment.IntegerMismatchError, match="differ"):
        experiment.paired_head_outputs(integer, simulation.SimulatedNetwork(folded, four), inputs, 2, "mixed", progress=False)


def test_targets_and_table_on_hand_made_rows():
    """Truth: hand-made rows whose gaps are known: FP32 60.0, PGM 8-bit 59.6 (gap 0.4, met), QAT
    4-bit 57.5 (gap 2.5, not met), PGM 4-bit 50.0 against min-max 51.0 (not above); the table has
    one line per method and mode, '-' where a width did not run."""
    def entry(method, mode, bits, value):
        return {"name": f"{method} {bits}", "method": method, "mode": mode, "weight_bits": bits,
                "activation_bits": bits, "mAP": value, "integer_mAP": None if mode == "float" else value}
    rows = [entry("float", "float", 32, 60.0), entry("pgm", "ptq", 8, 59.6), entry("pgm", "ptq", 4, 50.0),
            entry("minmax", "ptq", 8, 59.0), entry("minmax", "ptq", 4, 51.0), entry("pgm", "qat", 4, 57.5)]
    checks = demo_report.target_checks(rows)
    assert [c["met"] for c in checks] == [True, False, False, True]
    assert [round(c["value"], 6) for c in checks[:3]] == [0.4, 2.5, -1.0]
    lines = demo_report.table_lines(rows)
    assert lines[0].split() == ["FP32", "8-bit", "4-bit"]
    assert lines[1].split() == ["float", "60.00"]
    assert lines[2].split() == ["PGM", "(PTQ)", "59.60", "50.00"]
    assert lines[4].split() == ["PGM", "(QAT)", "-", "57.50"]


def test_results_record_no_folder_of_the_machine(tmp_path, monkeypatch):
    """Truth: pathlib's own relative_to: the shipped model is named by its file, the cache by its
    place under refquant's cache folder, a path under the current folder relative to it, anything
    else as given."""
    from refquant.demo.report import portable_path
    from refquant.detection.evaluate import shipped_model
    monkeypatch.setenv("REFQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert portable_path(shipped_model(".cfg")) == "<shipped>/shapes-tiny-yolo.cfg"
    assert portable_path(tmp_path / "cache" / "shapes" / "x") == "<cache>/shapes/x"
    assert portable_path(tmp_path / "runs" / "a") == "runs/a"
    assert portable_path("/elsewhere/b") == "/elsewhere/b" and portable_path(None) is None
