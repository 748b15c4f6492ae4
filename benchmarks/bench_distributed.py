"""One row of the paper's table at Pascal VOC scale, in this process and on local Dask clusters.

Run:  python benchmarks/bench_distributed.py [--images 4952] [--work bench-distributed]

A rehearsal that needs no download: a VOC-format shapes tree at 416x416 (``refquant.data.shapes``,
``--images`` test images, VOC 2007's 4,952 by default, and 16 train images to calibrate on) and
yolov2-tiny-voc (``refquant/cfg/yolov2-tiny-voc.cfg``, 20 classes) with random weights and random
batch-norm statistics: the timing needs no accuracy. The shapes' 7 classes are the first of the
head's 20 names. The region head's objectness biases are set to -6 so that, as with a trained
detector, few candidates pass Darknet's threshold 0.005 (random ones would all pass, and NMS over
thousands of boxes an image would dwarf the networks).

One table row is what ``refquant demo`` does for one quantized model (the 8-bit PGM plan here):
load and letterbox the test images, run the integer network and its float64 simulation on them
(head outputs compared bit for bit), decode both and compute both mAPs. It is timed

* in this process (refquant's threads on the free cores, ``refquant.threads``);
* on a local cluster of 1 and of 2 worker processes, each single-threaded (one Dask task at a time,
  ``REFQUANT_THREADS=1``), chunks of 50 images, the client computing the mAP;

each after a warm-up on a few images (Numba's cache loaded, the networks built on each worker). The
scaling efficiency is the 1-worker time over the 2-worker time (target >= 1.7 on 2 cores); as other
jobs take cores from the workers, it is also given on free cores: each run's busiest worker's CPU
time (its process's, ``time.process_time``) plus the client's mAPs, the wall time the run would
take if every worker had a core to itself. The projection multiplies the 2-worker throughput of
this machine (measured, and on free cores) by N machines for the table's quantized rows over 4,952
images (QAT's training and the FP32 row not included). The machine
line, with the load average at the start, and the load average after each timing are printed:
on a machine shared with other jobs the figures are only as good as the cores that were free.
"""
import argparse
import json
import os
import time
from pathlib import Path

import refquant
from refquant import darknet, distributed, ptq
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import load_voc
from refquant.demo.experiment import (
    BITS,
    PTQ_METHODS,
    QAT_BITS,
    letterboxed_inputs,
    mean_average_precision,
    paired_head_outputs,
    percent_map,
)
from refquant.folding import folded_cfg_text
from refquant.integer.network import IntegerNetwork
from refquant.testing import randomize_batchnorm

CFG = Path(refquant.__file__).parent / "cfg" / "yolov2-tiny-voc.cfg"

VOC2007_TEST_IMAGES = 4952

SHAPES_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon")
"""The shapes data set's classes (refquant.data.shapes), the first of the head's 20 names."""

WARM_UP_IMAGES = 4

OBJECTNESS_BIAS = -6.0


def detector(seed=0):
    """yolov2-tiny-voc with random weights and batch-norm statistics, objectness biases at -6."""
    net = randomize_batchnorm(darknet.load(CFG, seed=seed), seed)
    head, last = net.layers[-1], net.layers[-2]
    entries = 4 + 1 + head.classes
    last.params["biases"][4::entries] = OBJECTNESS_BIAS  # channel n*(5+classes) + 4: anchor n's objectness
    return net


def names_for(net):
    """The head's class names: the shapes' 7, then placeholders (classes without objects: no AP)."""
    classes = net.layers[-1].classes
    return list(SHAPES_NAMES) + [f"unused{k}" for k in range(classes - len(SHAPES_NAMES))]


def in_process_row(integer, records, names, batch_size):
    """Seconds of one row in this process: letterbox, integer + simulation, both mAPs."""
    start = time.perf_counter()
    folded = integer.net
    inputs = letterboxed_inputs(records, folded.input_shape[2], folded.input_shape[1], progress=False)
    integer_outputs, simulated = paired_head_outputs(integer, integer.simulation(), inputs, batch_size, "row",
                                                     progress=False)
    mAP, _ = mean_average_precision(simulated, records, folded, names)
    integer_mAP, _ = mean_average_precision(integer_outputs, records, folded, names)
    assert mAP == integer_mAP
    return time.perf_counter() - start, mAP


