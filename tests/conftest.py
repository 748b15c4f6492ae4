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
