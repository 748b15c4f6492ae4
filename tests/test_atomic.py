"""Outputs are written all or nothing (refquant.atomic): an interrupted write leaves the target
absent or as it was, never half-written, and its leftovers are removed by the next write.

Truth: the file system itself, observed after a simulated failure inside the writer and after a
real SIGKILL of a process in the middle of a write.
"""
import os
import signal
import subprocess
import sys

import pytest

from refquant import atomic


def test_atomic_write_leaves_no_partial_file(tmp_path):
    """Simulated crash in the middle of writing: the target keeps its old content (or stays absent)
    and no temporary file is left in the directory."""
    target = tmp_path / "model.weights"

    def crash(f):
        f.write(b"half of the file")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="simulated"):
        atomic.atomic_write(target, crash)
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="simulated"):
        atomic.atomic_write(target, crash)
    assert os.listdir(tmp_path) == ["model.weights"] and target.read_bytes() == b"old"
    atomic.atomic_write(target, lambda f: f.write(b"new"))
    assert os.listdir(tmp_path) == ["model.weights"] and target.read_bytes() == b"new"


WRITER = """
import sys, time
from refquant import atomic
def write(f):
    f.write(b"the first half")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic.atomic_write(sys.argv[1], write)
"""


def killed_write(target):
    """Start a process that writes ``target`` and SIGKILL it in the middle of the write."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"writing\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return process.returncode


def test_a_killed_write_leaves_only_a_partial_file_which_the_next_write_removes(tmp_path):
    target = tmp_path / "results.json"
    assert killed_write(target) == -signal.SIGKILL
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".results.json.") and leftovers[0].endswith(".partial")
    assert not target.exists()  # nothing that a reader could take for the output
    atomic.write_text(target, "{}\n")
    assert os.listdir(tmp_path) == ["results.json"]


def test_remove_partials_removes_leftovers_of_any_target_and_nothing_else(tmp_path):
    assert killed_write(tmp_path / "a.weights") == -signal.SIGKILL
    (tmp_path / "b.partial").write_text("a user's file that is not hidden")
    (tmp_path / "kept.json").write_text("{}")
    os.mkdir(tmp_path / ".sub.partial")
    removed = atomic.remove_partials(tmp_path)
    assert [path.name.startswith(".a.weights.") for path in removed] == [True]
    assert sorted(os.listdir(tmp_path)) == [".sub.partial", "b.partial", "kept.json"]
    assert atomic.remove_partials(tmp_path / "absent") == []


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """mkstemp creates 0600; the output gets what open() would give under the process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    atomic.write_bytes(tmp_path / "f", b"x")
    reference = tmp_path / "g"
    reference.write_bytes(b"x")
    assert (tmp_path / "f").stat().st_mode == reference.stat().st_mode
