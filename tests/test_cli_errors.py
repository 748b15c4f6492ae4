"""The command line's one-line errors for a newcomer's usual mistakes: each returns exit status 2
(argparse's for bad arguments) and names the argument and the path at fault.

Truth: paths made not to exist (under pytest's tmp_path), manifests written by hand, and a demo
whose data and model loaders are replaced by functions that fail the test if called."""
import json

import pytest

from refquant import cli


def error_of(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_eval_names_a_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    code, err = error_of(capsys, ["eval", "--data", str(missing), "--no-progress"])
    assert code == 2
    assert "--data" in err and str(missing) in err and "does not exist" in err and "*.names" not in err


def test_eval_names_a_missing_cfg_before_asking_for_weights(tmp_path, capsys):
    missing = tmp_path / "nonexistent.cfg"
    code, err = error_of(capsys, ["eval", "--cfg", str(missing), "--no-progress"])
    assert code == 2
    assert "--cfg" in err and str(missing) in err and "does not exist" in err and "--weights" not in err


def test_eval_names_missing_weights(tmp_path, capsys):
    from refquant.detection.evaluate import shipped_model
    missing = tmp_path / "nonexistent.weights"
    code, err = error_of(capsys, ["eval", "--cfg", str(shipped_model(".cfg")), "--weights", str(missing)])
    assert code == 2 and "--weights" in err and str(missing) in err


def test_golden_check_names_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    code, err = error_of(capsys, ["golden", "check", str(missing), "--no-progress"])
    assert code == 2
    assert str(missing) in err and "does not exist" in err and "mismatch" not in err


@pytest.mark.parametrize("manifest, expected", [
    ("[]", "expected an object"), ("{not json", "manifest.json:1: not valid JSON"),
    ('{"format": "refquant-golden"}', "not a golden-vector manifest this refquant reads"),
    (b"\xff\xfe{}", "not UTF-8")])
def test_golden_check_refuses_a_malformed_manifest_with_status_2(tmp_path, capsys, manifest, expected):
    """A manifest refquant cannot read is an error (2), not a mismatch (1, kept for a directory
    that was checked and differs): one line naming the manifest and what is wrong."""
    path = tmp_path / "manifest.json"
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    code, err = error_of(capsys, ["golden", "check", str(tmp_path), "--vector", "rounding", "--no-progress"])
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and expected in err and "MISMATCH" not in err


@pytest.mark.parametrize("files, vector_file, expected", [
    ({"a.npz": 1}, "a.npz", "files['a.npz']: expected an object, got 1"),
    ({"a.npz": {"sha256": "0" * 63}}, "a.npz", "files['a.npz'].sha256: expected 64"),
    ({"../../etc/hostname": {"sha256": "0" * 64}}, "a.npz", "is not a plain relative path inside the directory"),
    ({"/etc/hostname": {"sha256": "0" * 64}}, "a.npz", "is not a plain relative path inside the directory"),
    ({"a.npz": {"sha256": "0" * 64}}, "../a.npz", "vectors['rounding'].file: '../a.npz' is not a plain"),
    ({"a.npz": {"sha256": "0" * 64}}, "b.npz", "'b.npz' is not in the files table")])
def test_golden_check_refuses_malformed_entries_and_paths_outside_the_directory(tmp_path, capsys, files,
                                                                               vector_file, expected):
    """Hand-written manifests: a malformed files entry, a file named outside the directory (the
    classic ``../../etc/hostname``), a vector whose file has no hash; refused before any file is
    opened, naming the key."""
    from refquant.golden.format import FORMAT, FORMAT_VERSION
    from refquant.golden.vectors import VECTORS
    vectors = {name: {"file": vector_file, "arrays": {}} for name in VECTORS}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "vectors": vectors}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, err = error_of(capsys, ["golden", "check", str(tmp_path), "--no-progress"])
    assert code == 2 and err.count("\n") == 1
    assert "manifest.json" in err and expected in err


