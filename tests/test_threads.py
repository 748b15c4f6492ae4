"""refquant.threads: the thread pools sized to the free cores or to REFQUANT_THREADS.

Truths: the values set by hand in the environment and in monkeypatched counts of the machine;
Numba's and threadpoolctl's own reports of the pools' sizes; the kernel's /proc for this
process's own threads. No timing: benchmarks/bench_sharing.py measures the speed.
"""
import os
import threading
import time

import numba
import pytest
from threadpoolctl import threadpool_info

from refquant import threads


@pytest.fixture
def restore_threads():
    """Numba's and the BLAS's counts as they were, and a fresh look at the machine after the test."""
    numba_threads = numba.get_num_threads()
    yield
    numba.set_num_threads(numba_threads)
    threads._set_blas_threads(numba_threads)
    threads._fitted.update(at=-float("inf"), threads=None)


def blas_threads():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_environment_variable_sets_both_pools(monkeypatch, restore_threads):
    """Truth: Numba's get_num_threads and threadpoolctl's report, after REFQUANT_THREADS=1."""
    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, "1")
    assert threads.fit(force=True) == 1
    assert numba.get_num_threads() == 1
    assert set(blas_threads()) <= {1}


def test_free_cores_are_the_usable_ones_less_the_others_running(monkeypatch, restore_threads):
    """Truth: hand-set counts: 2 usable cores with 1 other task running leave 1; 3 others leave 1
    (never 0); none leave both; a request above Numba's pool is capped at the pool."""
    monkeypatch.delenv(threads.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    for others, expected in [(1, 1), (3, 1), (0, 2)]:
        monkeypatch.setattr(threads, "others_running", lambda others=others: others)
        assert threads.free_cores() == expected
        assert threads.fit(force=True) == min(expected, numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == min(expected, numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, str(numba.config.NUMBA_NUM_THREADS + 5))
    assert threads.fit(force=True) == numba.config.NUMBA_NUM_THREADS


def test_a_look_at_the_machine_at_most_once_a_second(monkeypatch, restore_threads):
    """Truth: a counter of the looks: two fits in a row look once; a forced one looks again."""
    monkeypatch.delenv(threads.ENVIRONMENT_VARIABLE, raising=False)
    looks = []
    monkeypatch.setattr(threads, "free_cores", lambda: looks.append(1) or 1)
    threads.fit(force=True)
    threads.fit()
    assert len(looks) == 1
    threads.fit(force=True)
    assert len(looks) == 2


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_bad_environment_value_names_the_variable(monkeypatch, text):
    """Truth: the value written by hand, which is not a positive integer."""
    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, text)
    with pytest.raises(ValueError, match=threads.ENVIRONMENT_VARIABLE):
        threads.requested_threads()


@numba.njit(nogil=True)
def spin(iterations):
    """Busy work without the GIL (a few tenths of a second for 10**8 iterations)."""
    value = 0.0
    for index in range(iterations):
        value = value * 0.999999 + index
    return value


def test_own_running_threads_counts_a_busy_thread_of_this_process():
    """Truth: a thread of this process busy on the CPU without the GIL (state R in /proc/self/task)
    is counted beside the caller, so that it is not taken for another process's work."""
    if not os.path.exists("/proc/self/task"):
        assert threads._own_running_threads() == 1 and threads.others_running() == 0
        return
    spin(10)  # compiled before the thread starts
    spinner = threading.Thread(target=spin, args=(3 * 10**8,))
    spinner.start()
    try:
        seen = 0
        for _ in range(500):
            seen = max(seen, threads._own_running_threads())
            if seen >= 2:
                break
            time.sleep(0.001)
        assert seen >= 2
    finally:
        spinner.join()
    assert threads._own_running_threads() >= 1
    assert threads.others_running() >= 0


def test_for_each_shares_out_the_products_as_a_loop_computes_them(monkeypatch, restore_threads):
    """Truth: a plain loop of the same matrix products (one BLAS call per image, the BLAS at the
    fitted count) and the same convolution forward/backward run with REFQUANT_THREADS=1: equal bit
    for bit on 2 threads, with the weight gradient's products all at once or in groups of images;
    inside the calls the BLAS runs one thread, and its count comes back after."""
    import numpy as np

    from refquant.yolo import convolutional
    from refquant.yolo.convolutional import ConvolutionalLayer

    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 37, 301)).astype(np.float32)
    b = rng.normal(size=(9, 301, 129)).astype(np.float32)

    def products_and_convolution():
        draws = np.random.default_rng(2)
        out = np.empty((9, 37, 129), np.float32)
        inside = []

        def product(n):
            inside.append(blas_threads())
            np.matmul(a[n], b[n], out=out[n])

        threads.for_each(product, 9)
        layer = ConvolutionalLayer(filters=12, size=3, pad=1, batch_normalize=1, activation="leaky")
        layer.build((5, 17, 19), rng=np.random.default_rng(1))
        x = draws.normal(size=(6, 5, 17, 19)).astype(np.float32)
        y = layer.forward(x, training=True)
        dx = layer.backward(draws.normal(size=y.shape).astype(np.float32))
        return [out, y, dx, *layer.grads.values()], inside

    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, "1")
    threads.fit(force=True)
    loop, _ = products_and_convolution()
    assert np.array_equal(loop[0], np.matmul(a, b))
    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, "2")
    if threads.fit(force=True) < 2 or not threads._blas_libraries():
        pytest.skip("needs Numba's pool of 2 threads and threadpoolctl")
    shared, inside = products_and_convolution()
    assert all(np.array_equal(p, q) and p.dtype == q.dtype for p, q in zip(loop, shared))
    # the weight gradient's products in groups of 3 images (a scratch of 3 of them)
    monkeypatch.setattr(convolutional, "PRODUCTS_BYTES", 3 * 12 * 5 * 9 * 4)
    grouped, _ = products_and_convolution()
    assert all(np.array_equal(p, q) and p.dtype == q.dtype for p, q in zip(loop, grouped))
    assert all(set(counts) <= {1} for counts in inside)
    assert set(blas_threads()) <= {2}


