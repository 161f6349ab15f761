"""The guard, measured: what it costs honest clients and what it stops.

Honest candidates. FedFomo (the fomo-core preset, its guard at the defaults) runs without
attackers on the attack benchmark's federation (digits, 15 clients in 5 groups), the demo's
(`fomo-core demo`: mnist5k, 20 clients in 2 groups; and `--dataset digits`), the demo at
participation 0.3 (clients come back with models several rounds old), and every setting of the
committed experiment grids (docs/results/*/grid.json, through the experiment runner), over seeds.
Every candidate a client evaluates is recorded with how far it moved from the client's model,
layer by layer (fomo_core.guard.layer_distances), how far rebalancing moved it (fomo_core.guard.
rebalance: the same function in the client's balance), whether it improved on the client's loss, and
whether the guard rejected it: with no attacker, every rejection is a false one.

The reparametrisation attack. In the attack benchmark's federation, after R clean rounds, each
client in turn is a victim that receives, alone, a copy of the model that serves it best (the
lowest loss on its validation data among the other clients'), reparametrised: the hidden layer's
units times a, the output layer's weights from them divided by a
(fomo_core.simulate.attacks.reparametrise). It computes the same function, so it has the same
loss. The attacker knows the guard and goes as far as it lets through (0.99 of its distance
bound, a between 1e-3 and 1e3; a = 0.14 with no guard, as far as the whole-model bound of 3 x the
norm let it): all units down (a < 1), all up, a random half up and the other half down (the
layer's norm about kept), or the one unit with the smallest outgoing weights. Guards: none; the
bound of 3 x the norm over the whole model (fomo-core's guard before); the same bound layer by
layer; and layer by layer after rebalancing (the preset's). Figure of merit: the victim's test
accuracy after its round (the update, then its local training) against the same round with the
model as it was (clean), mean over victims; the worst victim beside it.

The cost. The guard's own work in a client round (every layer's distances, and rebalancing every
candidate: the worst case, all improving) against the weights and update (fomo_step) of the same
M = 5 candidates, on the round benchmark's models (benchmarks/models.py), by thread CPU time,
median of interleaved repeats. ResNet-18's layers are joined by BatchNorm and shortcuts: nothing
to rebalance, distances only.

    python benchmarks/bench_guard.py            # about 15 minutes on 2 cores
    python benchmarks/bench_guard.py --quick    # one seed, fewer settings (not committed)

Writes results/guard.json and results/guard.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, machine, markdown_table, spread, write_results  # noqa: E402

from fomo_core.policy import GUARD  # noqa: E402  (the fomo-core preset's)

ROOT = Path(__file__).resolve().parent.parent
GRIDS = sorted((ROOT / "docs" / "results").glob("*/grid.json"))
DEMOS = {
    "attacks (digits, 15 clients, 5 groups)": {"dataset": "digits", "clients": 15, "groups": 5},
    "demo --dataset digits": {"dataset": "digits", "clients": 20, "groups": 2},
    "demo, participation 0.3": {"dataset": "mnist5k", "clients": 20, "groups": 2, "participation": 0.3},
}
SEEDS = (0, 1, 2, 3, 4)
VICTIM_SEEDS = (0, 1, 2)
VICTIM_ROUNDS = (2, 5, 10)


# --- honest candidates --------------------------------------------------------------------------


class Recorder:
    """Records every candidate evaluation of the client rounds run while it is open:
    [distance, shift, improving, rejected] per candidate: the guard's largest layer distance, and
    how far rebalancing moved it (relative to its norm; 0 when it was not rebalanced)."""

    def __enter__(self) -> Recorder:
        import fomo_core.round as round_module

        self.module, self.rows, distances, shifts = round_module, [], [], []
        self.distances, self.rebalanced, self.federate = (
            round_module.layer_distances,
            round_module._rebalanced,
            round_module.federate,
        )

        def layer_distances(*args, **kwargs):
            distances.append(self.distances(*args, **kwargs))
            return distances[-1]

        def rebalanced(balance, models, measured):
            outs = self.rebalanced(balance, models, measured)
            for out, model in zip(outs, models):
                shifts.append(float(np.linalg.norm(_host(out) - _host(model)) / np.linalg.norm(_host(model))))
            return outs

        def federate(*args, **kwargs):
            shifts.clear()
            res = self.federate(*args, **kwargs)
            measured = distances.pop() if distances else None
            m = len(res.candidate_losses)
            moved = iter(shifts)
            for k in range(m):
                improving = bool(res.candidate_losses[k] < res.baseline_loss)
                distance = float(measured[-m + k]) if measured is not None else math.nan
                shift = next(moved, 0.0) if improving else 0.0
                self.rows.append([distance, shift, improving, bool(res.guard_rejected[k])])
            return res

        round_module.layer_distances, round_module._rebalanced = layer_distances, rebalanced
        # the torch adapter calls federate by its own name (the others through round's)
        self.callers = [m for m in (round_module, _torch_adapter()) if m is not None]
        for caller in self.callers:
            caller.federate = federate
        return self

    def __exit__(self, *exc) -> None:
        module = self.module
        module.layer_distances, module._rebalanced = self.distances, self.rebalanced
        for caller in self.callers:
            caller.federate = self.federate


def _torch_adapter():
    try:
        import fomo_core.adapters.torch as adapter
    except ImportError:  # no torch: the scikit-learn backend only
        return None
    return adapter


def _host(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)


def honest_runs(settings: dict, seeds) -> dict:
    """{setting: {"runs", "candidates", "improving", "rejected", "rejected_improving",
    "max_distance", "median_shift", "max_shift" (of the improving ones), "accuracy" [per seed]}} through the
    experiment runner (FedFomo only, the preset's guard)."""
    from fomo_core.simulate.runner import Grid, run_grid

    out = {}
    for name, flat in settings.items():
        grid = Grid({"s": flat}, ("fedfomo",), tuple(seeds))
        with tempfile.TemporaryDirectory() as tmp, Recorder() as recorder:
            summary = run_grid(grid, tmp, progress=False, plots=False)["summary"]
        rows = np.array(recorder.rows, dtype=np.float64).reshape(-1, 4)
        improving = rows[:, 2] > 0
        out[name] = {
            "setting": flat,
            "runs": len(seeds),
            "candidates": int(len(rows)),
            "improving": int(improving.sum()),
            "rejected": int(rows[:, 3].sum()),
            "max_distance": float(np.nanmax(rows[improving, 0])) if improving.any() else None,
            "max_shift": float(np.nanmax(rows[improving, 1])) if improving.any() else None,
            "median_shift": float(np.nanmedian(rows[improving, 1])) if improving.any() else None,
            "max_distance_all": float(np.nanmax(rows[:, 0])) if len(rows) else None,
            "accuracy": _accuracy(summary),
            "committed_accuracy": committed_accuracy(name, seeds),
        }
        print(f"  {name}: {out[name]['candidates']} candidates, {out[name]['rejected']} rejected", file=sys.stderr)
    return out


def _accuracy(summary: dict) -> dict:
    """The headline accuracy (its name, mean and sd over seeds) of FedFomo in a one-setting summary."""
    setting = next(iter(summary.values()))
    entry = setting["methods"]["fedfomo"][setting["headline"]]
    return {"metric": setting["headline"], "mean": entry["mean"], "sd": entry["sd"]}


def committed_accuracy(setting: str, seeds) -> Optional[dict]:
    """FedFomo's headline accuracy in the committed cells of ``setting`` (mean and sd over the
    seeds found), or None for a setting of no committed grid."""
    values = []
    for grid in GRIDS:
        for seed in seeds:
            path = grid.parent / "cells" / f"{setting}__fedfomo__seed{seed}.json"
            if path.exists() and len(values) < len(seeds):
                cell = json.loads(path.read_text())
                values.append(cell["after_update" if cell["target"] != "local" else "after_training"])
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def grid_settings() -> dict:
    """Every setting of the committed grids, by name, as flat runner keys (base included)."""
    settings = {}
    for path in GRIDS:
        grid = json.loads(path.read_text())
        for name, overrides in grid["settings"].items():
            settings[name] = {**grid.get("base", {}), **overrides}
    return settings


# --- the reparametrisation attack ---------------------------------------------------------------

ATTACKS = ("down", "up", "mixed", "one unit")


def victim_runs(seed: int, rounds: int) -> dict:
    """Per guard and attack: [(clean accuracy, attacked accuracy, weight, a)] per victim."""
    import torch

    from fomo_core.adapters.torch_evaluate import dense_spec
    from fomo_core.server import Server
    from fomo_core.simulate.attacks import edge_scale, reparametrise
    from fomo_core.simulate.backends import make_backend
    from fomo_core.simulate.data import split_clients
    from fomo_core.simulate.experiment import ExperimentConfig, load_dataset, make_partition
    from fomo_core.simulate.federation import FederationSettings

    torch.set_num_threads(1)
    cfg = ExperimentConfig(dataset="digits", clients=15, groups=5, federation=FederationSettings(seed=seed))
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(seed)
    data = split_clients(
        dataset, make_partition(cfg, dataset, rng), rng, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction
    )
    backend = make_backend("torch", dataset, cfg.training, seed)
    init = backend.init_params()
    clients = [backend.new_client(d, init, seed * 1000 + k) for k, d in enumerate(data)]
    server = Server(len(clients), init, preset="fomo-core", m=cfg.federation.m, seed=seed)
    for _ in range(rounds):
        for i, client in enumerate(clients):
            ids, cands = server.candidates(i)
            res = client.round(cands)
            server.receive(i, client.get_flat(), ids, res.scores)
        server.end_round()
    spec = dense_spec(clients[0].module)
    models = torch.stack([c.get_flat() for c in clients])
    guards = _guards(clients[0])
    out: dict = {g: {a: [] for a in ATTACKS} for g in guards}
    for i, victim in enumerate(clients):
        losses = victim.evaluate([victim.params] + list(models))[0]
        others = np.where(np.arange(len(clients)) == i, np.inf, losses[1:])
        best = int(np.argmin(others))
        if others[best] >= losses[0]:
            continue  # no other model helps this client: nothing to copy
        good = models[best]
        clean = _next_round(backend, victim, good, None)[0]
        for guard, (policy, layout) in guards.items():
            for attack in ATTACKS:
                direction = _direction(attack, good, spec, np.random.default_rng([seed, i]))
                scale = edge_scale(victim.params, good, spec, policy, layout, direction)
                bad = reparametrise(good, spec, scale)
                accuracy, weight = _next_round(backend, victim, bad, (policy, layout))
                out[guard][attack].append([clean, accuracy, weight, float(np.max(np.abs(np.log(scale))))])
    return out


def _guards(client) -> dict:
    """name -> (client policy, guard layout): no guard; the whole-model bound of before (3 x the
    norm); the same bound layer by layer; and with rebalancing (the preset)."""
    policy = client.policy
    return {
        "none": (policy.replace(guard=None, rebalance=False), None),
        "whole model": (policy.replace(guard=GUARD, rebalance=False), None),
        "layers": (policy.replace(guard=GUARD, rebalance=False), client.guard_layout),
        "layers + rebalance (preset)": (policy, client.guard_layout),
    }


def _direction(attack: str, good, spec, rng) -> np.ndarray:
    """Which units the attack scales up (+1), down (-1) or leaves (0), [units]."""
    units = spec.sizes[1]
    if attack == "one unit":  # the unit whose outgoing weights are smallest goes farthest
        w_out = spec.offsets()[1][0]
        weights = good[w_out : w_out + units * spec.sizes[2]].reshape(spec.sizes[2], units)
        return np.where(np.arange(units) == int(weights.norm(dim=0).argmin()), -1.0, 0.0)
    if attack == "mixed":
        return np.where(rng.permutation(units) < units // 2, 1.0, -1.0)
    return np.full(units, -1.0 if attack == "down" else 1.0)


def _next_round(backend, victim, candidate, guard) -> tuple:
    """(test accuracy after the victim's round with ``candidate`` alone, its weight); the victim
    is left as it was."""
    saved, generator = victim.get_flat(), victim.generator.get_state()
    policy, layout = victim.policy, victim.guard_layout
    if guard is not None:
        victim.policy, victim.guard_layout = guard
    try:
        res = victim.update(candidate[None].clone())
        victim.train()
        _, accuracy = victim.evaluate(backend.as_batch(victim.params), victim.test_data)
        return float(accuracy[0]), float(res.weights[0])
    finally:
        victim.set_flat(saved)
        victim.generator.set_state(generator)
        victim.policy, victim.guard_layout = policy, layout


def summarise_victims(runs: dict) -> dict:
    """{(seed, rounds): {guard: {attack: {"clean", "attacked", "drop", "worst", "weight", "victims"}}}}
    in accuracy points (%)."""
    table = {}
    for key, by_guard in runs.items():
        table[key] = {}
        for guard, by_attack in by_guard.items():
            table[key][guard] = {}
            for attack, rows in by_attack.items():
                r = np.array(rows)
                drop = 100 * (r[:, 1] - r[:, 0])
                table[key][guard][attack] = {
                    "victims": len(r),
                    "clean": float(100 * r[:, 0].mean()),
                    "attacked": float(100 * r[:, 1].mean()),
                    "drop": float(drop.mean()),
                    "worst": float(drop.min()),
                    "weight": float(r[:, 2].mean()),
                    "log_scale": float(np.median(r[:, 3])),
                }
    return table


# --- the cost -----------------------------------------------------------------------------------


def cost_runs(repeats: int, m: int = 5) -> dict:
    """{model: {"P", "links", "guard", "fomo_step"}} with the guard's and fomo_step's thread CPU ms
    (median and quartiles of interleaved repeats)."""
    import torch
    from models import ResNet18, digits_mlp, lenet

    import fomo_core as fc
    from fomo_core.adapters.torch import flatten_module, guard_layout
    from fomo_core.guard import Balancer, layer_distances

    torch.set_num_threads(1)
    out = {}
    for name, make in (("digits MLP", digits_mlp), ("LeNet CNN", lenet), ("ResNet-18", ResNet18)):
        torch.manual_seed(0)
        module = make()
        flat = flatten_module(module).detach().clone()
        layout = guard_layout(module)
        candidates = flat + 0.01 * torch.randn(m, flat.numel())
        losses = np.linspace(0.5, 0.9, m)

        def guard(flat=flat, candidates=candidates, layout=layout):
            if layout.links:  # as the round does: rebalance (when there is anything to), then measure
                balance = Balancer(flat, layout)
                candidates = balance.many(list(candidates))
            return layer_distances(flat, candidates, layout)

        def step(flat=flat, candidates=candidates, losses=losses):
            return fc.fomo_step(flat, candidates, 1.0, losses)

        times = interleaved_samples({"guard": guard, "fomo_step": step}, repeats, clock=time.thread_time)
        out[name] = {"P": int(flat.numel()), "links": len(layout.links), **{k: spread(v) for k, v in times.items()}}
        print(f"  {name}: guard {out[name]['guard']['median']:.1f} ms", file=sys.stderr)
    return out


# --- report -------------------------------------------------------------------------------------


def markdown(honest: dict, victims: dict) -> str:
    rows = []
    for name, h in honest.items():
        acc, before = h["accuracy"], h["committed_accuracy"]
        rows.append(
            [
                name,
                h["runs"],
                h["candidates"],
                h["improving"],
                h["rejected"],
                f"{h['max_distance']:.2f}" if h["max_distance"] is not None else "–",
                f"{h['median_shift']:.1e}, {h['max_shift']:.1e}" if h["max_shift"] is not None else "–",
                f"{100 * acc['mean']:.1f} ± {100 * acc['sd']:.1f}",
                f"{100 * before['mean']:.1f} ± {100 * before['sd']:.1f}" if before else "–",
            ]
        )
    head = (
        f"Honest candidates (no attacker), the `fomo-core` preset's guard (layers at most {GUARD:g} x "
        "their norm from the client's, improving candidates rebalanced): candidate evaluations, the "
        "improving ones, the ones rejected (all false), the largest layer distance of an improving "
        "candidate (relative to the layer's norm) and how far rebalancing moved the improving ones "
        "(relative to their norm: median, largest); FedFomo's final accuracy (the runner's headline metric), "
        "mean ± sd over seeds, and in the committed grid's cells (before the layer guard).\n\n"
    )
    text = head + markdown_table(
        ["setting", "runs", "candidates", "improving", "rejected", "max distance", "rebalanced by"]
        + ["accuracy (%)", "committed (%)"],
        rows,
    )
    rows = []
    for (seed, rounds), by_guard in sorted(victims.items()):
        for guard, by_attack in by_guard.items():
            cells = [f"{c['drop']:+.1f} ({c['worst']:+.0f})" for c in by_attack.values()]
            first = next(iter(by_attack.values()))
            rows.append([seed, rounds, first["victims"], f"{first['clean']:.1f}", guard, *cells])
    text += (
        "\n\nThe reparametrisation attack on one victim that receives the copy alone: change of the "
        "victim's test accuracy after its next round (update, then local training) from the same "
        "round with the original model (clean), mean over victims (worst victim), in points.\n\n"
    )
    return text + markdown_table(["seed", "after round", "victims", "clean (%)", "guard", *ATTACKS], rows)


def cost_markdown(cost: dict) -> str:
    rows = [
        [
            name,
            c["P"],
            c["links"],
            f"{c['guard']['median']:.1f} [{c['guard']['q1']:.1f}, {c['guard']['q3']:.1f}]",
            f"{c['fomo_step']['median']:.1f} [{c['fomo_step']['q1']:.1f}, {c['fomo_step']['q3']:.1f}]",
            f"{c['guard']['median'] / c['fomo_step']['median']:.1f}x",
        ]
        for name, c in cost.items()
    ]
    note = (
        "The guard's cost: its work on M = 5 candidates (every layer's distances; every candidate "
        "rebalanced) against fomo_step on the same candidates, thread CPU ms, median [quartiles] of "
        "interleaved repeats, one thread."
    )
    return note + "\n\n" + markdown_table(["model", "P", "links", "guard ms", "fomo_step ms", "ratio"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the attack settings only; writes nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = (0,) if args.quick else SEEDS
    settings = dict(DEMOS) if args.quick else {**DEMOS, **grid_settings()}
    print("honest candidates:", file=sys.stderr)
    honest = honest_runs(settings, seeds)
    print("reparametrisation attack:", file=sys.stderr)
    victim_seeds, victim_rounds = ((0,), (5,)) if args.quick else (VICTIM_SEEDS, VICTIM_ROUNDS)
    runs = {(s, r): victim_runs(s, r) for s in victim_seeds for r in victim_rounds}
    victims = summarise_victims(runs)
    print("cost:", file=sys.stderr)
    cost = cost_runs(5 if args.quick else 30)
    text = markdown(honest, victims) + "\n\n" + cost_markdown(cost)
    print(text)
    if args.quick:
        return 0
    payload = {
        "settings": {"guard": GUARD, "seeds": list(seeds)},
        "machine": machine(),
        "seconds": time.perf_counter() - start,
        "honest": honest,
        "victims": {f"seed{s}_round{r}": v for (s, r), v in victims.items()},
        "cost": cost,
    }
    write_results("guard", payload, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
