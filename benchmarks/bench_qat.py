"""Benchmark of quantization-aware training: the fake-quantization kernel and one QAT step.

    python benchmarks/bench_qat.py [--threads N] [--batch 16] [--repeats 10]

Two measurements, each against PyTorch in the same run (torch.set_num_threads(N); refquant with N
threads for OpenBLAS and Numba), each framework in its own subprocess:

1. Fake quantization of one training activation, forward and backward: a float32
   (batch, 16, 128, 128) tensor (the first layer's output of the shapes detector) on a 4-bit
   affine grid, then the straight-through gradient of a random dL/dy. refquant's training kernel
   (``UniformQuantizer.fake_with_mask`` then ``masked_gradient``), refquant's NumPy reference
   (``fake`` then ``fake_backward``) and ``torch.fake_quantize_per_tensor_affine`` with autograd.
   A power-of-two step, so that the forward values must be equal (checked before timing).
2. One QAT step of the shipped shapes detector (tiny YOLO v2 at 128x128, batch norm folded,
   4-bit weights and activations inside, 8-bit first and last layers, min-max plan): forward in
   training mode and backward of a random dL/d(head output) to every parameter.
   refquant's ``FakeQuantNetwork``; torch: the same folded network from ``torch.nn.functional``
   with ``fake_quantize_per_tensor_affine`` on the input, every weight and every convolution output,
   and the region head's activations. Their head outputs are compared before timing (they differ
   where a value lies within float32 rounding of a rounding tie: torch multiplies by a float32
   ``1/step``, refquant divides in float64).

Times are the best of --repeats runs after two warm-ups (wall clock and process CPU).
"""
import argparse
import json
import os
import subprocess
import sys

from _machine import machine_line, subprocess_environment
from bench_engine import _Region, best_time

FAKE_STEP, FAKE_ZERO_POINT, FAKE_BITS = 2.0 ** -4, 3, 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", choices=["refquant", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def activation_and_gradient(batch):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.4, (batch, 16, 128, 128)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    return x, dout


def images_and_head_gradient(batch):
    import numpy as np

    rng = np.random.default_rng(1)
    return (rng.random((batch, 3, 128, 128), dtype=np.float32),
            rng.normal(size=(batch, 60, 8, 8)).astype(np.float32) * 0.01)


def shipped_folded():
    from refquant import darknet, folding
    from refquant.detection.evaluate import shipped_model

    return folding.fold_batchnorm(darknet.load(shipped_model(".cfg"), shipped_model(".weights")))


def run_refquant(args):
    import numba

    from refquant import plan as plan_module
    from refquant import qat
    from refquant.quantizers.uniform import UniformQuantizer, code_range, masked_gradient

    numba.set_num_threads(args.threads)
    x, dout = activation_and_gradient(args.batch)
    grid = UniformQuantizer(FAKE_STEP, FAKE_ZERO_POINT, *code_range(FAKE_BITS, signed=False))
    result = {"fake_output": grid.fake_with_mask(x)[0].ravel()[::997].tolist()}
    result["fake_kernel"] = best_time(lambda: masked_gradient(grid.fake_with_mask(x)[1], dout), args.repeats)
    result["fake_reference"] = best_time(lambda: (grid.fake(x), grid.fake_backward(x, dout)), args.repeats)

    network = qat.FakeQuantNetwork(shipped_folded(), plan_module.QuantizationPlan.load(args.plan))
    images, head_gradient = images_and_head_gradient(args.batch)
    result["head_output"] = network.forward(images, training=True).ravel().tolist()

    def step():
        network.forward(images, training=True)
        network.backward(head_gradient, input_gradient=False)

    result["qat_step"] = best_time(step, args.repeats)
    result["threading_layer"] = numba.threading_layer()
    return result


def torch_qat_model(plan):
    """The folded shapes detector with the plan's fake quantizers, from torch.nn.functional."""
    import torch
    import torch.nn.functional as F

    from refquant import plan as plan_module


    folded = shipped_folded()
    grids = plan_module.output_grids(folded, plan)
    region = _Region(folded.layers[-1].num, folded.layers[-1].entries)
    params = []
    for layer in folded.layers:
        if layer.type == "convolutional":
            params.append(torch.nn.Parameter(torch.from_numpy(layer.params["weights"].copy())))
            params.append(torch.nn.Parameter(torch.from_numpy(layer.params["biases"].copy())))

    def fake(t, grid):
        return torch.fake_quantize_per_tensor_affine(t, grid.step, int(grid.zero_point), grid.qmin, grid.qmax)

    def forward(x):
        x = fake(x, plan.input)
        grid_in, k = plan.input, 0
        for index, layer in enumerate(folded.layers):
            if layer.type == "convolutional":
                weights, biases = params[k], params[k + 1]
                k += 2
                bias_step = grid_in.step * plan.weights[index].step  # the bias on the accumulator grid
                biases = biases + (torch.round(biases / bias_step) * bias_step - biases).detach()
                x = F.conv2d(x, fake(weights, plan.weights[index]), biases, layer.stride, layer.padding)
                if layer.activation == "leaky":
                    x = F.leaky_relu(x, 0.1)
                x = fake(x, grids[index])
                grid_in = grids[index]
            elif layer.type == "maxpool":
                x = F.max_pool2d(x, layer.size, layer.stride)
            elif layer.type == "region":
                x = region(x)
        return x

    return forward, params


