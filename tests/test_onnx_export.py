"""Tests of refquant.export.onnx: the exported graph run by onnxruntime (an engine refquant did not
write: Microsoft's QLinearConv, QLinearLeakyRelu, QLinearConcat, MaxPool kernels) against refquant's
integer network under the ``float-scale`` profile, code for code; and ``refquant export onnx``.

onnxruntime runs every model with one thread and at both ends of its graph optimisation
(ORT_DISABLE_ALL: the nodes as written; ORT_ENABLE_ALL: its fusions and layout changes, e.g. the
NHWC QLinearConv), and the codes must be equal at both. Truths: onnxruntime's outputs; for the
float32 head input, the ONNX DequantizeLinear formula ``(code - zero_point) * scale`` in float32.

Measured: no code differs, at either level (onnxruntime 1.32.0 on x86-64 with AVX-512 VNNI and
AMX, whose uint8 x int8 products accumulate exactly in int32). On an x86 processor with AVX2 but
no VNNI, onnxruntime's kernels sum pairs of products in saturating int16 (VPMADDUBSW) and these
comparisons can fail by that saturation, which is onnxruntime's and which no profile expresses
(docs/onnx.md)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from refquant import cli, darknet, ptq
from refquant import plan as plan_module
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc, read_names
from refquant.demo.experiment import letterboxed_inputs
from refquant.detection.evaluate import shipped_model
from refquant.export.onnx import HEAD_CODES, HEAD_INPUT, INPUT, LAYER_CODES, convolution_model, onnx_model
from refquant.folding import fold_batchnorm
from refquant.integer.network import IntegerNetwork, weights_of
from refquant.integer.profiles import get_profile
from refquant.integer.profiles.float_scale import engine_step
from refquant.quantizers.uniform import UniformQuantizer, signed_quantizer, unsigned_quantizer
from refquant.testing import (
    cfg_section,
    cfg_text,
    convolutional,
    load_cfg,
    maxpool,
    net_section,
    passthrough_cfg,
    quiet_plan,
    randomize_batchnorm,
)

PROFILE = "float-scale"
LEVELS = {"disable-all": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "enable-all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(model, level):
    """An onnxruntime CPU session of ``model`` at optimisation ``level`` (a key of LEVELS), one thread."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def outputs_of(runner, codes):
    """{output name: array} of an onnxruntime session on uint8 ``codes``."""
    names = [output.name for output in runner.get_outputs()]
    return dict(zip(names, runner.run(None, {INPUT: np.ascontiguousarray(codes, np.uint8)})))


def run(model, level, codes):
    """{output name: array} of ``model`` on uint8 ``codes`` (:func:`session` at ``level``)."""
    return outputs_of(session(model, level), codes)


def differing(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.count_nonzero(np.asarray(a, np.int64) != np.asarray(b, np.int64)))


def profile_outputs(net, plan, images):
    """Every layer's output of refquant's integer network under the float-scale profile."""
    return IntegerNetwork.build(net, plan, profile=PROFILE).run(images)


def head_input_index(net):
    last = len(net.layers) - 1
    return net.inputs[last][0] if net.layers[last].type == "region" else last


# ------------------------------------------------------------------------------------------------
# The shipped model, its 8-bit and 4-bit plans, per tensor and per channel
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    """The shipped detector (data/models/shapes-tiny-yolo), its PGM plans at 8 and 4 bits (first and
    last layers at 8) calibrated on 8 training images, each also with per-channel weight steps
    (``refquant.plan.per_channel_plan``), the 500 test images of the shapes data set letterboxed, and
    the profile network's outputs on the first 32 of them."""
    net = darknet.load(shipped_model(".cfg"), shipped_model(".weights"))
    names = read_names(shipped_model(".names"))
    root = shapes_dataset(progress=False)
    _, height, width = net.input_shape
    calibration = letterboxed_inputs(load_voc(root, "train", names)[:8], width, height, progress=False)
    images = letterboxed_inputs(load_voc(root, "test", names), width, height, progress=False)
    statistics = ptq.calibration_statistics(net, calibration, batch_size=4, baseline_samples=4096, progress=False)
    folded = fold_batchnorm(net)
    plans = {}
    for bits in (8, 4):
        plan = quiet_plan(statistics, bits, bits, "pgm")
        plans[(bits, "per-tensor")] = plan
        plans[(bits, "per-channel")] = plan_module.per_channel_plan(folded, plan)
    outputs = {key: profile_outputs(net, plan, images[:32]) for key, plan in plans.items()}
    return net, plans, images, outputs