def cluster_row(client, files, plan, records, names, batch_size):
    """One row on the cluster, the same work in chunks of ``batch_size`` images a task: ``(wall
    seconds, mAP, seconds of the client's mAPs, {worker: CPU seconds its process spent})``."""
    cpu = client.run(time.process_time)
    start = time.perf_counter()
    integer_found, found = distributed.quantized_detections(client, files, plan, records, names, batch_size, "row",
                                                            images_per_chunk=batch_size, progress=False)
    scoring = time.perf_counter()
    mAP, integer_mAP = percent_map(found, records), percent_map(integer_found, records)
    assert mAP == integer_mAP
    end = time.perf_counter()
    spent = {worker: seconds - cpu.get(worker, 0.0) for worker, seconds in client.run(time.process_time).items()}
    return end - start, mAP, end - scoring, spent


def load_average():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=VOC2007_TEST_IMAGES,
                        help=f"test images (default {VOC2007_TEST_IMAGES}, VOC 2007's test set)")
    parser.add_argument("--work", default="bench-distributed", help="folder of the shapes tree (kept; reused)")
    parser.add_argument("--batch", type=int, default=50, help="images per batch and per task (default 50, the demo's)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.images < 1 or args.batch < 1:
        parser.error("--images and --batch must be >= 1")
    from _machine import machine_line  # here, not at the top: tests import this file without benchmarks/ on the path
    print(machine_line())
    root = shapes_dataset(Path(args.work) / f"shapes-416px-{args.images}", seed=4952, size=416, train=16, val=0,
                          test=args.images, progress=True)
    net = detector()
    names = names_for(net)
    records = load_voc(root, "test", names)
    calibration = letterboxed_inputs(load_voc(root, "train", names), 416, 416, progress=False)
    statistics = ptq.calibration_statistics(net, calibration, batch_size=16, progress=False)
    plan = ptq.quantization_plan(statistics, 8, 8, "pgm")
    integer = IntegerNetwork(statistics.net, plan)
    files = distributed.network_files(statistics.net, folded_cfg_text(CFG))
    print(f"yolov2-tiny-voc (random weights) at 416x416, 8-bit PGM plan; one table row over {len(records)} "
          f"shapes test images, batches of {args.batch}")

    in_process_row(integer, records[:WARM_UP_IMAGES], names, args.batch)
    seconds, free_cores = {}, {}
    seconds["in-process"], reference = in_process_row(integer, records, names, args.batch)
    print(f"  in this process ({refquant.threads.current()} threads): {seconds['in-process']:8.1f} s  "
          f"(mAP {reference:.2f}; {load_average()})")
    for workers in (1, 2):
        with distributed.connect(workers=workers, numba_threads=1) as client:
            client.wait_for_workers(workers, timeout=120)
            cluster_row(client, files, plan, records[:WARM_UP_IMAGES * workers], names, WARM_UP_IMAGES)  # a chunk each
            key = f"{workers} worker{'s' if workers > 1 else ''}"
            seconds[key], mAP, scoring, spent = cluster_row(client, files, plan, records, names, args.batch)
        if mAP != reference:
            raise AssertionError(f"{key}: mAP {mAP!r} differs from the in-process run's {reference!r}")
        # on free cores the row would take the busiest worker's CPU time, then the client's mAPs
        free_cores[key] = max(spent.values()) + scoring
        print(f"  local cluster, {key} x 1 thread: {seconds[key]:8.1f} s  (mAP equal; workers' CPU "
              f"{' + '.join(f'{t:.1f}' for t in spent.values())} s, client's mAPs {scoring:.1f} s; {load_average()})")
    efficiency = seconds["1 worker"] / seconds["2 workers"]
    print(f"scaling, 1 worker / 2 workers: {efficiency:.2f}x wall time (target >= 1.7)")
    free_efficiency = free_cores["1 worker"] / free_cores["2 workers"]
    print(f"scaling on free cores (busiest worker's CPU time + the client's mAPs, 1 worker / 2 workers): "
          f"{free_efficiency:.2f}x")
    rows = len(PTQ_METHODS) * len(BITS) + len(QAT_BITS)
    table = {kind: rows * row_seconds["2 workers"] / len(records) * VOC2007_TEST_IMAGES
             for kind, row_seconds in (("measured", seconds), ("free cores", free_cores))}
    print(f"projected: the table's {rows} quantized rows over {VOC2007_TEST_IMAGES} images, 2 workers a machine "
          f"like this one (QAT training and the FP32 row not included), minutes measured / on free cores:")
    projection = {machines: {kind: total / machines / 60 for kind, total in table.items()}
                  for machines in (1, 2, 4, 8, 16)}
    for machines, minutes in projection.items():
        print(f"  {machines:3d} machine{'s' if machines > 1 else ' '}: {minutes['measured']:7.1f} / "
              f"{minutes['free cores']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(records), "seconds": seconds, "efficiency": efficiency,
                                               "free_core_seconds": free_cores, "free_core_efficiency": free_efficiency,
                                               "projected_minutes": projection},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
