"""How the fomo-core round was chosen: variants of it on three partitions and two label budgets.

Each variant is a client/server policy (or, for the label budget, a way of splitting FedFomo's
labels) run on MNIST-5k with 20 clients, 20 training samples each, 20 rounds, M = 5, against
FedAvg, Local and FedAvg + fine-tuning on the same data and seeds (the simulator's own methods, so
every number here equals the corresponding cell of ``fomo-core experiment``). Reported: accuracy
after local training (the headline), mean over clients, final round; mean ± sd over seeds; the
paired difference from each baseline with its worst seed; the share of client-rounds in which no
received candidate got a positive weight and in which the client moved toward the global model.

Variants (the budget "free" is the current split: FedFomo's 50 validation labels come on top of
everyone's 20 training labels; "equal": the baselines train on all 70):

- ``fedfomo``: the FedFomo step alone (fomo-core's client policy, no global model, training always kept)
- ``global-follow``: + a global model moved by the mean of the clients' own training changes (no
  extra training), the client moving toward it by validation line search
- ``global-follow-keep``: + local training kept only when the validation loss does not rise
- ``global-train``: + a global model trained jointly (every client trains a copy: 2x training)
- ``fomo-core``: ``global-train`` + the training check (the preset)
- with budget "equal", fomo-core's FedFomo validating on all 50 of its validation labels
  (``val-all``), on 10 and training on the other 40 too (``val-10``), or training on all 70 and
  validating on 50 of them (``train-on-val``: its own model has seen its validation data); on
  5 and training on the other 45 (``val-5``); on 10 that rotate: every round it takes part in,
  the next 10 of its 50 validation labels are held out and the other 40 train, so every label
  trains over the rounds (``val-10-rotating``, the runner's ``validation_fold="rotating"``); on
  a fixed 10 with the copy of the global model trained on all 70 labels (``val-10-global-all``,
  the runner's ``global_labels="all"``: the global model sees every label, the client's own
  model never its validation fold)

    python benchmarks/ablate_round.py          # resumes; writes benchmarks/results/ablate_round.{jsonl,md}
    python benchmarks/ablate_round.py --seeds 0-4
    python benchmarks/ablate_round.py --seeds 0-4 --budgets equal --labels val-10,val-10-rotating
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import fomo_core as fc
from fomo_core._atomic import atomic_write
from fomo_core.simulate import ExperimentConfig, FederationSettings
from fomo_core.simulate.backends import make_backend
from fomo_core.simulate.data import keep_validation, rotate_validation, split_clients, with_validation_labels
from fomo_core.simulate.experiment import METHODS, _global_train, _warm_up, load_dataset, make_partition

OUT = Path(__file__).resolve().parent / "results"
PARTITIONS = {
    "groups": dict(partition="groups", groups=2),
    "dirichlet-0.1": dict(partition="dirichlet", alpha=0.1),
    "dirichlet-0.5": dict(partition="dirichlet", alpha=0.5),
    "shards": dict(partition="pathological", shards_per_client=2),
}
CORE = fc.get_preset("fomo-core")
_ALONE = CORE.client.replace(global_model="off", keep_training="always")
POLICIES = {
    "fedfomo": (_ALONE, CORE.server.replace(global_model="off", global_guard=None)),
    "global-follow": (_ALONE.replace(global_model="follow"), CORE.server),
    "global-follow-keep": (_ALONE.replace(global_model="follow", keep_training="if_not_worse"), CORE.server),
    "global-train": (_ALONE.replace(global_model="train"), CORE.server),
    "fomo-core": (CORE.client, CORE.server),
}
# (partitions, variant, FedFomo's labels) per budget; the baselines run in every (partition, budget)
PLAN = {
    "free": [
        (("groups", "dirichlet-0.1", "dirichlet-0.5"), v, "val-all")
        for v in ("fedfomo", "global-follow", "global-follow-keep", "global-train", "fomo-core")
    ],
    "equal": [
        (("groups", "dirichlet-0.5", "shards"), "fomo-core", lab) for lab in ("val-all", "val-10", "train-on-val")
    ]
    + [
        (("groups", "dirichlet-0.1", "dirichlet-0.5", "shards"), "fomo-core", lab)
        for lab in ("val-10", "val-10-rotating", "val-10-global-all", "val-5")
    ],
}
BASELINES = ("fedavg", "local", "fedavg_ft")


def _data(cfg: ExperimentConfig, seed: int) -> tuple:
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(seed)
    partition = make_partition(cfg, dataset, rng)
    data = split_clients(dataset, partition, rng, val_fraction=0.2, test_fraction=0.4, max_train=20)
    return dataset, partition, data


def run_cell(partition: str, budget: str, method: str, seed: int, labels: str = "val-all") -> dict:
    """One federation; the same data, splits, initial model and seeds as ``run_experiment``."""
    cfg = ExperimentConfig(
        dataset="mnist5k",
        clients=20,
        max_train=20,
        federation=FederationSettings(rounds=20, seed=seed),
        **PARTITIONS[partition],
    )
    dataset, part, data = _data(cfg, seed)
    fomo = method in POLICIES
    if not fomo and budget == "equal":
        data = [with_validation_labels(d) for d in data]
    extra = {}
    if fomo and labels == "val-10-rotating":
        extra["data_for_turn"] = lambda k, turn, full=data: rotate_validation(full[k], 10, turn)
    if fomo and labels == "val-5":
        data = [keep_validation(d, 5) for d in data]
    elif fomo and labels.startswith("val-10"):
        data = [keep_validation(d, 10) for d in data]
    elif fomo and labels == "train-on-val":
        data = [with_validation_labels(d) for d in data]  # and still validates on its validation split
    fed = cfg.federation
    if fomo:
        key = f"ablation-{method}"
        fc.PRESETS[key] = fc.Preset(name=key, client=POLICIES[method][0], server=POLICIES[method][1])
        fed = replace(fed, preset=key)
    try:
        backend = make_backend("torch", dataset, cfg.training, seed, preset=fed.preset)
        init = backend.init_params()
        _warm_up(backend, data[0], init, seed)  # as run_experiment does: the same numbers as the grid's cells
        everything = labels == "val-10-global-all"  # the runner's global_labels="all"
        clients = [
            backend.new_client(d, init, seed * 1000 + k, **_global_train(everything, d)) for k, d in enumerate(data)
        ]
        if method == "fedavg_ft":
            extra["groups"] = part.groups
        t0 = time.process_time()
        run = METHODS["fedfomo" if fomo else method](backend, clients, init, fed, None, **extra)
        cpu = time.process_time() - t0
    finally:
        if fomo:
            del fc.PRESETS[key]
    out = {
        "partition": partition,
        "budget": budget,
        "method": method,
        "labels": labels if fomo else None,
        "seed": seed,
        "after_training": run.rounds[-1].accuracy,
        "after_update": run.rounds[-1].update_accuracy,
        "cpu_seconds": cpu,
    }
    if fomo:
        d = run.to_dict()
        rounds = float(np.sum(d["participants_per_round"]))
        out["no_positive_weight_share"] = float(np.sum(d["no_positive_weight_per_round"])) / rounds
        out["moved_to_global_share"] = float(np.sum(d["moved_to_global_per_round"])) / rounds
    return out


def jobs(seeds, budgets=tuple(PLAN), labels=None) -> list:
    """Every (partition, budget, method, seed, labels) to run; ``labels``: only these of
    FedFomo's label variants (None: all)."""
    out = []
    for seed in seeds:
        for budget in budgets:
            plan = [job for job in PLAN[budget] if labels is None or job[2] in labels]
            partitions = sorted({p for parts, _, _ in plan for p in parts})
            for p in partitions:
                out += [(p, budget, b, seed, None) for b in BASELINES]
            out += [(p, budget, v, seed, lab) for parts, v, lab in plan for p in parts]
    return out


