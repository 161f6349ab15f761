"""One simulated experiment end to end: data, partition, splits, clients, the methods, results.

>>> cfg = ExperimentConfig(clients=15, groups=5, rounds=20)
>>> results = run_experiment(cfg)          # the dict written to results.json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from .._validate import choice, count
from ..presets import PRESETS
from .attacks import attacker_ids
from .backends import TrainSettings, make_backend
from .baselines import BASELINES
from .data import (
    BUDGETS,
    FOLDS,
    GLOBAL_LABELS,
    Dataset,
    carve_validation,
    keep_validation,
    rotate_validation,
    split_clients,
    with_validation_labels,
)
from .data import load_dataset as _load_dataset
from .federation import METHODS as _FEDERATION_METHODS
from .federation import FederationSettings
from .metrics import MethodRun, RoundRecord, within_group_fraction
from .partition import dirichlet, feature_clusters, latent_groups, pathological

__all__ = [
    "ExperimentConfig",
    "run_experiment",
    "load_dataset",
    "make_partition",
    "method_data",
    "METHODS",
    "method_parts",
]

# every method the simulator runs, by name; "fedfomo:<preset>" runs FedFomo with that preset
METHODS = {**_FEDERATION_METHODS, **BASELINES}


def method_parts(name: str) -> tuple:
    """("fedfomo", "paper") for "fedfomo:paper"; (name, None) without a preset. Raises ValueError
    for an unknown method, or a preset on a method other than FedFomo."""
    base, sep, preset = str(name).partition(":")
    if base not in METHODS:
        raise ValueError(f"methods must be among {sorted(METHODS)} (FedFomo also as 'fedfomo:<preset>'), got {name!r}")
    if sep and (base != "fedfomo" or not preset):
        raise ValueError(f"only FedFomo takes a preset ('fedfomo:<preset>'), got {name!r}")
    if sep and preset not in PRESETS:
        raise ValueError(f"method {name!r}: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return base, (preset or None)


@dataclass
class ExperimentConfig:
    """Everything that defines a run (the CLI's options).

    dataset:            "digits", "mnist5k" or "cifar10" (from the folder ``cifar10``)
    partition:          "groups" (latent groups of classes), "pathological" (LG-FedAvg class
                        shards, ``shards_per_client`` each), "dirichlet" (``alpha``), "clusters"
                        (latent distributions by PCA + KMeans of the features, ``groups`` of them,
                        ``cluster_components`` PCA dimensions)
    max_train:          cap on training samples per client (0: none)
    label_noise:        fraction of each client's training and validation labels flipped
    budget:             who gets which labelled samples: "free" (FedFomo validates on its
                        validation split, which no baseline uses: the labels it holds beyond the
                        others'), "equal" (every other method trains on the training and the
                        validation samples: the same labels as FedFomo) or "carved" (FedFomo's
                        validation is carved out of the others' training samples, a share
                        val_fraction / (1 - test_fraction) of them: the same labels again)
    fedfomo_validation: with budget "equal": FedFomo validates on at most this many of each
                        client's validation samples and trains on the others too (0: it validates
                        on all of them and trains on none)
    validation_fold:    with fedfomo_validation: which of its validation samples FedFomo holds
                        out: always the same ones ("fixed"), or the next ones in every round it
                        takes part in ("rotating", so that over the rounds every label trains:
                        :func:`fomo_core.simulate.data.rotate_validation`)
    global_labels:      with budget "equal": what the copy of the global model FedFomo's round
                        trains (preset fomo-core) trains on: the client's training labels
                        ("training"), or all its labels, the validation labels too ("all": the
                        global model sees every label, the client's own model never the labels
                        it validates on)
    """

    dataset: str = "digits"
    cifar10: Optional[str] = None  # CIFAR-10 folder (dataset "cifar10")
    max_samples: int = 0  # CIFAR-10: keep a random subset of this size (0: all)
    clients: int = 15
    groups: int = 5
    partition: str = "groups"
    shards_per_client: int = 2  # pathological
    alpha: float = 0.5  # dirichlet
    cluster_components: int = 20  # clusters
    target: str = "local"  # "local" or "shifted"
    val_fraction: float = 0.2
    test_fraction: float = 0.4  # a large test split: accuracy differences of a few samples matter
    max_train: int = 0
    label_noise: float = 0.0
    budget: str = "free"
    fedfomo_validation: int = 0
    validation_fold: str = "fixed"
    global_labels: str = "training"
    backend: str = "torch"
    methods: tuple = ("fedfomo", "fedavg", "local")
    federation: FederationSettings = field(default_factory=FederationSettings)
    training: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        choice(self.budget, "budget", BUDGETS)
        count(self.fedfomo_validation, "fedfomo_validation", type_error=ValueError)
        if self.fedfomo_validation and self.budget != "equal":
            raise ValueError(
                "fedfomo_validation moves FedFomo's validation labels into its training: it needs budget='equal' "
                f"(the baselines train on them too), got budget={self.budget!r}"
            )
        choice(self.validation_fold, "validation_fold", FOLDS)
        if self.validation_fold != "fixed" and not self.fedfomo_validation:
            raise ValueError(
                f"validation_fold={self.validation_fold!r} rotates the labels FedFomo holds out: it needs "
                "fedfomo_validation > 0 (and budget='equal')"
            )
        choice(self.global_labels, "global_labels", GLOBAL_LABELS)
        if self.global_labels != "training" and self.budget != "equal":
            raise ValueError(
                f"global_labels={self.global_labels!r} trains the global model on FedFomo's validation labels: it "
                f"needs budget='equal' (the baselines train on them too), got budget={self.budget!r}"
            )

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("federation", "training")}
        d["methods"] = list(self.methods)
        d["federation"] = self.federation.as_dict()
        d["training"] = self.training.as_dict()
        return d


def load_dataset(cfg: ExperimentConfig) -> Dataset:
    return _load_dataset(cfg.dataset, folder=cfg.cifar10, max_samples=cfg.max_samples, seed=cfg.federation.seed)


def make_partition(cfg: ExperimentConfig, dataset: Dataset, rng: np.random.Generator):
    labels = dataset.y
    if cfg.partition == "groups":
        return latent_groups(labels, cfg.clients, cfg.groups, rng)
    if cfg.partition == "pathological":
        return pathological(labels, cfg.clients, cfg.shards_per_client, rng)
    if cfg.partition == "dirichlet":
        return dirichlet(labels, cfg.clients, cfg.alpha, rng)
    if cfg.partition == "clusters":
        return feature_clusters(dataset.x, labels, cfg.clients, cfg.groups, rng, components=cfg.cluster_components)
    raise ValueError(f"partition must be 'groups', 'pathological', 'dirichlet' or 'clusters', got {cfg.partition!r}")


def run_experiment(cfg: ExperimentConfig, on_round: Optional[Callable[[str, RoundRecord], None]] = None) -> dict:
    """Runs every method of ``cfg`` on the same clients and data; returns the results dict
    (methods with per-round accuracy and timings, FedFomo's affinity matrix, the groups and the
    within-group fraction of positive affinity)."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    methods = [(name, *method_parts(name)) for name in cfg.methods]
    seed = cfg.federation.seed
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(seed)
    partition = make_partition(cfg, dataset, rng)
    data = split_clients(
        dataset,
        partition,
        rng,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        target=cfg.target,
        max_train=cfg.max_train,
        label_noise=cfg.label_noise,
    )
    backends: dict = {}  # per FedFomo preset: clients run their preset's round

    def backend_for(preset: str):
        if preset not in backends:
            backend = make_backend(cfg.backend, dataset, cfg.training, seed, preset=preset)
            backends[preset] = (backend, backend.init_params())  # the same seeded initial model
            if len(backends) == 1:
                _warm_up(backend, data[0], backends[preset][1], seed)
        return backends[preset]

    runs: dict = {}
    labels: dict = {}  # per method: the labelled samples it used, summed over the clients
    for name, base, preset in methods:
        fed = cfg.federation if preset is None else replace(cfg.federation, preset=preset)
        backend, init = backend_for(fed.preset)
        extra = {"groups": partition.groups} if base in BASELINES else {}
        if base == "fedfomo" and cfg.validation_fold == "rotating":
            extra["data_for_turn"] = lambda k, turn: rotate_validation(data[k], cfg.fedfomo_validation, turn)
        # fresh clients for every method: same data, same initial model, same shuffling seeds
        seen = method_data(cfg, base, data)
        everything = base == "fedfomo" and cfg.global_labels == "all"
        clients = [
            backend.new_client(d, init, seed * 1000 + k, **_global_train(everything, d)) for k, d in enumerate(seen)
        ]
        labels[name] = {
            "training": int(sum(d.y_train.size for d in seen)),
            "validation": int(sum(d.y_val.size for d in seen)) if base == "fedfomo" else 0,
        }
        runs[name] = METHODS[base](backend, clients, init, fed, on_round, **extra)
        runs[name].name = name
    out = _results(cfg, dataset, partition, data, runs, time.perf_counter() - t_start)
    for name, counts in labels.items():
        out["methods"][name]["labelled_samples"] = counts
    out["cpu_seconds"] = time.process_time() - cpu_start
    return out


