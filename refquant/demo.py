"""``refquant demo``: the paper's experiment end to end, on the shipped data and model (METHOD.md, 4).

With no arguments it takes the shipped detector (``data/models/shapes-tiny-yolo.{cfg,weights,names}``,
tiny YOLO v2 at 128x128 trained on the shapes data set) and the shapes data set
(:func:`refquant.data.shapes.shapes_dataset`, generated on first use), and runs, timing each step:

1. FP32: the float network's mAP on the test images.
2. Calibration: the folded float network over the first ``--calibration-images`` images of the
   train split (letterboxed, not augmented); every quantized layer's activations histogrammed
   once (:func:`refquant.qat.calibration_statistics`), the statistics shared by every plan.
3. Post-training quantization (PTQ) at each width of ``--bits`` (weights and activations alike;
   the first and last convolutions at ``--first-bits``/``--last-bits``, 8 by default): the
   PGM-optimal plan and the min-max, percentile (99.99) and ACIQ (Laplace) baselines
   (:func:`refquant.qat.quantization_plan`). The activations' PGMs have their breakpoints chosen
   by BIC, 0 among the candidates (``--activation-breakpoints auto``; ``kink`` fits the two
   pieces of a leaky ReLU split at 0 alone, ``refquant.qat``'s default).
4. Quantization-aware training (QAT) at each width of ``--qat-bits`` (4 by default), starting
   from the PGM PTQ plan, the PGMs refitted and the intervals re-optimised every
   ``--refit-every`` iterations (:func:`refquant.qat.quantization_aware_training`).
5. Every quantized model runs twice on the test images: as the integer network
   (:class:`refquant.integer_network.IntegerNetwork`: int8 weights, int32 accumulation,
   requantization by multiplier and shift) and as its exact float64 simulation
   (:class:`refquant.qat.SimulatedNetwork`). Their head outputs must be equal bit for bit on every
   batch (the run stops with an error otherwise), so ``integer_mAP`` equals ``mAP`` in every row.

mAP is Darknet's ``validate_detector`` path scored by the VOC devkit's rule
(:func:`refquant.decode.detections` at threshold 0.005 with NMS 0.45, then
:func:`refquant.metrics.average_precision`, IoU >= 0.5, the VOC2010 area rule), in percent.

Outputs, in ``--out`` (default a new folder ``./refquant-demo-YYYYmmdd-HHMMSS``):
``results.json`` (``rows`` with ``name``, ``weight_bits``, ``activation_bits``, ``method``,
``mode``, ``mAP``, ``integer_mAP``, ``model_bytes``, ``bops``; the settings, machine, date and
timings), ``report.md``, the plots ``map_table.png``, ``densities_activations.png``,
``densities_weights.png``, ``method_errors.png``, ``detections.png``, the PTQ plans as JSON in
``plans/`` and each QAT model as a Darknet cfg/weights pair of the folded network with its plan
(:func:`refquant.qat.save_quantized`). The table is printed at the end, as the paper's.

``--quick`` shrinks every budget (a handful of images and QAT iterations) for tests and a first look.
"""
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

BITS = (8, 6, 4)
PTQ_METHODS = ("pgm", "minmax", "percentile", "aciq")
QAT_BITS = (4,)
METHOD_NAMES = {"float": "FP32", "pgm": "PGM", "minmax": "min-max", "percentile": "percentile",
                "aciq": "ACIQ", "aciq-gauss": "ACIQ (Gauss)", "mse": "MSE search", "kl": "KL (TensorRT)"}
"""How each method is named in the table and the plots."""

CALIBRATION_IMAGES = 64
TEST_IMAGES = None
"""None: the whole test split."""
QAT_ITERATIONS = 480
QAT_BATCH = 16
QAT_LEARNING_RATE = 0.001
QAT_STEP_AT = 2 / 3
"""The QAT learning rate drops x0.1 after this fraction of the updates (Darknet's ``steps`` policy).

Measured on the shipped model at 4 bits (FP32 80.04, PGM PTQ 74.46; batch 16 unless said): a
constant 0.001 for 120 updates gave 75.6-76.2 with the training loss flat (about 2.85); 0.005 and
0.01 made it rise (67.2, 58.2: the folded network has no batch norm to steady it); a step x0.1
after two thirds let it fall (200 updates 77.0, 240 updates 76.8, refits every 100 and 120;
480 updates 78.3, refits every 160; 600 updates 78.2, refits every 200); with 240 updates a step
after one third gave 76.8 and a constant 0.0003 76.9; batch 8 for 400 updates 75.7. The default
budget, 480 updates, is what fits ``refquant demo`` in 10 minutes on 2 cores."""
REFIT_EVERY = 160
REFIT_IMAGES = 32
DRAWN_IMAGES = 4
EVALUATION_BATCH = 50

QUICK = {"calibration_images": 4, "test_images": 8, "qat_iterations": 3, "qat_batch": 2, "refit_every": 2,
         "refit_images": 4, "drawn_images": 2}
"""The budgets of ``--quick`` (the other settings unchanged)."""

TARGETS = {"pgm8_gap": 0.5, "qat4_gap": 2.0}
"""The issue's targets: 8-bit PGM PTQ within 0.5 mAP points of FP32, 4-bit PGM with QAT within 2.0."""


