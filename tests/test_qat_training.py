"""Quantization-aware training (refquant.qat.quantization_aware_training) and saving its result.

Independent truths, per test: the region loss of a fixed, unaugmented batch (Darknet's loss,
checked against Darknet's formulas in test_region.py) before and after training; a fresh
post-training calibration of the trained weights (the PGMs of the same tensors); OpenCV's
Darknet importer reading the saved folded cfg and weights; the saved files read back.
"""
import math
import warnings

import cv2
import numpy as np
import pytest

from refquant import darknet, folding, ptq, qat
from refquant import plan as plan_module
from refquant.data.augment import load_batch
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc, read_names
from refquant.density.em import ConvergenceWarning
from refquant.integer.network import IntegerNetwork
from refquant.testing import randomize_batchnorm, tiny_yolo_cfg, write_cfg

pytestmark = pytest.mark.slow  # quantization-aware training runs

ANCHORS = "1,1,2.5,2.5"
"""The two anchors of the small tiny-YOLO-like network (refquant.testing.tiny_yolo_cfg) on 32x32 inputs."""


def quiet(function, *args, **kwargs):
    """Call ``function`` with the PGM fits' convergence notes silenced (reported elsewhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The network (refquant.testing.tiny_yolo_cfg: a small tiny-YOLO-like network on 32x32 inputs;
    random weights and batch-norm statistics), 8 generated 64x64 shapes images, their unaugmented
    32x32 batch with truths, and the PGM plan at 4 bits."""
    folder = tmp_path_factory.mktemp("qat_training")
    root = shapes_dataset(folder / "shapes", size=64, train=8, val=0, test=0, progress=False)
    names = read_names(root / "shapes.names")
    records = load_voc(root, "train", names)
    cfg = write_cfg(folder, tiny_yolo_cfg(ANCHORS))
    # batch-norm statistics of a trained network rather than the trivial fresh ones (biases kept)
    net = randomize_batchnorm(darknet.load(cfg, seed=2), 2, biases=False)
    x, truths = load_batch(records, 32, 32, np.random.default_rng(0), jitter=0.0, hue=0.0, saturation=1.0,
                           exposure=1.0)
    plan = quiet(ptq.calibrate, net, x, 4, 4, method="pgm", progress=False)
    return {"cfg": cfg, "net": net, "records": records, "x": x, "truths": truths, "plan": plan, "folder": folder}


def fixed_batch_loss(network, x, truths):
    """The region loss (summed over the batch) of ``network`` on a fixed batch, no update."""
    network.forward(x, training=False)
    loss, _ = network.layers[-1].loss(truths, seen=network.seen)
    return loss


def test_training_lowers_the_fake_quant_loss_and_leaves_the_float_network(setup):
    """Truth: the region loss of the fake-quantized network on a fixed, unaugmented batch (Darknet's
    loss, tested against Darknet's formulas elsewhere), before and after 12 QAT updates: lower after.
    The input network is untouched (its weights and seen), the losses are finite, and the training
    options are the cfg's with QAT_OPTIONS and the caller's on top."""
    net, x, truths, plan = setup["net"], setup["x"], setup["truths"], setup["plan"]
    weights = net.layers[0].params["weights"].copy()
    before = fixed_batch_loss(qat.FakeQuantNetwork(folding.fold_batchnorm(net), plan), x, truths)
    result = quiet(qat.quantization_aware_training, net, plan, setup["records"], 12, refit_every=None,
                   options={"batch": 4, "learning_rate": 0.01}, progress=False)
    after = fixed_batch_loss(qat.FakeQuantNetwork(result.folded, result.plan), x, truths)
    assert after < 0.8 * before, (before, after)
    assert len(result.losses) == 12 and all(math.isfinite(v) for v in result.losses)
    assert result.refits == [] and result.plans == [plan] and result.plan is plan
    assert result.options["learning_rate"] == 0.01 and result.options["burn_in"] == 0
    assert result.options["momentum"] == 0.9 and result.options["batch"] == 4
    np.testing.assert_array_equal(net.layers[0].params["weights"], weights)
    assert result.folded.seen == net.seen + 12 * 4
    assert folding.is_folded(result.folded)


def test_refits_follow_the_weights(setup):
    """Truth: a fresh post-training calibration of the trained weights (calibration_statistics and
    quantization_plan, which fit the PGMs of the same weight tensors): refitting the trained network
    gives the same weight quantizers; the refit inside training (after update 3 of 6) changed the
    plan from the starting one since the weights moved; no refit follows the last update."""
    net, x, plan = setup["net"], setup["x"], setup["plan"]
    result = quiet(qat.quantization_aware_training, net, plan, setup["records"], 6, refit_every=3, refit_images=x,
                   options={"batch": 4, "learning_rate": 0.02}, progress=False)
    assert result.refits == [3] and len(result.plans) == 2 and result.plan is result.plans[1]
    start, refitted = result.plans
    assert any(refitted.weights[i].step != start.weights[i].step for i in plan_module.conv_indices(net))
    assert refitted.method == "pgm" and refitted.options == start.options
    network = qat.FakeQuantNetwork(result.folded, result.plan)
    final = quiet(network.refit, x, progress=False)
    fresh = quiet(ptq.quantization_plan, ptq.calibration_statistics(result.folded, x, progress=False), 4, 4, "pgm")
    assert final.weights == fresh.weights


