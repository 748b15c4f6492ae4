"""Whole-network integer inference: refquant's IntegerNetwork against PyTorch's fbgemm, in one process.

Run:  python benchmarks/bench_integer_network.py [--size 416] [--repeats 5] [--threads N]

yolov2-tiny-voc with random weights (random batch-norm statistics), an 8-bit min-max plan
calibrated on two random images, batch 1 at ``--size`` (416 by default). Timed, minimum over
the runs (wall and process CPU time):

* refquant integer: ``IntegerNetwork.run`` (uint8 input codes, Numba int32 convolutions,
  requantization with leaky ReLU fused, maxpool on codes, region head in float64);
* torch fbgemm: the same graph with ``torch.ao.nn.quantized`` modules built from the SAME
  integer parameters (qint8 weight codes and steps, the int32 bias as a float bias, quint8
  activations): Conv2d then quantized LeakyReLU to the layer's grid, quantized max_pool2d
  (Darknet's stride-1 pool as padding=1 and a crop), dequantization, then refquant's region head;
* for context, refquant's float32 engine (``Network.forward``) and the float32 torch equivalent.

torch's thread count is set to Numba's; turns of runs alternate (``_timing.best_times``). The
ratios are refquant integer over each peer (lower is better); the target is at most 1.0 against
refquant's own float32 engine, on the same input. fbgemm's conv needs its own pre-activation grid
before the quantized LeakyReLU (one more rounding than refquant's fused requantization), and its
AVX2 kernel can saturate 16-bit pair sums with 8-bit codes, so its codes differ from refquant's;
the SQNR line shows how closely the two networks agree on the head's input.
"""
import argparse
import os
import warnings

import numba
import numpy as np
import torch
from _machine import machine_line
from _timing import best_times

import refquant
from refquant import darknet, folding, ptq
from refquant.integer.measures import sqnr_db
from refquant.integer.network import IntegerNetwork
from refquant.testing import randomize_batchnorm

CFG = "yolov2-tiny-voc.cfg"


def random_network(seed=0):
    """yolov2-tiny-voc, float32, random weights and random batch-norm statistics."""
    net = darknet.load(os.path.join(os.path.dirname(refquant.__file__), "cfg", CFG), dtype=np.float32, seed=seed)
    return randomize_batchnorm(net, seed)


def torch_quantized_model(integer_network):
    """x (1, 3, H, W) float tensor -> dequantized input of the region head, on fbgemm."""
    torch.backends.quantized.engine = "fbgemm"
    plan, net = integer_network.plan, integer_network.net
    steps = []
    for index, layer in enumerate(net.layers):
        fixed = integer_network.fixed[index]
        if layer.type == "convolutional":
            conv = torch.ao.nn.quantized.Conv2d(layer.params["weights"].shape[1], layer.filters, layer.size,
                                                stride=layer.stride, padding=layer.padding)
            weight = torch._make_per_tensor_quantized_tensor(torch.from_numpy(fixed.weight_codes),
                                                             fixed.weight_grid.step, 0)
            bias = fixed.bias.astype(np.float64) * fixed.input_grid.step * fixed.weight_grid.step
            conv.set_weight_bias(weight, torch.from_numpy(bias).float())
            out = fixed.output_grid
            if layer.activation == "leaky":
                # fbgemm has no fused leaky ReLU: the conv outputs on a pre-activation grid whose
                # interval is the leaky grid's with the negative side stretched tenfold.
                lo, hi = 10.0 * out.lo, out.hi
                conv.scale = (hi - lo) / 255.0
                conv.zero_point = int(round(-lo / conv.scale))
                steps.append(conv)
                steps.append(torch.ao.nn.quantized.LeakyReLU(out.step, out.zero_point, negative_slope=0.1))
            else:
                conv.scale, conv.zero_point = out.step, out.zero_point
                steps.append(conv)
        elif layer.type == "maxpool":
            if layer.stride == 1:
                steps.append(lambda q, size=layer.size: torch.nn.functional.max_pool2d(
                    q, size, 1, padding=1)[:, :, 1:, 1:].contiguous())
            else:
                steps.append(lambda q, size=layer.size, stride=layer.stride: torch.nn.functional.max_pool2d(
                    q, size, stride))
        elif layer.type != "region":
            raise ValueError(f"layer {index} [{layer.type}]: not in this benchmark's torch graph")

    def run(x):
        q = torch.quantize_per_tensor(x, plan.input.step, 0, torch.quint8)
        for step in steps:
            q = step(q)
        return q.dequantize()

    return run