def method_data(cfg: ExperimentConfig, method: str, data: list) -> list:
    """The clients' data as method ``method`` ("fedfomo", "fedavg", ...) sees it under the
    labelled budget ``cfg.budget`` (see :class:`ExperimentConfig`); with a rotating validation
    fold, as FedFomo sees it in its first round."""
    if cfg.budget == "equal" and method != "fedfomo":
        return [with_validation_labels(d) for d in data]
    if cfg.budget == "equal" and cfg.fedfomo_validation:
        return [keep_validation(d, cfg.fedfomo_validation) for d in data]
    if cfg.budget == "carved" and method == "fedfomo":
        return [carve_validation(d, cfg.val_fraction / (1.0 - cfg.test_fraction)) for d in data]
    return data


def _global_train(everything: bool, data) -> dict:
    """new_client's keyword for the global model's training data: every label the client holds."""
    if not everything:
        return {}
    both = with_validation_labels(data)
    return {"global_train": (both.x_train, both.y_train)}


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
                "train": int(d.y_train.size),
                "val": int(d.y_val.size),
                "test": int(d.y_test.size),
            }
            for k, d in enumerate(data)
        ],
        "groups": None if groups is None else groups.tolist(),
        "methods": {name: run.to_dict() for name, run in runs.items()},
        "seconds": seconds,
    }
    attack = cfg.federation.attack
    if attack.active:
        attackers, diverging = attacker_ids(len(data), attack, cfg.federation.seed)
        honest = np.setdiff1d(np.arange(len(data)), attackers)
        out["attack"] = {**attack.as_dict(), "attacker_ids": attackers.tolist(), "diverging_ids": diverging.tolist()}
        for name, run in runs.items():
            final = np.asarray(run.rounds[-1].client_accuracy) if run.rounds else np.zeros(0)
            # the attackers' own models are no one's concern: the mean over the honest clients
            out["methods"][name]["honest_final_accuracy"] = float(final[honest].mean()) if final.size else float("nan")
            # ... but free riders' are: whether free riding pays
            if final.size and attackers.size:
                out["methods"][name]["attacker_final_accuracy"] = float(final[attackers].mean())
    fomo: Optional[MethodRun] = next((run for name, run in runs.items() if name.partition(":")[0] == "fedfomo"), None)
    if fomo is not None:
        out["affinity"] = fomo.affinity.tolist()
        if groups is not None:
            frac, counted = within_group_fraction(fomo.affinity, groups)
            tfrac, _ = within_group_fraction(fomo.affinity, groups, groups[targets])
            out["affinity_within_group_fraction"] = frac
            out["affinity_target_group_fraction"] = tfrac
            out["clients_with_positive_affinity"] = counted
    return out
