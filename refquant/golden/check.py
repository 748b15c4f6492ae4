"""``refquant golden check DIR``: every file against its sha256, every vector's inputs regenerated
from its seeds, its outputs recomputed from the stored inputs (as another implementation would)
and compared under the manifest's tolerances; each mismatch reported with its location.

The manifest is validated before any file it names is opened (docs/SPECIFICATION.md, section
16): a manifest that is missing, not UTF-8 JSON, of another format, or whose ``files`` and
``vectors`` tables do not have the documented types is a :class:`ManifestError` (the command's
exit status 2: the directory is not one refquant can check), not a mismatch (status 1: the
directory was checked and differs); a file name that is absolute, climbs out with ``..`` or
resolves outside the directory (a symbolic link) is refused the same way.
"""
import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refquant import darknet, validate
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
from refquant.golden.vectors import VECTORS, vectors_for
from refquant.integer.profiles import PROFILES


class ManifestError(validate.InputError):
    """A golden manifest refquant cannot use (missing, malformed, naming files outside its
    directory); the message names the file and the key."""


ARRAY_ROLES = ("input", "output")


def check(directory, vectors=None, progress=None):
    """Every mismatch between the golden vectors in ``directory`` and refquant: a list of :class:`Mismatch`.

    ``vectors``: names of the vectors to check (default all); the file hashes are always checked.
    ManifestError (a ValueError) if the manifest cannot be used (:func:`read_manifest`).
    """
    directory = Path(directory)
    _OUTPUT_CACHE.clear()  # recompute, never reuse an export's results
    selected = list(VECTORS) if vectors is None else list(vectors)
    unknown = sorted(set(selected) - set(VECTORS))
    if unknown:
        raise ValueError(f"golden check: unknown vectors {unknown}; known: {', '.join(VECTORS)}")
    manifest_path = directory / MANIFEST
    manifest = read_manifest(directory)
    profile_vectors = vectors_for(manifest.get("profile", {}).get("name", "exact"))
    mismatches = _vector_names(manifest, manifest_path)
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
        mismatches += _check_vector(directory, manifest["vectors"][name], profile_vectors[name], corrupt)
    if "network" in selected:
        mismatches += _check_network_files(directory, corrupt)
    return mismatches


