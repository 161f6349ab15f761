"""Poisoned and broken clients: the honest clients' accuracy under attack, FedFomo (with and without
its guard) against FedAvg and Local; and whether free riding pays.

The simulator's default federation (digits, 15 clients in 5 latent groups of 2 classes, 20 rounds,
M = 5, 2 local epochs) with k = 0, 1, 3, 5 attackers taking part in every round and uploading a
corrupted model instead of the one they trained (fomo_core.simulate.attacks): x10 and x1000
scaled, sign-flipped, Gaussian noise (sigma 10), NaN, 1e30, "lying" (1e30 whose validation loss
every victim sees as 0) and "reparam" (a reparametrised copy: the hidden units times a, the output
weights from them divided by a, the same function, as far as the guard of the attacker's own
client lets it go); as "diverging", k honest clients whose own models turn NaN once, after
training in round 2 (they count among the honest clients); and as "free_ride", k clients that
never train and upload what their federated update gave them. The figure of merit is the honest
clients' mean personalised test accuracy (the attackers' own models are left out), mean +- sd over
3 seeds; "drop" is the paired difference, per seed, from the same method without attackers over
the same honest clients. For free riders, a second table: their own accuracy, free riding or
training honestly (the run without attackers), and with the server's free-rider policy
(ServerPolicy(free_riders="exclude"): no candidates for a client whose upload is a mix of what it
was sent).

    python benchmarks/bench_attacks.py            # about 12 minutes on 2 cores
    python benchmarks/bench_attacks.py --quick    # 1 seed, k = 3 only (a smoke run, not committed)

Writes results/attacks.json, results/attacks.md and results/attacks.png.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, write_results  # noqa: E402

KINDS = ("scale10", "scale1000", "sign_flip", "noise", "nan", "huge", "lying", "reparam", "diverging", "free_ride")
ATTACKERS = (1, 3, 5)
SEEDS = (0, 1, 2)
from fomo_core.policy import GUARD  # noqa: E402  (the fomo-core preset's default)

METHODS = ("fedfomo", "fedfomo_guard", "fedavg", "local")
LABELS = {
    "fedfomo": "FedFomo",
    "fedfomo_guard": "FedFomo + guard",
    "fedavg": "FedAvg",
    "local": "Local",
    "fedfomo_exclude": "FedFomo + guard, free riders excluded",
}


def run_cell(cell: tuple) -> dict:
    """One (seed, attack kind, k, method): the final accuracy of every client."""
    seed, kind, k, method = cell
    import torch

    torch.set_num_threads(1)
    from fomo_core.simulate.attacks import AttackSettings
    from fomo_core.simulate.experiment import ExperimentConfig, run_experiment
    from fomo_core.simulate.federation import FederationSettings

    if kind == "diverging":  # k honest clients whose models turn NaN after training in round 2
        attack = AttackSettings(diverging=k)
    else:
        attack = AttackSettings(kind=kind, attackers=k) if k else AttackSettings()
    guarded = method in ("fedfomo_guard", "fedfomo_exclude")  # the preset's guard, or none at all
    guard = {} if guarded else {"guard": math.inf, "rebalance": False}
    free_riders = "exclude" if method == "fedfomo_exclude" else None
    name = "fedfomo" if method.startswith("fedfomo") else method
    fed = FederationSettings(seed=seed, attack=attack, free_riders=free_riders, **guard)
    ratios = _measure_ratios() if (k == 0 and method == "fedfomo") else None
    hull = _measure_hull() if method == "fedfomo_guard" and kind in ("none", "free_ride") else None
    start = time.perf_counter()
    results = run_experiment(ExperimentConfig(methods=(name,), federation=fed))
    return {
        "seed": seed,
        "kind": kind,
        "attackers": k,
        "method": method,
        "client_accuracy": results["methods"][name]["final_client_accuracy"],
        "attacker_ids": results.get("attack", {}).get("attacker_ids", []),
        "seconds": time.perf_counter() - start,
        **({"honest_distance_ratios": ratios} if ratios is not None else {}),
        **({"hull_distances": hull} if hull is not None else {}),
    }


def _measure_hull() -> list:
    """Records every upload's distance from the affine hull of what its client was sent and its
    own last upload (fomo_core.free_riding.hull_distance): [[client, distance], ...]. The
    free-rider tolerance must sit between the free riders' and the honest clients'."""
    import fomo_core.server as server_module
    from fomo_core.free_riding import hull_distance

    seen: list = []
    receive = server_module.Server.receive

    def spy(self, client, params, ids, scores, **kwargs):
        sent = np.asarray(list(dict.fromkeys([int(client), *[int(i) for i in ids]])), dtype=np.int64)
        seen.append([int(client), hull_distance(params, self._table.rows(sent))])
        return receive(self, client, params, ids, scores, **kwargs)

    server_module.Server.receive = spy
    return seen


def _measure_ratios() -> list:
    """Records, during a clean FedFomo run, every candidate's distance over the norm of the model
    it is measured from, with whether it improved on it: [[ratio, improving], ...]. The guard's
    default must sit well above the honest ones."""
    import fomo_core as fc
    import fomo_core.round as round_module

    seen: list = []
    step = round_module.fomo_step

    def spy(local, candidates, local_loss, losses, **options):
        norm = fc.model_norm(local)  # before the update writes into it
        result = step(local, candidates, local_loss, losses, **options)
        for d, loss in zip(np.asarray(result.distances), np.asarray(losses)):
            if np.isfinite(d) and norm > 0:
                seen.append([float(d / norm), bool(loss < local_loss)])
        return result

    round_module.fomo_step = spy
    return seen


def cells(seeds, kinds, attackers) -> list:
    clean = [(s, "none", 0, m) for s in seeds for m in METHODS]
    attacked = [
        (s, kind, k, m)
        for s, kind, k, m in itertools.product(seeds, kinds, attackers, METHODS)
        if m != "local" or kind == "diverging"
    ]  # Local does not see attackers, but it does diverge
    excluded = [(s, "free_ride", k, "fedfomo_exclude") for s, k in itertools.product(seeds, attackers)]
    return clean + attacked + (excluded if "free_ride" in kinds else [])


def free_riders(runs: list, seeds, attackers) -> dict:
    """{k: {case: {"mean", "sd"}}} in accuracy points (%): the free riders' own accuracy when they
    train honestly (the run without attackers, the same clients), free riding under FedFomo with
    its guard, and with the free-rider policy; and the honest clients' accuracy in both."""
    by = {(r["seed"], r["kind"], r["attackers"], r["method"]): r for r in runs}
    table: dict = {}
    for k in attackers:
        cases: dict = {}
        for s in seeds:
            ids = by[(s, "free_ride", k, "fedfomo_guard")]["attacker_ids"]
            values = {
                "riders_honest": _mean_of(by[(s, "none", 0, "fedfomo_guard")], ids),
                "riders_allowed": _mean_of(by[(s, "free_ride", k, "fedfomo_guard")], ids),
                "riders_excluded": _mean_of(by[(s, "free_ride", k, "fedfomo_exclude")], ids),
                "honest_allowed": 100 * honest_mean(by[(s, "free_ride", k, "fedfomo_guard")]["client_accuracy"], ids),
                "honest_excluded": 100
                * honest_mean(by[(s, "free_ride", k, "fedfomo_exclude")]["client_accuracy"], ids),
            }
            for case, value in values.items():
                cases.setdefault(case, []).append(value)
        table[k] = {
            case: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
            for case, v in cases.items()
        }
    return table


