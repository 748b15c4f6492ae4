"""``refquant golden check DIR``: every file against its sha256, every vector's inputs regenerated
from its seeds, its outputs recomputed from the stored inputs (as another implementation would)
and compared under the manifest's tolerances; each mismatch reported with its location.
"""
import json
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refquant import darknet
from refquant import plan as plan_module
from refquant.golden.format import (
    _OUTPUT_CACHE,
    EXACT,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    Mismatch,
    _load_npz,
    _memoised_outputs,
    compare,
    sha256,
    tolerance_of,
)
from refquant.golden.network_vectors import NETWORK_CFG, PLANS, network_from, plan_arrays
from refquant.golden.vectors import VECTORS


def check(directory, vectors=None, progress=None):
    """Every mismatch between the golden vectors in ``directory`` and refquant: a list of :class:`Mismatch`.

    ``vectors``: names of the vectors to check (default all); the file hashes are always checked.
    """
    directory = Path(directory)
    _OUTPUT_CACHE.clear()  # recompute, never reuse an export's results
    selected = list(VECTORS) if vectors is None else list(vectors)
    unknown = sorted(set(selected) - set(VECTORS))
    if unknown:
        raise ValueError(f"golden check: unknown vectors {unknown}; known: {', '.join(VECTORS)}")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [Mismatch("manifest", "", None, None, None,
                         f"{manifest_path}: missing (run 'refquant golden export')")]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return [Mismatch("manifest", "", None, None, None,
                         f"{manifest_path}:{error.lineno}: not valid JSON ({error.msg})")]
    mismatches = _check_manifest(manifest, manifest_path)
    if mismatches:
        return mismatches
    corrupt = set()
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            mismatches.append(Mismatch(name, "", None, None, None, f"{path}: missing file"))
            corrupt.add(name)
        elif sha256(path) != entry["sha256"]:
            mismatches.append(Mismatch(name, "", None, entry["sha256"], sha256(path), "sha256 differs: the file was "
                                       "modified after export"))
    for name in tqdm(selected, desc="golden check", unit="vector",
                     disable=None if progress is None else not progress, leave=False):
        mismatches += _check_vector(directory, manifest["vectors"][name], VECTORS[name], corrupt)
    if "network" in selected:
        mismatches += _check_network_files(directory, corrupt)
    return mismatches


