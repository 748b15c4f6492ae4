"""Training (refquant.train): Darknet's learning-rate policies and SGD update, a short run that
learns, exact resume after an interruption, atomic checkpoints, anchor clustering, the CLI.

Independent truths: Darknet's ``get_current_rate`` (src/network.c) evaluated by hand;
``torch.optim.SGD``, with the equivalence to Darknet's update derived in the docstring; the
loss of a fixed batch before and after training; an uninterrupted run (bit for bit); the
files on disk after simulated crashes; hand-built box clusters.
"""
import json
import os

import numpy as np
import pytest
import torch

from refquant import cli, darknet, train
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc, read_names
from refquant.testing import tiny_yolo_cfg, write_cfg

TINY_CFG = tiny_yolo_cfg(anchors="1.5,1.5, 3,3", size=64, filters=(8, 16, 32), pools=3, burn_in=3, max_batches=40,
                         policy="steps", steps=30, scales=".1")
"""refquant.testing's tiny-YOLO at 64x64 with an 8x8 grid, a burn-in and a learning-rate step."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny shapes tree (64 px, 8 train / 4 test images) and a tiny tiny-YOLO cfg (8x8 grid)."""
    root = tmp_path_factory.mktemp("tiny")
    data = shapes_dataset(root / "shapes", seed=3, size=64, train=8, val=0, test=4, progress=False)
    cfg = write_cfg(root, TINY_CFG)
    return {"data": data, "cfg": cfg, "names": data / "shapes.names"}


# ---------------------------------------------------------------- learning rate

