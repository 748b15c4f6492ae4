"""Integer convolution speed: refquant.intconv against PyTorch's fbgemm, in one process.

Run:  python benchmarks/bench_intconv.py [--repeats 7] [--threads N]

For every 3x3 convolution of yolov2-tiny-voc at 416x416, batch 1 (plus the
1x1 head and a 128->256 layer at 52x52), it times

* torch: ``torch.ao.nn.quantized.Conv2d`` on the fbgemm engine, quint8 input,
  qint8 weights, float bias, quint8 output (its time includes requantization);
* refquant: ``conv2d_requantized`` (the int32 accumulators with their int32 bias, requantized to
  uint8 codes in place: the same work, and the integer network's call), and ``conv2d`` alone
  (int32 out); both take the uint8 codes and their zero point, as fbgemm does, and the weights
  packed once (``pack_weights``), as fbgemm packs its own,

with torch's thread count set to Numba's. Turns alternate between them (``_timing.best_times``)
and each figure is the minimum over the runs, of the wall time and of the process CPU time
(steadier when other work shares the machine). The ratio is refquant's wall time over fbgemm's
(lower is better); the target is at most 2 on every layer.
"""
import argparse

import numba
import numpy as np
import torch
from _machine import machine_line
from _timing import best_times

from refquant.integer.conv import conv2d, pack_weights
from refquant.integer.requantize import conv2d_requantized, quantize_bias, quantize_multiplier

# (input channels, output channels, input size, kernel): yolov2-tiny-voc.cfg's convolutions at 416x416.
TINY_YOLO_VOC_LAYERS = [
    (3, 16, 416, 3), (16, 32, 208, 3), (32, 64, 104, 3), (64, 128, 52, 3),
    (128, 256, 26, 3), (256, 512, 13, 3), (512, 1024, 13, 3), (1024, 1024, 13, 3),
    (1024, 125, 13, 1),
]
WIDE_LAYER = (128, 256, 52, 3)  # a wide, large map (not in the network)
TARGET_RATIO = 2.0  # refquant / fbgemm, on every layer


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
        # The codes as they are and their zero point, as fbgemm takes them (quint8, zero_point).
        return conv2d(x_codes, packed, 1, kernel // 2, bias=bias, x_range=(-zero_point_x, 255 - zero_point_x),
                      x_zero_point=zero_point_x)

    def layer():  # the int32 accumulators requantized in place (the integer network's call)
        return conv2d_requantized(x_codes, packed, 1, kernel // 2, bias_codes, multiplier, shift, multiplier, shift,
                                  zero_point_y, 0, 255, x_range=(-zero_point_x, 255 - zero_point_x),
                                  x_zero_point=zero_point_x)

    return layer, conv_only


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=numba.get_num_threads(),
                        help="threads for both (default: Numba's, i.e. all cores)")
    args = parser.parse_args()
    torch.backends.quantized.engine = "fbgemm"
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    layers = TINY_YOLO_VOC_LAYERS + [WIDE_LAYER]
    print(machine_line())
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; min of {args.repeats} "
          f"alternating turns of 3 runs; ratio = refquant / fbgemm (lower is better; target <= {TARGET_RATIO})")
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
        print_row(f"{channels}->{outputs} @ {size}x{size}, {kernel}x{kernel}", wall, cpu)
    print_row("yolov2-tiny-voc convs, sum", total_wall, total_cpu)


def print_row(name, wall, cpu):
    note = "" if wall[1] / wall[0] <= TARGET_RATIO else f"  above the target {TARGET_RATIO}"
    print(f"{name:>28} | {1e3 * wall[0]:15.2f} {1e3 * wall[1]:9.2f} {1e3 * wall[2]:9.2f} "
          f"{wall[1] / wall[0]:6.2f} | {1e3 * cpu[0]:14.2f} {1e3 * cpu[1]:9.2f} {cpu[1] / cpu[0]:6.2f}{note}")


if __name__ == "__main__":
    main()