def test_golden_check_refuses_a_symbolic_link_out_of_the_directory(tmp_path, capsys):
    from refquant.golden.format import FORMAT, FORMAT_VERSION
    (tmp_path / "outside.npz").write_bytes(b"secret")
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "a.npz").symlink_to(tmp_path / "outside.npz")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {"a.npz": {"sha256": "0" * 64}},
                "vectors": {}}
    (golden / "manifest.json").write_text(json.dumps(manifest))
    code, err = error_of(capsys, ["golden", "check", str(golden), "--no-progress"])
    assert code == 2 and "outside" in err and "resolves to" in err


@pytest.mark.parametrize("argv, argument", [
    (["train", "--out", "OUT", "--momentum", "nan"], "--momentum"),
    (["train", "--out", "OUT", "--learning-rate", "inf"], "--learning-rate"),
    (["train", "--out", "OUT", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--out", "OUT", "--batch", "1_0"], "--batch"),
    (["train", "--out", "OUT", "--max-batches", "\u0661\u0660"], "--max-batches"),  # Arabic-Indic 10
    (["train", "--out", ""], "--out"),
    (["eval", "--thresh", "nan"], "--thresh"),
    (["eval", "--limit", "-1"], "--limit"),
    (["eval", "--limit", "0"], "--limit"),
    (["eval", "--iou", "0"], "--iou"),
    (["eval", "--cfg", ""], "--cfg"),
    (["detect", "x.jpg", "--out", "y.png", "--nms", "1.5"], "--nms"),
    (["diagnose", "--bits", "9"], "--bits"),
    (["demo", "--qat-learning-rate", "-1"], "--qat-learning-rate"),
    (["data", "shapes", "PATH", "--seed", "-3"], "--seed"),
    (["golden", "check", ""], "DIR"),
    (["eval", "--no-such-option"], "--no-such-option"),
    (["train", "--out", "OUT", "--max-batches", "0"], "--max-batches"),
    (["train", "--out", "OUT", "--steps", "1_0"], "--steps"),
    (["train", "--out", "OUT", "--scales", "nan"], "--scales"),
    (["demo", "--out", "OUT", "--bits", "\u0668"], "--bits"),  # Arabic-Indic 8
])
def test_bad_arguments_are_refused_in_one_line_with_status_2(tmp_path, capsys, argv, argument):
    """Each value is outside what the argument means (a NaN rate, a negative count, a width of 9
    bits, Python-only integer syntax, an empty path that would fall back to a default): argparse
    refuses it before anything runs, in one line naming the argument."""
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, err = error_of(capsys, argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("refquant") and argument in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("--bits", "9"), ("--bits", "8,x"), ("--qat-bits", "1"),
                                           ("--first-bits", "12")])
def test_demo_refuses_widths_before_loading_anything(tmp_path, capsys, monkeypatch, option, value):
    import refquant.cli.demo as demo_cli
    import refquant.detection.evaluate as evaluate

    def loaded(*args, **kwargs):
        raise AssertionError("loaded data or a model before checking the widths")
    monkeypatch.setattr(demo_cli, "default_data", loaded)
    monkeypatch.setattr(evaluate, "shipped_model", loaded)
    code, err = error_of(capsys, ["demo", option, value, "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and option in err and value in err
    assert not (tmp_path / "out").exists()


def test_demo_names_a_missing_cfg_and_data(tmp_path, capsys):
    missing = tmp_path / "nonexistent.cfg"
    code, err = error_of(capsys, ["demo", "--cfg", str(missing), "--out", str(tmp_path / "out")])
    assert code == 2 and "--cfg" in err and str(missing) in err and "--weights" not in err
    folder = tmp_path / "nonexistent"
    code, err = error_of(capsys, ["demo", "--data", str(folder), "--out", str(tmp_path / "out")])
    assert code == 2 and "--data" in err and str(folder) in err and "does not exist" in err
