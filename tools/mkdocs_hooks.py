"""MkDocs hook: the API reference is read from the package as it installs, not as the checkout
lays it out (``adapters/`` and ``simulate/`` become ``fomo_core.adapters`` and
``fomo_core.simulate`` only in the wheel), so the reference builds from source alone, with or
without an installed or editable copy.

A temporary folder gets ``fomo_core/`` with ``adapters/`` and ``simulate/`` inside it (symbolic
links, no copies), and mkdocstrings' Python handler searches it first."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent


@event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config):
    tree = Path(tempfile.mkdtemp(prefix="fomo-core-api-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    package = tree / "fomo_core"
    package.mkdir()
    for entry in (ROOT / "fomo_core").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for folder in ("adapters", "simulate"):  # as pyproject.toml's wheel.packages maps them
        (package / folder).symlink_to(ROOT / folder)
    python = config["plugins"]["mkdocstrings"].config["handlers"].setdefault("python", {})
    python["paths"] = [str(tree)]
    return config