@dataclasses.dataclass
class Settings:
    """Everything a run depends on (recorded in results.json)."""

    cfg: str
    weights: str
    names: str
    data: str
    out: str
    bits: tuple = BITS
    methods: tuple = PTQ_METHODS
    qat_bits: tuple = QAT_BITS
    first_bits: int = 8
    last_bits: int = 8
    activation_breakpoints: str = "auto"
    calibration_images: int = CALIBRATION_IMAGES
    test_images: int = TEST_IMAGES
    qat_iterations: int = QAT_ITERATIONS
    qat_batch: int = QAT_BATCH
    qat_learning_rate: float = QAT_LEARNING_RATE
    qat_step_at: float = QAT_STEP_AT
    refit_every: int = REFIT_EVERY
    refit_images: int = REFIT_IMAGES
    drawn_images: int = DRAWN_IMAGES
    evaluation_batch: int = EVALUATION_BATCH
    seed: int = 0
    quick: bool = False
    progress: bool = True


# ================================================================================================
# Evaluation
# ================================================================================================

def letterboxed_inputs(records, width, height, progress=True, description="load"):
    """The records' images letterboxed into the network input: (N, 3, height, width) float32."""
    from refquant.data.voc import load_image
    from refquant.decode import network_input
    return np.stack([network_input(load_image(r["image_path"], (r["width"], r["height"])), width, height)
                     for r in tqdm(records, desc=description, unit="image", disable=not progress, leave=False)])


def head_outputs(forward, inputs, batch_size, description, progress=True):
    """``forward`` over ``inputs`` in batches: the concatenated region-head outputs."""
    return np.concatenate([forward(inputs[i:i + batch_size]) for i in
                           tqdm(range(0, len(inputs), batch_size), desc=description, unit="batch",
                                disable=not progress, leave=False)])


class IntegerMismatchError(RuntimeError):
    """The integer network and its float64 simulation disagreed (they must not: qat docstring, 4)."""


def paired_head_outputs(integer, simulation, inputs, batch_size, description, progress=True):
    """The integer network and its simulation on the same batches: ``(integer outputs, simulated)``.

    Raises :class:`IntegerMismatchError` at the first batch whose head outputs differ in any bit.
    """
    integer_parts, simulated_parts = [], []
    for i in tqdm(range(0, len(inputs), batch_size), desc=description, unit="batch", disable=not progress,
                  leave=False):
        a, b = integer.forward(inputs[i:i + batch_size]), simulation.forward(inputs[i:i + batch_size])
        if a.shape != b.shape or not np.array_equal(a, b):
            raise IntegerMismatchError(f"{description}: the integer network and the simulation differ on images "
                                       f"{i}..{i + len(a) - 1} (max |difference| {np.max(np.abs(a - b)):.3g})")
        integer_parts.append(a)
        simulated_parts.append(b)
    return np.concatenate(integer_parts), np.concatenate(simulated_parts)


def mean_average_precision(outputs, records, net, names):
    """``(mAP in percent, detections)`` of region-head ``outputs`` for ``records`` (module docstring)."""
    from refquant.data.voc import ground_truth
    from refquant.decode import NMS_THRESHOLD, VALIDATION_THRESHOLD, detections
    from refquant.metrics import average_precision
    head = net.layers[-1]
    found = detections(outputs, head.anchors.ravel(), names, [r["id"] for r in records],
                       [(r["width"], r["height"]) for r in records], net.input_shape[2], net.input_shape[1],
                       thresh=VALIDATION_THRESHOLD, nms=NMS_THRESHOLD, letterbox=True)
    scores = average_precision(found, ground_truth(records), iou_threshold=0.5, use_07_metric=False)
    return 100.0 * scores["mAP"], found


# ================================================================================================
# The experiment
# ================================================================================================

def row(name, method, mode, weight_bits, activation_bits, mAP, integer_mAP, costs, seconds):
    """One line of the table: see the module docstring for the keys."""
    return {"name": name, "method": method, "mode": mode, "weight_bits": weight_bits,
            "activation_bits": activation_bits, "mAP": mAP, "integer_mAP": integer_mAP,
            "integer_equals_simulation": None if integer_mAP is None else integer_mAP == mAP,
            "model_bytes": costs["bytes"], "bops": costs["bops"], "seconds": seconds}


def qat_schedule(settings):
    """Darknet ``steps`` options for QAT: x0.1 after ``round(qat_step_at * qat_iterations)`` updates."""
    return {"policy": "steps", "steps": [max(1, round(settings.qat_step_at * settings.qat_iterations))],
            "scales": [0.1]}


def quantized_name(method, bits, mode):
    return f"{METHOD_NAMES[method]} {bits}-bit {mode.upper()}"


