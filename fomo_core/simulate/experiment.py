"""One simulated experiment end to end: data, partition, splits, clients, the methods, results.

>>> cfg = ExperimentConfig(clients=15, groups=5, rounds=20)
>>> results = run_experiment(cfg)          # the dict written to results.json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from .backends import TrainSettings, make_backend
from .data import Dataset, load_cifar10, load_digits, split_clients
from .federation import METHODS, FederationSettings
from .metrics import MethodRun, RoundRecord, within_group_fraction
from .partition import dirichlet, latent_groups, pathological

__all__ = ["ExperimentConfig", "run_experiment", "load_dataset", "make_partition"]


@dataclass
class ExperimentConfig:
    """Everything that defines a run (the CLI's options)."""

    dataset: str = "digits"  # "digits" or "cifar10"
    cifar10: Optional[str] = None  # CIFAR-10 folder (dataset "cifar10")
    max_samples: int = 0  # CIFAR-10: keep a random subset of this size (0: all)
    clients: int = 15
    groups: int = 5
    partition: str = "groups"  # "groups", "pathological", "dirichlet"
    classes_per_client: int = 2  # pathological
    alpha: float = 0.5  # dirichlet
    target: str = "local"  # "local" or "shifted"
    val_fraction: float = 0.2
    test_fraction: float = 0.4  # a large test split: accuracy differences of a few samples matter
    backend: str = "torch"
    methods: tuple = ("fedfomo", "fedavg", "local")
    federation: FederationSettings = field(default_factory=FederationSettings)
    training: TrainSettings = field(default_factory=TrainSettings)

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("federation", "training")}
        d["methods"] = list(self.methods)
        d["federation"] = self.federation.as_dict()
        d["training"] = self.training.as_dict()
        return d


def load_dataset(cfg: ExperimentConfig) -> Dataset:
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset == "cifar10":
        return load_cifar10(cfg.cifar10, max_samples=cfg.max_samples, seed=cfg.federation.seed)
    raise ValueError(f"dataset must be 'digits' or 'cifar10', got {cfg.dataset!r}")


def make_partition(cfg: ExperimentConfig, labels: np.ndarray, rng: np.random.Generator):
    if cfg.partition == "groups":
        return latent_groups(labels, cfg.clients, cfg.groups, rng)
    if cfg.partition == "pathological":
        return pathological(labels, cfg.clients, cfg.classes_per_client, rng)
    if cfg.partition == "dirichlet":
        return dirichlet(labels, cfg.clients, cfg.alpha, rng)
    raise ValueError(f"partition must be 'groups', 'pathological' or 'dirichlet', got {cfg.partition!r}")


def run_experiment(
    cfg: ExperimentConfig, on_round: Optional[Callable[[str, RoundRecord], None]] = None
) -> dict:
    """Runs every method of ``cfg`` on the same clients and data; returns the results dict
    (methods with per-round accuracy and timings, FedFomo's affinity matrix, the groups and the
    within-group fraction of positive affinity)."""
    t_start = time.perf_counter()
    seed = cfg.federation.seed
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(seed)
    partition = make_partition(cfg, dataset.y, rng)
    data = split_clients(dataset, partition, rng, val_fraction=cfg.val_fraction,
                         test_fraction=cfg.test_fraction, target=cfg.target)
    backend = make_backend(cfg.backend, dataset, cfg.training, seed, preset=cfg.federation.preset)
    init = backend.init_params()
    _warm_up(backend, data[0], init, seed)
    runs: dict = {}
    for name in cfg.methods:
        if name not in METHODS:
            raise ValueError(f"methods must be among {sorted(METHODS)}, got {name!r}")
        # fresh clients for every method: same data, same initial model, same shuffling seeds
        clients = [backend.new_client(d, init, seed * 1000 + k) for k, d in enumerate(data)]
        runs[name] = METHODS[name](backend, clients, init, cfg.federation, on_round)
    return _results(cfg, dataset, partition, data, runs, time.perf_counter() - t_start)


def _warm_up(backend, data, init, seed: int) -> None:
    """One throwaway round, so that the first method's timings do not include the framework's
    one-off start-up costs (kernel selection, allocator warm-up)."""
    client = backend.new_client(data, init, seed)
    client.round(backend.as_batch(init))


def _results(cfg, dataset, partition, data, runs: dict, seconds: float) -> dict:
    groups = partition.groups
    targets = np.array([d.target for d in data])
    out = {
        "config": cfg.as_dict(),
        "dataset": {"name": dataset.name, "samples": int(dataset.y.size), "classes": dataset.num_classes},
        "clients": [
            {
                "group": None if groups is None else int(groups[k]),
                "train_classes": partition.classes[k].tolist(),
                "target": int(targets[k]),
                "train": int(d.y_train.size), "val": int(d.y_val.size), "test": int(d.y_test.size),
            }
            for k, d in enumerate(data)
        ],
        "groups": None if groups is None else groups.tolist(),
        "methods": {name: run.to_dict() for name, run in runs.items()},
        "seconds": seconds,
    }
    fomo: Optional[MethodRun] = runs.get("fedfomo")
    if fomo is not None:
        out["affinity"] = fomo.affinity.tolist()
        if groups is not None:
            frac, counted = within_group_fraction(fomo.affinity, groups)
            tfrac, _ = within_group_fraction(fomo.affinity, groups, groups[targets])
            out["affinity_within_group_fraction"] = frac
            out["affinity_target_group_fraction"] = tfrac
            out["clients_with_positive_affinity"] = counted
    return out