def test_saved_model_reads_back_and_opencv_runs_it(setup):
    """Truth: OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet) reads the folded cfg written by
    folded_cfg_text and the weights written by save_quantized, and its last convolution's output
    equals refquant's folded network's (float32 precision); load_quantized gives back the same
    parameters and plan, hence an integer network with the same head outputs bit for bit."""
    net, x, plan, folder = setup["net"], setup["x"], setup["plan"], setup["folder"]
    result = quiet(qat.quantization_aware_training, net, plan, setup["records"], 2, refit_every=None,
                   options={"batch": 2}, progress=False)
    paths = plan_module.save_quantized(result.folded, result.plan, setup["cfg"], folder / "saved")
    assert [p.split("saved")[-1] for p in paths] == [".cfg", ".weights", ".plan.json"]
    assert "batch_normalize" not in open(paths[0]).read()
    folded, loaded_plan = plan_module.load_quantized(folder / "saved")
    for ours, theirs in zip(folded.layers, result.folded.layers):
        for name, value in theirs.params.items():
            np.testing.assert_array_equal(ours.params[name], value)
    assert loaded_plan.to_dict() == result.plan.to_dict()
    expected = IntegerNetwork(result.folded, result.plan).forward(x[:3])
    np.testing.assert_array_equal(IntegerNetwork(folded, loaded_plan).forward(x[:3]), expected)

    opencv = cv2.dnn.readNetFromDarknet(paths[0], paths[1])
    opencv.setInput(x[:3])
    last = plan_module.conv_indices(folded)[-1]
    theirs = opencv.forward(f"conv_{last}")
    ours = folded.forward(x[:3], return_all=True)[last]
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_bad_arguments_are_refused(setup):
    """Truth: the documented requirements, each error naming the argument or file."""
    net, plan, records = setup["net"], setup["plan"], setup["records"]
    with pytest.raises(ValueError, match="iterations"):
        qat.quantization_aware_training(net, plan, records, 0)
    with pytest.raises(ValueError, match="refit_images"):
        qat.quantization_aware_training(net, plan, records, 2, refit_every=1)
    with pytest.raises(ValueError, match="records"):
        qat.quantization_aware_training(net, plan, [], 2, refit_every=None)
    with pytest.raises(ValueError, match="folded"):
        plan_module.save_quantized(net, plan, setup["cfg"], setup["folder"] / "bad")
    other = write_cfg(setup["folder"], tiny_yolo_cfg(ANCHORS, filters=(8, 12, 16)), "other.cfg")
    paths = plan_module.save_quantized(folding.fold_batchnorm(net), plan, setup["cfg"], setup["folder"] / "mismatch")
    (setup["folder"] / "mismatch.cfg").write_text(folding.folded_cfg_text(other))
    darknet.save_weights(folding.fold_batchnorm(darknet.load(other)), paths[1])
    with pytest.raises(ValueError, match="mismatch.plan.json"):
        plan_module.load_quantized(setup["folder"] / "mismatch")


def test_auto_activation_breakpoints_fit_heavy_tails_better(setup):
    """Truth: refquant.pgm's own histogram fit with breakpoints "auto" (at most
    ptq.ACTIVATION_MAX_PIECES pieces), called
    directly on the same histogram, and the empirical squared error (numpy) on a leaky-ReLU sample
    with a heavy (Student-t, 4 degrees of freedom) positive side, at 8 bits: the "auto" policy
    gives that fit, records itself in the plan and its refits, and its interval errs less on the
    sample than the "kink" policy's two pieces, whose Gaussian tail is too light."""
    from refquant.density.pgm import PiecewiseGaussian
    net, x = setup["net"], setup["x"]
    rng = np.random.default_rng(7)
    t = rng.standard_t(4, 400_000)
    values = np.where(t < 0, 0.1 * t, t)  # a leaky ReLU of heavy-tailed pre-activations
    policies = {}
    for policy in ptq.ACTIVATION_BREAKPOINTS:
        statistics = ptq.calibration_statistics(net, x, progress=False, activation_breakpoints=policy)
        histogram = ptq.ActivationHistogram()
        histogram.add(values)
        statistics.histograms[0] = histogram  # layer 0 is a leaky convolution
        policies[policy] = quiet(ptq.quantization_plan, statistics, 8, 8, "pgm", first_bits=None, last_bits=None)
    auto = policies["auto"]
    expected = quiet(PiecewiseGaussian.fit_histogram, histogram.counts, histogram.edges, "auto",
                     max_pieces=ptq.ACTIVATION_MAX_PIECES)
    np.testing.assert_array_equal(auto.densities[("activations", 0)].breakpoints, expected.breakpoints)
    assert policies["kink"].densities[("activations", 0)].breakpoints.tolist() == [0.0]
    errors = {policy: intervals_mse(values, plan.activations[0]) for policy, plan in policies.items()}
    assert errors["auto"] < 0.7 * errors["kink"], errors
    assert auto.options["activation_breakpoints"] == "auto"
    refitted = quiet(qat.FakeQuantNetwork(folding.fold_batchnorm(net), auto).refit, x, progress=False)
    assert refitted.options["activation_breakpoints"] == "auto"
    with pytest.raises(ValueError, match="activation_breakpoints"):
        ptq.calibration_statistics(net, x, progress=False, activation_breakpoints="some")


def intervals_mse(values, quantizer):
    """mean (x - Q(x))^2 over the values, numpy only."""
    return float(np.mean((values - quantizer.fake(values)) ** 2))
