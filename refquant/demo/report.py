"""The demo's results: the ``results.json`` dictionary, the printed table, the targets and
``report.md``.
"""
import dataclasses
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

from refquant.demo.experiment import METHOD_NAMES, TARGETS, qat_schedule
from refquant.demo.profiles import profile_lines


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


def portable_path(path):
    """A path as the results record it, without the machine's own folders: ``<shipped>/NAME`` for
    the shipped model, ``<cache>/...`` under :func:`refquant.cache_dir`, relative to the current
    folder below it, else unchanged."""
    if path is None:
        return None
    from refquant import cache_dir
    from refquant.detection.evaluate import MODELS_DIRS
    resolved = Path(path).resolve()
    for label, folder in [("<shipped>", d) for d in MODELS_DIRS] + [("<cache>", cache_dir()), (".", Path.cwd())]:
        try:
            relative = resolved.relative_to(Path(folder).resolve())
        except ValueError:
            continue
        return str(relative) if label == "." else f"{label}/{relative.as_posix()}"
    return str(path)


def results_dict(experiment, figures):
    from refquant.train import file_digest
    s = experiment.settings
    results = {
        "format": "refquant-demo-results", "version": 1,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": " ".join(["refquant"] + sys.argv[1:]) if Path(sys.argv[0]).stem in ("refquant", "__main__")
        else "refquant demo",
        "model": {"cfg": portable_path(s.cfg), "weights": portable_path(s.weights), "names": portable_path(s.names),
                  "weights_sha256": file_digest(s.weights) if s.weights else None},
        "data": portable_path(s.data),
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
        "settings": {key: portable_path(value) if key in ("cfg", "weights", "names", "data", "out") else value
                     for key, value in dataclasses.asdict(s).items()},
        "rows": experiment.rows,
        "integer_equals_simulation": all(r["integer_equals_simulation"] for r in experiment.rows
                                         if r["integer_mAP"] is not None),
        "fit_warnings": experiment.fit_warnings,
        "timings_seconds": {key: round(value, 2) for key, value in experiment.timings.items()},
        "figures": figures,
        "profiles": experiment.profiles,
    }
    results["targets"] = target_checks(results["rows"])
    return results


def _find(rows, method, mode, bits):
    for entry in rows:
        if entry["method"] == method and entry["mode"] == mode and entry["weight_bits"] == bits:
            return entry
    return None


def target_checks(rows):
    """The demo's targets (:data:`refquant.demo.experiment.TARGETS`), each ``{"description", "value", "met"}`` (None when the row was not run)."""
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
    keys = []
    for entry in rows:
        key = (entry["method"], entry["mode"])
        if entry["mode"] != "float" and key not in keys:
            keys.append(key)
    labels = {key: f"{METHOD_NAMES[key[0]]} ({key[1].upper()})" for key in keys}
    width = max([18] + [len(label) + 2 for label in labels.values()])
    lines = [f"{'':<{width}}{'FP32':>8}" + "".join(f"{f'{b}-bit':>8}" for b in bits)]
    if fp32:
        lines.append(f"{'float':<{width}}{fp32['mAP']:>8.2f}" + "".join(f"{'':>8}" for _ in bits))
    for key in keys:
        cells = []
        for b in bits:
            found = _find(rows, key[0], key[1], b)
            cells.append(f"{found['mAP']:>8.2f}" if found else f"{'-':>8}")
        lines.append(f"{labels[key]:<{width}}{'':>8}" + "".join(cells))
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
    quick = results["settings"].get("quick", False)
    for check in results["targets"]:
        value = f"{check['value']:.2f}" if isinstance(check["value"], float) else str(check["value"])
        verdict = "met    " if check["met"] else "NOT met"
        if quick and "integer" not in check["description"]:
            verdict = "not assessed at --quick budgets;"  # a handful of images and updates: no verdict
        lines.append(f"  {verdict}  {check['description']}: {value}")
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
    if results.get("profiles"):
        lines += ["## Arithmetic profiles", "",
                  "The PGM PTQ models run as the integer network under each arithmetic profile "
                  "(docs/SPECIFICATION.md, section 11.8): `exact` is refquant's rule; `gemmlowp` and "
                  "`gemmlowp-single` TFLite's (Q31 multiplier, two roundings or one; leaky ReLU a separate "
                  "LEAKY_RELU op on a pre-activation grid); `float-scale` onnxruntime's and fbgemm's (float32 "
                  "scale, round half to even; leaky ReLU a separate lookup table). Each profile's integer "
                  "network equalled its own simulation on every image.", "", "```",
                  *profile_lines(results["profiles"]), "```", ""]
    if results["fit_warnings"]:
        lines += ["## Fit warnings", ""] + [f"- {key}: {value}" for key, value in results["fit_warnings"].items()] + [""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in results["figures"]] + [""]
    lines += ["## Timings (seconds)", ""] + [f"- {key}: {value}" for key, value in results["timings_seconds"].items()]
    return "\n".join(lines) + "\n"
