"""The demo's arithmetic-profiles section (``refquant demo --profiles``): the mAP of the 8-bit and
4-bit PGM PTQ models run as the integer network under each arithmetic profile
(``refquant.integer.profiles``: refquant's exact rule, TFLite's gemmlowp rules, onnxruntime's and
fbgemm's float scale), so a user sees whether the rounding rule and the engine's layer decomposition
change detection quality. Each profile's integer network is checked against its own float64
simulation on every batch (``refquant.demo.experiment.paired_head_outputs``).
"""
import time

import numpy as np

from refquant.demo.experiment import letterboxed_inputs, mean_average_precision, paired_head_outputs

PROFILE_BITS = (8, 4)
"""Widths of the PGM PTQ plans scored under every profile."""


def profile_rows(folded, plans, inputs, records, names, batch_size, progress=True):
    """One row per (width, profile): ``{"bits", "profile", "mAP", "integer_equals_simulation",
    "head_outputs_differing_from_exact", "seconds"}``.

    ``plans``: {bits: plan} of ``folded``; ``inputs`` (N, 3, H, W) the letterboxed test images of
    ``records``. ``mAP`` is the integer network's (equal to its simulation's, checked batch by batch:
    ``IntegerMismatchError`` otherwise); ``head_outputs_differing_from_exact``: the fraction of the
    region head's output values that differ from the exact profile's.
    """
    from refquant.integer.network import IntegerNetwork
    from refquant.integer.profiles import PROFILES
    rows = []
    for bits, plan in plans.items():
        exact_outputs = None
        for name in PROFILES:
            start = time.perf_counter()
            integer = IntegerNetwork(folded, plan, name)
            outputs, _ = paired_head_outputs(integer, integer.simulation(), inputs, batch_size,
                                             f"{name} {bits}-bit", progress)
            if exact_outputs is None:
                exact_outputs = outputs
            mAP, _ = mean_average_precision(outputs, records, folded, names)
            rows.append({"bits": bits, "profile": name, "mAP": mAP, "integer_equals_simulation": True,
                         "head_outputs_differing_from_exact": float(np.mean(outputs != exact_outputs)),
                         "seconds": time.perf_counter() - start})
    return rows


def profile_section(experiment):
    """:func:`profile_rows` for a demo run (``refquant.demo.experiment.Experiment`` after its PTQ rows):
    the run's PGM plans at :data:`PROFILE_BITS` (made now if the run had none), its folded network and
    test images (loaded here when a cluster evaluated the rows). Records the time as
    ``timings["profiles"]``."""
    start = time.perf_counter()
    s = experiment.settings
    plans = {bits: experiment.plans.get(("pgm", bits)) or experiment.make_plan("pgm", bits) for bits in PROFILE_BITS}
    inputs = experiment.test_inputs
    if inputs is None:
        _, height, width = experiment.net.input_shape
        inputs = letterboxed_inputs(experiment.test_records, width, height, s.progress, "test images")
    rows = profile_rows(experiment.folded, plans, inputs, experiment.test_records, experiment.names,
                        s.evaluation_batch, s.progress)
    experiment.timings["profiles"] = time.perf_counter() - start
    return rows


def profile_lines(rows):
    """The section as text: mAP (%) per profile (rows) and width (columns), and the share of head
    outputs that differ from the exact profile's."""
    widths = sorted({r["bits"] for r in rows}, reverse=True)
    names = list(dict.fromkeys(r["profile"] for r in rows))
    found = {(r["profile"], r["bits"]): r for r in rows}
    header = f"{'profile':<18}" + "".join(f"{f'{b}-bit mAP':>12}{'head != exact':>15}" for b in widths)
    lines = [header]
    for name in names:
        cells = "".join(f"{found[(name, b)]['mAP']:>12.2f}{100 * found[(name, b)]['head_outputs_differing_from_exact']:>14.2f}%"
                        for b in widths)
        lines.append(f"{name:<18}{cells}")
    return lines
