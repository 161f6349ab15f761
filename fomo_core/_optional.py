"""Optional dependencies: a missing one ends in a one-line error that names the extra to install.

>>> with optional_import("fomo_core.adapters.torch"):
...     import torch

raises, when PyTorch is not installed, ``MissingExtraError: fomo_core.adapters.torch needs PyTorch:
pip install 'fomo-core[torch]'``. Only the packages listed here are translated: an import error from
anything else (a broken install of a dependency's own dependency) passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

__all__ = ["MissingExtraError", "OPTIONAL_PACKAGES", "optional_import"]

# import name -> (what users call it, the fomo-core extra that installs it; None: not an extra)
OPTIONAL_PACKAGES = {
    "torch": ("PyTorch", "torch"),
    "sklearn": ("scikit-learn", "sklearn"),
    "flwr": ("Flower", "flower"),
    "matplotlib": ("matplotlib", "demo"),
    "tqdm": ("tqdm", "demo"),
    "mlxtend": ("mlxtend", "demo"),
    "torchvision": ("torchvision", None),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed. A ModuleNotFoundError (so ``except ImportError``
    still catches it) whose message is the one line that fixes it."""


def _install_hint(package: str, extra: Optional[str]) -> str:
    label, own_extra = OPTIONAL_PACKAGES[package]
    extra = extra or own_extra
    command = f"pip install 'fomo-core[{extra}]'" if extra else f"pip install {label}"
    return f"{label}: {command}"


@contextmanager
def optional_import(feature: str, *, extra: Optional[str] = None) -> Iterator[None]:
    """Turns a ModuleNotFoundError of an optional package inside the block into a
    :class:`MissingExtraError` saying that ``feature`` needs it and which extra installs it
    (``extra`` overrides the package's own extra, e.g. "demo" for everything the demo needs)."""
    try:
        yield
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if isinstance(error, MissingExtraError) or package not in OPTIONAL_PACKAGES:
            raise
        missing = MissingExtraError(f"{feature} needs {_install_hint(package, extra)}")
        missing.name = package
        raise missing from None
