"""``refquant demo``: the paper's experiment end to end (issue 7).

Until the quantization-aware training and the integer network are wired together, the demo
runs what exists: it builds tiny YOLO (yolov2-tiny-voc) from Darknet's cfg, prints its layer
table, runs one forward pass on a random image, and says plainly what is not built yet.
"""
import os
import time

import numpy as np

NOT_BUILT = ("post-training quantization and QAT of the shipped model (refquant.qat), "
             "the integer network, and the mAP table of the paper's experiment")


def add_arguments(parser):
    parser.add_argument("--cfg", default=None,
                        help="Darknet cfg to build (default: the packaged yolov2-tiny-voc.cfg)")
    parser.add_argument("--size", type=int, default=416, help="input height and width (a multiple of 32)")


def run(args):
    from refquant import darknet
    cfg = args.cfg or os.path.join(os.path.dirname(__file__), "cfg", "yolov2-tiny-voc.cfg")
    net = darknet.load(cfg)
    print(net.summary())
    image = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    start = time.perf_counter()
    output = net.forward(image)
    print(f"forward pass at {args.size}x{args.size}: output {output.shape} "
          f"in {time.perf_counter() - start:.2f} s")
    print(f"Not built yet: {NOT_BUILT}.")
    return 0
