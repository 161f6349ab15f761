"""The experiment runner: a grid of settings x methods x seeds, one cell per (setting, method, seed).

Every cell is one :func:`run_experiment` call with a single method; cells of the same setting and
seed share their data, partition, splits and initial model (all drawn from the seed), so the
methods' results are paired by seed. A finished cell is written atomically to
``<out>/cells/<setting>__<method>__seed<k>.json`` with the configuration it ran; a later run with
the same grid reads it instead of running it again (resume), and reruns it if its configuration
changed. Summaries (JSON, CSV, a markdown table of mean ± sd and paired differences, plots with
error bands) are rebuilt from the cells at the end.

Two accuracies per cell, both the mean over clients of their test accuracy, final round:
``after_update`` (right after the federated update, before local training) and ``after_training``
(after local training: the model a client ends the round with). The headline of a setting is
after_training when clients are tested on their own distribution and after_update when their
target is another distribution (``target="shifted"``), where local training moves the model away
from the target.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import numpy as np

from .._validate import count
from .backends import BACKENDS, TrainSettings
from .data import BUDGETS, DATASETS, FOLDS, GLOBAL_LABELS, TARGETS
from .experiment import ExperimentConfig, method_parts, run_experiment
from .federation import FederationSettings
from .files import write_atomic, write_json_atomic
from .partition import PARTITIONS

__all__ = [
    "Grid",
    "Cell",
    "DEFAULT_GRID",
    "PARTITIONS_GRID",
    "GRIDS",
    "config_from_flat",
    "parse_value",
    "run_grid",
    "summarise",
    "summary_markdown",
    "METRICS",
]

METRICS = {"after_update": "after the federated update", "after_training": "after local training"}
# FedFomo's per-cell shares of client-rounds (participants, every round)
SHARES = {
    "no_positive_weight_share": "no received candidate got a positive weight",
    "moved_to_global_share": "the client moved toward the global model",
}

# flat keys of a setting: ExperimentConfig's own fields and those of its federation and training
_CONFIG_KEYS = {f.name for f in fields(ExperimentConfig)} - {"methods", "federation", "training"}
_FEDERATION_KEYS = {f.name for f in fields(FederationSettings)} - {"seed"}
_TRAINING_KEYS = {f.name for f in fields(TrainSettings)}
FLAT_KEYS = sorted(_CONFIG_KEYS | _FEDERATION_KEYS | _TRAINING_KEYS)
_CHOICES = {
    "dataset": DATASETS,
    "partition": PARTITIONS,
    "target": TARGETS,
    "backend": BACKENDS,
    "budget": BUDGETS,
    "validation_fold": FOLDS,
    "global_labels": GLOBAL_LABELS,
}


@dataclass(frozen=True)
class Grid:
    """settings: name -> flat overrides (keys of :data:`FLAT_KEYS`: dataset, clients, groups,
    partition, max_train, label_noise, rounds, m, epochs, lr, hidden, ...) on top of ``base``.
    methods: "fedfomo", "fedfomo:<preset>", "fedavg", "local", "fedavg_ft", "oracle".
    seeds: every setting and method runs once per seed."""

    settings: dict
    methods: tuple
    seeds: tuple
    base: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("settings must name at least one setting")
        for name in self.settings:
            if not name or any(ch in name for ch in "/\\:") or name.startswith("."):
                raise ValueError(
                    f"setting names must be non-empty without '/', '\\\\', ':' or a leading '.', got {name!r}"
                )
        if not self.methods:
            raise ValueError("methods must name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must not repeat, got {list(self.methods)}")
        for m in self.methods:
            method_parts(m)
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for k, s in enumerate(self.seeds):
            try:
                count(s, f"seeds[{k}]", type_error=ValueError)
            except ValueError as e:
                raise ValueError(f"seeds must be integers >= 0, got {list(self.seeds)} ({e})") from None
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {list(self.seeds)}")
        for name in self.settings:
            config_from_flat(self.flat(name), seed=0, method=self.methods[0])

    def flat(self, setting: str) -> dict:
        return {**self.base, **self.settings[setting]}

    def cells(self) -> list:
        return [Cell(s, m, seed) for s in self.settings for seed in self.seeds for m in self.methods]

    def as_dict(self) -> dict:
        return {"settings": self.settings, "methods": list(self.methods), "seeds": list(self.seeds), "base": self.base}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        unknown = set(d) - {"settings", "methods", "seeds", "base"}
        if unknown:
            raise ValueError(f"a grid has keys settings, methods, seeds and base, got also {sorted(unknown)}")
        return cls(dict(d["settings"]), tuple(d["methods"]), tuple(d["seeds"]), dict(d.get("base", {})))


@dataclass(frozen=True)
class Cell:
    setting: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.setting}__{self.method.replace(':', '-')}__seed{self.seed}"


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_flat(flat: dict, *, seed: int, method: str) -> ExperimentConfig:
    """The ExperimentConfig of one cell from a setting's flat keys. Raises ValueError naming an
    unknown key or a value outside its choices."""
    unknown = set(flat) - set(FLAT_KEYS)
    if unknown:
        raise ValueError(f"unknown setting key(s) {sorted(unknown)}; known: {', '.join(FLAT_KEYS)}")
    for key, choices in _CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ValueError(f"setting key {key!r} must be one of {choices}, got {flat[key]!r}")
    train = {k: v for k, v in flat.items() if k in _TRAINING_KEYS}
    if "hidden" in train:
        h = train["hidden"]
        train["hidden"] = (h,) if isinstance(h, int) else tuple(h)
    fed = {k: v for k, v in flat.items() if k in _FEDERATION_KEYS}
    own = {k: v for k, v in flat.items() if k in _CONFIG_KEYS}
    try:
        return ExperimentConfig(
            **own, methods=(method,), federation=FederationSettings(**fed, seed=seed), training=TrainSettings(**train)
        )
    except TypeError as e:  # a value of the wrong kind for its dataclass
        raise ValueError(f"setting {flat}: {e}") from None


def _share(run: dict, key: str) -> Optional[float]:
    """The share of client-rounds (participants, every round) counted in ``run[key]``, or None
    when the method does not count them (every method but FedFomo)."""
    counts, participants = run.get(key), run.get("participants_per_round")
    if not counts or counts[0] is None or not participants or sum(participants) == 0:
        return None
    return float(sum(counts) / sum(participants))


def _cell_record(cell: Cell, flat: dict, result: dict) -> dict:
    run = result["methods"][cell.method]
    after_training = run["accuracy_per_round"]
    after_update = run.get("accuracy_after_update_per_round") or [None] * len(after_training)
    return {
        "setting": cell.setting,
        "method": cell.method,
        "seed": cell.seed,
        "config": flat,
        "target": result["config"]["target"],
        "after_update": after_update[-1],
        "after_training": after_training[-1],
        "after_update_per_round": after_update,
        "after_training_per_round": after_training,
        "affinity_within_group_fraction": result.get("affinity_within_group_fraction"),
        "no_positive_weight_share": _share(run, "no_positive_weight_per_round"),
        "moved_to_global_share": _share(run, "moved_to_global_per_round"),
        "labelled_samples": run.get("labelled_samples"),
        "seconds": result["seconds"],
        "cpu_seconds": result.get("cpu_seconds"),
    }


def run_grid(
    grid: Grid,
    out: str,
    *,
    progress: bool = True,
    plots: bool = True,
    run: Callable[[ExperimentConfig, Optional[Callable]], dict] = run_experiment,
) -> dict:
    """Runs every cell of ``grid`` not already finished in ``out`` and writes the summaries.
    Returns {"ran": [cell keys], "reused": [cell keys], "summary": summarise(...)}. ``run`` is the
    experiment function (tests count its calls)."""
    cells_dir = os.path.join(out, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    write_json_atomic(os.path.join(out, "grid.json"), grid.as_dict())
    todo, reused = [], []
    for cell in grid.cells():
        path = os.path.join(cells_dir, cell.key + ".json")
        if _finished(path, grid.flat(cell.setting), cell.method):
            reused.append(cell)
        else:
            todo.append(cell)
    bar = None
    if progress:
        from tqdm import tqdm

        rounds = {
            s: config_from_flat(grid.flat(s), seed=0, method=grid.methods[0]).federation.rounds for s in grid.settings
        }
        bar = tqdm(
            total=sum(rounds[c.setting] for c in todo),
            unit="round",
            dynamic_ncols=True,
            desc=f"{len(todo)} cells to run, {len(reused)} done before",
        )
    try:
        for cell in todo:
            flat = grid.flat(cell.setting)
            cfg = config_from_flat(flat, seed=cell.seed, method=cell.method)
            if bar is not None:
                bar.set_description(f"{cell.setting} {cell.method} seed {cell.seed}")

            def on_round(method: str, record) -> None:
                if bar is not None:
                    bar.set_postfix_str(f"after local training {100 * record.accuracy:.1f}%")
                    bar.update(1)

            result = run(cfg, on_round)
            write_json_atomic(os.path.join(cells_dir, cell.key + ".json"), _cell_record(cell, flat, result))
    finally:
        if bar is not None:
            bar.close()
    records = [_read(os.path.join(cells_dir, c.key + ".json")) for c in grid.cells()]
    summary = summarise(records, grid)
    _write_summaries(out, grid, records, summary, plots=plots)
    return {"ran": [c.key for c in todo], "reused": [c.key for c in reused], "summary": summary}


def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# keys that change only what FedFomo does: a cell of another method ran the same without them
FEDFOMO_ONLY_KEYS = ("fedfomo_validation", "validation_fold", "global_labels")


def _beside_fedfomo(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in FEDFOMO_ONLY_KEYS}


def _finished(path: str, flat: dict, method: str) -> bool:
    """A cell file from an earlier run counts when it parses and ran the same configuration
    (for a method other than FedFomo, up to the keys that concern FedFomo only: the cell's
    recorded configuration is then brought up to date)."""
    if not os.path.exists(path):
        return False
    try:
        record = _read(path)
    except (OSError, json.JSONDecodeError):
        return False
    wanted = json.loads(json.dumps(flat))
    if record.get("config") == wanted:
        return True
    if method_parts(method)[0] == "fedfomo" or not isinstance(record.get("config"), dict):
        return False
    if _beside_fedfomo(record["config"]) != _beside_fedfomo(wanted):
        return False
    write_json_atomic(path, {**record, "config": wanted})
    return True


# --- summaries ------------------------------------------------------------------------------------


def _mean_sd(values: list) -> tuple:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def headline_metric(target: str) -> str:
    return "after_update" if target != "local" else "after_training"


def _paired(diffs: list, reference: str) -> dict:
    mean, sd = _mean_sd(diffs)
    return {
        "reference": reference,
        "mean": mean,
        "sd": sd,
        "min": float(min(diffs)),
        "max": float(max(diffs)),
        "reference_better_seeds": int(sum(d > 0 for d in diffs)),
        "seeds": len(diffs),
    }


def summarise(records: list, grid: Grid) -> dict:
    """Per setting: the headline metric, and per method the mean and sd over seeds of both
    metrics and, for every method but the first (the reference), the paired difference of both
    (reference minus method, seed by seed: mean, sd, min, max, seeds where the reference is better)."""
    out = {}
    reference = grid.methods[0]
    for setting in grid.settings:
        rows = [r for r in records if r["setting"] == setting]
        headline = headline_metric(rows[0]["target"])
        by = {(r["method"], r["seed"]): r for r in rows}
        methods = {}
        for m in grid.methods:
            entry = {}
            for metric in METRICS:
                mean, sd = _mean_sd([by[(m, s)][metric] for s in grid.seeds])
                entry[metric] = {"mean": mean, "sd": sd}
            entry["per_seed"] = {str(s): {k: by[(m, s)][k] for k in METRICS} for s in grid.seeds}
            for share in SHARES:
                values = [by[(m, s)].get(share) for s in grid.seeds]
                if all(v is not None for v in values):
                    mean, sd = _mean_sd(values)
                    entry[share] = {"mean": mean, "sd": sd}
            cpu = [by[(m, s)].get("cpu_seconds") for s in grid.seeds]
            if all(v is not None for v in cpu):
                entry["cpu_seconds"] = {"mean": _mean_sd(cpu)[0], "sd": _mean_sd(cpu)[1]}
            if m != reference:
                entry["paired_difference"] = {
                    metric: _paired([by[(reference, s)][metric] - by[(m, s)][metric] for s in grid.seeds], reference)
                    for metric in METRICS
                }
            methods[m] = entry
        out[setting] = {"config": grid.flat(setting), "headline": headline, "methods": methods}
    return out


def _pm(mean: float, sd: float, scale: float = 100.0, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    m = f"{scale * mean:+.1f}" if signed else f"{scale * mean:.1f}"
    return m if math.isnan(sd) else f"{m} ± {scale * sd:.1f}"


def summary_markdown(summary: dict, grid: Grid) -> str:
    """One table per setting: accuracy (%) after the update and after local training, mean ± sd
    over the seeds, and the reference method's paired difference on the headline metric."""
    reference = grid.methods[0]
    lines = [
        f"Mean ± sd over seeds {', '.join(map(str, grid.seeds))}; accuracy in %, the mean over clients of "
        "their test accuracy in the final round. The headline metric (marked *) is after local training "
        "when clients are tested on their own distribution, after the federated update for shifted targets. "
        "FedFomo's shares count client-rounds (participants, every round). CPU s: process CPU time of one "
        "run (one method, one seed) on a shared machine: compare within a table only.",
        "",
    ]
    for setting, s in summary.items():
        head = s["headline"]
        conf = ", ".join(f"{k}={v}" for k, v in s["config"].items())
        lines += [f"### {setting}", "", f"`{conf}`", ""]
        cols = [
            f"after update{' *' if head == 'after_update' else ''}",
            f"after local training{' *' if head == 'after_training' else ''}",
            f"{reference} − method, after update (paired; seeds better)",
            f"{reference} − method, after local training (paired; seeds better)",
            "no positive weight (% of client-rounds)",
            "moved toward the global model (%)",
            "CPU s per run",
        ]
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for m, e in s["methods"].items():
            d = e.get("paired_difference")
            cells = [_pm(e[k]["mean"], e[k]["sd"]) for k in METRICS]
            cells += [
                "–"
                if d is None
                else f"{_pm(d[k]['mean'], d[k]['sd'], signed=True)} ({d[k]['reference_better_seeds']}/{d[k]['seeds']})"
                for k in METRICS
            ]
            cells += [_pm(e[k]["mean"], e[k]["sd"]) if k in e else "–" for k in SHARES]
            cells.append(f"{e['cpu_seconds']['mean']:.1f}" if "cpu_seconds" in e else "–")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _csv(records: list) -> str:
    head = [
        "setting",
        "method",
        "seed",
        "target",
        "after_update",
        "after_training",
        "affinity_within_group_fraction",
        "no_positive_weight_share",
        "moved_to_global_share",
        "seconds",
        "cpu_seconds",
    ]
    rows = [",".join(head)]
    for r in records:
        rows.append(",".join("" if r.get(k) is None else str(r[k]) for k in head))
    return "\n".join(rows) + "\n"