class Experiment:
    """The state of one run: the model, the data, the rows, the timings (see :func:`run_experiment`)."""

    def __init__(self, settings):
        from refquant import darknet
        from refquant.data.voc import load_voc, read_names
        self.settings = settings
        self.out = Path(settings.out)
        self.names = read_names(settings.names)
        self.net = darknet.load(settings.cfg, settings.weights)
        self.train_records = load_voc(settings.data, "train", self.names)
        test_records = load_voc(settings.data, "test", self.names)
        self.test_split_size = len(test_records)
        self.test_records = test_records if settings.test_images is None else test_records[:settings.test_images]
        if not self.test_records or not self.train_records:
            raise ValueError(f"{settings.data}: the demo needs images in both the train and the test split")
        self.rows, self.timings, self.detections = [], {}, {}
        self.plans, self.fit_warnings, self.qat = {}, {}, {}
        self.statistics = None

    def progress(self, message):
        tqdm.write(message, file=sys.stdout)

    def timed(self, key, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start
        return value

    # -- the steps ----------------------------------------------------------------------------------

    def load_images(self):
        s, (_, height, width) = self.settings, self.net.input_shape
        self.test_inputs = self.timed("load images", letterboxed_inputs, self.test_records, width, height,
                                      s.progress, "test images")
        calibration = self.train_records[:s.calibration_images]
        self.calibration_inputs = self.timed("load images", letterboxed_inputs, calibration, width, height,
                                             s.progress, "calibration images")
        self.refit_inputs = self.calibration_inputs[:s.refit_images]

    def float_row(self):
        s = self.settings
        start = time.perf_counter()
        outputs = head_outputs(lambda x: self.net.forward(x, training=False), self.test_inputs, s.evaluation_batch,
                               "FP32", s.progress)
        mAP, found = mean_average_precision(outputs, self.test_records, self.net, self.names)
        seconds = time.perf_counter() - start
        self.timings["FP32"] = seconds
        self.detections["float"] = found
        self.rows.append({"name": "FP32", "method": "float", "mode": "float", "weight_bits": 32,
                          "activation_bits": 32, "mAP": mAP, "integer_mAP": None, "integer_equals_simulation": None,
                          "model_bytes": None, "bops": None, "seconds": seconds})
        self.progress(f"FP32: mAP {mAP:.2f} % on {len(self.test_records)} test images ({seconds:.1f} s)")

    def calibrate(self):
        from refquant import qat
        s = self.settings
        self.statistics = self.timed("calibration", qat.calibration_statistics, self.net, self.calibration_inputs,
                                     batch_size=16, progress=s.progress,
                                     activation_breakpoints=s.activation_breakpoints)
        self.folded = self.statistics.net

    def make_plan(self, method, bits):
        """The PTQ plan of ``method`` at ``bits`` (PGM fits cached in the statistics); fit warnings kept."""
        from refquant import qat
        s = self.settings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = self.timed("plans", qat.quantization_plan, self.statistics, bits, bits, method,
                              first_bits=s.first_bits, last_bits=s.last_bits, progress=s.progress)
        for warning in caught:
            self.fit_warnings[f"{method} {bits}-bit"] = str(warning.message)
        self.plans[(method, bits)] = plan
        (self.out / "plans").mkdir(exist_ok=True)
        plan.save(self.out / "plans" / f"{method}-{bits}bit.plan.json")
        return plan

    def quantized_row(self, name, method, mode, bits, folded, plan):
        """Score ``plan`` on ``folded`` as the integer network and as its simulation; append the row."""
        from refquant.integer_network import IntegerNetwork, cost_totals, layer_costs
        s = self.settings
        start = time.perf_counter()
        integer = IntegerNetwork(folded, plan)
        integer_outputs, simulated_outputs = paired_head_outputs(integer, integer.simulation(), self.test_inputs,
                                                                 s.evaluation_batch, name, s.progress)
        mAP, found = mean_average_precision(simulated_outputs, self.test_records, folded, self.names)
        integer_mAP, _ = mean_average_precision(integer_outputs, self.test_records, folded, self.names)
        if integer_mAP != mAP:
            raise IntegerMismatchError(f"{name}: integer mAP {integer_mAP!r} != simulated mAP {mAP!r}")
        seconds = time.perf_counter() - start
        self.timings[name] = seconds
        self.detections[(method, mode, bits)] = found
        costs = cost_totals(layer_costs(folded, plan))
        self.rows.append(row(name, method, mode, bits, bits, mAP, integer_mAP, costs, seconds))
        self.progress(f"{name}: mAP {mAP:.2f} %, integer network {integer_mAP:.2f} % (equal), "
                      f"{costs['bytes']} bytes ({seconds:.1f} s)")

    def post_training(self):
        for bits in self.settings.bits:
            for method in self.settings.methods:
                plan = self.make_plan(method, bits)
                self.quantized_row(quantized_name(method, bits, "ptq"), method, "ptq", bits, self.folded, plan)

    def quantization_aware(self):
        from refquant import qat
        s = self.settings
        for bits in s.qat_bits:
            start_plan = self.plans.get(("pgm", bits)) or self.make_plan("pgm", bits)
            name = quantized_name("pgm", bits, "qat")
            self.progress(f"{name}: {s.qat_iterations} iterations of {s.qat_batch} images, refit every "
                          f"{s.refit_every} on {len(self.refit_inputs)} images")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = self.timed(f"{name} training", qat.quantization_aware_training, self.net, start_plan,
                                    self.train_records, s.qat_iterations, refit_every=s.refit_every,
                                    refit_images=self.refit_inputs,
                                    options={"batch": s.qat_batch, "subdivisions": 1,
                                             "learning_rate": s.qat_learning_rate, **qat_schedule(s)},
                                    seed=s.seed, progress=s.progress)
            if caught:
                self.fit_warnings[name] = f"{len(caught)} warnings during the refits, e.g. {caught[0].message}"
            self.qat[bits] = result
            qat.save_quantized(result.folded, result.plan, s.cfg, self.out / f"qat-{bits}bit")
            self.quantized_row(name, "pgm", "qat", bits, result.folded, result.plan)

    def float_costs(self):
        """Model size and bit operations of the float model (FP32 row), from the layer costs."""
        from refquant.integer_network import cost_totals, layer_costs
        totals = cost_totals(layer_costs(self.net, next(iter(self.plans.values()))))  # batch norm included
        self.rows[0]["model_bytes"] = totals["float_bytes"]
        self.rows[0]["bops"] = totals["float_bops"]


def run_experiment(settings):
    """Run every step of the module docstring and write the outputs; returns the results dict."""
    start = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(settings)
    experiment.load_images()
    experiment.float_row()
    experiment.calibrate()
    experiment.post_training()
    experiment.quantization_aware()
    if experiment.plans:
        experiment.float_costs()
    plot_start = time.perf_counter()
    figures = write_figures(experiment)
    experiment.timings["plots"] = time.perf_counter() - plot_start
    experiment.timings["total"] = time.perf_counter() - start
    results = results_dict(experiment, figures)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    (out / "report.md").write_text(report_markdown(results))
    return results


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ================================================================================================
# Results, report and table
# ================================================================================================

def machine_description():
    """CPU model, cores, OS, Python and library versions of this machine."""
    import numba
    import scipy
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": usable, "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "scipy": scipy.__version__}