PLANS = [(8, "per-tensor"), (8, "per-channel"), (4, "per-tensor"), (4, "per-channel")]


def preactivation_codes(conv, codes):
    """The profile's codes of a leaky convolution before its QLinearLeakyRelu: the same lowered
    convolution without its activation stage, run by the float-scale profile's integer kernel."""
    linear = dataclasses.replace(conv, activation_stage=None)
    return get_profile(PROFILE).integer_convolution(linear, codes, weights_of(linear))


@pytest.mark.slow
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("key", PLANS, ids=[f"{bits}bit-{kind}" for bits, kind in PLANS])
def test_every_convolution_alone_equals_the_float_scale_profile(shipped, key, level):
    """Each convolution of the shipped model exported alone (``convolution_model``: QLinearConv, and
    for a leaky layer QLinearLeakyRelu) and run by onnxruntime on the codes the profile network feeds
    it on 32 test images: its output codes equal that network's, and a leaky layer's QLinearConv codes
    equal the profile's pre-activation codes, every code."""
    net, plans, images, outputs = shipped
    plan = plans[key]
    codes_in = plan.input.quantize(images[:32])
    lowered = IntegerNetwork.build(net, plan, profile=PROFILE)
    for index, layer in enumerate(net.layers):
        if layer.type != "convolutional":
            continue
        j = net.inputs[index][0]
        source = codes_in if j < 0 else outputs[key][j]
        got = run(convolution_model(net, plan, index, per_channel=key[1] == "per-channel"), level, source)
        assert differing(got["codes"], outputs[key][index]) == 0, f"layer {index}"
        if layer.activation == "leaky":
            expected = preactivation_codes(lowered.fixed[index], source)
            assert differing(got["preactivation"], expected) == 0, f"layer {index} before its leaky ReLU"


@pytest.mark.slow
@pytest.mark.parametrize("key", PLANS, ids=[f"{bits}bit-{kind}" for bits, kind in PLANS])
def test_whole_network_equals_the_float_scale_profile_at_the_head_input(shipped, key):
    """The whole exported network on the 500 shipped test images (100 at a time), at both
    optimisation levels: the codes at the region head's input, and every layer's on the way, equal the
    profile network's; the float32 head input is the ONNX DequantizeLinear of those codes,
    ``(code - zero_point) * float32(step)``, and within float32 rounding of refquant's float64
    dequantization (the region head's input in refquant)."""
    net, plans, images, _ = shipped
    plan = plans[key]
    model = onnx_model(net, plan, per_channel=key[1] == "per-channel", layer_codes=True)
    sessions = {level: session(model, level) for level in LEVELS}
    network = IntegerNetwork.build(net, plan, profile=PROFILE)
    index = head_input_index(net)
    grid = plan.activations[index]
    compared = 0
    for start in range(0, len(images), 100):
        chunk = images[start:start + 100]
        expected = network.run(chunk)
        for level, runner in sessions.items():
            got = outputs_of(runner, plan.input.quantize(chunk))
            for layer_index, layer in enumerate(net.layers[:-1]):
                assert differing(got[LAYER_CODES.format(index=layer_index)], expected[layer_index]) == 0, \
                    f"images {start}+, layer {layer_index} [{layer.type}], {level}"
            assert differing(got[HEAD_CODES], expected[index]) == 0
            head = expected[index].astype(np.int64)
            exact = (head - grid.zero_point).astype(np.float32) * engine_step(grid.step)
            assert got[HEAD_INPUT].dtype == np.float32 and np.array_equal(got[HEAD_INPUT], exact)
            np.testing.assert_allclose(got[HEAD_INPUT], grid.dequantize(head), rtol=2**-22, atol=0)
        compared += len(chunk)
    assert compared == len(images) == 500