def test_learning_rate_policies_hand_evaluated():
    """Darknet's get_current_rate, worked by hand: burn-in rate * (k / burn_in)^power below burn_in;
    steps: rate times the scales of every step <= k; step: rate * scale^(k // step);
    exp: rate * gamma^k; poly: rate * (1 - k/max_batches)^power; sig: rate / (1 + e^(gamma (k - step)))."""
    steps = {"learning_rate": 0.001, "burn_in": 10, "power": 4, "policy": "steps",
             "steps": [100, 200], "scales": [0.1, 0.5]}
    assert train.learning_rate(steps, 0) == 0.0
    assert train.learning_rate(steps, 5) == pytest.approx(0.001 * 0.5 ** 4, rel=1e-12)      # 6.25e-5
    assert train.learning_rate(steps, 10) == pytest.approx(0.001, rel=1e-12)               # burn-in over
    assert train.learning_rate(steps, 99) == pytest.approx(0.001, rel=1e-12)
    assert train.learning_rate(steps, 100) == pytest.approx(1e-4, rel=1e-12)                # step reached
    assert train.learning_rate(steps, 199) == pytest.approx(1e-4, rel=1e-12)
    assert train.learning_rate(steps, 200) == pytest.approx(5e-5, rel=1e-12)
    step = {"learning_rate": 0.1, "policy": "step", "step": 30, "scale": 0.5}
    assert [train.learning_rate(step, k) for k in (0, 29, 30, 61)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert train.learning_rate({"learning_rate": 0.2, "policy": "exp", "gamma": 0.9}, 3) == pytest.approx(0.1458)
    poly = {"learning_rate": 0.1, "policy": "poly", "power": 2, "max_batches": 100}
    assert train.learning_rate(poly, 75) == pytest.approx(0.1 * 0.25 ** 2)
    sig = {"learning_rate": 1.0, "policy": "sig", "gamma": 0.5, "step": 10}
    assert train.learning_rate(sig, 10) == pytest.approx(0.5)
    assert train.learning_rate(sig, 12) == pytest.approx(1 / (1 + np.e))
    assert train.learning_rate({"learning_rate": 0.3}, 1000) == 0.3                          # constant
    with pytest.raises(ValueError, match="policy='cosine'"):
        train.learning_rate({"policy": "cosine"}, 5)


def test_training_options_from_cfg_and_overrides(tiny):
    """The [net] values of the cfg (hand-read from TINY_CFG), the region's jitter, then the overrides;
    a batch that subdivisions does not divide is refused, naming both."""
    net = darknet.load(tiny["cfg"])
    options = train.training_options(net, {"batch": 8, "subdivisions": 2, "learning_rate": None})
    assert (options["batch"], options["subdivisions"], options["learning_rate"]) == (8, 2, 0.01)
    assert (options["momentum"], options["decay"], options["burn_in"], options["max_batches"]) == (0.9, 0.0005, 3, 40)
    assert (options["steps"], options["scales"], options["jitter"], options["hue"]) == ([30], [0.1], 0.2, 0.1)
    with pytest.raises(ValueError, match="batch=6, subdivisions=4"):
        train.training_options(net, {"batch": 6, "subdivisions": 4})
    with pytest.raises(ValueError, match="unknown"):
        train.training_options(net, {"rate": 1})


# ---------------------------------------------------------------- the SGD update

def test_sgd_update_matches_torch_sgd(tiny):
    """Independent truth: torch.optim.SGD (momentum mu, dampening 0, weight_decay only on the weights).

    Derivation. Darknet, with G = dL/dp of the loss summed over the B images of a batch:
        u <- mu u - G - decay B p [weights only];   p <- p + lr/B u.
    Put v = -u / B and g = G / B (the gradient of the batch-mean loss):
        v <- mu v + g + decay p;                     p <- p - lr v,
    which is torch.optim.SGD's step (buf <- mu buf + (g + weight_decay p); p <- p - lr buf) with
    weight_decay = decay on the weights and 0 on biases and scales. Since neither u nor v holds the
    learning rate, the equivalence holds step after step when lr changes (burn-in, steps): four
    updates with four rates are compared, in float64."""
    net = darknet.load(tiny["cfg"], dtype=np.float64, seed=1)
    batch, momentum, decay = 16, 0.9, 0.0005
    rng = np.random.default_rng(7)
    params = train.trainable(net)
    torch_params = {(i, n): torch.tensor(p.copy(), requires_grad=True) for i, n, p in params}
    groups = [{"params": [t for (i, n), t in torch_params.items() if n in train.DECAYED], "weight_decay": decay},
              {"params": [t for (i, n), t in torch_params.items() if n not in train.DECAYED], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=momentum, dampening=0.0, nesterov=False)
    updates = train.zero_updates(net)
    for rate in (1e-3, 5e-3, 2e-2, 2e-3):
        gradients = {(i, n): rng.normal(0, 3, p.shape) for i, n, p in params}
        train.sgd_update(net, gradients, updates, rate, momentum, decay, batch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        for key, tensor in torch_params.items():
            tensor.grad = torch.tensor(gradients[key] / batch)
        optimizer.step()
    assert {n for _, n, _ in params} == {"weights", "biases", "scales"}
    for i, n, p in params:
        np.testing.assert_allclose(p, torch_params[(i, n)].detach().numpy(), rtol=1e-12, atol=1e-15)


def test_first_update_uses_the_rate_of_update_one(tiny, tmp_path):
    """Darknet's get_current_batch counts the update being made: with burn_in = 2 and power 1 the
    first update uses rate * 1/2. Checked on the weights of a real iteration: the change of a bias
    of the linear last layer equals -(lr/2)/B * G (zero momentum buffer, no decay on biases), with G
    the summed gradient that a separate forward/backward of the same batch gives."""
    overrides = {"burn_in": 2, "power": 1.0, "learning_rate": 0.01, "batch": 4, "subdivisions": 1}
    net = darknet.load(tiny["cfg"], dtype=np.float64, seed=0)
    options = train.training_options(net, overrides)
    records = load_voc(tiny["data"], "train", read_names(tiny["names"]))
    before = net.layers[-2].params["biases"].copy()
    saved = {(i, n): p.copy() for i, n, p in net.parameters()}
    updates = train.zero_updates(net)
    train.train_iteration(net, records, options, updates, 1, seed=5)
    after = net.layers[-2].params["biases"].copy()
    # The same batch, again from the start (same rng stream), for its gradient.
    for (i, n), value in saved.items():
        net.layers[i].params[n][...] = value
    net.seen = 0
    rng = train.iteration_rng(5, 1)
    chosen = rng.integers(len(records), size=4)
    from refquant.data.augment import load_batch
    x, truths = load_batch([records[i] for i in chosen], 64, 64, rng, jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5)
    net.forward(x, training=True)
    _, dout = net.layers[-1].loss(truths, seen=4)
    net.backward(dout)
    gradient = net.layers[-2].grads["biases"]
    np.testing.assert_allclose(after - before, -(0.01 * 1 / 2) / 4 * gradient, rtol=1e-10, atol=1e-15)


def test_prefetched_batches_are_the_rng_streams_batches(tiny):
    """Independent truth: each update's batches drawn by hand from its own generator
    (``iteration_rng(seed, k)``: the records chosen, then each mini-batch loaded and augmented in
    turn), as the first-update test does. Loading one update ahead in a thread must not change a
    value, whatever the order updates are asked in; a loading error reaches the caller."""
    from refquant.data.augment import load_batch
    net = darknet.load(tiny["cfg"], seed=0)
    options = train.training_options(net, {"batch": 4, "subdivisions": 2})
    records = load_voc(tiny["data"], "train", read_names(tiny["names"]))
    iterations = [3, 1, 2, 7]
    got = list(train.prefetched_batches(net, records, options, 11, iterations))
    assert [k for k, _ in got] == iterations
    for k, batches in got:
        rng = train.iteration_rng(11, k)
        chosen = rng.integers(len(records), size=4)
        assert len(batches) == 2
        for part, (x, truths) in enumerate(batches):
            x_ref, truths_ref = load_batch([records[i] for i in chosen[2 * part:2 * part + 2]], 64, 64, rng,
                                           jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5)
            np.testing.assert_array_equal(x, x_ref)
            for t, t_ref in zip(truths, truths_ref):
                np.testing.assert_array_equal(t, t_ref)
    broken = [dict(r, image_path=str(tiny["data"] / "missing.jpg")) for r in records]
    with pytest.raises(Exception, match="missing.jpg"):
        list(train.prefetched_batches(net, broken, options, 11, [1, 2]))


# ---------------------------------------------------------------- a run that learns

def fixed_batch_loss(net, records):
    """Per-image region loss of all the records, without augmentation, in training mode."""
    from refquant.data.augment import load_batch
    x, truths = load_batch(records, 64, 64, np.random.default_rng(0), jitter=0.0, hue=0.0, saturation=1.0,
                           exposure=1.0)
    net.forward(x, training=True)
    loss, _ = net.layers[-1].loss(truths, seen=10 ** 6)
    return loss / len(records)


@pytest.mark.slow
def test_short_training_lowers_the_loss(tiny, tmp_path):
    """Independent truth: the loss of the fixed, unaugmented training batch, before training (the
    seeded initialisation) and after 40 updates; it must fall to less than half."""
    records = load_voc(tiny["data"], "train", read_names(tiny["names"]))
    initial = fixed_batch_loss(darknet.load(tiny["cfg"], seed=0), records)
    result = train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=0, progress=False,
                         overrides={"jitter": 0.0, "hue": 0.0, "saturation": 1.0, "exposure": 1.0})
    assert result["iteration"] == 40 and result["seen"] == 160
    final = fixed_batch_loss(darknet.load(tiny["cfg"], result["weights"]), records)
    assert final < 0.5 * initial, (initial, final)
    assert np.mean(result["loss"][-5:]) < 0.5 * np.mean(result["loss"][:5])


# ---------------------------------------------------------------- resume and checkpoints

RESUME_OVERRIDES = {"batch": 4, "subdivisions": 2, "max_batches": 6}


@pytest.mark.slow
def test_interrupt_and_resume_is_bit_identical(tiny, tmp_path, monkeypatch):
    """Independent truth: the uninterrupted run. The other run is interrupted (KeyboardInterrupt, as
    Ctrl-C raises it) in the middle of update 4, after the first of its two forward passes has
    already moved the batch-norm rolling statistics; the checkpoint must hold update 3 as it was, and
    --resume must end on the same weights file and optimizer state, byte for byte."""
    whole = train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "whole", seed=2,
                        overrides=RESUME_OVERRIDES, checkpoint_every=2, progress=False)

    calls = {"count": 0}
    real_load_batch = train.load_batch

    def interrupting_load_batch(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3 * 2 + 2:  # second mini-batch of update 4
            raise KeyboardInterrupt
        return real_load_batch(*args, **kwargs)

    monkeypatch.setattr(train, "load_batch", interrupting_load_batch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "cut", seed=2,
                    overrides=RESUME_OVERRIDES, checkpoint_every=2, progress=False)
    monkeypatch.setattr(train, "load_batch", real_load_batch)
    state = json.loads((tmp_path / "cut" / "tiny.checkpoint.json").read_text())
    assert (state["iteration"], state["seen"], state["seed"]) == (3, 12, 2)
    assert sorted(os.listdir(tmp_path / "cut")) == ["tiny.checkpoint.json", "tiny_000003.optimizer.npz",
                                                    "tiny_000003.weights"]

    resumed = train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "cut", seed=2,
                          overrides=RESUME_OVERRIDES, checkpoint_every=2, resume=True, progress=False)
    assert resumed["iteration"] == 6 and len(resumed["loss"]) == 3
    assert resumed["loss"] == whole["loss"][3:]
    assert (tmp_path / "cut" / "tiny_final.weights").read_bytes() == (tmp_path / "whole" / "tiny_final.weights").read_bytes()
    with np.load(tmp_path / "whole" / "tiny_000006.optimizer.npz") as a, \
            np.load(tmp_path / "cut" / "tiny_000006.optimizer.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) == 11
        for key in a.files:
            assert a[key].tobytes() == b[key].tobytes(), key


def test_output_names_stay_in_the_output_folder(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"name '\.\./x': expected a plain file stem"):
        train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "run", name="../x", progress=False)
    assert not (tmp_path / "x_final.weights").exists()


def test_resume_refuses_another_run(tiny, tmp_path):
    """A checkpoint resumes only its own run: another seed or another batch is refused, naming it; a
    learning-rate schedule may change only after the checkpoint (here after update 2 of burn_in=3:
    a step at update 3 is accepted, a different base rate, which changes updates 1-2, is refused)."""
    train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=1, overrides={"max_batches": 2},
                progress=False)
    with pytest.raises(ValueError, match="seed=1"):
        train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=9, resume=True,
                    overrides={"max_batches": 3}, progress=False)
    with pytest.raises(ValueError, match="batch"):
        train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=1, resume=True,
                    overrides={"max_batches": 3, "batch": 2}, progress=False)
    with pytest.raises(ValueError, match="update 1 the rate"):
        train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=1, resume=True,
                    overrides={"max_batches": 3, "learning_rate": 0.02}, progress=False)
    result = train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path, seed=1, resume=True,
                         overrides={"max_batches": 3, "steps": [3], "scales": [0.5]}, progress=False)
    assert result["iteration"] == 3