def read_manifest(directory):
    """The manifest of ``directory``, validated: ManifestError naming the file and key unless it
    is a JSON object of this format and version whose ``files`` map names inside the directory
    to ``{sha256, bytes}`` and whose ``vectors`` map names to ``{file, arrays, ...}``, every
    array ``{role, shape, dtype, tolerance}`` (the schema of :mod:`refquant.golden.format`)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {directory} is not a golden-vector directory "
                            "(make one with 'refquant golden export DIR')")
    try:
        manifest = validate.read_json(path, "golden-vector manifest")
        _check_manifest(manifest, path, directory)
    except ManifestError:
        raise
    except validate.InputError as error:
        raise ManifestError(str(error)) from None
    return manifest


def _check_manifest(manifest, path, directory):
    validate.json_object(manifest, f"{path}")
    found = (manifest.get("format"), manifest.get("format_version"))
    version = found[1]
    if found[0] != FORMAT or isinstance(version, bool) or version != FORMAT_VERSION:
        raise ManifestError(f"{path}: not a golden-vector manifest this refquant reads (format {found[0]!r} "
                            f"version {found[1]!r}, expected {FORMAT!r} version {FORMAT_VERSION})")
    if "profile" in manifest:  # written by 'golden export --profile NAME' for a profile other than exact
        profile = validate.json_object(manifest["profile"], f"{path}: profile", closed=False)
        if profile.get("name") not in PROFILES:
            raise ManifestError(f"{path}: profile.name: expected one of {', '.join(PROFILES)}, "
                                f"got {profile.get('name')!r}")
    files = validate.json_object(manifest.get("files"), f"{path}: files")
    for name, entry in files.items():
        where = f"{path}: files[{name!r}]"
        confined(directory, name, where)
        validate.json_object(entry, where, required=("sha256",), optional=("bytes",), closed=False)
        digest = validate.json_string(entry["sha256"], f"{where}.sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(f"{where}.sha256: expected 64 lower-case hexadecimal digits, got {digest[:80]!r}")
        if "bytes" in entry:
            validate.json_integer(entry["bytes"], f"{where}.bytes", validate.at_least(0))
    for name, entry in validate.json_object(manifest.get("vectors"), f"{path}: vectors").items():
        where = f"{path}: vectors[{name!r}]"
        validate.json_object(entry, where)
        file_name = validate.json_string(entry.get("file"), f"{where}.file")
        confined(directory, file_name, f"{where}.file")
        if file_name not in files:
            raise ManifestError(f"{where}.file: {file_name!r} is not in the files table (no sha256 to check it by)")
        for array, spec in validate.json_object(entry.get("arrays"), f"{where}.arrays").items():
            _check_array_entry(spec, f"{where}.arrays[{array!r}]")


def _check_array_entry(spec, where):
    # closed=False: an array entry may carry descriptive keys (what the array means) beside these
    validate.json_object(spec, where, required=("role", "shape", "dtype", "tolerance"), closed=False)
    if spec["role"] not in ARRAY_ROLES:
        raise ManifestError(f"{where}.role: expected one of {', '.join(ARRAY_ROLES)}, got {spec['role']!r}")
    for k, size in enumerate(validate.json_list(spec["shape"], f"{where}.shape")):
        validate.json_integer(size, f"{where}.shape[{k}]", validate.at_least(0))
    validate.json_string(spec["dtype"], f"{where}.dtype")
    tolerance = validate.json_object(spec["tolerance"], f"{where}.tolerance", required=("rtol", "atol", "why"))
    for key in ("rtol", "atol"):
        validate.json_number(tolerance[key], f"{where}.tolerance.{key}", validate.at_least(0))
    validate.json_string(tolerance["why"], f"{where}.tolerance.why")


def confined(directory, name, where):
    """``directory / name`` if ``name`` is a relative path that stays inside ``directory`` (no
    ``..``, not absolute, not through a symbolic link that leaves it); ManifestError naming
    ``where`` otherwise. A manifest must not make ``golden check`` read ``../../etc/hostname``."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ManifestError(f"{where}: expected a file name, got {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or os.path.isabs(name) or "\\" in name:
        raise ManifestError(f"{where}: {name!r} is not a plain relative path inside the directory")
    root = Path(directory).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ManifestError(f"{where}: {name!r} resolves to {target}, outside {root}")
    return target


def _vector_names(manifest, path):
    """Mismatches for the vectors this refquant makes that the manifest lacks, and the reverse."""
    problems = []
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
    elif "network.cfg" not in corrupt and (directory / "network.cfg").read_bytes() != NETWORK_CFG.encode():
        found.append(Mismatch("network.cfg", "", None, None, None, "differs from refquant.golden.network_vectors.NETWORK_CFG"))
    if "network.npz" in corrupt or "network.weights" in corrupt or not (directory / "network.npz").is_file():
        return found
    try:
        stored = _load_npz(directory / "network.npz")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return found
    try:
        net = network_from({k: v for k, v in stored.items() if k.startswith("params/")})
    except (KeyError, ValueError, TypeError, IndexError) as error:  # network.npz and its hash both replaced
        return found + [Mismatch("network.npz", "", None, None, None, f"does not describe the network: {error!r}")]
    try:
        _, arrays = darknet.read_weights(directory / "network.weights", net)
    except darknet.CfgError as error:
        return found + [Mismatch("network.weights", "", None, None, None, str(error))]
    for (index, name), value in arrays.items():
        found += _compare_stored(stored, f"params/{index}/{name}", np.asarray(value), "network.weights")
    for name in PLANS:
        path = directory / f"plan_{name}.json"
        if f"plan_{name}.json" in corrupt:
            continue
        try:
            plan = plan_module.QuantizationPlan.load(path)
        except (ValueError, OSError) as error:
            found.append(Mismatch(path.name, "", None, None, None, str(error)))
            continue
        for key, value in plan_arrays(f"plans/{name}", plan).items():
            found += _compare_stored(stored, key, value, path.name)
    return found


def _compare_stored(stored, key, value, file_name):
    if key not in stored:
        return [Mismatch(file_name, key, None, None, None, "not in network.npz")]
    result = compare(stored[key], value, EXACT)
    return [] if result is None else [Mismatch(file_name, key, *result)]
