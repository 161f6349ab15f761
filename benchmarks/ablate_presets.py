"""Which of FL-bench's choices make its preset beat fomo-core's FedFomo round on the demo's setting?

Each variant is fomo-core's FedFomo round (its preset without the global model and the training
check, which no peer has) with one client or server choice taken from FL-bench's, run on
the demo's setting (MNIST-5k, 20 clients in 2 groups, 20 training samples each, 20 rounds, M = 5)
over seeds 0-4; reported: final accuracy after local training and right after the federated
update, mean ± sd over seeds, and the paired difference from fomo-core's preset.

    python benchmarks/ablate_presets.py            # writes benchmarks/results/ablate_presets.{json,md}
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

import fomo_core as fc
from fomo_core._atomic import atomic_write
from fomo_core.simulate import ExperimentConfig, FederationSettings, TrainSettings, run_experiment

SEEDS = range(5)
# fomo-core's FedFomo round alone (no global model, training always kept): the round these
# ablations compare with FL-bench's, choice by choice
_CORE = fc.get_preset("fomo-core")
BASE = replace(
    _CORE,
    client=_CORE.client.replace(global_model="off", keep_training="always"),
    server=_CORE.server.replace(global_model="off", global_guard=None),
)
FLB = fc.get_preset("fl-bench")

VARIANTS = {
    "fomo-core": BASE,
    "ε = 0 (no exploration)": replace(BASE, server=BASE.server.replace(epsilon=0.0, epsilon_decay=0.0)),
    "uploads seen at once": replace(BASE, server=BASE.server.replace(uploads="immediately")),
    "pool: last round only": replace(BASE, server=BASE.server.replace(pool="last_round")),
    "affinity starts at identity": replace(BASE, server=BASE.server.replace(affinity_init="identity")),
    "loss: Σ batch means / samples": replace(BASE, client=BASE.client.replace(loss="batch_sum_per_sample")),
    "eps = 1e-5": replace(BASE, client=BASE.client.replace(eps=1e-5)),
    "fl-bench server policy": replace(BASE, server=FLB.server),
    "fl-bench": FLB,
}


def run(name: str, preset: fc.Preset, seed: int) -> tuple:
    key = f"ablation-{abs(hash(name)) % 10**8}"
    fc.PRESETS[key] = replace(preset, name=key)  # the simulator takes presets by name
    try:
        cfg = ExperimentConfig(
            dataset="mnist5k",
            clients=20,
            groups=2,
            max_train=20,
            methods=("fedfomo",),
            federation=FederationSettings(rounds=20, m=5, preset=key, seed=seed),
            training=TrainSettings(epochs=2, lr=0.05, momentum=0.5, batch_size=16, hidden=(64,)),
        )
        run = run_experiment(cfg)["methods"]["fedfomo"]
    finally:
        del fc.PRESETS[key]
    return run["final_accuracy"], run["final_accuracy_after_update"]


def main() -> int:
    results = {}
    for name, preset in VARIANTS.items():
        results[name] = [run(name, preset, s) for s in SEEDS]
        trained = np.array([r[0] for r in results[name]]) * 100
        print(f"{name:32s} after training {trained.mean():5.1f} ± {trained.std(ddof=1):.1f}", file=sys.stderr)
    base = np.array([r[0] for r in results["fomo-core"]]) * 100
    lines = [
        "| variant of fomo-core | after local training | after the update "
        "| Δ after training vs fomo-core (seeds ahead) |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        trained, updated = (np.array([r[k] for r in runs]) * 100 for k in (0, 1))
        diff = trained - base
        lines.append(
            f"| {name} | {trained.mean():.1f} ± {trained.std(ddof=1):.1f} "
            f"| {updated.mean():.1f} ± {updated.std(ddof=1):.1f} "
            f"| {diff.mean():+.1f} ± {diff.std(ddof=1):.1f} ({int((diff > 0).sum())}/{len(diff)}) |"
        )
    out = Path(__file__).resolve().parent / "results"
    atomic_write(out / "ablate_presets.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    atomic_write(out / "ablate_presets.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
