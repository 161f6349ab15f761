"""The runnable examples run end to end and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow  # a federation in a fresh interpreter: ~7 s of CPU
def test_quickstart_runs_and_learns_groups():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True, text=True, timeout=300, check=True
    )
    accuracies = [float(a) for a in re.findall(r"mean personalised test accuracy ([0-9.]+)", result.stdout)]
    assert len(accuracies) == 2
    # Two digit classes per client: FedFomo on top of a little local training beats chance (0.5) by far.
    assert accuracies[-1] > 0.8
    # Every positive weight goes to a client of the same group (clients 2g and 2g+1 form group g).
    for client, weights in re.findall(r"client (\d+) \(group \d+\): weights \{([^}]*)\}", result.stdout):
        for peer in re.findall(r"(\d+):", weights):
            assert int(peer) // 2 == int(client) // 2, result.stdout