def _write_summaries(out: str, grid: Grid, records: list, summary: dict, plots: bool = True) -> None:
    write_json_atomic(
        os.path.join(out, "results.json"),
        {"grid": grid.as_dict(), "metrics": METRICS, "summary": summary, "cells": records},
    )
    write_atomic(os.path.join(out, "results.csv"), _csv(records))
    write_atomic(os.path.join(out, "summary.md"), summary_markdown(summary, grid))
    if plots:
        from ..plots import plot_grid_setting

        for setting in grid.settings:
            rows = [r for r in records if r["setting"] == setting]
            plot_grid_setting(rows, grid.methods, os.path.join(out, f"{setting}.png"), title=setting)


DEFAULT_GRID = Grid(
    settings={
        "mnist-2groups": {},
        "mnist-2groups-20train": {"max_train": 20},
        "mnist-2groups-noise30": {"label_noise": 0.3},
        "mnist-2groups-20train-noise30": {"max_train": 20, "label_noise": 0.3},
    },
    methods=("fedfomo", "fedavg", "local", "fedavg_ft", "oracle"),
    seeds=(0, 1, 2, 3, 4),
    base={"dataset": "mnist5k", "clients": 20, "groups": 2, "partition": "groups", "rounds": 20},
)


def _partition_settings() -> dict:
    """The partitions users run, each at the current split ("free": FedFomo's validation labels
    come on top of the baselines' training labels) and at the equal label budget (the baselines
    train on FedFomo's validation labels too; FedFomo's own model trains on all but 10 of them,
    which it keeps for validation, and the copy of the global model its round trains on all of
    them: better than validating on all of them, or rotating the 10, on the partitions measured
    by benchmarks/ablate_round.py)."""
    partitions = {
        "groups": {"partition": "groups", "groups": 2},
        "dirichlet-0.1": {"partition": "dirichlet", "alpha": 0.1},
        "dirichlet-0.3": {"partition": "dirichlet", "alpha": 0.3},
        "dirichlet-0.5": {"partition": "dirichlet", "alpha": 0.5},
        "shards": {"partition": "pathological", "shards_per_client": 2},
        "dirichlet-0.3-50clients-p0.3": {"partition": "dirichlet", "alpha": 0.3, "clients": 50, "participation": 0.3},
    }
    equal = {
        f"{name}-equal": {**keys, "budget": "equal", "fedfomo_validation": 10, "global_labels": "all"}
        for name, keys in partitions.items()
    }
    return {**partitions, **equal}


PARTITIONS_GRID = Grid(
    settings=_partition_settings(),
    methods=("fedfomo", "fedavg", "local", "fedavg_ft"),
    seeds=(0, 1, 2, 3, 4),
    base={"dataset": "mnist5k", "clients": 20, "rounds": 20, "max_train": 20},
)

# the grids ``fomo-core experiment --grid NAME`` runs by name
GRIDS = {"default": DEFAULT_GRID, "partitions": PARTITIONS_GRID}
