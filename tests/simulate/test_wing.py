"""The simulator wing imports a framework only when a backend runs on it: ``fomo_core.simulate``
and its command line load without torch or scikit-learn, and each backend is its own module,
imported by name."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (outside the checkout, so that the installed package is imported)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)


def test_the_wing_loads_without_torch_or_sklearn():
    # sys.modules[name] = None makes `import name` fail exactly as an uninstalled package does.
    result = run_python(
        "import sys; sys.modules['torch'] = sys.modules['sklearn'] = None\n"
        "import fomo_core.simulate, fomo_core.simulate.cli, fomo_core.simulate.runner\n"
        "from fomo_core.simulate.backends import make_backend\n"
        "from fomo_core.simulate.data import Dataset\n"
        "import numpy as np\n"
        "data = Dataset('tiny', np.zeros((4, 3), np.float32), np.arange(4) % 2, 2)\n"
        "try:\n"
        "    make_backend('torch', data, fomo_core.simulate.TrainSettings(), seed=0)\n"
        "except ImportError as e:\n"
        "    print('refused:', e)\n"
        "print(sorted(m for m in sys.modules if m.startswith('fomo_core.adapters')))"
    )
    assert result.returncode == 0, result.stderr
    refused, adapters = result.stdout.strip().splitlines()
    assert refused == "refused: fomo_core.adapters.torch needs PyTorch: pip install 'fomo-core[torch]'"
    assert adapters == "['fomo_core.adapters']"  # the torch adapter's import failed; nothing else loaded


def test_each_backend_is_a_module_of_the_wing():
    from fomo_core.simulate.backends import BACKENDS, backend_class

    for name in BACKENDS:
        backend = backend_class(name)
        assert backend.name == name
        assert backend.__module__ == f"fomo_core.simulate.{name}_backend"
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'sklearn'\), got 'jax'"):
        backend_class("jax")