def hull_summary(runs: list) -> dict:
    """The honest uploads' smallest hull distances and the free riders' largest (runs of FedFomo
    with its guard, without attackers and with free riders)."""
    from fomo_core.free_riding import FREE_RIDE_TOLERANCE

    honest, riders = [], []
    for run in runs:
        ids = set(run["attacker_ids"]) if run["kind"] == "free_ride" else set()
        for client, distance in run.pop("hull_distances", []):
            (riders if client in ids else honest).append(distance)
    honest_, riders_ = np.array(honest), np.array(riders)
    return {
        "honest": int(honest_.size),
        "honest_min": float(honest_.min()),
        "honest_p1": float(np.quantile(honest_, 0.01)),
        "riders": int(riders_.size),
        "riders_max": float(riders_.max()) if riders_.size else float("nan"),
        "tolerance": FREE_RIDE_TOLERANCE,
    }


def _mean_of(run: dict, ids: list) -> float:
    """The mean final accuracy (%) of the clients ``ids`` in a run."""
    return 100 * float(np.asarray(run["client_accuracy"])[ids].mean())


def free_rider_markdown(table: dict) -> str:
    cases = [
        ("riders_honest", "free riders' clients, training honestly"),
        ("riders_allowed", "free riders, allowed"),
        ("riders_excluded", "free riders, excluded"),
        ("honest_allowed", "honest clients, free riders allowed"),
        ("honest_excluded", "honest clients, free riders excluded"),
    ]
    rows = [[k] + [f"{table[k][c]['mean']:.1f} ± {table[k][c]['sd']:.1f}" for c, _ in cases] for k in table]
    note = (
        "Free riders (k clients that never train and upload what their update gave them), FedFomo with "
        "its guard: the free riders' own test accuracy when the same clients train honestly (the run "
        "without attackers), when they free-ride, and when the server excludes them "
        '(`ServerPolicy(free_riders="exclude")`); the honest clients\' accuracy with free riders allowed '
        "and excluded. Mean ± sd over seeds, %."
    )
    return note + "\n\n" + markdown_table(["k"] + [label for _, label in cases], rows)