# ------------------------------------------------------------------------------------------------
# Every layer kind: routes, reorg, upsample, relu, stride-1 max pool, narrow grids
# ------------------------------------------------------------------------------------------------

def upsample_cfg():
    """A 32x32 network with the layers the shipped model lacks: a stride-1 max pool (Darknet's
    padding of one row and column after), a relu convolution, an upsample, a two-input route of
    grids that differ, a linear 1x1 head."""
    return cfg_text(net_section(32), convolutional(8), maxpool(), convolutional(16, activation="relu"),
                    maxpool(stride=1), convolutional(8, size=1), cfg_section("upsample", stride=2),
                    cfg_section("route", layers="-1,-6"),
                    convolutional(12, size=1, activation="linear", batch_normalize=False))


NETWORKS = {"passthrough": lambda: passthrough_cfg(), "passthrough-relu-head": lambda: passthrough_cfg(
    head_activation="relu"), "upsample": upsample_cfg}


@pytest.mark.parametrize("bits", [8, 3])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_layer_kind_equals_the_float_scale_profile(name, bits):
    """Small random networks (random batch norm, 3 random images; PGM plans at ``bits``, first and
    last layers at 8): route (one input and two, with QLinearConcat rescaling the inputs on other
    grids), reorg (Reshape/Transpose), upsample (Reshape/Expand), relu (Max), stride-1 max pool, and
    3-bit grids (Clip after each saturating operator); every layer's codes equal the profile
    network's at both optimisation levels, with per-tensor and per-channel weights."""
    net = load_cfg(NETWORKS[name](), f"{name}.cfg", seed=5)
    randomize_batchnorm(net, 5)
    images = np.random.default_rng(6).random((3,) + tuple(net.input_shape)).astype(np.float32)
    statistics = ptq.calibration_statistics(net, images, batch_size=3, baseline_samples=4096, progress=False)
    plan = quiet_plan(statistics, bits, bits, "pgm")
    for per_channel, chosen in ((False, plan), (True, plan_module.per_channel_plan(fold_batchnorm(net), plan))):
        expected = profile_outputs(net, chosen, images)
        for level in LEVELS:
            got = run(onnx_model(net, chosen, per_channel=per_channel, layer_codes=True), level,
                      chosen.input.quantize(images))
            for index, layer in enumerate(net.layers):
                if layer.type == "region":
                    continue
                assert differing(got[LAYER_CODES.format(index=index)], expected[index]) == 0, \
                    f"{name}, layer {index} [{layer.type}], per_channel={per_channel}, {level}"


