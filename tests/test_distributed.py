"""refquant.distributed: the demo's, eval's and calibration's work on local Dask clusters of 1, 2
and 3 worker processes, and the exact merge of calibration histograms.

Independent truth: the in-process run, the same functions called in this process with every image
and batch in order (itself checked against OpenCV's Darknet importer and the VOC devkit's rule in
test_evaluate.py, against hand-worked plans in test_intervals*.py and test_demo.py); for the merge,
the histogram that ``ActivationHistogram.add`` makes of the batches one after the other. Equal means
equal bit for bit: detections (every float), histograms (counts, width, extremes, sums), plans
(their JSON), mAP.
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from refquant import cli, darknet, distributed, ptq
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc, read_names
from refquant.demo import run_experiment
from refquant.demo.experiment import (
    QUICK,
    Settings,
    head_outputs,
    letterboxed_inputs,
    paired_head_outputs,
    region_detections,
)
from refquant.detection.evaluate import evaluate, shipped_model
from refquant.folding import folded_cfg_text
from refquant.integer.network import IntegerNetwork

CFG, WEIGHTS, NAMES = shipped_model(".cfg"), shipped_model(".weights"), shipped_model(".names")

CALIBRATION_BATCH = 3
"""Images per calibration batch: 10 train images make batches of 3, 3, 3 and 1."""


# -- the merge of histograms (no cluster) -------------------------------------------------------

def batches_of_every_kind(rng):
    """Batches whose histograms need the merge's every rule: a first batch whose initial width is
    twice the finest, ranges that force coarsening, one-value batches (0 and not), a batch after
    a one-value batch that widens it, negative and positive values."""
    return [np.array([0.0, 4095.0 / 2048.0 * 0.5, 1e-3]), rng.normal(0.0, 0.3, 500), np.full(40, 0.75),
            np.full(7, 0.0), rng.normal(2.0, 5.0, 800), np.full(3, -13.5), rng.laplace(0.0, 40.0, 300),
            np.linspace(-0.01, 0.01, 50)]


def as_data(histogram):
    """Every field of a histogram, with its counts as a list (for ==, bit for bit)."""
    data = histogram.to_dict()
    data["counts"] = list(data["counts"])
    return data


@pytest.mark.parametrize("seed", range(6))
def test_merge_of_parts_in_any_order_and_grouping_is_the_sequential_histogram(seed):
    """Truth: add() over the batches in order, from batch 0 (today's calibration)."""
    rng = np.random.default_rng(seed)
    batches = batches_of_every_kind(rng)
    order = rng.permutation(len(batches))
    batches = [batches[k] for k in order] if seed else batches  # seed 0: the listed order
    sequential = ptq.ActivationHistogram(64)
    for batch in batches:
        sequential.add(batch)
    parts = [ptq.ActivationHistogram(64, number).add(batch) for number, batch in enumerate(batches)]
    shuffled = [parts[k] for k in rng.permutation(len(parts))]
    assert as_data(shuffled[0].merge(*shuffled[1:])) == as_data(sequential)
    # grouped: consecutive runs added in order from their first batch, the runs merged in any order
    cuts = sorted(rng.choice(np.arange(1, len(batches)), size=3, replace=False))
    runs = []
    for start, stop in zip([0, *cuts], [*cuts, len(batches)]):
        run = ptq.ActivationHistogram(64, start)
        for batch in batches[start:stop]:
            run.add(batch)
        runs.append(run)
    first, *rest = [runs[k] for k in rng.permutation(len(runs))]
    assert as_data(first.merge(*rest)) == as_data(sequential)
    # merging merged parts again (associativity)
    left = parts[0].merge(*parts[1:4])
    right = parts[4].merge(*parts[5:])
    assert as_data(right.merge(left)) == as_data(sequential)
    rebuilt = ptq.ActivationHistogram.from_dict(json.loads(json.dumps(sequential.to_dict())))
    assert as_data(rebuilt) == as_data(sequential)


def test_sums_do_not_depend_on_the_blas_threads():
    """Truth: the same histogram counted with the BLAS on 1 thread and on 2 (refquant.threads
    changes the count with the machine's load; a worker may have fewer threads than the client)."""
    from threadpoolctl import threadpool_limits
    values = np.random.default_rng(3).normal(0.0, 3.0, 1_000_003)
    found = []
    for count in (1, 2):
        with threadpool_limits(count, user_api="blas"):
            found.append(as_data(ptq.ActivationHistogram().add(values)))
    assert found[0] == found[1]


def test_merge_refuses_a_batch_twice_and_other_bins():
    part = ptq.ActivationHistogram(64, 2).add(np.arange(5.0))
    with pytest.raises(ValueError, match=r"batches \[2\] are counted by more than one part"):
        part.merge(ptq.ActivationHistogram(64, 2).add(np.ones(3)))
    with pytest.raises(ValueError, match="max_bins=64"):
        part.merge(ptq.ActivationHistogram(128, 3).add(np.ones(3)))


def test_density_dict_round_trip_is_exact():
    """Truth: the model itself. Dividing the weights by their sum again moves the last bit of
    about one model in ten: from_dict must not."""
    from refquant.density.pgm import PiecewiseGaussian
    rng = np.random.default_rng(5)
    for _ in range(300):
        pieces = int(rng.integers(1, 7))
        weights = rng.random(pieces)
        model = PiecewiseGaussian(np.sort(rng.normal(size=pieces - 1)) * 3, weights / weights.sum(),
                                  rng.normal(size=pieces), rng.random(pieces) + 0.1)
        again = PiecewiseGaussian.from_dict(json.loads(json.dumps(model.to_dict())))
        for name in ("breakpoints", "weights", "means", "stds"):
            assert np.array_equal(getattr(again, name), getattr(model, name))


# -- the in-process run and the clusters --------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small shapes tree at the shipped model's input size (128 px): 10 train and 10 test images."""
    return shapes_dataset(tmp_path_factory.mktemp("distributed") / "shapes", seed=23, size=128, train=10, val=0,
                          test=10, progress=False)


@pytest.fixture(scope="module")
def reference(tree):
    """The in-process run: detections, calibration statistics, plans, integer network."""
    names = read_names(NAMES)
    net = darknet.load(CFG, WEIGHTS)
    test, train = load_voc(tree, "test", names), load_voc(tree, "train", names)
    inputs = letterboxed_inputs(test, 128, 128, progress=False)
    outputs = head_outputs(lambda x: net.forward(x, training=False), inputs, 4, "FP32", progress=False)
    statistics = ptq.calibration_statistics(net, letterboxed_inputs(train, 128, 128, progress=False),
                                            batch_size=CALIBRATION_BATCH, progress=False)
    plans = {key: ptq.quantization_plan(statistics, key[1], key[1], key[0]) for key in PLANS}
    integer = IntegerNetwork(statistics.net, plans[("pgm", 4)])
    integer_outputs, simulated = paired_head_outputs(integer, integer.simulation(), inputs, 4, "PGM", progress=False)
    ap, found = evaluate(net, test, names, progress=False)
    return {"names": names, "net": net, "test": test, "train": train, "statistics": statistics, "plans": plans,
            "float": region_detections(outputs, test, net, names), "ap": ap, "found": found,
            "integer": region_detections(integer_outputs, test, statistics.net, names),
            "simulated": region_detections(simulated, test, statistics.net, names)}


PLANS = [("pgm", 4), ("pgm", 6), ("pgm-paper", 4), ("aciq", 6), ("percentile", 8)]
"""(method, bits) of the plans compared; pgm twice, so that the second reuses the fits of the first."""


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"{n}-workers")
def client(request):
    """A local cluster of 1, 2 and 3 worker processes (one task at a time, their share of the cores
    for Numba and the BLAS), closed after its tests."""
    with distributed.connect(workers=request.param) as client:
        client.wait_for_workers(request.param, timeout=60)
        yield client