def honest_mean(accuracy: list, attackers: list) -> float:
    honest = np.setdiff1d(np.arange(len(accuracy)), attackers)
    return float(np.asarray(accuracy)[honest].mean())


def summarise(runs: list, seeds, kinds, attackers) -> dict:
    """{kind: {k: {method: {"mean", "sd", "drop_mean", "drop_sd"}}}} in accuracy points (%)."""
    clean = {(r["seed"], r["method"]): r for r in runs if r["kind"] == "none"}
    by = {(r["seed"], r["kind"], r["attackers"], r["method"]): r for r in runs}
    table: dict = {}
    for kind, k, method in itertools.product(kinds, attackers, METHODS):
        values, drops = [], []
        for s in seeds:
            attacked = clean[(s, "local")] if method == "local" and kind != "diverging" else by[(s, kind, k, method)]
            ids = by[(s, kind, k, "fedavg")]["attacker_ids"]  # the same attackers for every method
            value = 100 * honest_mean(attacked["client_accuracy"], ids)
            values.append(value)
            drops.append(value - 100 * honest_mean(clean[(s, method)]["client_accuracy"], ids))
        table.setdefault(kind, {}).setdefault(k, {})[method] = {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "drop_mean": statistics.mean(drops),
            "drop_sd": statistics.stdev(drops) if len(drops) > 1 else 0.0,
        }
    table["none"] = {0: {}}
    for method in METHODS:
        values = [100 * float(np.mean(clean[(s, method)]["client_accuracy"])) for s in seeds]
        table["none"][0][method] = {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "drop_mean": 0.0,
            "drop_sd": 0.0,
        }
    return table


def markdown(table: dict, kinds, attackers) -> str:
    headers = ["attack", "k"] + [LABELS[m] for m in METHODS]
    rows = [["none", 0] + [f"{table['none'][0][m]['mean']:.1f} ± {table['none'][0][m]['sd']:.1f}" for m in METHODS]]
    for kind, k in itertools.product(kinds, attackers):
        cells_ = []
        for m in METHODS:
            c = table[kind][k][m]
            cells_.append(f"{c['mean']:.1f} ± {c['sd']:.1f} ({c['drop_mean']:+.1f})")
        rows.append([kind, k] + cells_)
    note = (
        "Honest clients' mean personalised test accuracy (%), mean ± sd over seeds; in brackets the "
        "paired change from the same method without attackers, over the same honest clients."
    )
    return note + "\n\n" + markdown_table(headers, rows)


