"""Fixtures shared by the test files. Helpers that are not fixtures (the small cfgs, the batch-norm
randomiser, exact oracles) live in :mod:`refquant.testing`, where the golden vectors and the
benchmarks can use them too.

Tests marked ``slow`` (whole networks, training, the demo, the tutorials, the golden export checked
over everything: anything over about 2 s) are left out by ``python -m pytest -m "not slow" tests``.
"""
import pytest


@pytest.fixture
def close_figures():
    """Close every matplotlib figure after the test (for the plot tests: ``pytestmark =
    pytest.mark.usefixtures("close_figures")``)."""
    import matplotlib.pyplot as plt
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def golden_export(tmp_path_factory):
    """A directory written by ``refquant golden export`` through the command line, once per run
    (read-only: tests that tamper with vectors work on copies)."""
    from refquant import cli
    directory = tmp_path_factory.mktemp("golden") / "vectors"
    assert cli.main(["golden", "export", str(directory), "--no-progress"]) == 0
    return directory


@pytest.fixture(scope="session")
def shipped_calibration():
    """The shipped detector calibrated on the first 8 training images of the shapes data set at
    128x128 (``refquant.ptq.calibration_statistics``), once per run: ``(statistics, tree, names)``.
    Read-only: the plans made from it only add the fits its cache would make anyway."""
    from refquant import darknet, ptq
    from refquant.data.shapes import shapes_dataset
    from refquant.data.voc import load_voc, read_names
    from refquant.demo.experiment import letterboxed_inputs
    from refquant.detection.evaluate import shipped_model
    names = read_names(shipped_model(".names"))
    net = darknet.load(shipped_model(".cfg"), shipped_model(".weights"))
    tree = shapes_dataset(progress=False)
    calibration = letterboxed_inputs(load_voc(tree, "train", names)[:8], 128, 128, False)
    return ptq.calibration_statistics(net, calibration, progress=False), tree, names