def random_convolution(seed):
    """A one-convolution network and a hand-made plan drawn from ``seed``: C in {1, 3, 4, 8, 13, 32}
    input channels, M in {1, 5, 8, 16, 24} filters, size 1, 3 or 5, stride 1 or 2, padded or not,
    5..19 pixels a side, linear, leaky or relu, batch norm or not; weights at 2..8 bits, outputs at
    2..8 bits over the float outputs' range shrunk by up to half (so some codes saturate), an input
    grid of step 1/255 or 2**-8 with a zero point in 0..64, steps rounded to powers of two for half
    the seeds (exact products: ties of the rounding). Returns (net, plan, codes (2, C, H, W))."""
    rng = np.random.default_rng(seed)
    channels, filters = int(rng.choice([1, 3, 4, 8, 13, 32])), int(rng.choice([1, 5, 8, 16, 24]))
    size, stride, pad = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    height, width = (int(v) for v in rng.integers(size, 20, 2).clip(5))
    activation = str(rng.choice(["linear", "leaky", "relu"]))
    options = {"batch_normalize": 1} if rng.random() < 0.5 else {}
    net = load_cfg(cfg_text(net_section(width, channels=channels, height=height),
                            cfg_section("convolutional", **options, filters=filters, size=size, stride=stride,
                                        pad=pad, activation=activation)), f"conv{seed}.cfg", seed=seed)
    randomize_batchnorm(net, rng)
    pow2 = seed % 2 == 1

    def snapped(step):
        return 2.0 ** np.ceil(np.log2(step)) if pow2 else step
    input_grid = UniformQuantizer(2.0**-8 if pow2 else 1 / 255, int(rng.integers(0, 65)), 0, 255)
    codes = rng.integers(0, 256, (2, channels, height, width))
    folded = fold_batchnorm(net)
    weights = folded.layers[0].params["weights"].astype(np.float64)
    weight_bits, output_bits = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    weight_grid = signed_quantizer(weight_bits, snapped(np.abs(weights).max() / (2 ** (weight_bits - 1) - 1)))
    outputs = folded.forward(input_grid.dequantize(codes).astype(np.float32))
    lo, hi = min(float(outputs.min()), 0.0), max(float(outputs.max()), 0.0)
    step = snapped((hi - lo) / (2**output_bits - 1) * rng.uniform(0.5, 1.0))
    zero_point = int(np.clip(np.rint(-lo / step), 0, 2**output_bits - 1))
    plan = plan_module.QuantizationPlan.for_network(net, {0: weight_grid},
                                                    {0: unsigned_quantizer(output_bits, step, zero_point)},
                                                    input=input_grid)
    return net, plan, codes


@pytest.mark.parametrize("seed", range(64))
def test_random_convolutions_equal_the_float_scale_profile(seed):
    """64 random convolutions (:func:`random_convolution`: shapes that take onnxruntime's different
    kernels, odd input channels, strides, paddings, every width, power-of-two steps with exact ties),
    per tensor and per channel, both optimisation levels: onnxruntime's codes equal the profile
    network's, every code."""
    net, plan, codes = random_convolution(seed)
    for per_channel, chosen in ((False, plan), (True, plan_module.per_channel_plan(fold_batchnorm(net), plan))):
        expected = profile_outputs(net, chosen, chosen.input.dequantize(codes))[0]
        for level in LEVELS:
            got = run(convolution_model(net, chosen, 0, per_channel=per_channel), level, codes)["codes"]
            assert differing(got, expected) == 0, (per_channel, level)


