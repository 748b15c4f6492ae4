"""``refquant demo``: the paper's experiment end to end, on the shipped data and model.

With no arguments it takes the shipped detector (``data/models/shapes-tiny-yolo.{cfg,weights,names}``,
tiny YOLO v2 at 128x128 trained on the shapes data set) and the shapes data set
(:func:`refquant.data.shapes.shapes_dataset`, generated on first use), and runs, timing each step:

1. FP32: the float network's mAP on the test images.
2. Calibration: the folded float network over the first ``--calibration-images`` images of the
   train split (letterboxed, not augmented); every quantized layer's activations histogrammed
   once (:func:`refquant.ptq.calibration_statistics`), the statistics shared by every plan.
3. Post-training quantization (PTQ) at each width of ``--bits`` (weights and activations alike;
   the first and last convolutions at ``--first-bits``/``--last-bits``, 8 by default): the
   PGM-optimal plan and the min-max, percentile (99.99) and ACIQ (Laplace) baselines
   (:func:`refquant.ptq.quantization_plan`). The activations' PGMs have up to 6 pieces, their breakpoints chosen
   by BIC, 0 among the candidates (``--activation-breakpoints auto``, ``refquant.ptq``'s default;
   ``kink`` fits the two pieces of a leaky ReLU split at 0 alone).
4. Quantization-aware training (QAT) at each width of ``--qat-bits`` (4 by default), starting
   from the PGM PTQ plan, the PGMs refitted and the intervals re-optimised every
   ``--refit-every`` iterations (:func:`refquant.qat.quantization_aware_training`).
5. Every quantized model runs twice on the test images: as the integer network
   (:class:`refquant.integer.network.IntegerNetwork`: int8 weights, int32 accumulation,
   requantization by multiplier and shift) and as its exact float64 simulation
   (:class:`refquant.integer.simulation.SimulatedNetwork`). Their head outputs must be equal bit for bit on every
   batch (the run stops with an error otherwise), so ``integer_mAP`` equals ``mAP`` in every row.

mAP is Darknet's ``validate_detector`` path scored by the VOC devkit's rule
(:func:`refquant.detection.decode.detections` at threshold 0.005 with NMS 0.45, then
:func:`refquant.detection.metrics.average_precision`, IoU >= 0.5, the VOC2010 area rule), in percent.

Outputs, in ``--out`` (default a new folder ``./refquant-demo-YYYYmmdd-HHMMSS``):
``results.json`` (``rows`` with ``name``, ``weight_bits``, ``activation_bits``, ``method``,
``mode``, ``mAP``, ``integer_mAP``, ``model_bytes``, ``bops``; the settings, machine, date and
timings), ``report.md``, the plots ``map_table.png``, ``densities_activations.png``,
``densities_weights.png``, ``method_errors.png``, ``detections.png``, the PTQ plans as JSON in
``plans/`` and each QAT model as a Darknet cfg/weights pair of the folded network with its plan
(:func:`refquant.plan.save_quantized`). The table is printed at the end, as the paper's.

``--quick`` shrinks every budget (a handful of images and QAT iterations) for tests and a first look.
"""
import json
import time
from pathlib import Path

import numpy as np

from refquant import atomic
from refquant.demo.experiment import Experiment
from refquant.demo.plots import write_figures
from refquant.demo.profiles import profile_section
from refquant.demo.report import report_markdown, results_dict


def run_experiment(settings, client=None):
    """Run every step of the module docstring and write the outputs; returns the results dict.

    ``client``: a Dask client whose cluster runs the calibration, the plans and the evaluations
    (``--workers``, ``--scheduler``: :mod:`refquant.distributed`; the same results bit for bit), or
    None to run everything in this process."""
    start = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(settings, client)
    experiment.load_images()
    experiment.float_row()
    experiment.calibrate()
    experiment.post_training()
    experiment.quantization_aware()
    experiment.profiles = profile_section(experiment) if settings.profiles else None
    if experiment.plans:
        experiment.float_costs()
    plot_start = time.perf_counter()
    figures = write_figures(experiment)
    experiment.timings["plots"] = time.perf_counter() - plot_start
    experiment.timings["total"] = time.perf_counter() - start
    results = results_dict(experiment, figures)
    # results.json last: its presence says the run is complete (the plans and figures exist)
    atomic.write_text(out / "report.md", report_markdown(results))
    atomic.write_text(out / "results.json", json.dumps(results, indent=1, default=_json_default) + "\n")
    return results


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
