"""Shared test settings: a fixed hypothesis profile and the helper modules' import path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# pytest runs with --import-mode=importlib, which does not put tests/ on sys.path; the helper
# modules (strategies.py, tolerances.py) live here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Derandomised: every run draws the same examples, so CI is reproducible and a failure seen once is
# seen again. max_examples is set per test (the property tests are sized to keep the suite fast).
settings.register_profile(
    "fomo",
    derandomize=True,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fomo")


def pytest_collection_modifyitems(items: list) -> None:
    """The long tests (marked ``slow``) first, the rest in their order: under pytest-xdist they
    then start at once beside the short ones, instead of leaving one worker running them alone at
    the end while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def restore_threads():
    """Leaves fomo_core's OpenMP thread count as the test found it."""
    import fomo_core

    before = fomo_core.get_num_threads()
    yield
    fomo_core.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest on one torch thread; on a busy 2-core machine several threads are
    far slower (they spin waiting for each other). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_torch_threads():
    """Leaves torch's thread count as the test found it (the CLI and the examples set it)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli_refuses(capsys, tmp_path):
    """``cli_refuses(command, argv, message)``: ``fomo-core <command> --out <tmp> <argv>`` stops
    with a usage error (exit code 2) whose text holds ``message``, and writes nothing."""
    from fomo_core.simulate.cli import main

    def check(command: str, argv: list, message: str) -> None:
        out = tmp_path / "x"
        with pytest.raises(SystemExit) as exit:
            main([command, "--out", str(out), *argv])
        assert exit.value.code == 2
        assert message in capsys.readouterr().err
        assert not out.exists()  # nothing written

    return check


@pytest.fixture(scope="module")
def digits():
    """((X, y) training, (X, y) validation): 300 and 100 of scikit-learn's digits as torch tensors."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    return (x[:300], y[:300]), (x[300:400], y[300:400])