def results_dict(experiment, figures):
    from refquant.train import file_digest
    s = experiment.settings
    results = {
        "format": "refquant-demo-results", "version": 1,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": " ".join(["refquant"] + sys.argv[1:]) if Path(sys.argv[0]).stem in ("refquant", "__main__")
        else "refquant demo",
        "model": {"cfg": s.cfg, "weights": s.weights, "names": s.names,
                  "weights_sha256": file_digest(s.weights) if s.weights else None},
        "data": s.data,
        "metric": "mAP in percent: Darknet's validate_detector detections (threshold 0.005, NMS 0.45) scored "
                  "by the VOC devkit's rule, IoU >= 0.5, VOC2010 area rule",
        "test_images": len(experiment.test_records), "test_split_images": experiment.test_split_size,
        "calibration_images": len(experiment.calibration_inputs),
        "first_last_layer_bits": {"first": s.first_bits, "last": s.last_bits},
        "qat": {"iterations": s.qat_iterations, "batch": s.qat_batch, "learning_rate": s.qat_learning_rate,
                "learning_rate_steps": qat_schedule(s)["steps"],
                "refit_every": s.refit_every, "refit_images": len(experiment.refit_inputs), "seed": s.seed,
                "runs": {str(bits): {"refits": r.refits, "first_losses": r.losses[:5], "last_losses": r.losses[-5:],
                                     "seconds": r.seconds, "options": r.options}
                         for bits, r in experiment.qat.items()}},
        "settings": dataclasses.asdict(s),
        "rows": experiment.rows,
        "integer_equals_simulation": all(r["integer_equals_simulation"] for r in experiment.rows
                                         if r["integer_mAP"] is not None),
        "fit_warnings": experiment.fit_warnings,
        "timings_seconds": {key: round(value, 2) for key, value in experiment.timings.items()},
        "figures": figures,
    }
    results["targets"] = target_checks(results["rows"])
    return results


def _find(rows, method, mode, bits):
    for entry in rows:
        if entry["method"] == method and entry["mode"] == mode and entry["weight_bits"] == bits:
            return entry
    return None


def target_checks(rows):
    """The issue's targets, each ``{"description", "value", "met"}`` (None when the row was not run)."""
    fp32 = _find(rows, "float", "float", 32)
    checks = []

    def add(description, value, met):
        checks.append({"description": description, "value": value, "met": met})
    pgm8 = _find(rows, "pgm", "ptq", 8)
    if fp32 and pgm8:
        gap = fp32["mAP"] - pgm8["mAP"]
        add(f"8-bit PGM PTQ within {TARGETS['pgm8_gap']} mAP points of FP32 (FP32 - PGM8)", gap,
            gap <= TARGETS["pgm8_gap"])
    qat4 = _find(rows, "pgm", "qat", 4)
    if fp32 and qat4:
        gap = fp32["mAP"] - qat4["mAP"]
        add(f"4-bit PGM with QAT within {TARGETS['qat4_gap']} mAP points of FP32 (FP32 - QAT4)", gap,
            gap <= TARGETS["qat4_gap"])
    pgm4, minmax4 = _find(rows, "pgm", "ptq", 4), _find(rows, "minmax", "ptq", 4)
    if pgm4 and minmax4:
        difference = pgm4["mAP"] - minmax4["mAP"]
        add("4-bit PGM PTQ above 4-bit min-max PTQ (PGM4 - minmax4)", difference, difference > 0)
    quantized = [r for r in rows if r["integer_mAP"] is not None]
    add("integer mAP equal to simulated mAP in every quantized row", len(quantized),
        all(r["integer_mAP"] == r["mAP"] for r in quantized))
    return checks


