"""``refquant golden export DIR``: every vector's arrays, the network files and the manifest.
"""
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

import refquant
from refquant import darknet
from refquant.atomic import remove_partials, write_text
from refquant.golden.format import (
    _OUTPUT_CACHE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    _memoised_outputs,
    meaning_of,
    sha256,
    tolerance_of,
    write_npz,
)
from refquant.golden.network_vectors import NETWORK_CFG, PLANS, network_from, plan_from
from refquant.golden.vectors import VECTORS, vectors_for
from refquant.integer.profiles import get_profile


def _array_entry(vector, name, value, role):
    return {"role": role, "shape": list(value.shape), "dtype": value.dtype.str,
            "tolerance": tolerance_of(vector, name, value).to_dict(), "meaning": meaning_of(vector, name)}


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def export(directory, progress=None, profile="exact"):
    """Write every vector, the network files and the manifest into ``directory``; returns the manifest.

    ``profile``: the arithmetic profile of the ``integer_network`` vector (``refquant.integer.profiles``);
    any other than ``exact`` is named in the manifest with its rules and sources (``exact``'s
    manifest is the same as before profiles existed)."""
    chosen = get_profile(profile)
    vectors = vectors_for(chosen)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The manifest is written last: a killed export leaves none, so it never looks complete.
    (directory / MANIFEST).unlink(missing_ok=True)
    remove_partials(directory)
    _OUTPUT_CACHE.clear()  # every export computes afresh
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "refquant_version": refquant.__version__,
                "numpy_version": np.__version__,
                "comparison": "shapes and dtypes equal; |got - expected| <= atol + rtol * |expected| element by "
                              "element, NaN only where NaN is expected; rtol = atol = 0 means equality",
                "files": {}, "vectors": {}}
    if chosen.name != "exact":
        manifest["profile"] = {"name": chosen.name, "rules": chosen.rules, "sources": list(chosen.sources),
                               "vectors": ["integer_network"]}
    for vector in tqdm(vectors.values(), desc="golden export", unit="vector",
                       disable=None if progress is None else not progress, leave=False):
        inputs = vector.inputs()
        outputs = _memoised_outputs(vector.name, vector.outputs, inputs)
        clash = set(inputs) & set(outputs)
        if clash:
            raise AssertionError(f"golden {vector.name}: arrays both input and output: {sorted(clash)}")
        arrays = {**{k: np.asarray(v) for k, v in inputs.items()}, **{k: np.asarray(v) for k, v in outputs.items()}}
        file_name = f"{vector.name}.npz"
        write_npz(directory / file_name, arrays)
        manifest["vectors"][vector.name] = {
            "file": file_name, "description": vector.description, "definitions": list(vector.definitions),
            "seeds": vector.seeds, "parameters": _json_ready(vector.parameters),
            "arrays": {name: _array_entry(vector, name, value, "input" if name in inputs else "output")
                       for name, value in arrays.items()}}
        manifest["files"][file_name] = {"sha256": sha256(directory / file_name),
                                        "bytes": (directory / file_name).stat().st_size}
    for name in _network_files(directory):
        manifest["files"][name] = {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
    write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return manifest


def _network_files(directory):
    """Write network.cfg, network.weights and the plan JSON files; returns their names."""
    inputs = VECTORS["network"].inputs()
    write_text(directory / "network.cfg", NETWORK_CFG)
    net = network_from(inputs)
    darknet.save_weights(net, directory / "network.weights")
    outputs = _memoised_outputs("network", VECTORS["network"].outputs, inputs)
    for name in PLANS:
        plan_from(f"plans/{name}", outputs, net, name).save(directory / f"plan_{name}.json")
    return ["network.cfg", "network.weights"] + [f"plan_{name}.json" for name in PLANS]
