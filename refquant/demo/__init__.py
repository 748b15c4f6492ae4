"""``refquant demo``: the paper's experiment end to end on the shipped data and model
(docs/demo.md): FP32, post-training quantization by the PGM method and the baselines at each
width, quantization-aware training, every quantized model run as the integer network and as its
float64 simulation. :func:`run_experiment` runs it and writes the results, report and plots.
"""
from refquant.demo.experiment import Experiment
from pathlib import Path
import json
import numpy as np
from refquant.demo.report import report_markdown
from refquant.demo.report import results_dict
import time
from refquant.demo.plots import write_figures



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
