"""The examples are documentation: they must keep running and keep showing what they claim."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.mark.parametrize("name", ["torch_federation.py", "sklearn_federation.py"])
def test_example_runs_and_personalises(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name])  # the default preset, not pytest's arguments
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    accs = [float(a) for a in re.findall(r"accuracy ([0-9.]+)%", out)]
    assert len(accs) == 10
    # each client sees 3 of the 10 digits: a personalised model should get nearly all right, far
    # above the 33% of guessing within its own classes
    assert accs[-1] > 85.0
    assert "affinity, clients ordered by group" in out