def table_lines(rows, bits=None):
    """The paper-style table: one line per method and mode, one column per width (mAP %)."""
    bits = sorted({r["weight_bits"] for r in rows if r["mode"] != "float"}, reverse=True) if bits is None else bits
    fp32 = _find(rows, "float", "float", 32)
    header = f"{'':<18}{'FP32':>8}" + "".join(f"{f'{b}-bit':>8}" for b in bits)
    lines = [header]
    if fp32:
        lines.append(f"{'float':<18}{fp32['mAP']:>8.2f}" + "".join(f"{'':>8}" for _ in bits))
    seen = []
    for entry in rows:
        key = (entry["method"], entry["mode"])
        if entry["mode"] == "float" or key in seen:
            continue
        seen.append(key)
        label = f"{METHOD_NAMES[entry['method']]} ({entry['mode'].upper()})"
        cells = []
        for b in bits:
            found = _find(rows, entry["method"], entry["mode"], b)
            cells.append(f"{found['mAP']:>8.2f}" if found else f"{'-':>8}")
        lines.append(f"{label:<18}{'':>8}" + "".join(cells))
    return lines


def summary_lines(results):
    """What ``refquant demo`` prints at the end (and the README shows): a caption with the test
    images, the rule, the first/last layer widths, the time, the machine and the date; the table of
    :func:`table_lines`; the integer check; each target, met or not, with its measured value."""
    subset = ("" if results["test_images"] == results["test_split_images"]
              else f" (first {results['test_images']} of {results['test_split_images']})")
    widths = results["first_last_layer_bits"]
    lines = [f"mAP (%) on {results['test_images']} test images{subset}, VOC2010 area rule; first/last layer at "
             f"{widths['first']}/{widths['last']} bits; {results['timings_seconds']['total']:.0f} s "
             f"on {results['machine']['cpu']} ({results['machine']['cores']} cores), {results['date']}"]
    lines += table_lines(results["rows"])
    lines.append("integer network == float64 simulation (head outputs bit for bit) in every quantized row: "
                 f"{results['integer_equals_simulation']}")
    for check in results["targets"]:
        value = f"{check['value']:.2f}" if isinstance(check["value"], float) else str(check["value"])
        lines.append(f"  {'met    ' if check['met'] else 'NOT met'}  {check['description']}: {value}")
    return lines