def _check_manifest(manifest, path):
    problems = []
    if not isinstance(manifest, dict):
        return [Mismatch("manifest", "", None, "a JSON object", type(manifest).__name__,
                         f"{path}: not a golden-vector manifest (expected a JSON object)")]
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        problems.append(Mismatch("manifest", "", None, f"{FORMAT} v{FORMAT_VERSION}",
                                 f"{manifest.get('format')} v{manifest.get('format_version')}",
                                 f"{path}: not a golden-vector manifest this refquant reads"))
        return problems
    for key in ("files", "vectors"):
        if not isinstance(manifest.get(key), dict):
            problems.append(Mismatch("manifest", "", None, None, None, f"{path}: missing the {key!r} table"))
    if problems:
        return problems
    for name, entry in manifest["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
            problems.append(Mismatch("manifest", "", None, None, None,
                                     f"{path}: files[{name!r}] is malformed (expected an object with a 'sha256' string)"))
    for name, entry in manifest["vectors"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                and isinstance(entry.get("arrays", {}), dict)
                and all(isinstance(a, dict) for a in entry.get("arrays", {}).values())):
            problems.append(Mismatch(name, "", None, None, None,
                                     f"{path}: vectors[{name!r}] is malformed (expected an object with a 'file' "
                                     "string and an 'arrays' object of objects)"))
    if problems:
        return problems
    missing = set(VECTORS) - set(manifest["vectors"])
    extra = set(manifest["vectors"]) - set(VECTORS)
    for name in sorted(missing):
        problems.append(Mismatch(name, "", None, None, None, f"{path}: vector missing from the manifest"))
    for name in sorted(extra):
        problems.append(Mismatch(name, "", None, None, None, f"{path}: unknown vector (not made by this refquant)"))
    return problems


def _check_vector(directory, entry, vector, corrupt):
    path = directory / entry["file"]
    if entry["file"] in corrupt:
        return []  # reported as missing
    try:
        stored = _load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        return [Mismatch(vector.name, "", None, None, None, f"{path}: unreadable ({error})")]
    mismatches = []
    listed = entry.get("arrays", {})
    for name in sorted(set(listed) ^ set(stored)):
        where = "in the manifest but not in the file" if name in listed else "in the file but not in the manifest"
        mismatches.append(Mismatch(vector.name, name, None, None, None, f"array {where}"))
    regenerated = vector.inputs()
    for name in sorted(set(regenerated) | {n for n, e in listed.items() if e.get("role") == "input"}):
        mismatches += _check_array(vector, name, regenerated, stored, listed, "input")
    if any(m.array in regenerated for m in mismatches if "missing" in m.detail):
        return mismatches
    try:
        inputs = {name: stored[name] for name in regenerated}
        recomputed = _memoised_outputs(vector.name, vector.outputs, inputs)
    except Exception as error:  # a tampered input may make refquant refuse it: that is a mismatch too
        return mismatches + [Mismatch(vector.name, "", None, None, None,
                                      f"recomputing the outputs from the stored inputs failed: {error}")]
    for name in sorted(set(recomputed) | {n for n, e in listed.items() if e.get("role") == "output"}):
        mismatches += _check_array(vector, name, recomputed, stored, listed, "output")
    return mismatches


def _check_array(vector, name, computed, stored, listed, role):
    if name not in computed:
        return [Mismatch(vector.name, name, None, None, None, f"listed as {role} but refquant makes no such array")]
    value = np.asarray(computed[name])
    if name not in stored:
        return [Mismatch(vector.name, name, None, None, None, "missing from the file")]
    found = []
    entry = listed.get(name)
    tolerance = tolerance_of(vector, name, value)
    if entry is not None:
        if entry.get("role") != role:
            found.append(Mismatch(vector.name, name, None, role, entry.get("role"), "role in the manifest"))
        if entry.get("shape") != list(stored[name].shape) or entry.get("dtype") != stored[name].dtype.str:
            found.append(Mismatch(vector.name, name, None, (entry.get("shape"), entry.get("dtype")),
                                  (list(stored[name].shape), stored[name].dtype.str), "manifest shape/dtype vs file"))
        if entry.get("tolerance") != tolerance.to_dict():
            found.append(Mismatch(vector.name, name, None, tolerance.to_dict(), entry.get("tolerance"),
                                  "tolerance in the manifest differs from this refquant's"))
    result = compare(stored[name], value, tolerance)
    if result is not None:
        index, expected, got, detail = result
        found.append(Mismatch(vector.name, name, index, expected, got, f"{role}: {detail}"))
    return found


def _check_network_files(directory, corrupt):
    """network.cfg, network.weights and the plan files against the arrays they duplicate."""
    found = []
    if not (directory / "network.cfg").is_file():
        if "network.cfg" not in corrupt:
            found.append(Mismatch("network.cfg", "", None, None, None, f"{directory / 'network.cfg'}: missing file"))
    elif "network.cfg" not in corrupt and (directory / "network.cfg").read_text() != NETWORK_CFG:
        found.append(Mismatch("network.cfg", "", None, None, None, "differs from refquant.golden.network_vectors.NETWORK_CFG"))
    if "network.npz" in corrupt or "network.weights" in corrupt or not (directory / "network.npz").is_file():
        return found
    try:
        stored = _load_npz(directory / "network.npz")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return found
    net = network_from({k: v for k, v in stored.items() if k.startswith("params/")})
    try:
        _, arrays = darknet.read_weights(directory / "network.weights", net)
    except darknet.CfgError as error:
        return found + [Mismatch("network.weights", "", None, None, None, str(error))]
    for (index, name), value in arrays.items():
        result = compare(stored[f"params/{index}/{name}"], np.asarray(value), EXACT)
        if result is not None:
            found.append(Mismatch("network.weights", f"params/{index}/{name}", *result))
    for name in PLANS:
        path = directory / f"plan_{name}.json"
        if f"plan_{name}.json" in corrupt:
            continue
        try:
            plan = plan_module.QuantizationPlan.load(path)
        except ValueError as error:
            found.append(Mismatch(path.name, "", None, None, None, str(error)))
            continue
        for key, value in plan_arrays(f"plans/{name}", plan).items():
            result = compare(stored[key], value, EXACT)
            if result is not None:
                found.append(Mismatch(path.name, key, *result))
    return found
