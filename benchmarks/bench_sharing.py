"""Fair sharing: refquant's speed alone and beside one other CPU-bound process, in one run.

Run:  python benchmarks/bench_sharing.py [--size 416] [--runs 7]

Workloads (yolov2-tiny-voc, random weights, batch 1 at ``--size``): the integer network
(``IntegerNetwork.run``, 8-bit min-max plan), the float32 engine's inference
(``Network.forward``) and one float32 training step (forward with batch statistics and backward).

Each runs with its thread pools sized two ways: ``adaptive``, refquant's default
(``refquant.threads.fit``: the cores free at the time), and ``all cores`` (``REFQUANT_THREADS``
set to the usable cores: every pool on every core whatever else runs, the behaviour before the
pools were sized). For each, the median of ``--runs`` runs alone, then with a *hog* started beside
it (another Python process spinning on one core at the same priority) and given time to show in
the machine's run queue. The ratio is the median beside the hog over the median alone (target:
at most 2.5 for ``adaptive``; 2.0 is what losing one of 2 cores costs work that uses both); the
last column divides by the adaptive pools' median alone, the job's speed on its own.

The machine line says how busy the machine was; on a machine shared with other work the figures
are noisy (the "alone" runs may not be alone: the threads column says what each run chose).
"""
import argparse
import os
import subprocess
import sys
import time
import warnings

import numpy as np
from _machine import machine_line

from refquant import darknet, ptq, threads
from refquant.integer.network import IntegerNetwork
from refquant.testing import randomize_batchnorm

CFG = os.path.join(os.path.dirname(__file__), "..", "refquant", "cfg", "yolov2-tiny-voc.cfg")
TARGET_RATIO = 2.5
HOG = "while True: pass"


def workloads(size):
    """{name: function} of the three workloads, built and warmed up."""
    net = randomize_batchnorm(darknet.load(CFG, dtype=np.float32, seed=0), 0)
    rng = np.random.default_rng(1)
    image = rng.random((1, 3, size, size)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ptq.calibrate(net, rng.random((2, 3, size, size)).astype(np.float32), 8, 8, method="minmax",
                             batch_size=1, progress=False)
    integer = IntegerNetwork.build(net, plan)
    out = net.forward(image, training=True)
    dout = np.ones_like(out) * 1e-3

    def training_step():
        net.forward(image, training=True)
        net.backward(dout, input_gradient=False)

    functions = {"integer network inference": lambda: integer.run(image),
                 "float32 engine inference": lambda: net.forward(image),
                 "float32 training step": training_step}
    for function in functions.values():
        function()
    return functions


def median_time(function, runs):
    """(median wall seconds, the thread count the runs used)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    import numba
    return float(np.median(times)), numba.get_num_threads()


def measure(functions, runs, hog):
    """{name: (seconds, threads)} of every workload, with or without the hog running."""
    process = subprocess.Popen([sys.executable, "-c", HOG]) if hog else None
    try:
        if hog:
            time.sleep(1.5)  # the hog in the run queue; a refit happens within a second
        return {name: median_time(function, runs) for name, function in functions.items()}
    finally:
        if process is not None:
            process.kill()
            process.wait()
            time.sleep(1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(machine_line())
    functions = workloads(args.size)
    usable = threads.usable_cores()
    rows = []
    for mode, setting in (("adaptive", None), ("all cores", str(usable))):
        if setting is None:
            os.environ.pop(threads.ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[threads.ENVIRONMENT_VARIABLE] = setting
        threads.fit(force=True)
        alone = measure(functions, args.runs, hog=False)
        beside = measure(functions, args.runs, hog=True)
        rows += [(name, mode, alone[name], beside[name]) for name in functions]
    os.environ.pop(threads.ENVIRONMENT_VARIABLE, None)
    print(f"yolov2-tiny-voc at {args.size}x{args.size}, batch 1; median of {args.runs} runs; hog: one process "
          f"running `{HOG}`; ratio = beside the hog / alone (target <= {TARGET_RATIO} for adaptive)")
    print(f"{'workload':>28} {'threads':>10} | {'alone ms':>9} {'thr':>3} | {'beside hog ms':>13} {'thr':>3} | ratio "
          f"| beside hog / adaptive alone")
    best_alone = {name: alone[0] for name, mode, alone, _ in rows if mode == "adaptive"}
    for name, mode, (alone, alone_threads), (beside, beside_threads) in rows:
        note = "" if mode != "adaptive" or beside / alone <= TARGET_RATIO else "  above the target"
        print(f"{name:>28} {mode:>10} | {1e3 * alone:9.1f} {alone_threads:3d} | {1e3 * beside:13.1f} "
              f"{beside_threads:3d} | {beside / alone:5.2f} | {beside / best_alone[name]:5.2f}{note}")


if __name__ == "__main__":
    main()