def run_torch(args):
    import torch

    from refquant import plan as plan_module


    torch.set_num_threads(args.threads)
    x, dout = activation_and_gradient(args.batch)
    xt = torch.from_numpy(x).requires_grad_(True)
    doutt = torch.from_numpy(dout)
    qmin, qmax = 0, 2 ** FAKE_BITS - 1
    result = {"fake_output": torch.fake_quantize_per_tensor_affine(
        xt.detach(), FAKE_STEP, FAKE_ZERO_POINT, qmin, qmax).numpy().ravel()[::997].tolist()}

    def fake_step():
        xt.grad = None
        torch.fake_quantize_per_tensor_affine(xt, FAKE_STEP, FAKE_ZERO_POINT, qmin, qmax).backward(doutt)

    result["fake"] = best_time(fake_step, args.repeats)
    forward, params = torch_qat_model(plan_module.QuantizationPlan.load(args.plan))
    images, head_gradient = images_and_head_gradient(args.batch)
    images, head_gradient = torch.from_numpy(images), torch.from_numpy(head_gradient)
    with torch.no_grad():
        result["head_output"] = forward(images).numpy().ravel().tolist()

    def step():
        for p in params:
            p.grad = None
        forward(images).backward(head_gradient)

    result["qat_step"] = best_time(step, args.repeats)
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.only:
        print(json.dumps({"refquant": run_refquant, "torch": run_torch}[args.only](args)))
        return
    import tempfile
    import warnings

    import numpy as np

    from refquant import ptq


    folded = shipped_folded()
    calibration, _ = images_and_head_gradient(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ptq.calibrate(folded, calibration, 4, 4, method="minmax", batch_size=8, progress=False)
    plan_path = os.path.join(tempfile.mkdtemp(), "plan.json")
    plan.save(plan_path)

    # REFQUANT_THREADS: refquant's pools stay at N (refquant.threads would size them to the free cores)
    env = subprocess_environment(OPENBLAS_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads),
                                 OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                                 REFQUANT_THREADS=str(args.threads))
    results = {}
    for name in ("refquant", "torch"):
        command = [sys.executable, __file__, "--only", name, "--plan", plan_path, "--threads", str(args.threads),
                   "--batch", str(args.batch), "--repeats", str(args.repeats)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    r, t = results["refquant"], results["torch"]
    if r["fake_output"] != t["fake_output"]:
        raise SystemExit("fake quantization: refquant and torch differ on a power-of-two step")
    ours, theirs = np.array(r["head_output"]), np.array(t["head_output"])
    close = np.mean(np.abs(ours - theirs) <= 1e-4 + 1e-3 * np.abs(theirs))
    print(machine_line())
    print(f"{args.threads} threads (Numba threading layer {r['threading_layer']}); batch {args.batch}; "
          f"QAT head outputs of refquant and torch equal within 1e-3 relative for {100 * close:.1f} % of values")
    print(f"{'':52s}{'refquant':>10s}{'torch':>10s}{'refquant/torch':>16s}")
    rows = (("fake quantization fwd+bwd, kernel, wall (ms)", r["fake_kernel"][0], t["fake"][0]),
            ("fake quantization fwd+bwd, kernel, CPU (ms)", r["fake_kernel"][1], t["fake"][1]),
            ("fake quantization fwd+bwd, NumPy reference, wall (ms)", r["fake_reference"][0], t["fake"][0]),
            ("QAT step (forward + backward), wall (ms)", r["qat_step"][0], t["qat_step"][0]),
            ("QAT step (forward + backward), CPU (ms)", r["qat_step"][1], t["qat_step"][1]))
    for label, ours_time, torch_time in rows:
        print(f"{label:52s}{1e3 * ours_time:10.1f}{1e3 * torch_time:10.1f}{ours_time / torch_time:16.2f}")


if __name__ == "__main__":
    main()