def _key(r: dict) -> tuple:
    return (r["partition"], r["budget"], r["method"], r["seed"], r["labels"])


def table(rows: list) -> str:
    by = {_key(r): r for r in rows}
    lines = [
        "Accuracy after local training (%, the headline) and after the update, MNIST-5k, 20 clients, "
        "20 training samples each, 20 rounds; "
        "mean ± sd over the seeds run; Δ: paired difference, mean ± sd (worst seed in brackets); "
        "no +w / to g: shares of client-rounds with no positively weighted candidate / a move toward the global model.",
        "",
        "| budget | partition | variant | FedFomo's labels | seeds | accuracy | after the update | Δ FedAvg | Δ Local "
        "| Δ FedAvg+FT | no +w | to g |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    variants = sorted({k for k in by if k[2] in POLICIES}, key=lambda k: (k[1] != "free", k[0], k[2], k[4]))
    done = set()
    for part, budget, method, _, labels in variants:
        if (part, budget, method, labels) in done:
            continue
        done.add((part, budget, method, labels))
        seeds = sorted(k[3] for k in by if k[:3] == (part, budget, method) and k[4] == labels)
        acc = np.array([by[(part, budget, method, s, labels)]["after_training"] for s in seeds]) * 100
        upd = np.array([by[(part, budget, method, s, labels)]["after_update"] for s in seeds]) * 100
        cells = [
            budget,
            part,
            method,
            labels,
            str(len(seeds)),
            f"{acc.mean():.1f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.1f}",
            f"{upd.mean():.1f}",
        ]
        for b in BASELINES:
            diff = [
                acc[i] - 100 * by[(part, budget, b, s, None)]["after_training"]
                for i, s in enumerate(seeds)
                if (part, budget, b, s, None) in by
            ]
            sd = f" ± {np.std(diff, ddof=1):.1f}" if len(diff) > 1 else ""
            cells.append(f"{np.mean(diff):+.1f}{sd} ({min(diff):+.1f})" if diff else "–")
        for share in ("no_positive_weight_share", "moved_to_global_share"):
            cells.append(f"{100 * np.mean([by[(part, budget, method, s, labels)][share] for s in seeds]):.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0,3")
    parser.add_argument("--budgets", default=",".join(PLAN), help="e.g. equal")
    parser.add_argument("--labels", default=None, help="only these of FedFomo's label variants, e.g. val-10,val-5")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as fomo-core experiment: one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi) + 1) if hi else [int(s) for s in args.seeds.split(",")]
    path = OUT / "ablate_round.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {_key(r) for r in rows}
    budgets = tuple(args.budgets.split(","))
    unknown = set(budgets) - set(PLAN)
    if unknown:
        parser.error(f"argument --budgets: expected some of {sorted(PLAN)}, got {sorted(unknown)}")
    labels = None if args.labels is None else set(args.labels.split(","))
    for job in jobs(seeds, budgets, labels):
        key = (job[0], job[1], job[2], job[3], job[4] if job[2] in POLICIES else None)
        if key in done:
            continue
        rows.append(run_cell(*job[:4], labels=job[4] or "val-all"))
        done.add(key)
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        atomic_write(path, lambda f, text=text: f.write(text))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    md = table(rows)
    atomic_write(OUT / "ablate_round.md", lambda f: f.write(md.encode()))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