def test_resume_after_moving_the_data_and_the_run(tiny, tmp_path):
    """A run identifies its data by content, not path: the checkpoint of update 1, moved with a copy
    of the data tree to other directories, resumes there to the weights of an uninterrupted 2-update
    run on the original tree, byte for byte."""
    import shutil
    overrides = {"max_batches": 1}
    train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "run", seed=6, overrides=overrides,
                progress=False)
    shutil.copytree(tiny["data"], tmp_path / "moved_data")
    shutil.move(tmp_path / "run", tmp_path / "moved_run")
    moved = train.train(tiny["cfg"], tmp_path / "moved_data", tmp_path / "moved_data" / "shapes.names",
                        tmp_path / "moved_run", seed=6, overrides={"max_batches": 2}, resume=True, progress=False)
    whole = train.train(tiny["cfg"], tiny["data"], tiny["names"], tmp_path / "whole", seed=6,
                        overrides={"max_batches": 2}, progress=False)
    assert moved["weights"].read_bytes() == whole["weights"].read_bytes()


def test_crash_while_checkpointing_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    """A crash while the optimizer state of update 4 is written (after its weights file was renamed
    into place): the JSON still names update 2's files, which load and resume; no partial file."""
    net = darknet.load(tiny["cfg"], seed=0)
    updates = train.zero_updates(net)
    net.seen = 8
    train.save_checkpoint(tmp_path, "m", net, updates, {"iteration": 2})
    expected = (tmp_path / "m_000002.weights").read_bytes()
    net.layers[0].params["weights"] += 1
    net.seen = 16

    def crashing_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(train.np, "savez", crashing_savez)
    with pytest.raises(OSError, match="simulated"):
        train.save_checkpoint(tmp_path, "m", net, updates, {"iteration": 4})
    monkeypatch.undo()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
    state = json.loads((tmp_path / "m.checkpoint.json").read_text())
    assert (state["iteration"], state["seen"], state["weights"]) == (2, 8, "m_000002.weights")
    fresh = darknet.load(tiny["cfg"], seed=5)
    loaded_state, loaded_updates = train.load_checkpoint(tmp_path, "m", fresh)
    assert loaded_state["iteration"] == 2 and fresh.seen == 8
    assert train.weights_bytes(fresh) == expected