def torch_float_model(net):
    """The float32 network in torch (batch norm folded), up to the region head's input."""
    folded = folding.fold_batchnorm(net)
    steps = []
    for layer in folded.layers:
        if layer.type == "convolutional":
            conv = torch.nn.Conv2d(layer.params["weights"].shape[1], layer.filters, layer.size,
                                   stride=layer.stride, padding=layer.padding)
            conv.weight.data = torch.from_numpy(layer.params["weights"].copy())
            conv.bias.data = torch.from_numpy(layer.params["biases"].copy())
            steps.append(conv)
            if layer.activation == "leaky":
                steps.append(torch.nn.LeakyReLU(0.1))
        elif layer.type == "maxpool":
            if layer.stride == 1:
                steps.append(lambda x, size=layer.size: torch.nn.functional.max_pool2d(
                    torch.nn.functional.pad(x, (0, 1, 0, 1), value=-float("inf")), size, 1))
            else:
                steps.append(lambda x, size=layer.size, stride=layer.stride: torch.nn.functional.max_pool2d(
                    x, size, stride))

    def run(x):
        with torch.no_grad():
            for step in steps:
                x = step(x)
        return x

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=numba.get_num_threads())
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch deprecates the quantized dtypes, not the kernels
    os.environ["REFQUANT_THREADS"] = str(args.threads)  # IntegerNetwork.run and Network.forward keep it
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    net = random_network()
    rng = np.random.default_rng(1)
    calibration = rng.random((2, 3, args.size, args.size)).astype(np.float32)
    plan = ptq.calibrate(net, calibration, 8, 8, method="minmax", batch_size=1, progress=False)
    integer_network = IntegerNetwork.build(net, plan)
    image = rng.random((1, 3, args.size, args.size)).astype(np.float32)
    head = integer_network.net.layers[-1]
    fbgemm = torch_quantized_model(integer_network)
    torch_float = torch_float_model(net)
    x = torch.from_numpy(image)

    def torch_quantized():
        return head.forward(fbgemm(x).numpy().astype(np.float64))

    def torch_float32():
        return head.forward(torch_float(x).numpy())

    functions = {
        "refquant integer (IntegerNetwork.run)": lambda: integer_network.run(image),
        "torch fbgemm quantized": torch_quantized,
        "refquant float32 engine": lambda: net.forward(image),
        "torch float32": torch_float32,
    }
    wall, cpu = best_times(list(functions.values()), args.repeats)
    print(machine_line())
    print(f"{CFG} at {args.size}x{args.size}, batch 1, 8-bit weights and activations; threads: numba "
          f"{numba.get_num_threads()}, torch {torch.get_num_threads()}; min of {args.repeats} alternating turns "
          f"of 3 runs")
    print(f"{'':>40} {'wall ms':>9} {'cpu ms':>9}")
    for (name, _), w, c in zip(functions.items(), wall, cpu):
        print(f"{name:>40} {1e3 * w:9.1f} {1e3 * c:9.1f}")
    print(f"ratio refquant integer / refquant float32 engine: wall {wall[0] / wall[2]:.2f}, cpu {cpu[0] / cpu[2]:.2f} "
          f"(target <= 1.0)")
    print(f"ratio refquant integer / torch fbgemm: wall {wall[0] / wall[1]:.2f}, cpu {cpu[0] / cpu[1]:.2f} "
          f"(lower is better)")
    print(f"ratio refquant integer / torch float32: wall {wall[0] / wall[3]:.2f}, cpu {cpu[0] / cpu[3]:.2f}")
    ours = integer_network.dequantized(integer_network.run(image))[-2]
    print(f"agreement on the head's input: SQNR of fbgemm's against refquant's integer network "
          f"{sqnr_db(ours, fbgemm(x).numpy()):.1f} dB; of refquant's integer network against the float "
          f"network {sqnr_db(net.forward(image, return_all=True)[-2], ours):.1f} dB")


if __name__ == "__main__":
    main()
