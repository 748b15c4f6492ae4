"""A command killed with SIGKILL (no handler runs, no checkpoint on the way out) leaves nothing
that a later run takes as complete, and a killed training run resumes bit for bit.

Truth: an uninterrupted run of the same command, compared byte for byte; the file system after
the kill.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from refquant import cli, train
from refquant.data.shapes import shapes_dataset
from refquant.testing import tiny_yolo_cfg, write_cfg

pytestmark = pytest.mark.slow  # a training run in a subprocess, killed, then resumed: about 5 s

CFG = tiny_yolo_cfg(anchors="1.5,1.5, 3,3", size=64, filters=(8, 16, 32), pools=3, burn_in=2, max_batches=8,
                    policy="steps", steps=6, scales=".1")


def killed_after_checkpoint(argv, pointer, timeout=120):
    """Run ``refquant argv`` in a subprocess, SIGKILL it once ``pointer`` names update 2 or later."""
    process = subprocess.Popen([sys.executable, "-m", "refquant", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if pointer.is_file() and '"iteration": 1' not in pointer.read_text():
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return process.returncode


def test_a_killed_training_run_resumes_bit_identically(tmp_path):
    data = shapes_dataset(tmp_path / "shapes", seed=4, size=64, train=8, val=0, test=2, progress=False)
    cfg = write_cfg(tmp_path, CFG)
    common = ["--cfg", str(cfg), "--data", str(data), "--seed", "3", "--checkpoint-every", "1", "--no-progress"]
    run = tmp_path / "killed"
    pointer = run / f"{cfg.stem}.checkpoint.json"
    assert killed_after_checkpoint(["train", "--out", str(run), *common], pointer) == -signal.SIGKILL
    assert not (run / f"{cfg.stem}_final.weights").exists()  # nothing that looks finished
    (run / f".{cfg.stem}_000099.weights.abc.partial").write_bytes(b"half")  # as a kill mid-write leaves
    assert cli.main(["train", "--out", str(run), "--resume", *common]) == 0
    assert not [name for name in os.listdir(run) if name.endswith(".partial")]
    whole = train.train(cfg, data, data / "shapes.names", tmp_path / "whole", seed=3, checkpoint_every=1,
                        progress=False)
    assert (run / f"{cfg.stem}_final.weights").read_bytes() == whole["weights"].read_bytes()
