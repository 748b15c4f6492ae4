"""Benchmark of the float engine: yolov2-tiny-voc inference and one training step.

    python benchmarks/bench_engine.py [--threads N] [--size 416] [--batch 1] [--repeats 10]

Prints, in one run, for inference at size x size (batch 1 by default) the time of
refquant, of PyTorch eager (the same network built from torch.nn layers with the same
weights, torch.set_num_threads(N)) and of OpenCV's Darknet importer (cv2.setNumThreads(N)),
then one training step (forward with batch statistics + backward to the input and all
parameters) for refquant and torch, with the ratios refquant / peer and each one's peak
memory. refquant runs with N threads for both OpenBLAS and Numba (set NUMBA_THREADING_LAYER
to choose Numba's thread pool; the run prints the one used).

Each framework runs in its own subprocess so that the peak resident memory (ru_maxrss)
is its own; times are the best of --repeats runs after two warm-up runs (the least
disturbed by other processes on a shared machine), both wall-clock and process CPU time
(all threads; it includes the time idle threads spend spinning). Before timing,
the script checks that torch and refquant compute the same outputs (the ratio compares
equal work).
"""
import argparse
import json
import os
import subprocess
import sys

from _machine import machine_line, subprocess_environment

CFG = os.path.join(os.path.dirname(__file__), "..", "refquant", "cfg", "yolov2-tiny-voc.cfg")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", choices=["refquant", "torch", "opencv"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def best_time(function, repeats):
    """(best wall-clock seconds, best process CPU seconds) over ``repeats`` runs after 2 warm-ups."""
    import time

    for _ in range(2):
        function()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(args):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)
    dout = rng.normal(size=(args.batch, 125, args.size // 32, args.size // 32)).astype(np.float32)
    return x, dout


def run_refquant(args):
    import tracemalloc

    import numba

    from refquant import darknet

    numba.set_num_threads(args.threads)
    net = darknet.load(CFG, args.weights)
    x, dout = inputs(args)
    result = {"inference": best_time(lambda: net.forward(x), args.repeats)}
    result["output"] = net.forward(x).ravel()[:2000].tolist()  # before training moves the rolling statistics
    tracemalloc.start()
    net.forward(x)
    result["traced_inference"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    def step():
        net.forward(x, training=True)
        net.backward(dout)

    result["training"] = best_time(step, max(3, args.repeats // 2))
    result["rss"] = peak_rss_mib()
    result["threading_layer"] = numba.threading_layer()
    tracemalloc.start()
    step()
    result["traced_training"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result


def torch_model(weights_path):
    """yolov2-tiny-voc from torch.nn layers, loaded with refquant's reading of the same file."""
    import torch
    import torch.nn as nn

    from refquant import darknet

    net = darknet.load(CFG, weights_path)
    layers = []
    for layer in net.layers:
        if layer.type == "convolutional":
            p = layer.params
            conv = nn.Conv2d(p["weights"].shape[1], layer.filters, layer.size, layer.stride, layer.padding,
                             bias=not layer.batch_normalize)
            conv.weight.data = torch.from_numpy(p["weights"].copy())
            layers.append(conv)
            if layer.batch_normalize:
                bn = nn.BatchNorm2d(layer.filters, eps=1e-5, momentum=0.01)
                bn.weight.data = torch.from_numpy(p["scales"].copy())
                bn.bias.data = torch.from_numpy(p["biases"].copy())
                bn.running_mean.data = torch.from_numpy(p["rolling_mean"].copy())
                bn.running_var.data = torch.from_numpy(p["rolling_variance"].copy())
                layers.append(bn)
            else:
                conv.bias.data = torch.from_numpy(p["biases"].copy())
            if layer.activation == "leaky":
                layers.append(nn.LeakyReLU(0.1))
        elif layer.type == "maxpool":
            # Darknet's implicit padding only changes the result of the size-2 stride-1 pool here
            # (at even sizes the stride-2 pools never reach it); the output check below confirms.
            if layer.stride == 1:
                before = layer.padding // 2
                layers.append(_PadMinusInf(before, layer.padding - before))
            layers.append(nn.MaxPool2d(layer.size, layer.stride))
        elif layer.type == "region":
            layers.append(_Region(layer.num, layer.entries))

    return nn.Sequential(*layers)


def _PadMinusInf(before, after):
    import torch.nn as nn
    import torch.nn.functional as F

    class PadMinusInf(nn.Module):
        def forward(self, x):
            return F.pad(x, (before, after, before, after), value=-float("inf"))

    return PadMinusInf()


def _Region(num, entries):
    import torch
    import torch.nn as nn

    class Region(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            v = x.view(n, num, entries, h, w)
            return torch.cat([torch.sigmoid(v[:, :, 0:2]), v[:, :, 2:4], torch.sigmoid(v[:, :, 4:5]),
                              torch.softmax(v[:, :, 5:], dim=2)], dim=2).view(n, c, h, w)

    return Region()


def run_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    model = torch_model(args.weights)
    x, dout = inputs(args)
    xt, doutt = torch.from_numpy(x), torch.from_numpy(dout)
    model.eval()
    with torch.no_grad():
        result = {"inference": best_time(lambda: model(xt), args.repeats)}
        output = model(xt).numpy().ravel()[:2000].tolist()
    model.train()
    xg = xt.clone().requires_grad_(True)

    def step():
        model.zero_grad(set_to_none=False)
        xg.grad = None
        model(xg).backward(doutt)

    result["training"] = best_time(step, max(3, args.repeats // 2))
    result["rss"] = peak_rss_mib()
    result["output"] = output
    return result


def run_opencv(args):
    import cv2

    cv2.setNumThreads(args.threads)
    net = cv2.dnn.readNetFromDarknet(CFG, args.weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    x, _ = inputs(args)

    def forward():
        net.setInput(x)
        return net.forward()

    return {"inference": best_time(forward, args.repeats), "rss": peak_rss_mib()}


def child(args):
    runner = {"refquant": run_refquant, "torch": run_torch, "opencv": run_opencv}[args.only]
    print(json.dumps(runner(args)))


def main(argv=None):
    args = parse_args(argv)
    if args.only:
        return child(args)
    import tempfile

    import numpy as np

    from refquant import darknet

    rng = np.random.default_rng(1)
    net = darknet.load(CFG, seed=0)
    for layer in net.layers:  # trained-looking batch-norm statistics, so that activations stay O(1)
        for name, value in layer.params.items():
            if name == "rolling_variance":
                value[...] = rng.uniform(0.5, 2.0, value.shape)
            elif name in ("rolling_mean", "biases"):
                value[...] = rng.normal(0, 0.1, value.shape)
    weights = os.path.join(tempfile.mkdtemp(), "yolov2-tiny-voc.weights")
    darknet.save_weights(net, weights)

    # REFQUANT_THREADS: refquant's pools stay at N (refquant.threads would size them to the free cores)
    env = subprocess_environment(OPENBLAS_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads),
                                 OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                                 REFQUANT_THREADS=str(args.threads))
    results = {}
    for name in ("refquant", "torch", "opencv"):
        command = [sys.executable, __file__, "--only", name, "--weights", weights, "--threads", str(args.threads),
                   "--size", str(args.size), "--batch", str(args.batch), "--repeats", str(args.repeats)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])

    ours, theirs = np.array(results["refquant"]["output"]), np.array(results["torch"]["output"])
    agreement = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    r, t, o = results["refquant"], results["torch"], results["opencv"]
    print(machine_line())
    print(f"yolov2-tiny-voc, input {args.batch} x 3 x {args.size} x {args.size}, {args.threads} threads "
          f"(Numba threading layer {r['threading_layer']}; refquant vs torch outputs agree to "
          f"{agreement:.1e} relative)")
    print(f"{'':26s}{'refquant':>10s}{'torch':>10s}{'opencv':>10s}{'refquant/torch':>16s}{'refquant/opencv':>17s}")
    for label, key, index in (("inference, wall (ms)", "inference", 0), ("inference, CPU (ms)", "inference", 1),
                              ("training step, wall (ms)", "training", 0), ("training step, CPU (ms)", "training", 1)):
        ours, torch_value = r[key][index], t[key][index]
        opencv = f"{1e3 * o[key][index]:10.1f}" if key in o else f"{'-':>10s}"
        versus_opencv = f"{ours / o[key][index]:17.2f}" if key in o else f"{'-':>17s}"
        print(f"{label:26s}{1e3 * ours:10.1f}{1e3 * torch_value:10.1f}{opencv}{ours / torch_value:16.2f}{versus_opencv}")
    print(f"{'peak RSS (MiB)':26s}{r['rss']:10.0f}{t['rss']:10.0f}{o['rss']:10.0f}")
    print(f"refquant numpy allocations (tracemalloc peak): inference {r['traced_inference']:.0f} MiB, "
          f"training step {r['traced_training']:.0f} MiB")


if __name__ == "__main__":
    main()