# ---------------------------------------------------------------- anchors

def test_anchor_clusters_of_two_hand_built_groups():
    """Boxes of two shapes, 0.1 x 0.1 (three boxes) and 0.4 x 0.2 (two boxes), one difficult 0.9 x 0.9
    box ignored: on an 8 x 8 grid the two anchors are (0.8, 0.8) and (3.2, 1.6), sorted by area."""
    def record(sizes, difficult=False):
        objects = [{"box": (11, 11, 11 + w, 11 + h), "class_id": 0, "difficult": difficult} for w, h in sizes]
        return {"width": 100, "height": 100, "objects": objects}
    records = [record([(10, 10), (10, 10)]), record([(40, 20), (10, 10), (40, 20)]), record([(90, 90)], True)]
    anchors = train.anchor_clusters(records, 2, 8, 8)
    np.testing.assert_allclose(anchors, [[0.8, 0.8], [3.2, 1.6]], rtol=1e-6)  # float32 truths
    np.testing.assert_allclose(train.shape_iou([[2.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]), [[1 / 3, 1.0]])


# ---------------------------------------------------------------- command line

def test_cli_train_then_resume(tiny, tmp_path, capsys):
    """refquant train through refquant.cli.main: 2 updates, then --resume to 3 with the same options;
    the checkpoint JSON records iteration 3, seen 3 * batch and the seed."""
    common = ["train", "--cfg", str(tiny["cfg"]), "--data", str(tiny["data"]), "--out", str(tmp_path),
              "--batch", "2", "--seed", "4", "--no-progress", "--steps", "30", "--scales", ".1"]
    assert cli.main(common + ["--max-batches", "2"]) == 0
    assert cli.main(common + ["--max-batches", "3", "--resume"]) == 0
    state = json.loads((tmp_path / "tiny.checkpoint.json").read_text())
    assert (state["iteration"], state["seen"], state["seed"], state["options"]["batch"]) == (3, 6, 4, 2)
    assert (tmp_path / "tiny_final.weights").stat().st_size == (tmp_path / "tiny_000003.weights").stat().st_size
    assert "trained 3 updates" in capsys.readouterr().out
    mask = os.umask(0o022)
    os.umask(mask)
    for written in ("tiny_final.weights", "tiny.checkpoint.json"):  # the mode open() would give, not mkstemp's 0600
        assert (tmp_path / written).stat().st_mode & 0o777 == 0o666 & ~mask, written
    assert cli.main(common + ["--max-batches", "4"]) == 2  # a second run into the same folder: refused
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "tiny_final.weights").stat().st_size > 0
    assert cli.main(common + ["--max-batches", "1", "--force"]) == 0
    assert json.loads((tmp_path / "tiny.checkpoint.json").read_text())["iteration"] == 1
    assert cli.main(common[:-4] + ["--batch", "3", "--subdivisions", "2", "--out", str(tmp_path / "x")]) == 2
    assert "refquant train: error: batch=3, subdivisions=2" in capsys.readouterr().err