def test_for_each_reraises_after_every_call_has_returned(monkeypatch, restore_threads):
    """Truth: the index that raises, set by hand; the calls seen before the error returned."""
    monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, "2")
    threads.fit(force=True)
    started, finished = [], []

    def call(index):
        started.append(index)
        if index == 3:
            raise KeyError(index)
        time.sleep(0.01)
        finished.append(index)

    with pytest.raises(KeyError):
        threads.for_each(call, 50)
    assert len(started) == len(finished) + 1 and len(started) < 50


THREADING_PROBE = """
import json, os, numba, numpy as np
import refquant
@numba.njit(parallel=True)
def double(a):
    for i in numba.prange(a.size):
        a[i] *= 2
double(np.ones(8))
print(json.dumps({"layer": numba.threading_layer(), "spin": os.environ.get("GOMP_SPINCOUNT"),
                  "set": refquant.ENVIRONMENT_SET}))
"""


@pytest.mark.parametrize("environment,layer,spin,recorded", [
    ({}, "omp", "10000", ["GOMP_SPINCOUNT"]),                    # refquant's defaults
    ({"GOMP_SPINCOUNT": "500"}, "omp", "500", []),                # the user's spin count wins
    ({"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue", None, []),  # the user's layer wins, nothing set
])
def test_threading_layer_and_spin_count(environment, layer, spin, recorded):
    """Truth: Numba's own report of the layer that ran a parallel loop (numba.threading_layer()) and
    the environment a fresh interpreter sees after importing refquant. OpenMP is refquant's choice
    where Numba can load it (here it can: libgomp is on the machine); GOMP_SPINCOUNT is set only when
    neither it nor NUMBA_THREADING_LAYER was, and refquant.ENVIRONMENT_SET says what it set."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER")}
    env.update(environment)
    output = subprocess.run([sys.executable, "-c", THREADING_PROBE], env=env, check=True, capture_output=True,
                            text=True).stdout
    report = json.loads(output.strip().splitlines()[-1])
    assert report == {"layer": layer, "spin": spin, "set": recorded}