def test_accumulators_beyond_float32_integers_round_as_in_onnxruntime():
    """Above 2**24 an int32 accumulator is not a float32: onnxruntime converts it to float32 (rounding
    to a multiple of 4 between 2**25 and 2**26) before the scale. A 1x1 convolution (one input
    channel, weight code 1, power-of-two steps giving the float32 scale 2**-18 exactly) with biases
    ``2**18 m + 2**17 + 1`` (m = 128, 130, ..., 142) on the codes x = 0..255: exactly, ``acc * 2**-18``
    is just above ``m + 1/2`` for x = 0 and 1; in float32 both accumulators become the tie
    ``2**18 m + 2**17`` (the nearest multiple of 4, and the even one), which rounds to the even m.
    onnxruntime's codes equal the profile network's, and differ from the rule on the exact (float64)
    accumulator on those 16 codes, so the test sees the conversion."""
    net = load_cfg(cfg_text(net_section(16, channels=1),
                            convolutional(8, size=1, activation="linear", batch_normalize=False)),
                   "wide.cfg", dtype=np.float64)
    input_grid, weight_grid, output_grid = (UniformQuantizer(2.0**-8, 0, 0, 255), UniformQuantizer(2.0**-7, 0, -127, 127),
                                            UniformQuantizer(8.0, 0, 0, 255))
    biases = 2**18 * np.arange(128, 144, 2) + 2**17 + 1
    net.layers[0].params["weights"] = np.full((8, 1, 1, 1), weight_grid.step)
    net.layers[0].params["biases"] = biases * (input_grid.step * weight_grid.step)
    plan = plan_module.QuantizationPlan.for_network(net, {0: weight_grid}, {0: output_grid}, input=input_grid)
    codes = np.arange(256).reshape(1, 1, 16, 16)
    images = input_grid.dequantize(codes)
    expected = profile_outputs(net, plan, images)[0]
    accumulators = biases[None, :, None, None] + codes  # weight code 1, input zero point 0
    float64_rule = np.clip(np.rint(accumulators * 2.0**-18), 0, 255)
    assert differing(expected, float64_rule) == 16  # x = 0 and x = 1 in each of the 8 channels
    for level in LEVELS:
        for per_channel in (False, True):
            got = run(onnx_model(net, plan, per_channel=per_channel, layer_codes=True), level, codes)
            assert differing(got[LAYER_CODES.format(index=0)], expected) == 0, (level, per_channel)


# ------------------------------------------------------------------------------------------------
# What the export refuses
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """The passthrough network with random batch norm, 2 random images and their statistics."""
    net = load_cfg(passthrough_cfg(), "tiny.cfg", seed=7)
    randomize_batchnorm(net, 7)
    images = np.random.default_rng(8).random((2,) + tuple(net.input_shape)).astype(np.float32)
    return net, ptq.calibration_statistics(net, images, batch_size=2, baseline_samples=4096, progress=False)


def test_signed_codes_are_refused_naming_the_layer(tiny):
    """The ``"kl"`` method's signed narrow-range codes (zero point 0, codes -127..127) have no uint8
    form: refused, naming the first such layer."""
    net, statistics = tiny
    plan = quiet_plan(statistics, 8, 8, "kl")
    with pytest.raises(ValueError, match=r"layer 0 \[convolutional\]: ONNX export needs unsigned 8-bit codes"):
        onnx_model(net, plan)


def test_per_channel_steps_need_per_channel_scales(tiny):
    """A plan with per-channel weight steps cannot be written with one scale per tensor."""
    net, statistics = tiny
    plan = plan_module.per_channel_plan(fold_batchnorm(net), quiet_plan(statistics, 8, 8, "pgm"))
    with pytest.raises(ValueError, match=r"layer 0 \[convolutional\]: .*per_channel=True"):
        onnx_model(net, plan, per_channel=False)


