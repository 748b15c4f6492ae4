"""Write ``shapes-tiny-yolo.json``, the record of the shipped model, from its training run.

    python data/models/record.py RUN_DIR [--val-history 400=0.0422 ...]

``RUN_DIR`` is the ``--out`` folder of the ``refquant train`` command below; its checkpoint JSON
gives the options, updates, images seen and training seconds. The committed weights
(``shapes-tiny-yolo.weights``, a copy of the run's final weights) are evaluated on the test split
by ``refquant.detection.evaluate.evaluate`` (the VOC2010 area rule; the 11-point rule beside it) and their
sha256 recorded, so ``tests/test_evaluate.py`` can check that the record describes the committed
file and that its mAP is what evaluation gives today.
"""
import argparse
import json
import platform
import subprocess
from pathlib import Path

import numpy as np

from refquant import darknet
from refquant.data.shapes import shapes_dataset
from refquant.data.voc import ground_truth, load_voc, read_names
from refquant.detection.evaluate import SHIPPED_MODEL, evaluate
from refquant.detection.metrics import average_precision
from refquant.train import file_digest

HERE = Path(__file__).resolve().parent
COMMAND = "refquant train --cfg data/models/shapes-tiny-yolo.cfg --out runs/ship --seed 0 --checkpoint-every 100"
TARGET = 0.8
"""The shipped model's goal: test mAP (VOC2010 rule) at least 80 % on the shapes test split."""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the training run's --out folder")
    parser.add_argument("--val-history", nargs="*", default=[], metavar="UPDATES=MAP",
                        help="validation mAP (fraction) measured at some updates during training")
    args = parser.parse_args()
    state = json.loads((args.run / f"{SHIPPED_MODEL}.checkpoint.json").read_text())
    weights = HERE / f"{SHIPPED_MODEL}.weights"
    names = read_names(HERE / f"{SHIPPED_MODEL}.names")
    net = darknet.load(HERE / f"{SHIPPED_MODEL}.cfg", weights)
    records = load_voc(shapes_dataset(progress=False), "test", names)
    scores, found = evaluate(net, records, names, progress=False)
    scores07 = average_precision(found, ground_truth(records), use_07_metric=True)
    met = scores["mAP"] >= TARGET
    progress = f"{state['iteration']} of {state['options']['max_batches']} updates"
    status = (f"target met: test mAP {scores['mAP']:.1%} after {progress}, at or above the {TARGET:.0%} target"
              if met else f"unfinished: test mAP {scores['mAP']:.1%} after {progress}, below the {TARGET:.0%} target")
    history = {}
    for item in args.val_history:
        updates, value = item.split("=")
        history[str(int(updates))] = float(value)
    record = {
        "model": SHIPPED_MODEL,
        "status": status,
        "files": {kind: f"{SHIPPED_MODEL}.{kind}" for kind in ("cfg", "weights", "names")},
        "weights_sha256": file_digest(weights),
        "command": COMMAND,
        "seed": state["seed"],
        "data": "refquant.data.shapes.shapes_dataset() defaults: seed 0, 160 px, 2000 train / 200 val / 500 test",
        "updates": state["iteration"], "images_seen": state["seen"], "options": state["options"],
        "training_seconds": state["seconds"],
        "training_seconds_note": "sum of update times measured by refquant train on a 2-core machine shared with "
                                 "other jobs (about 1.1 s per update of 32 images when quiet, 1.5 s when loaded)",
        "anchors": "refquant.train.anchor_clusters(load_voc(shapes_dataset(), 'train', names), 5, 8, 8), rounded "
                   "to 3 decimals: k-means of the non-difficult training boxes' (w, h) in grid cells, distance 1 - IoU",
        "evaluation_command": "refquant eval --split test",
        "test_images": len(records),
        "test_mAP": scores["mAP"], "test_mAP_voc07_11point": scores07["mAP"],
        "test_AP": {k: v for k, v in scores.items() if k != "mAP"},
        "val_mAP_history": history,
        "weights_bytes": weights.stat().st_size,
        "refquant_commit": subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True,
                                          text=True).stdout.strip(),
        "python": platform.python_version(), "numpy": np.__version__,
    }
    (HERE / f"{SHIPPED_MODEL}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{status}; test mAP {scores['mAP']:.4f} (11-point {scores07['mAP']:.4f})")


if __name__ == "__main__":
    main()
