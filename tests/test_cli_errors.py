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


@pytest.mark.parametrize("manifest", ["[]", "{not json", '{"format": "refquant-golden"}'])
def test_golden_check_reports_a_malformed_manifest(tmp_path, capsys, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    code = cli.main(["golden", "check", str(tmp_path), "--vector", "rounding", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "manifest.json" in captured.out and "MISMATCH manifest" in captured.out
    assert "golden check: 1 mismatch in" in captured.err  # singular


def test_golden_check_reports_malformed_entries(tmp_path, capsys):
    from refquant.golden.format import FORMAT, FORMAT_VERSION
    from refquant.golden.vectors import VECTORS
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {"a.npz": 1},
                "vectors": {name: {"arrays": {}} for name in VECTORS}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code = cli.main(["golden", "check", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "files['a.npz'] is malformed" in captured.out
    assert f"vectors['{next(iter(VECTORS))}'] is malformed" in captured.out
    assert f"golden check: {1 + len(VECTORS)} mismatches in" in captured.err


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