def test_onnx_is_imported_only_by_an_export():
    """Importing refquant, its command line and the export module loads neither onnx nor onnxruntime
    (a fresh interpreter: the test process has both loaded)."""
    code = ("import sys, refquant, refquant.cli, refquant.cli.export, refquant.export.onnx, "
            "refquant.integer.network; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_missing_onnx_package_names_the_extra(tiny, monkeypatch):
    """Without the onnx package (``sys.modules['onnx'] = None`` makes its import fail) the export
    raises ModuleNotFoundError naming ``pip install refquant[onnx]``."""
    net, statistics = tiny
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install refquant\[onnx\]"):
        onnx_model(net, quiet_plan(statistics, 8, 8, "pgm"))


# ------------------------------------------------------------------------------------------------
# refquant export onnx
# ------------------------------------------------------------------------------------------------

DEMO_PLAN = str(Path(__file__).resolve().parent.parent / "docs" / "demo" / "plans" / "pgm-8bit.plan.json")
"""A plan of the shipped model, committed with the demo's report."""


def test_cli_writes_a_model_onnxruntime_runs(tmp_path, capsys):
    """``refquant export onnx`` on the shipped model and a committed plan writes a file onnxruntime
    loads and runs: its head codes equal the profile network's on 2 random images, and the region
    head run on them (docs/onnx.md's recipe) equals that network's output bit for bit; its metadata
    name the profile, the weight scales and the plan's input grid exactly."""
    output = tmp_path / "model.onnx"
    assert cli.main(["export", "onnx", "--plan", DEMO_PLAN, "--output", str(output), "--per-channel"]) == 0
    assert str(output) in capsys.readouterr().out
    net = darknet.load(shipped_model(".cfg"), shipped_model(".weights"))
    plan = plan_module.QuantizationPlan.load(DEMO_PLAN, net=net)
    images = np.random.default_rng(9).random((2,) + tuple(net.input_shape)).astype(np.float32)
    import onnx
    got = run(onnx.load(str(output)), "enable-all", plan.input.quantize(images))
    assert differing(got[HEAD_CODES], profile_outputs(net, plan, images)[head_input_index(net)]) == 0
    metadata = {entry.key: entry.value for entry in onnx.load(str(output)).metadata_props}
    assert metadata["refquant.profile"] == PROFILE and metadata["refquant.weight_scales"] == "per-channel"
    assert UniformQuantizer(float(metadata["refquant.input_step"]), int(metadata["refquant.input_zero_point"]),
                            int(metadata["refquant.input_qmin"]), int(metadata["refquant.input_qmax"])) == plan.input
    # docs/onnx.md's recipe: the region head on the float64 dequantized codes is the profile network's output
    grid = plan.activations[head_input_index(net)]
    head = net.layers[-1].forward(grid.dequantize(got[HEAD_CODES].astype(np.int64)))
    assert np.array_equal(head, IntegerNetwork.build(net, plan, profile=PROFILE).forward(images))


@pytest.mark.parametrize("argv, expected", [
    (["export", "onnx", "--output", "{out}"], "the following arguments are required: --plan"),
    (["export", "onnx", "--plan", "", "--output", "{out}"], "--plan: expected a path"),
    (["export", "onnx", "--plan", "{missing}", "--output", "{out}"], "--plan: {missing} does not exist"),
    (["export", "onnx", "--plan", DEMO_PLAN, "--output", "{missing}/m.onnx"], "--output: the folder {missing} does"),
    (["export", "onnx", "--cfg", "{missing}", "--plan", DEMO_PLAN, "--output", "{out}"], "--cfg: {missing} does"),
    (["export", "tflite", "--plan", DEMO_PLAN, "--output", "{out}"], "invalid choice: 'tflite'"),
    (["export"], "the following arguments are required: FORMAT"),
    (["export", "onnx", "--plan", "{wrong}", "--output", "{out}"], "{wrong}: plan for"),
])
def test_cli_refuses_bad_arguments_in_one_line_with_status_2(tiny, tmp_path, capsys, argv, expected):
    """A missing or empty --plan, a plan or cfg that does not exist, an output folder that does not
    exist, an unknown format, a plan made for another network (the passthrough network's, given
    with the shipped model): exit status 2 and one line naming the argument; nothing written."""
    _, statistics = tiny
    values = {"missing": str(tmp_path / "missing"), "wrong": str(tmp_path / "wrong.plan.json"),
              "out": str(tmp_path / "m.onnx")}
    quiet_plan(statistics, 8, 8, "minmax").save(values["wrong"])
    code = cli.main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected.format(**values) in err, err
    assert not any(tmp_path.glob("*.onnx"))


def test_cli_names_the_missing_onnx_extra(tmp_path, capsys, monkeypatch):
    """Without the onnx package, ``refquant export onnx`` says how to install it, in one line, status 2."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    code = cli.main(["export", "onnx", "--plan", DEMO_PLAN, "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install refquant[onnx]" in err
    assert not any(tmp_path.glob("*.onnx"))
