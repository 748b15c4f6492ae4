"""Tests of refquant.golden: export then check, tampering, missing files, the manifest schema,
determinism, and spot checks of the vectors against independent truths (each docstring names it).

One export (module fixture) serves every test; tampering happens on copies.
"""
import dataclasses
import fractions
import hashlib
import importlib
import json
import math
import shutil

import numpy as np
import pytest
from scipy import integrate, stats

from refquant import cli, ptq
from refquant.golden import check, export, format, network_vectors, numeric_vectors, vectors
from refquant.testing import numpy_correlation


@pytest.fixture(scope="module")
def exported(golden_export):
    """A directory written by ``refquant golden export`` (through the command line; tests/conftest.py)."""
    return golden_export


def copy_of(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def rewrite_sha(directory, file_name):
    """Make the manifest agree with a modified file, so that only the recomputation can catch it."""
    path = directory / format.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][file_name]["sha256"] = hashlib.sha256((directory / file_name).read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------
# export, check, tampering
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_then_check_passes(exported, capsys):
    """Truth: an untouched export recomputes identically: check() finds nothing, and the command
    line says so with exit status 0."""
    assert check.check(exported) == []
    assert cli.main(["golden", "check", str(exported), "--no-progress", "--vector", "rounding"]) == 0
    assert "matches" in capsys.readouterr().out


def test_tampered_value_is_located(exported, tmp_path):
    """Truth: a value changed by hand. One accumulator of the integer convolution is raised by 1 and
    the manifest's sha256 updated to match, so only the recomputation can notice: the mismatch must
    name the vector, the array, the index changed and both values."""
    directory = copy_of(exported, tmp_path)
    path = directory / "integer_convolution.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    original = int(arrays["uint8_3x3/acc"][0, 1, 2, 3])
    arrays["uint8_3x3/acc"][0, 1, 2, 3] += 1
    format.write_npz(path, arrays)
    rewrite_sha(directory, "integer_convolution.npz")
    mismatches = check.check(directory, vectors=["integer_convolution"])
    assert len(mismatches) == 1, [str(m) for m in mismatches]
    found = mismatches[0]
    assert (found.vector, found.array, found.index) == ("integer_convolution", "uint8_3x3/acc", (0, 1, 2, 3))
    assert (found.expected, found.got) == (original + 1, original)
    text = str(found)
    assert "integer_convolution: uint8_3x3/acc[0, 1, 2, 3]" in text and "1 of" in text


def test_tampered_input_and_float_tolerance(exported, tmp_path):
    """Truth: a hand edit of a float output, once inside its stated tolerance (no mismatch) and once
    outside (mismatch at that index): the tolerances of the manifest are the ones applied."""
    directory = copy_of(exported, tmp_path)
    path = directory / "pgm_fits.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    means = arrays["leaky/means"]
    means[1] *= 1 + 1e-8                     # within rtol 1e-6
    format.write_npz(path, arrays)
    rewrite_sha(directory, "pgm_fits.npz")
    assert check.check(directory, vectors=["pgm_fits"]) == []
    means[1] *= 1 + 1e-4                     # outside it
    format.write_npz(path, arrays)
    rewrite_sha(directory, "pgm_fits.npz")
    mismatches = check.check(directory, vectors=["pgm_fits"])
    assert [(m.array, m.index) for m in mismatches] == [("leaky/means", (1,))]
    assert "rtol 1e-06" in mismatches[0].detail


def test_tampered_bytes_fail_the_hash(exported, tmp_path, capsys):
    """Truth: one byte of an archive flipped by hand. The sha256 of the manifest no longer matches:
    check names the file, and the command line exits with status 1."""
    directory = copy_of(exported, tmp_path)
    path = directory / "rounding.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    mismatches = check.check(directory, vectors=["rounding"])
    hashes = [m for m in mismatches if m.vector == "rounding.npz"]
    assert len(hashes) == 1 and "sha256" in hashes[0].detail
    assert cli.main(["golden", "check", str(directory), "--no-progress", "--vector", "rounding"]) == 1
    assert "MISMATCH rounding.npz" in capsys.readouterr().out


def test_missing_file_fails_clearly(exported, tmp_path):
    """Truth: a file deleted by hand is reported as missing, by path, and nothing raises."""
    directory = copy_of(exported, tmp_path)
    (directory / "layers.npz").unlink()
    mismatches = check.check(directory, vectors=["layers"])
    assert [m.vector for m in mismatches] == ["layers.npz"]
    assert "missing file" in mismatches[0].detail and str(directory / "layers.npz") in mismatches[0].detail
    (directory / format.MANIFEST).unlink()
    with pytest.raises(check.ManifestError, match=r"manifest\.json: missing"):  # not a golden directory
        check.check(directory)


# ---------------------------------------------------------------------------------------------
# the manifest and the files
# ---------------------------------------------------------------------------------------------

def resolve(dotted):
    """The object a dotted name ``refquant.module.attribute...`` names (ImportError/AttributeError if none)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def test_manifest_schema(exported):
    """Truth: the manifest format documented in refquant.golden's docstring. Every file is listed
    with its sha256; every array of every archive is listed with its role, shape, dtype and a
    tolerance with a reason (exact for integers, but for the calibration histogram counts);
    archives load without pickle; definitions name real refquant functions."""
    manifest = json.loads((exported / format.MANIFEST).read_text())
    assert manifest["format"] == format.FORMAT and manifest["format_version"] == format.FORMAT_VERSION
    assert manifest["refquant_version"] and manifest["numpy_version"] == np.__version__
    on_disk = {p.name for p in exported.iterdir()} - {format.MANIFEST}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((exported / name).read_bytes()).hexdigest()
    assert set(manifest["vectors"]) == set(vectors.VECTORS)
    for name, vector in manifest["vectors"].items():
        assert set(vector) == {"file", "description", "definitions", "seeds", "parameters", "arrays"}
        assert vector["file"] in manifest["files"] and vector["description"]
        for dotted in vector["definitions"]:
            assert callable(resolve(dotted)), dotted
        with np.load(exported / vector["file"], allow_pickle=False) as stored:
            assert set(stored.files) == set(vector["arrays"])
            roles = set()
            for array_name, entry in vector["arrays"].items():
                value = stored[array_name]
                roles.add(entry["role"])
                assert entry["role"] in ("input", "output")
                assert entry["shape"] == list(value.shape) and entry["dtype"] == value.dtype.str
                assert value.dtype.kind != "O"
                tolerance = entry["tolerance"]
                assert set(tolerance) == {"rtol", "atol", "why"} and tolerance["why"]
                assert tolerance["rtol"] >= 0 and tolerance["atol"] >= 0
                if value.dtype.kind in "bU" or (value.dtype.kind in "iu" and not array_name.endswith("/counts")):
                    assert tolerance["rtol"] == tolerance["atol"] == 0, (name, array_name)
        assert roles == {"input", "output"}, name


def test_every_array_has_a_one_line_meaning(exported):
    """Truth: the manifest format (version 3). Every array of every vector carries a ``meaning``: a
    non-empty string of one line, the one meaning_of states for it; so an array added without one
    fails the export."""
    manifest = json.loads((exported / format.MANIFEST).read_text())
    for name, vector in manifest["vectors"].items():
        for array_name, entry in vector["arrays"].items():
            meaning = entry.get("meaning")
            assert isinstance(meaning, str) and meaning.strip(), (name, array_name)
            assert "\n" not in meaning and "\r" not in meaning, (name, array_name)
            assert meaning == format.meaning_of(vectors.VECTORS[name], array_name)


def test_meaning_of_refuses_an_array_without_one():
    """Truth: the rule of format.stated_for, worked by hand: the full name first, then the longest
    trailing part, then the first component. An array with no meaning is a KeyError; an empty or
    multi-line meaning a ValueError."""
    table = {"leaky/means": "a", "means": "b", "float": "c"}
    assert format.stated_for(table, "leaky/means") == "a"
    assert format.stated_for(table, "x/y/means") == "b"
    assert format.stated_for(table, "float/3") == "c"
    assert format.stated_for(table, "stds") is None
    rounding = vectors.VECTORS["rounding"]
    with pytest.raises(KeyError, match="no meaning stated for array 'new/array'"):
        format.meaning_of(rounding, "new/array")
    for bad in ("", "two\nlines"):
        with pytest.raises(ValueError, match="one non-empty line"):
            format.meaning_of(dataclasses.replace(rounding, meanings={"new": bad}), "new/array")


def test_integer_arrays_with_a_tolerance_are_the_histogram_counts(exported):
    """Truth: the comparison rule as docs/golden-vectors.md and the specification (section 16) state
    it: integers are exact but for the calibration histograms' counts (atol 4). Read from the manifest."""
    manifest = json.loads((exported / format.MANIFEST).read_text())
    tolerant = {(name, array_name) for name, vector in manifest["vectors"].items()
                for array_name, entry in vector["arrays"].items()
                if np.dtype(entry["dtype"]).kind in "iu" and (entry["tolerance"]["rtol"] or entry["tolerance"]["atol"])}
    counts = {("network", f"histograms/{i}/counts") for i in vectors.GRID_LAYERS}
    assert tolerant == counts
    assert {manifest["vectors"][v]["arrays"][a]["tolerance"]["atol"] for v, a in counts} == {4.0}


def test_network_layers_described_as_they_are():
    """Truth: the network's cfg, read by the cfg parser. The meanings' layer descriptions
    (vectors.NETWORK_LAYERS) name each layer's type, and the convolutions calibrated through their
    maxpool (vectors.POOLED) are those refquant.ptq.pooled_readers finds."""
    net = network_vectors.network_from(network_vectors._network_inputs())
    kinds = {"convolution": "convolutional", "maxpool": "maxpool", "route": "route", "reorg": "reorg",
             "region": "region"}
    assert [kinds[text.split()[0]] for text in vectors.NETWORK_LAYERS] == [layer.type for layer in net.layers]
    assert ptq.pooled_readers(net) == vectors.POOLED


def test_load_gives_inputs_outputs_tolerances(exported):
    """Truth: the manifest. golden.load splits a vector by role and carries its tolerances."""
    inputs, outputs, tolerances = format.load(exported, "rounding")
    assert set(inputs) == {"round_half_even/x", "rounding_right_shift/value", "rounding_right_shift/shift"}
    assert set(outputs) == {"round_half_even/y", "rounding_right_shift/result"}
    assert tolerances["round_half_even/y"] == format.EXACT
    with pytest.raises(ValueError, match="no vector 'nonsense'"):
        format.load(exported, "nonsense")


@pytest.mark.slow
def test_two_exports_are_byte_identical(exported, tmp_path):
    """Truth: a second export, in a fresh cache, of the same refquant on the same machine: every
    array and every file (hence every sha256) is identical."""
    again = tmp_path / "again"
    export.export(again, progress=False)
    for path in exported.iterdir():
        assert path.read_bytes() == (again / path.name).read_bytes(), path.name


# ---------------------------------------------------------------------------------------------
# spot checks against independent truths
# ---------------------------------------------------------------------------------------------

def vector(exported, name):
    with np.load(exported / f"{name}.npz", allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def requantize_fraction(acc, multiplier, shift, zero_point, qmin, qmax):
    """clip(round_half_even(acc * multiplier / 2**shift) + zero_point) with exact rationals
    (Python's round of a Fraction rounds half to even)."""
    scale = fractions.Fraction(multiplier, 2**shift)
    return min(max(round(int(acc) * scale) + zero_point, qmin), qmax)


def test_integer_convolution_against_int64_einsum_and_fractions(exported):
    """Truth: numpy int64 einsum over padded windows (refquant.testing.numpy_correlation) for the
    accumulators; exact rational arithmetic (fractions.Fraction) for the requantized codes of the
    linear, leaky and relu rules; and the definition of a 22-bit multiplier (2**21 <= m < 2**22
    unless the shift is capped at 62, |m 2**-shift / M - 1| <= 2**-22)."""
    v = vector(exported, "integer_convolution")
    for case in numeric_vectors.CONV_CASES:
        acc = (numpy_correlation(v[f"{case}/x"], v[f"{case}/w"], int(v[f"{case}/stride"]), int(v[f"{case}/pad"]))
               + v[f"{case}/bias"].astype(np.int64)[None, :, None, None])
        np.testing.assert_array_equal(v[f"{case}/acc"], acc)
        m, s, nm, ns = (int(t) for t in v[f"{case}/requantization"])
        real = float(v[f"{case}/real_multiplier"])
        assert abs(m * 2.0**-s / real - 1) <= 2.0**-22 and abs(nm * 2.0**-ns / (0.1 * real) - 1) <= 2.0**-22
        z, lo, hi = int(v[f"{case}/zero_point"]), int(v[f"{case}/qmin"]), int(v[f"{case}/qmax"])
        flat = acc.ravel()
        linear = [requantize_fraction(a, m, s, z, lo, hi) for a in flat]
        leaky = [requantize_fraction(a, m, s, z, lo, hi) if a >= 0 else requantize_fraction(a, nm, ns, z, lo, hi)
                 for a in flat]
        relu = [requantize_fraction(a, m, s, z, lo, hi) if a >= 0 else min(max(z, lo), hi) for a in flat]
        for rule, expected in (("linear", linear), ("leaky", leaky), ("relu", relu)):
            np.testing.assert_array_equal(v[f"{case}/codes_{rule}"].ravel(), expected, err_msg=f"{case} {rule}")
    for real, m, s in zip(v["multipliers/real"], v["multipliers/multiplier"], v["multipliers/shift"]):
        assert abs(int(m) * 2.0**-int(s) / real - 1) <= 2.0**-22 or s == 62
        assert 2**21 <= m < 2**22 or s == 62
    ties = [requantize_fraction(a, 1, 2, 8, 0, 15) for a in v["ties/acc"]]
    np.testing.assert_array_equal(v["ties/codes"], ties)


def test_rounding_against_exact_rationals(exported):
    """Truth: Python's round() of exact Fractions (half to even) for rounding_right_shift, and of
    the exact binary value of each float for round_half_even."""
    v = vector(exported, "rounding")
    expected = [round(fractions.Fraction(int(a), 2**int(s))) for a, s in
                zip(v["rounding_right_shift/value"], v["rounding_right_shift/shift"])]
    assert v["rounding_right_shift/result"].tolist() == expected
    for x, y in zip(v["round_half_even/x"], v["round_half_even/y"]):
        if math.isfinite(x):
            assert y == round(fractions.Fraction(float(x))), x
        else:
            assert y == x


def test_hand_worked_average_precision(exported):
    """Truth: the VOC devkit's rule worked by hand on the hand case (see HAND_CASE). Label 0, in
    score order: TP, a difficult match (ignored), FP, a duplicate (FP), TP of IoU 0.81; two
    non-difficult objects. Precision 1, 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1/2, 1: area AP
    = 1/2 * 1 + 1/2 * 1/2 = 0.75; 11-point AP = (6 * 1 + 5 * 1/2) / 11. Label 1: IoU exactly 0.5
    counts (>=): AP 1. Label 2: only a difficult object: no AP, left out of the mean."""
    v = vector(exported, "detection_ap")
    assert v["hand/ap_area"][0] == pytest.approx(0.75, abs=1e-15)
    assert v["hand/ap_eleven_point"][0] == pytest.approx(8.5 / 11, abs=1e-15)
    assert v["hand/ap_area"][1] == pytest.approx(1.0, abs=1e-15)
    assert v["hand/ap_eleven_point"][1] == pytest.approx(1.0, abs=1e-15)
    assert np.isnan(v["hand/ap_area"][2]) and np.isnan(v["hand/ap_eleven_point"][2])
    assert float(v["hand/map_area"]) == pytest.approx(0.875, abs=1e-15)
    assert float(v["hand/map_eleven_point"]) == pytest.approx((8.5 / 11 + 1) / 2, abs=1e-15)
    np.testing.assert_allclose(v["hand/precision/0"], [1, 1, 1 / 2, 1 / 3, 1 / 2], rtol=1e-15)
    np.testing.assert_allclose(v["hand/recall/0"], [1 / 2, 1 / 2, 1 / 2, 1 / 2, 1], rtol=1e-15)


def test_optimal_free_gaussian_quantizers_are_max_table(exported):
    """Truth: Max (1960), "Quantizing for minimum distortion", Table: optimum uniform step for
    N(0, 1) with 2, 4, 8, 16 levels: 1.596, 0.9957, 0.5860, 0.3352; the levels centred on the mean
    (zero point (levels - 1) / 2)."""
    v = vector(exported, "optimal_quantizers")
    rows = [i for i, (d, m) in enumerate(zip(v["cases/density"], v["cases/mode"])) if d == "normal" and m == "free"]
    assert [int(v["cases/bits"][i]) for i in rows] == [1, 2, 3, 4]
    for i, published, decimals in zip(rows, (1.596, 0.9957, 0.5860, 0.3352), (3, 4, 4, 4)):
        assert round(float(v["cases/step"][i]), decimals) == published
        levels = 2 ** int(v["cases/bits"][i])
        assert float(v["cases/zero_point"][i]) == pytest.approx((levels - 1) / 2, abs=1e-6)


def test_expected_error_against_numerical_integration(exported):
    """Truth: scipy.integrate.quad of (x - Q(x))^2 p(x) over each cell, with p the scipy.stats
    density of the same (single-piece) normal, for the 'normal' density's quantizers."""
    v = vector(exported, "expected_error")
    dist = stats.norm(float(v["normal/means"][0]), float(v["normal/stds"][0]))
    columns = [v[f"normal/quantizer_{key}"] for key in ("step", "zero_point", "qmin", "qmax")]
    for k, (step, zero_point, qmin, qmax) in enumerate(zip(*columns)):
        levels = step * (np.arange(qmin, qmax + 1) - zero_point)
        edges = np.concatenate([[levels[0]], (levels[1:] + levels[:-1]) / 2, [levels[-1]]])
        granular = sum(integrate.quad(lambda x, c=c: (x - c) ** 2 * dist.pdf(x), a, b, epsabs=1e-14, epsrel=1e-12)[0]
                       for a, b, c in zip(edges[:-1], edges[1:], levels))
        clipping = (integrate.quad(lambda x: (x - levels[0]) ** 2 * dist.pdf(x), -np.inf, levels[0], epsabs=1e-15)[0]
                    + integrate.quad(lambda x: (x - levels[-1]) ** 2 * dist.pdf(x), levels[-1], np.inf, epsabs=1e-15)[0])
        assert v["normal/granular"][k] == pytest.approx(granular, rel=1e-8)
        assert v["normal/clipping"][k] == pytest.approx(clipping, rel=1e-6, abs=1e-14)


def test_an_interrupted_export_never_looks_complete(exported, tmp_path, monkeypatch):
    """Truth: the manifest is what makes a directory a golden export (check refuses a directory
    without one). An export interrupted in its third archive, over a complete earlier export, leaves
    no manifest and no temporary file, and check refuses it as no golden directory."""
    target = copy_of(exported, tmp_path)
    calls = []
    original = export.write_npz

    def interrupted(path, arrays):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill between two files
        original(path, arrays)
    monkeypatch.setattr(export, "write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(target, progress=False)
    assert not (target / format.MANIFEST).exists()
    assert not list(target.glob(".*.partial"))
    with pytest.raises(check.ManifestError):
        check.check(target, progress=False)