def markdown_table(rows):
    """Every row as a markdown table (mAP, integer mAP, size, bit operations, seconds)."""
    lines = ["| model | method | mode | W bits | A bits | mAP (%) | integer mAP (%) | size (bytes) | bit operations "
             "| seconds |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        integer = "" if r["integer_mAP"] is None else f"{r['integer_mAP']:.2f}"
        size = "" if r["model_bytes"] is None else f"{r['model_bytes']:,}"
        bops = "" if r["bops"] is None else f"{r['bops']:.3g}"
        lines.append(f"| {r['name']} | {r['method']} | {r['mode']} | {r['weight_bits']} | {r['activation_bits']} | "
                     f"{r['mAP']:.2f} | {integer} | {size} | {bops} | {r['seconds']:.1f} |")
    return lines


def comparison_lines(rows):
    """PGM PTQ against each baseline at each width, in mAP points (positive: PGM is better)."""
    lines = []
    for bits in sorted({r["weight_bits"] for r in rows if r["mode"] == "ptq"}, reverse=True):
        pgm = _find(rows, "pgm", "ptq", bits)
        if pgm is None:
            continue
        parts = []
        for r in rows:
            if r["mode"] == "ptq" and r["weight_bits"] == bits and r["method"] != "pgm":
                difference = pgm["mAP"] - r["mAP"]
                verdict = "above" if difference > 0 else ("equal to" if difference == 0 else "BELOW")
                parts.append(f"{verdict} {METHOD_NAMES[r['method']]} by {abs(difference):.2f}")
        lines.append(f"- {bits}-bit: PGM {pgm['mAP']:.2f} %, " + "; ".join(parts))
    return lines


def report_markdown(results):
    """report.md: settings, the table, the targets (met or not, as measured), the comparison,
    the integer-network check, the plots and the timings."""
    m, qat_settings = results["machine"], results["qat"]
    subset = ("the whole test split" if results["test_images"] == results["test_split_images"] else
              f"the FIRST {results['test_images']} of the {results['test_split_images']} test images (a subset)")
    lines = ["# refquant demo: low-precision tiny YOLO on the shapes data set", "",
             f"Run on {results['date']} on {m['cpu']} ({m['cores']} cores), {m['platform']}, Python {m['python']}, "
             f"NumPy {m['numpy']}, Numba {m['numba']}; `{results['command']}`, "
             f"{results['timings_seconds']['total']:.0f} s in all.", "",
             "## Setup", "",
             f"- Model: `{results['model']['cfg']}` with `{results['model']['weights']}`.",
             f"- Data: `{results['data']}`; evaluated on {subset}.",
             f"- Metric: {results['metric']}.",
             f"- Calibration: {results['calibration_images']} train images (letterboxed, no augmentation); "
             f"activation PGMs with breakpoints `{results['settings']['activation_breakpoints']}` ("
             + ("chosen by BIC, 0 among the candidates" if results['settings']['activation_breakpoints'] == "auto"
                else "0 alone for leaky-ReLU outputs") + "); weight PGMs with up to 3 pieces chosen by BIC.",
             f"- First and last convolution: {results['first_last_layer_bits']['first']}-bit and "
             f"{results['first_last_layer_bits']['last']}-bit weights and outputs; the other layers at the width "
             f"of the row (weights and activations alike).",
             f"- QAT: {qat_settings['iterations']} iterations of {qat_settings['batch']} augmented train images, "
             f"learning rate {qat_settings['learning_rate']} (x0.1 after update "
             f"{', '.join(map(str, qat_settings['learning_rate_steps']))}), from the PGM PTQ plan, PGMs refitted and intervals "
             f"re-optimised every {qat_settings['refit_every']} iterations on {qat_settings['refit_images']} images.",
             "", "## mAP (%)", "", "```", *table_lines(results["rows"]), "```", "",
             *markdown_table(results["rows"]), "",
             "## Targets", ""]
    for check in results["targets"]:
        status = "met" if check["met"] else "NOT met"
        value = check["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"- {check['description']}: {shown} -> **{status}**")
    lines += ["", "## PGM against the baselines (post-training)", "", *comparison_lines(results["rows"]), "",
              "## Integer network", "",
              ("In every quantized row the integer network (int8 weights, int32 accumulation, requantization by "
               "an integer multiplier and a rounding shift) produced head outputs equal bit for bit to the exact "
               "float64 simulation of the same plan, on every test image: `integer_mAP` equals `mAP` in every row."
               if results["integer_equals_simulation"] else
               "**The integer network and the simulation disagreed in some row; see results.json.**"), ""]
    if results["fit_warnings"]:
        lines += ["## Fit warnings", ""] + [f"- {key}: {value}" for key, value in results["fit_warnings"].items()] + [""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in results["figures"]] + [""]
    lines += ["## Timings (seconds)", ""] + [f"- {key}: {value}" for key, value in results["timings_seconds"].items()]
    return "\n".join(lines) + "\n"


# ================================================================================================
# Plots
# ================================================================================================

def plot_map_table(rows, ax=None):
    """mAP (%) against the width, one line of markers per method and mode, FP32 as a dashed line.

    Points rather than bars, so that the axis can start near the lowest value without
    exaggerating the differences (the axis range is printed on it)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    bits = sorted({r["weight_bits"] for r in rows if r["mode"] != "float"}, reverse=True)
    series = list(dict.fromkeys((r["method"], r["mode"]) for r in rows if r["mode"] != "float"))
    positions = {b: k for k, b in enumerate(bits)}
    for k, (method, mode) in enumerate(series):
        found = [r for r in rows if r["method"] == method and r["mode"] == mode]
        x = [positions[r["weight_bits"]] + (k - (len(series) - 1) / 2) * 0.06 for r in found]
        y = [r["mAP"] for r in found]
        ax.plot(x, y, marker="o" if mode == "ptq" else "*", markersize=7 if mode == "ptq" else 12,
                linestyle="-" if mode == "ptq" else "none", color=f"C{k}",
                label=f"{METHOD_NAMES[method]} ({mode.upper()})")
        for xi, yi in zip(x, y):
            ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(6, -3), fontsize=6, color=f"C{k}")
    fp32 = _find(rows, "float", "float", 32)
    if fp32:
        ax.axhline(fp32["mAP"], color="k", linestyle="--", linewidth=1, label=f"FP32 {fp32['mAP']:.1f}")
    ax.set_xticks(range(len(bits)))
    ax.set_xticklabels([f"{b}-bit" for b in bits])
    ax.set_xlim(-0.5, len(bits) - 0.5)
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP of each method and width (weights and activations alike)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_layer_intervals(statistics, plans, index, kind, ax=None):
    """One layer: its values' histogram (activations: the calibration histogram; weights: the folded
    tensor), the fitted PGM (from ``plans``' PGM plan), and each plan's interval as vertical lines.

    ``plans``: {method: QuantizationPlan} at one width; ``kind``: ``"activations"`` or ``"weights"``.
    """
    import matplotlib.pyplot as plt

    from refquant.pgm_plots import plot_density
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    if kind == "activations":
        histogram = statistics.histograms[index]
        data = (histogram.counts.astype(np.float64), histogram.edges)
    else:
        data = statistics.weights(index).ravel()
    density = plans["pgm"].densities.get((kind, index)) if "pgm" in plans else None
    if density is not None:
        plot_density(data, density, ax=ax, scale="log", bins=100, points=600)
    else:
        counts, edges = data if isinstance(data, tuple) else np.histogram(data, 100)
        ax.stairs(counts / counts.sum() / np.diff(edges), edges, fill=True, color="0.75")
        ax.set_yscale("log")
    for k, (method, plan) in enumerate(plans.items()):
        quantizer = (plan.activations if kind == "activations" else plan.weights)[index]
        for end in quantizer.interval:
            ax.axvline(end, color=f"C{k}", linewidth=1.2, linestyle="-" if method == "pgm" else ":",
                       label=f"{METHOD_NAMES[method]} [{quantizer.lo:.3g}, {quantizer.hi:.3g}]" if end == quantizer.lo
                       else None)
    layer = statistics.net.layers[index]
    ax.set_title(f"layer {index} [{layer.type}] {kind}", fontsize=8)
    ax.legend(fontsize=5, loc="upper right")
    return ax


def layer_errors(statistics, plans, kind):
    """{method: [(layer index, SQNR dB)]}: ``10 log10(variance / mean squared error)`` of each plan's
    quantizer on each layer's values (activations: under the calibration histogram's density,
    :func:`refquant.intervals.expected_mse`; weights: the folded tensor's empirical error)."""
    from refquant import intervals
    errors = {}
    for method, plan in plans.items():
        quantizers = plan.activations if kind == "activations" else plan.weights
        entries = []
        for index in sorted(quantizers):
            if kind == "activations":
                density = statistics.histograms[index].density()
                error, variance = intervals.expected_mse(density, quantizers[index]), density.var()
            else:
                values = statistics.weights(index)
                error, variance = intervals.empirical_mse(values, quantizers[index]), float(np.var(values))
            entries.append((index, 10.0 * math.log10(variance / error) if error > 0 else math.inf))
        errors[method] = entries
    return errors


def plot_layer_errors(errors, ax=None, title=None):
    """SQNR (dB) per layer, one line per method: ``errors`` from :func:`layer_errors`."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for k, (method, entries) in enumerate(errors.items()):
        indices = [index for index, _ in entries]
        ax.plot(range(len(entries)), [db for _, db in entries], marker="o", color=f"C{k}",
                label=METHOD_NAMES[method])
    ax.set_xticks(range(len(indices)))
    ax.set_xticklabels([str(i) for i in indices])
    ax.set_xlabel("layer")
    ax.set_ylabel("SQNR (dB), higher is better")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_detections(image, detections, names, ax=None, title=None):
    """An image (3, H, W) float with ``detections`` drawn (:func:`refquant.draw.draw_detections`)."""
    import matplotlib.pyplot as plt

    from refquant.draw import draw_detections
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.asarray(draw_detections(image, detections, labels=names)))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def write_figures(experiment):
    """Every PNG of the module docstring into the output folder; returns their file names.

    The figures are drawn on ``matplotlib.figure.Figure`` objects, without pyplot, so that
    writing them neither needs nor changes a display backend."""
    out, names = experiment.out, []

    def save(figure, name):
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        names.append(name)
    figure = Figure(figsize=(9, 4.5))
    plot_map_table(experiment.rows, ax=figure.subplots())
    save(figure, "map_table.png")
    if not experiment.plans:
        return names
    bits = min(b for _, b in experiment.plans)
    plans = {method: plan for (method, b), plan in experiment.plans.items() if b == bits}
    for kind in ("activations", "weights"):
        indices = sorted(next(iter(plans.values())).activations if kind == "activations"
                         else next(iter(plans.values())).weights)
        columns = min(4, len(indices))
        rows = math.ceil(len(indices) / columns)
        figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax, index in zip(axes.ravel(), indices):
            plot_layer_intervals(experiment.statistics, plans, index, kind, ax=ax)
        for ax in axes.ravel()[len(indices):]:
            ax.set_axis_off()
        figure.suptitle(f"{kind.capitalize()}: fitted PGM and the intervals of each method at {bits} bits "
                        f"(first/last layer at {experiment.settings.first_bits}/{experiment.settings.last_bits})")
        save(figure, f"densities_{kind}.png")
    figure = Figure(figsize=(12, 4))
    for ax, kind in zip(figure.subplots(1, 2), ("activations", "weights")):
        plot_layer_errors(layer_errors(experiment.statistics, plans, kind), ax=ax,
                          title=f"{kind} at {bits} bits: quantization SQNR per layer")
    save(figure, "method_errors.png")
    save(detections_figure(experiment, bits), "detections.png")
    return names


def detections_figure(experiment, bits):
    """Rows: a few test images; columns: FP32, PGM PTQ and PGM QAT at ``bits`` (those that ran)."""
    from refquant.data.voc import load_image
    from refquant.decode import DETECTION_THRESHOLD
    columns = [("FP32", "float")] + [(quantized_name("pgm", bits, mode), ("pgm", mode, bits))
                                     for mode in ("ptq", "qat") if ("pgm", mode, bits) in experiment.detections]
    records = experiment.test_records[:experiment.settings.drawn_images]
    figure = Figure(figsize=(3 * len(columns), 3 * len(records)))
    axes = figure.subplots(len(records), len(columns), squeeze=False)
    for r, record in enumerate(records):
        image = load_image(record["image_path"], (record["width"], record["height"]))
        for c, (title, key) in enumerate(columns):
            shown = [d for d in experiment.detections[key]
                     if d["image"] == record["id"] and d["score"] >= DETECTION_THRESHOLD]
            plot_detections(image, shown, experiment.names, ax=axes[r, c],
                            title=f"{title}: {len(shown)} boxes" if r == 0 else f"{len(shown)} boxes")
    figure.suptitle(f"Detections with score >= {DETECTION_THRESHOLD}")
    return figure


# ================================================================================================
# Command line
# ================================================================================================

def add_arguments(parser):
    parser.add_argument("--out", default=None, help="output folder (default: a new ./refquant-demo-YYYYmmdd-HHMMSS)")
    parser.add_argument("--cfg", default=None, help="Darknet cfg (default: the shipped shapes-tiny-yolo.cfg)")
    parser.add_argument("--weights", default=None, help="Darknet weights (default: the shipped model's)")
    parser.add_argument("--names", default=None, help="class names (default: the shipped model's .names)")
    parser.add_argument("--data", default=None, help="VOC-format tree with train and test splits "
                                                     "(default: the shapes data set)")
    parser.add_argument("--bits", default=None, help=f"PTQ widths, comma-separated (default {','.join(map(str, BITS))})")
    parser.add_argument("--methods", default=None,
                        help=f"PTQ methods, comma-separated, among pgm,minmax,percentile,aciq,aciq-gauss,mse,kl "
                             f"(default {','.join(PTQ_METHODS)})")
    parser.add_argument("--qat-bits", default=None,
                        help=f"QAT widths, comma-separated, or 'none' (default {','.join(map(str, QAT_BITS))})")
    parser.add_argument("--activation-breakpoints", choices=("auto", "kink"), default="auto",
                        help="breakpoints of the activations' PGMs: chosen by BIC with 0 among the candidates "
                             "(auto, the default), or 0 alone for leaky-ReLU outputs (kink); see refquant.qat")
    parser.add_argument("--first-bits", type=int, default=8, help="width of the first convolution (default 8)")
    parser.add_argument("--last-bits", type=int, default=8, help="width of the last convolution (default 8)")
    parser.add_argument("--calibration-images", type=int, default=None,
                        help=f"train images for calibration (default {CALIBRATION_IMAGES})")
    parser.add_argument("--test-images", type=int, default=None,
                        help="evaluate on the first N test images (default: the whole test split)")
    parser.add_argument("--qat-iterations", type=int, default=None, help=f"QAT updates (default {QAT_ITERATIONS})")
    parser.add_argument("--qat-batch", type=int, default=None, help=f"images per QAT update (default {QAT_BATCH})")
    parser.add_argument("--qat-learning-rate", type=float, default=QAT_LEARNING_RATE,
                        help=f"QAT learning rate (default {QAT_LEARNING_RATE})")
    parser.add_argument("--qat-step-at", type=float, default=QAT_STEP_AT,
                        help=f"fraction of the QAT updates after which the learning rate drops x0.1 "
                             f"(default {QAT_STEP_AT:.3g}; 1: never)")
    parser.add_argument("--refit-every", type=int, default=None,
                        help=f"refit the PGMs every N QAT iterations (default {REFIT_EVERY})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the QAT batches and augmentation (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (a few images and QAT iterations) for tests and a first look")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _widths(text, option, allow_none=False):
    if text is None:
        return None
    if allow_none and text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"{option}={text!r}: expected comma-separated integers") from None
    if not values or any(not 2 <= v <= 8 for v in values):
        raise ValueError(f"{option}={text!r}: expected widths between 2 and 8")
    return values


def settings_from_arguments(args):
    """:class:`Settings` from the parsed arguments: the shipped model and data by default,
    ``--quick``'s budgets where no explicit value is given."""
    from refquant.evaluate import shipped_model
    from refquant.qat import METHODS
    from refquant.train import default_data, default_names
    weights = args.weights or (None if args.cfg else str(shipped_model(".weights")))
    if weights is None:
        raise ValueError("--weights: required with --cfg (the demo quantizes a trained model)")
    cfg = args.cfg or str(shipped_model(".cfg"))
    for path, option in ((cfg, "--cfg"), (weights, "--weights")):
        if not Path(path).is_file():
            hint = (" (the shipped model is committed with the project; in a source checkout it is "
                    "data/models/)" if option == "--weights" and not args.weights else "")
            raise FileNotFoundError(f"{option}: {path} does not exist{hint}")
    data = args.data or str(default_data())
    names = args.names or (str(shipped_model(".names")) if not args.data else str(default_names(data)))
    methods = PTQ_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown or methods}; expected some of {', '.join(METHODS)}")
    budget = dict(QUICK) if args.quick else {}
    for key in ("calibration_images", "test_images", "qat_iterations", "qat_batch", "refit_every"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    for key, value in budget.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"--{key.replace('_', '-')}={value!r}: expected a positive integer")
    if not 0 < args.qat_step_at <= 1:
        raise ValueError(f"--qat-step-at={args.qat_step_at!r}: expected a fraction in (0, 1]")
    if not args.qat_learning_rate > 0:
        raise ValueError(f"--qat-learning-rate={args.qat_learning_rate!r}: expected a positive rate")
    out = args.out or f"refquant-demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return Settings(cfg=cfg, weights=weights, names=names, data=data, out=out,
                    bits=_widths(args.bits, "--bits") or BITS, methods=methods,
                    qat_bits=QAT_BITS if args.qat_bits is None else _widths(args.qat_bits, "--qat-bits", True),
                    first_bits=args.first_bits, last_bits=args.last_bits, qat_learning_rate=args.qat_learning_rate,
                    qat_step_at=args.qat_step_at,
                    activation_breakpoints=args.activation_breakpoints,
                    seed=args.seed, quick=args.quick, progress=not args.no_progress, **budget)


def run(args):
    try:
        settings = settings_from_arguments(args)
        out = Path(settings.out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out: {out} exists and is not empty; choose a new folder")
    except (ValueError, OSError) as error:
        print(f"refquant demo: {error}", file=sys.stderr)
        return 2
    print(f"refquant demo: {settings.cfg} with {settings.weights}; results in {out}/")
    results = run_experiment(settings)
    print()
    print("\n".join(summary_lines(results)))
    print(f"report: {out / 'report.md'}")
    return 0
