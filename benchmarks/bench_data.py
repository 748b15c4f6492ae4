"""Data and decoding speed: refquant's Darknet image operations and region decoding against peers.

Run:  python benchmarks/bench_data.py [--repeats 7]

In one process, alternating the two sides, minimum over the repeats (robust to other
load on the machine); the ratio is refquant's time over the peer's (lower is better):

* resize: ``refquant.data.image.resize_image`` against
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=True)`` (the same
  arithmetic), a 500x375 image to 416x416 and a 160x160 one to 128x128;
* decode: ``refquant.decode`` (``region_boxes``, ``region_probabilities``,
  ``nms_sort``) against OpenCV's RegionLayer (``cv2.dnn``, the same work: decoding,
  thresholds and per-class NMS; its time includes an identity 1x1 convolution) on a
  13x13 head of 5 anchors and 20 classes, thresholds 0.005 and 0.5.

It also prints, without a peer, the time per image of training augmentation
(``augment_region``) and of drawing one shapes image (``render_image``).
"""
import argparse
import tempfile
import time

import cv2
import numpy as np
import torch
from _machine import machine_line
from scipy.special import expit, softmax

from refquant.data.augment import augment_region
from refquant.data.image import resize_image
from refquant.data.shapes import render_image
from refquant.detection.decode import nms_sort, region_boxes, region_probabilities
from refquant.testing import identity_head_files

ANCHORS = [1.08, 1.19, 3.42, 4.41, 6.63, 11.38, 9.42, 5.11, 16.62, 10.52]  # yolov2-tiny-voc.cfg


def best_of(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def compare(name, mine, peer, repeats):
    ours, theirs = [], []
    for _ in range(repeats):  # alternate, so that both sides see the same load
        ours.append(best_of(mine, 1))
        theirs.append(best_of(peer, 1))
    ours, theirs = min(ours), min(theirs)
    print(f"{name:42s} refquant {ours * 1e3:9.3f} ms   peer {theirs * 1e3:9.3f} ms   ratio {ours / theirs:6.2f}")


def opencv_region(logits, thresh, folder):
    _, channels, height, width = logits.shape
    region = (f"[region]\nanchors={','.join(map(str, ANCHORS))}\nclasses=20\ncoords=4\nnum=5\n"
              f"softmax=1\nthresh={thresh}\n")
    net = cv2.dnn.readNetFromDarknet(*identity_head_files(folder, region, channels, width, "r", height))
    blob = logits.astype(np.float32)

    def run():
        net.setInput(blob)
        return net.forward()
    return run


def refquant_region(logits, thresh):
    entries = logits.reshape(1, 5, 25, 13, 13).copy()
    entries[:, :, [0, 1, 4]] = expit(entries[:, :, [0, 1, 4]])
    entries[:, :, 5:] = softmax(entries[:, :, 5:], axis=2)
    head = entries.reshape(logits.shape)

    def run():
        boxes, objectness, class_prob = region_boxes(head, ANCHORS, 20)
        return nms_sort(boxes[0], region_probabilities(objectness[0], class_prob[0], thresh), nms=0.4)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(machine_line())
    print(f"one thread each; minimum of {repeats} alternating runs; ratio = refquant / peer")
    rng = np.random.default_rng(0)
    for (h, w), (th, tw) in [((375, 500), (416, 416)), ((160, 160), (128, 128))]:
        image = rng.random((3, h, w), dtype=np.float32)
        tensor = torch.from_numpy(image)[None]
        compare(f"resize {w}x{h} -> {tw}x{th} (torch)", lambda: resize_image(image, tw, th),
                lambda: torch.nn.functional.interpolate(tensor, size=(th, tw), mode="bilinear", align_corners=True),
                repeats)
    logits = rng.normal(0, 1.5, (1, 5 * 25, 13, 13))
    with tempfile.TemporaryDirectory() as folder:
        for thresh in (0.005, 0.5):
            compare(f"decode 13x13x5, 20 classes, thresh {thresh} (cv2)", refquant_region(logits, thresh),
                    opencv_region(logits, thresh, folder), repeats)
    image = rng.random((3, 160, 160), dtype=np.float32)
    truths = np.array([[0.5, 0.5, 0.3, 0.3, 1], [0.2, 0.3, 0.1, 0.2, 2]], dtype=np.float32)
    seconds = best_of(lambda: augment_region(image, truths, 160, 160, np.random.default_rng(1)), repeats)
    print(f"{'augment_region 160x160 -> 160x160':42s} refquant {seconds * 1e3:9.3f} ms per image (no peer)")
    seconds = best_of(lambda: render_image(np.random.default_rng(2), 160), repeats)
    print(f"{'shapes render_image 160x160':42s} refquant {seconds * 1e3:9.3f} ms per image (no peer)")


if __name__ == "__main__":
    main()