@pytest.mark.slow
def test_workers_share_the_cores(client):
    """Truth: the cores this process may use, split between the workers (at least one each)."""
    workers = len(client.nthreads())
    assert set(client.nthreads().values()) == {1}
    cores = len(os.sched_getaffinity(0))
    assert set(client.run(lambda: os.environ["REFQUANT_THREADS"]).values()) == {str(max(1, cores // workers))}


def float_files(net):
    return distributed.network_files(net, Path(CFG).read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("images_per_chunk", [4, 3])
def test_evaluation_equals_the_in_process_run(client, reference, images_per_chunk):
    names, test = reference["names"], reference["test"]
    assert distributed.float_detections(client, float_files(reference["net"]), test, names, 4, images_per_chunk,
                                        progress=False) == reference["float"]
    folded = reference["statistics"].net
    files = distributed.network_files(folded, folded_cfg_text(CFG))
    integer, simulated = distributed.quantized_detections(client, files, reference["plans"][("pgm", 4)], test, names,
                                                          4, "PGM 4-bit", images_per_chunk, progress=False)
    assert integer == reference["integer"] and simulated == reference["simulated"]
    ap, found = distributed.evaluate(client, float_files(reference["net"]), reference["net"], test, names,
                                     thresh=0.005, nms=0.45, images_per_chunk=images_per_chunk, progress=False)
    assert found == reference["found"]
    assert json.dumps(ap) == json.dumps(reference["ap"])  # nan for a class without objects, too


@pytest.mark.slow
@pytest.mark.parametrize("batches_per_chunk", [1, 2])
def test_calibration_and_plans_equal_the_in_process_run(client, reference, batches_per_chunk):
    net, statistics = reference["net"], reference["statistics"]
    found = distributed.calibration_statistics(client, net, float_files(net), reference["train"],
                                               batch_size=CALIBRATION_BATCH, progress=False,
                                               batches_per_chunk=batches_per_chunk)
    assert sorted(found.histograms) == sorted(statistics.histograms)
    for index, histogram in statistics.histograms.items():
        assert as_data(found.histograms[index]) == as_data(histogram), f"layer {index}"
    files = distributed.network_files(found.net, folded_cfg_text(CFG))
    for method, bits in PLANS:
        plan = distributed.quantization_plan(client, found, files, bits, bits, method)
        assert json.dumps(plan.to_dict()) == json.dumps(reference["plans"][(method, bits)].to_dict()), (method, bits)


@pytest.mark.slow
def test_a_killed_worker_changes_nothing_but_the_time(reference):
    """One of 2 workers is killed (SIGKILL) once the first chunk is done and others are running; its
    chunks run again elsewhere and the detections equal the in-process run's."""
    names, test = reference["names"], reference["test"]
    folded = reference["statistics"].net
    files = distributed.network_files(folded, folded_cfg_text(CFG))
    with distributed.connect(workers=2, numba_threads=1) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)
        killed = {}

        def finished(dask_scheduler):
            return sum(task.state == "memory" for task in dask_scheduler.tasks.values()
                       if str(task.key).startswith("quantized_detections_task"))

        def kill_a_busy_worker():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                busy = [worker for worker, keys in client.processing().items() if keys]
                done = client.run_on_scheduler(finished)
                if done >= 1 and busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.update(worker=busy[0], done=done)
                time.sleep(0.01)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        integer, simulated = distributed.quantized_detections(client, files, reference["plans"][("pgm", 4)],
                                                              test * 3, names, 4, "PGM 4-bit", images_per_chunk=1,
                                                              progress=False)  # 30 tasks: time to kill one
        killer.join(timeout=10)
        assert killed and 1 <= killed["done"] < 3 * len(test), f"the worker was not killed mid-run: {killed}"
        assert pids[killed["worker"]] not in client.run(os.getpid).values()
    assert integer == 3 * reference["integer"] and simulated == 3 * reference["simulated"]


# -- the command line -----------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_with_workers_prints_the_in_process_table(tree, capsys):
    arguments = ["eval", "--data", str(tree), "--names", str(NAMES), "--no-progress"]
    assert cli.main(arguments) == 0
    in_process = capsys.readouterr().out
    assert cli.main(arguments + ["--workers", "2"]) == 0
    assert capsys.readouterr().out == in_process


@pytest.mark.slow
def test_eval_with_a_scheduler_prints_the_in_process_table(client, tree, capsys):
    """``--scheduler`` connects to a running cluster (here the fixture's, by its address)."""
    arguments = ["eval", "--data", str(tree), "--names", str(NAMES), "--no-progress"]
    assert cli.main(arguments) == 0
    in_process = capsys.readouterr().out
    assert cli.main(arguments + ["--scheduler", client.scheduler.address]) == 0
    assert capsys.readouterr().out == in_process


@pytest.mark.slow
def test_demo_with_workers_writes_the_in_process_results(tree, tmp_path):
    """The quick demo on the small tree (4 bits, PGM and ACIQ, and QAT), in-process and on 2 workers:
    every row, every plan file and the QAT model's files equal."""
    settings = {"cfg": str(CFG), "weights": str(WEIGHTS), "names": str(NAMES), "data": str(tree), "quick": True,
                "progress": False, "bits": (4,), "methods": ("pgm", "aciq"), **QUICK}
    alone = run_experiment(Settings(out=str(tmp_path / "alone"), **settings))
    with distributed.connect(workers=2, numba_threads=1) as client:
        clustered = run_experiment(Settings(out=str(tmp_path / "cluster"), **settings), client)
    keys = ("name", "mAP", "integer_mAP", "model_bytes", "bops")
    assert [[row[k] for k in keys] for row in clustered["rows"]] == [[row[k] for k in keys] for row in alone["rows"]]
    assert clustered["fit_warnings"] == alone["fit_warnings"]
    written = sorted(path.relative_to(tmp_path / "alone") for path in (tmp_path / "alone").rglob("*")
                     if path.suffix in (".json", ".cfg", ".weights") and path.name != "results.json")
    assert any(path.parts[0] == "plans" for path in written) and any(path.suffix == ".weights" for path in written)
    for path in written:
        assert (tmp_path / "cluster" / path).read_bytes() == (tmp_path / "alone" / path).read_bytes(), path


@pytest.mark.parametrize("arguments, message", [
    (["--workers", "0"], "argument --workers: '0': expected an integer in [1, 1024]"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "argument --scheduler: not allowed with argument --workers"),
    (["--scheduler", ""], "argument --scheduler: '': expected a Dask scheduler address such as tcp://HOST:8786"),
    (["--scheduler", "tcp://host name:1"], "expected a Dask scheduler address"),
])
@pytest.mark.parametrize("command", ["eval", "demo"])
def test_bad_cluster_arguments_exit_2_with_one_line(command, arguments, message, capsys):
    assert cli.main([command, *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


def test_no_scheduler_at_the_address_exits_2_with_one_line(tree, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1)
    assert cli.main(["eval", "--data", str(tree), "--names", str(NAMES), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--scheduler: no Dask scheduler answered at tcp://127.0.0.1:9" in error, error


def test_without_dask_the_options_name_the_extra(tree, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    assert cli.main(["eval", "--data", str(tree), "--names", str(NAMES), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install refquant[dask]" in error, error


def test_the_core_does_not_import_dask():
    """Truth: sys.modules of a fresh interpreter after importing the package and the commands."""
    import subprocess
    code = ("import sys, refquant, refquant.cli.demo, refquant.cli.eval, refquant.distributed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
