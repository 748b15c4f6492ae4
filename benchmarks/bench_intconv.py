"""Integer convolution speed: refquant.intconv against PyTorch's fbgemm, in one process.

Run:  python benchmarks/bench_intconv.py [--repeats 7] [--layers all|targets] [--threads N]

For every 3x3 convolution of yolov2-tiny-voc at 416x416, batch 1 (plus the
1x1 head and a 128->256 layer at 52x52), it times

* torch: ``torch.ao.nn.quantized.Conv2d`` on the fbgemm engine, quint8 input,
  qint8 weights, float bias, quint8 output (its time includes requantization);
* refquant: ``conv2d`` with its int32 bias + ``requantize`` to uint8 codes (the
  same work), and ``conv2d`` alone,

with torch's thread count set to Numba's. Runs alternate between the two and
each figure is the minimum over the repeats, of the wall time and of the
process CPU time (steadier when other work shares the machine). The ratio is
refquant's time over fbgemm's (lower is better).
"""
import argparse
import time

import numba
import numpy as np
import torch

from refquant.integer.conv import conv2d, pack_weights
from refquant.integer.requantize import quantize_bias, quantize_multiplier, requantize

# (input channels, output channels, input size, kernel): yolov2-tiny-voc.cfg's convolutions at 416x416.
TINY_YOLO_VOC_LAYERS = [
    (3, 16, 416, 3), (16, 32, 208, 3), (32, 64, 104, 3), (64, 128, 52, 3),
    (128, 256, 26, 3), (256, 512, 13, 3), (512, 1024, 13, 3), (1024, 1024, 13, 3),
    (1024, 125, 13, 1),
]
WIDE_LAYER = (128, 256, 52, 3)  # a wide, large map (not in the network)
TARGETS = {WIDE_LAYER, (512, 1024, 13, 3)}  # the shapes the README's targets name


def make_layer(channels, outputs, size, kernel, rng):
    """Random uint8 codes, int8 weights, a float bias and grids shared by both implementations."""
    x_codes = rng.integers(0, 256, (1, channels, size, size), dtype=np.int64).astype(np.uint8)
    w_codes = rng.integers(-127, 128, (outputs, channels, kernel, kernel), dtype=np.int64).astype(np.int8)
    step_x, zero_point_x = 0.02, 7
    step_w = 0.5 / 127 / np.sqrt(channels * kernel * kernel)
    bias = rng.normal(0, 0.1, outputs)
    step_y, zero_point_y = step_x * step_w * 127 * np.sqrt(channels * kernel * kernel) / 8, 128
    return x_codes, w_codes, bias, step_x, zero_point_x, step_w, step_y, zero_point_y


def torch_layer(x_codes, w_codes, bias, step_x, zero_point_x, step_w, step_y, zero_point_y):
    kernel = w_codes.shape[2]
    conv = torch.ao.nn.quantized.Conv2d(w_codes.shape[1], w_codes.shape[0], kernel, padding=kernel // 2)
    weight = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w_codes), step_w, 0)
    conv.set_weight_bias(weight, torch.from_numpy(bias).float())
    conv.scale, conv.zero_point = step_y, zero_point_y
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_codes), step_x, zero_point_x)
    return lambda: conv(x)


def refquant_layer(x_codes, w_codes, bias, step_x, zero_point_x, step_w, step_y, zero_point_y):
    kernel = w_codes.shape[2]
    bias_codes = quantize_bias(bias, step_x, step_w)
    multiplier, shift = quantize_multiplier(step_x * step_w / step_y)

    packed = pack_weights(w_codes)  # once, as fbgemm packs its weights once (set_weight_bias)

    def conv_only(bias=None):
        # Removing the zero point is part of the layer: fbgemm does it too.
        return conv2d(x_codes.astype(np.int16) - np.int16(zero_point_x), packed, 1, kernel // 2,
                      bias=bias, x_range=(-zero_point_x, 255 - zero_point_x))

    def layer():
        return requantize(conv_only(bias_codes), multiplier, shift, zero_point_y, 0, 255)

    return layer, conv_only


def best_times(functions, repeats):
    """Minimum wall time and minimum process CPU time of each function over ``repeats`` alternating rounds.

    CPU time (all threads of this process) is the steadier figure on a machine
    shared with other work; wall time is the latency a user sees.
    """
    for function in functions:
        function()  # warm-up (and Numba compilation)
    wall = [np.inf] * len(functions)
    cpu = [np.inf] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            function()
            wall[index] = min(wall[index], time.perf_counter() - wall_start)
            cpu[index] = min(cpu[index], time.process_time() - cpu_start)
    return np.array(wall), np.array(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", choices=["all", "targets"], default="all")
    parser.add_argument("--threads", type=int, default=numba.get_num_threads(),
                        help="threads for both (default: Numba's, i.e. all cores)")
    args = parser.parse_args()
    torch.backends.quantized.engine = "fbgemm"
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    layers = TINY_YOLO_VOC_LAYERS + [WIDE_LAYER]
    if args.layers == "targets":
        layers = [layer for layer in layers if layer in TARGETS]
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; "
          f"min of {args.repeats} alternating runs; ratio = refquant / fbgemm (lower is better)")
    print(f"{'layer (C->O @ HxW, k)':>28} | {'wall ms: fbgemm':>15} {'refquant':>9} {'conv only':>9} "
          f"{'ratio':>6} | {'cpu ms: fbgemm':>14} {'refquant':>9} {'ratio':>6}")
    rng = np.random.default_rng(0)
    total_wall, total_cpu = np.zeros(3), np.zeros(3)
    for channels, outputs, size, kernel in layers:
        setup = make_layer(channels, outputs, size, kernel, rng)
        layer, conv_only = refquant_layer(*setup)
        wall, cpu = best_times([torch_layer(*setup), layer, conv_only], args.repeats)
        if (channels, outputs, size, kernel) in TINY_YOLO_VOC_LAYERS:
            total_wall += wall
            total_cpu += cpu
        target = "  <- target: ratio <= 3" if (channels, outputs, size, kernel) in TARGETS else ""
        print_row(f"{channels}->{outputs} @ {size}x{size}, {kernel}x{kernel}", wall, cpu, target)
    if args.layers == "all":
        print_row("yolov2-tiny-voc convs, sum", total_wall, total_cpu, "")


def print_row(name, wall, cpu, note):
    print(f"{name:>28} | {1e3 * wall[0]:15.2f} {1e3 * wall[1]:9.2f} {1e3 * wall[2]:9.2f} "
          f"{wall[1] / wall[0]:6.2f} | {1e3 * cpu[0]:14.2f} {1e3 * cpu[1]:9.2f} {cpu[1] / cpu[0]:6.2f}{note}")


if __name__ == "__main__":
    main()