def plot(table: dict, kinds, attackers, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fedfomo": "#ff9896", "fedfomo_guard": "#d62728", "fedavg": "#1f77b4", "local": "#7f7f7f"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.3 * len(kinds), 3.4), dpi=130, sharey=True)
    ks = [0] + list(attackers)
    for ax, kind in zip(np.atleast_1d(axes), kinds):
        for m in METHODS:
            cells_ = [table["none"][0][m]] + [table[kind][k][m] for k in attackers]
            mean = np.array([c["mean"] for c in cells_])
            sd = np.array([c["sd"] for c in cells_])
            ax.plot(ks, mean, marker="o", ms=3, lw=1.8, color=colors[m], label=LABELS[m])
            ax.fill_between(ks, mean - sd, mean + sd, color=colors[m], alpha=0.15, lw=0)
        ax.set_title(kind, fontsize=9)
        ax.set_xticks(ks)
        ax.set_xlabel("attackers k")
        ax.set_ylim(-3, 103)
    np.atleast_1d(axes)[0].set_ylabel("honest clients' accuracy (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Attacks on 15 digits clients: honest accuracy after 20 rounds (mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, k = 3 only; prints the table, writes nothing")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    args = parser.parse_args()
    seeds, attackers = ((0,), (3,)) if args.quick else (SEEDS, ATTACKERS)
    todo = cells(seeds, KINDS, attackers)
    start = time.perf_counter()
    runs = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for n, run in enumerate(pool.imap_unordered(run_cell, todo), 1):
            runs.append(run)
            print(f"\r{n}/{len(todo)} runs, {time.perf_counter() - start:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    table = summarise(runs, seeds, KINDS, attackers)
    ratios = np.array([r for run in runs for r in run.pop("honest_distance_ratios", [])])
    honest = {
        "candidates": int(len(ratios)),
        "max_ratio": float(ratios[:, 0].max()),
        "p99_ratio": float(np.quantile(ratios[:, 0], 0.99)),
        "max_ratio_improving": float(ratios[ratios[:, 1] > 0, 0].max()) if (ratios[:, 1] > 0).any() else None,
    }
    riders = free_riders(runs, seeds, attackers)
    hull = hull_summary(runs)
    text = (
        markdown(table, KINDS, attackers)
        + (
            f"\n\nHonest candidates without attackers ({honest['candidates']} measured): distance / norm of "
            f"the client's model at most {honest['max_ratio']:.2f} (99th percentile {honest['p99_ratio']:.2f}; "
            f"improving ones at most {honest['max_ratio_improving']:.2f}); the guard rejects improving "
            f"candidates beyond {GUARD:g} x the norm, layer by layer (benchmarks/bench_guard.py)."
        )
        + "\n\n"
        + free_rider_markdown(riders)
        + (
            f"\n\nEvery upload's distance from the affine hull of what its client was sent and its own last "
            f"upload, over the upload's norm: honest clients at least {hull['honest_min']:.2e} "
            f"({hull['honest']} uploads, 1st percentile {hull['honest_p1']:.2e}); free riders at most "
            f"{hull['riders_max']:.2e} ({hull['riders']} uploads); the server's tolerance is "
            f"{hull['tolerance']:g}."
        )
    )
    print(text)
    if args.quick:
        return 0
    payload = {
        "settings": {
            "clients": 15,
            "rounds": 20,
            "m": 5,
            "dataset": "digits",
            "seeds": list(seeds),
            "attackers": list(attackers),
            "kinds": list(KINDS),
            "guard": GUARD,
            "workers": args.workers,
        },
        "machine": machine(),
        "seconds": time.perf_counter() - start,
        "summary": {kind: {str(k): v for k, v in by_k.items()} for kind, by_k in table.items()},
        "free_riders": {str(k): v for k, v in riders.items()},
        "hull_distances": hull,
        "honest_distance_ratios": honest,
        "runs": sorted(runs, key=lambda r: (r["seed"], r["kind"], r["attackers"], r["method"])),
    }
    write_results("attacks", payload, text)
    plot(table, KINDS, attackers, RESULTS / "attacks.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
