"""refquant's per-image and per-layer work on a Dask cluster: evaluation, calibration histograms,
the plans' density fits and interval searches, the integer network against its simulation.

The work is independent from image to image and from layer to layer, so it is cut into tasks that
any worker may run and the client puts back together in the order of the data:

- evaluation (:func:`float_detections`, :func:`quantized_detections`, :func:`evaluate`): chunks
  of consecutive test images; each task letterboxes its images, runs the network in batches and
  decodes the head (an integer network and its float64 simulation are compared there, bit for
  bit, as in-process); the client joins the detections in image order and computes the AP once;
- calibration (:func:`calibration_statistics`): chunks of whole calibration batches; each task
  returns one histogram per batch and layer, which the client merges exactly
  (:meth:`refquant.ptq.ActivationHistogram.merge`);
- plans (:func:`quantization_plan`): one task per layer, its density fits and its interval
  search (:func:`refquant.ptq.layer_quantizers`), the fits cached in the client's statistics.

A task is a plain function of plain data: a network travels as its own files (the cfg's text and
the Darknet weights' bytes, :func:`network_files`), a plan as its JSON, a histogram or a density as
its ``to_dict``, images as their records (the tree must be at the same path on every machine);
never as a pickled refquant object. Every value a task computes is the one the in-process run
computes (the same functions on the same batches; an image's outputs do not depend on the others
of its batch), so results are identical bit for bit whatever the number of workers or the
chunking (tests/test_distributed.py). A worker that dies takes its tasks with it and Dask runs them
again elsewhere (``distributed.scheduler.allowed-failures``, 3 by default): a killed worker changes
nothing but the time.

Dask (``pip install refquant[dask]``) is imported only by :func:`connect` and the functions that
take a client; without ``--workers`` or ``--scheduler`` nothing here runs.
"""
import contextlib
import hashlib
import json
import os
import tempfile

from tqdm import tqdm

from refquant import darknet, ptq, threads
from refquant.demo.experiment import head_outputs, letterboxed_inputs, paired_head_outputs, region_detections
from refquant.density.pgm import PiecewiseGaussian
from refquant.detection.decode import detect_records
from refquant.detection.evaluate import check_names, predictor, region_head, score_detections
from refquant.folding import fold_batchnorm
from refquant.integer.network import IntegerNetwork
from refquant.plan import (
    QuantizationPlan,
    check_supported,
    layer_bits,
    quantized_outputs,
    quantizer_from_dict,
    quantizer_to_dict,
)

INSTALL_HINT = "pip install refquant[dask]"


EVALUATION_CHUNK = 50
"""Test images per evaluation task (the demo's evaluation batch: a task is one batch)."""


CONNECT_TIMEOUT = 30
"""Seconds :func:`connect` waits for a scheduler given by address."""


class DaskMissingError(ImportError, ValueError):
    """Dask's distributed scheduler is not installed (a ValueError too: the command line reports it in one line)."""


def dask_distributed():
    """The ``distributed`` package, or :class:`DaskMissingError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise DaskMissingError(f"--workers and --scheduler need Dask's distributed scheduler, which is not "
                               f"installed: {INSTALL_HINT}") from None
    return distributed


def worker_threads(workers):
    """Numba and BLAS threads per worker process so that ``workers`` processes share the usable
    cores without oversubscribing them: ``max(1, cores // workers)``."""
    return max(1, threads.usable_cores() // workers)


@contextlib.contextmanager
def connect(workers=None, scheduler=None, numba_threads=None, timeout=None):
    """A Dask client for the run, closed on exit: None with neither argument (the in-process run).

    ``workers``: start a ``LocalCluster`` of that many worker processes on this machine, each
    running one task at a time with :func:`worker_threads` Numba and BLAS threads
    (``numba_threads`` to choose; passed as ``REFQUANT_THREADS``, refquant.threads);
    ``scheduler``: the address of a running scheduler (``tcp://host:8786``), waited for at most
    ``timeout`` seconds (:data:`CONNECT_TIMEOUT` by default; OSError then). ValueError if both are given.
    """
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ValueError("--workers starts a local cluster and --scheduler uses a running one: give one of them")
    distributed = dask_distributed()
    if scheduler is not None:
        timeout = CONNECT_TIMEOUT if timeout is None else timeout
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as error:
            raise OSError(f"--scheduler: no Dask scheduler answered at {scheduler} within {timeout} s "
                          f"({error})") from None
        with client:
            yield client
        return
    count = numba_threads or worker_threads(workers)
    environment = {threads.ENVIRONMENT_VARIABLE: str(count), "NUMBA_NUM_THREADS": str(count),
                   "OMP_NUM_THREADS": str(count), "OPENBLAS_NUM_THREADS": str(count), "MKL_NUM_THREADS": str(count)}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", env=environment) as cluster, \
            distributed.Client(cluster) as client:
        yield client


# -- what travels: a network's files ------------------------------------------------------------

def network_files(net, cfg_text):
    """A network as its own files, plain data: ``{"name", "cfg", "weights", "digest"}`` (the cfg's
    text, Darknet weights bytes of ``net``'s parameters, :func:`refquant.darknet.weights_bytes`,
    and the SHA-256 of both, by which a worker keeps the network it built)."""
    weights = darknet.weights_bytes(net)
    return {"name": net.name, "cfg": cfg_text, "weights": weights, "digest": _digest(cfg_text, weights)}


def shared_files(client, files):
    """``files`` with the weights sent once to every worker (``client.scatter``), not with each task."""
    return {**files, "weights": client.scatter(files["weights"], broadcast=True, hash=False)}


_built = {}
"""A worker's networks, by the digest of their files (and plan): built once for all its tasks."""


def _cached(key, build):
    if key not in _built:
        if len(_built) >= 4:  # a run uses one network at a time: keep memory bounded
            _built.clear()
        _built[key] = build()
    return _built[key]


def _digest(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def load_network(files):
    """The Network of ``files`` (:func:`network_files`), read by :func:`refquant.darknet.load` from
    the files written to a temporary folder under their own name."""

    def build():
        with tempfile.TemporaryDirectory(prefix="refquant-") as folder:
            cfg = os.path.join(folder, files["name"])
            weights = os.path.join(folder, "network.weights")
            with open(cfg, "w", encoding="utf-8") as out:
                out.write(files["cfg"])
            with open(weights, "wb") as out:
                out.write(files["weights"])
            return darknet.load(cfg, weights)
    return _cached(("network", files["digest"]), build)


def load_integer_network(files, plan_json):
    """``(IntegerNetwork, its SimulatedNetwork)`` of a folded network's files and a plan's JSON text."""

    def build():
        folded = load_network(files)
        plan = QuantizationPlan.from_dict(json.loads(plan_json), where="plan").check(folded)
        integer = IntegerNetwork(folded, plan)
        return integer, integer.simulation()
    return _cached(("integer", files["digest"], plan_json), build)


# -- tasks (run on the workers) -----------------------------------------------------------------

def float_detections_task(files, records, names, batch_size):
    """The demo's detections of the float network on ``records`` (:func:`refquant.demo.experiment.region_detections`)."""
    net = load_network(files)
    inputs = letterboxed_inputs(records, net.input_shape[2], net.input_shape[1], progress=False)
    outputs = head_outputs(lambda x: net.forward(x, training=False), inputs, batch_size, "FP32", progress=False)
    return region_detections(outputs, records, net, names)


def quantized_detections_task(files, plan_json, records, names, batch_size, description):
    """``(integer network's detections, simulation's detections)`` on ``records``; the head outputs
    compared bit for bit first (:func:`refquant.demo.experiment.paired_head_outputs`)."""
    integer, simulation = load_integer_network(files, plan_json)
    folded = integer.net
    inputs = letterboxed_inputs(records, folded.input_shape[2], folded.input_shape[1], progress=False)
    integer_outputs, simulated_outputs = paired_head_outputs(integer, simulation, inputs, batch_size, description,
                                                             progress=False)
    return (region_detections(integer_outputs, records, folded, names),
            region_detections(simulated_outputs, records, folded, names))


def evaluation_task(files, records, names, thresh, nms, letterbox, batch_size):
    """``refquant eval``'s detections on ``records`` (:func:`refquant.detection.decode.detect_records`)."""
    net = load_network(files)
    return detect_records(predictor(net), records, region_head(net).anchors.ravel(), names, net.input_shape[2],
                          net.input_shape[1], thresh=thresh, nms=nms, letterbox=letterbox, batch_size=batch_size,
                          progress=False)


def histogram_task(files, records, first_batch, batch_size, max_bins):
    """{layer index: [ActivationHistogram.to_dict() of each batch]} of the float network's ``files``
    folded, over ``records`` cut into batches numbered from ``first_batch`` (the values of
    :func:`refquant.ptq.calibration_values`)."""
    folded = _cached(("folded", files["digest"]), lambda: fold_batchnorm(load_network(files)))
    inputs = letterboxed_inputs(records, folded.input_shape[2], folded.input_shape[1], progress=False)
    parts = {index: [] for index in quantized_outputs(folded)}
    for number, batch in enumerate(ptq.image_batches(inputs, batch_size)):
        values = ptq.calibration_values(folded, folded.forward(batch, training=False, return_all=True))
        for index, found in parts.items():
            found.append(ptq.ActivationHistogram(max_bins, first_batch + number).add(values[index]).to_dict())
    return parts


def layer_quantizers_task(files, histogram, index, bits, method, pow2_step, fit_settings, densities):
    """Layer ``index``'s quantizers (:func:`refquant.ptq.layer_quantizers`) from the folded network's
    ``files`` and its histogram (``to_dict``); ``densities``: {kind: ``to_dict``} of the fits already
    made. Returns ``{"weights", "activations"}`` (quantizer dicts, weights None when not quantized),
    ``"densities"`` {kind: ``to_dict``} and ``"fit_warnings"`` {kind: message} of the fits made here."""
    statistics = ptq.CalibrationStatistics(load_network(files), {index: ptq.ActivationHistogram.from_dict(histogram)},
                                       **fit_settings)
    statistics.densities = {(kind, index): PiecewiseGaussian.from_dict(data) for kind, data in densities.items()}
    weight, activation = ptq.layer_quantizers(statistics, index, bits, method, pow2_step)
    return {"weights": None if weight is None else quantizer_to_dict(weight),
            "activations": quantizer_to_dict(activation),
            "densities": {kind: density.to_dict() for (kind, _), density in statistics.densities.items()
                          if kind not in densities},
            "fit_warnings": {kind: message for (kind, _), message in statistics.fit_warnings.items()}}


# -- the client's side --------------------------------------------------------------------------

def chunks(items, size):
    """``items`` cut into consecutive lists of ``size`` (the last shorter)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk size must be an int >= 1, got {size!r}")
    return [items[start:start + size] for start in range(0, len(items), size)]


def run_tasks(client, function, calls, description, progress=True):
    """``function(**call)`` for every call, on the cluster: the results in the order of ``calls``.

    A tqdm bar counts the finished tasks. The first task that fails raises its exception here
    (after the others are cancelled); a task lost with its worker is run again by Dask.
    """
    distributed = dask_distributed()
    futures = [client.submit(function, **call, pure=False) for call in calls]
    position = {future.key: number for number, future in enumerate(futures)}
    results = [None] * len(futures)
    try:
        with tqdm(total=len(futures), desc=description, unit="task", disable=not progress, leave=False) as bar:
            for future in distributed.as_completed(futures):
                results[position[future.key]] = future.result()
                bar.update(1)
    finally:
        client.cancel(futures)
    return results


def _plain(records):
    """Records with their paths as text (what a task receives)."""
    return [{**record, "image_path": str(record["image_path"])} for record in records]


def float_detections(client, files, records, names, batch_size, images_per_chunk=EVALUATION_CHUNK,
                     progress=True):
    """The demo's float-network detections of ``records``, in image order, computed on the cluster."""
    shared = shared_files(client, files)
    calls = [{"files": shared, "records": chunk, "names": list(names), "batch_size": batch_size}
             for chunk in chunks(_plain(records), images_per_chunk)]
    return [d for found in run_tasks(client, float_detections_task, calls, "FP32", progress) for d in found]


def quantized_detections(client, files, plan, records, names, batch_size, description,
                         images_per_chunk=EVALUATION_CHUNK, progress=True):
    """``(integer detections, simulated detections)`` of a folded network's ``files`` with ``plan``
    on ``records``, in image order; IntegerMismatchError from the first chunk where they differ."""
    shared = shared_files(client, files)
    plan_json = json.dumps(plan.to_dict())
    calls = [{"files": shared, "plan_json": plan_json, "records": chunk, "names": list(names),
              "batch_size": batch_size, "description": f"{description}, test images {start}.."}
             for start, chunk in zip(range(0, len(records), images_per_chunk),
                                     chunks(_plain(records), images_per_chunk))]
    pairs = run_tasks(client, quantized_detections_task, calls, description, progress)
    return [d for pair in pairs for d in pair[0]], [d for pair in pairs for d in pair[1]]


def evaluate(client, files, net, records, names, thresh, nms, iou_threshold=0.5, use_07=False, letterbox=True,
             batch_size=16, images_per_chunk=EVALUATION_CHUNK, progress=True):
    """:func:`refquant.detection.evaluate.evaluate` of the network ``files`` (``net`` the same,
    read by the client) with its images on the cluster: ``(ap, detections)``."""
    check_names(net, names, "evaluate")
    shared = shared_files(client, files)
    calls = [{"files": shared, "records": chunk, "names": list(names), "thresh": thresh, "nms": nms,
              "letterbox": letterbox, "batch_size": batch_size}
             for chunk in chunks(_plain(records), images_per_chunk)]
    found = [d for part in run_tasks(client, evaluation_task, calls, "detect", progress) for d in part]
    return score_detections(found, records, names, iou_threshold, use_07), found


def calibration_statistics(client, net, files, records, batch_size=4, max_bins=ptq.DEFAULT_BINS,
                           baseline_samples=2**17, seed=0, progress=True,
                           activation_breakpoints=ptq.DEFAULT_ACTIVATION_BREAKPOINTS,
                           activation_max_pieces=ptq.ACTIVATION_MAX_PIECES, batches_per_chunk=1):
    """:func:`refquant.ptq.calibration_statistics` of ``net`` (its files ``files``) over the
    letterboxed images of ``records``, the histograms counted on the cluster, ``batches_per_chunk``
    batches of ``batch_size`` images a task, and merged in the client."""
    folded = fold_batchnorm(net)
    check_supported(folded)  # before the long pass
    if not records:
        raise ValueError("calibration: no images")
    shared = shared_files(client, files)
    per_chunk = batch_size * batches_per_chunk
    calls = [{"files": shared, "records": chunk, "first_batch": number * batches_per_chunk,
              "batch_size": batch_size, "max_bins": max_bins}
             for number, chunk in enumerate(chunks(_plain(records), per_chunk))]
    parts = run_tasks(client, histogram_task, calls, "calibration", progress)
    histograms = {}
    for index in quantized_outputs(folded):
        pieces = [ptq.ActivationHistogram.from_dict(data) for part in parts for data in part[index]]
        histograms[index] = pieces[0].merge(*pieces[1:])
    return ptq.CalibrationStatistics(
        folded, histograms, baseline_samples=baseline_samples, seed=seed,
        activation_breakpoints=activation_breakpoints, max_pieces_activations=activation_max_pieces)


def quantization_plan(client, statistics, files, weight_bits, activation_bits, method="pgm", first_bits=8,
                      last_bits=8, pow2_step=False, progress=False):
    """:func:`refquant.ptq.quantization_plan` with every layer's fits and interval search a task.

    ``files``: the folded network of ``statistics`` (:func:`network_files`). The fits made by the
    tasks join ``statistics``' cache (and its fit warnings), as in-process, so the next plan of the
    same statistics does not make them again.
    """
    ptq.check_plan_method(method, pow2_step)
    fitted = ptq.plan_statistics(statistics, method)
    widths = layer_bits(fitted.net, weight_bits, activation_bits, first_bits, last_bits)
    settings = {"max_pieces_weights": fitted.max_pieces_weights, "max_pieces_activations": fitted.max_pieces_activations,
                "baseline_samples": fitted.baseline_samples, "seed": fitted.seed, "fit_options": fitted.fit_options,
                "activation_breakpoints": fitted.activation_breakpoints}
    shared = shared_files(client, files)
    calls = [{"files": shared, "histogram": fitted.histograms[index].to_dict(), "index": index, "bits": widths[index],
              "method": method, "pow2_step": pow2_step, "fit_settings": settings,
              "densities": {kind: fitted.densities[(kind, index)].to_dict()
                            for kind in ("weights", "activations") if (kind, index) in fitted.densities}}
             for index in sorted(widths)]
    quantizers = {}
    for call, found in zip(calls, run_tasks(client, layer_quantizers_task, calls, f"plan ({method})", progress)):
        index = call["index"]
        for kind, data in found["densities"].items():
            fitted.densities[(kind, index)] = PiecewiseGaussian.from_dict(data)
        for kind, message in found["fit_warnings"].items():
            fitted.fit_warnings[(kind, index)] = message
        weight = None if found["weights"] is None else quantizer_from_dict(found["weights"], f"layer {index} weights")
        quantizers[index] = (weight, quantizer_from_dict(found["activations"], f"layer {index} outputs"))
    return ptq.quantization_plan(statistics, weight_bits, activation_bits, method, first_bits, last_bits,
                                 pow2_step, progress=False, quantizers=quantizers)
