"""Opt-in early stopping of candidate evaluation: the time it saves against how often it changes
the FedFomo weights, on the demo's data.

The demo's federation: scikit-learn's digits dealt to clients in latent groups (each group owns
two classes), here 10 clients in 5 groups with half of each client's data for validation (the
demo keeps 20%: too few samples for batches to stop on). Every client trains its model locally from a
common start (1 and 3 epochs: early and later rounds); then each client evaluates every other
client's model as a candidate (M = 9), fully and with early stopping, and computes the FedFomo
weights (fomo_core.compute_weights, l2) from both. Two models: the demo's MLP (64-64-10, the fused
kernel) and a LeNet-style CNN on the digits upsampled to 3x32x32 (the torch routes).

Reported per setting (z, batch size, min batches): the evaluation time against full evaluation
(the process's CPU time, medians over interleaved repeats of all clients' evaluations), the
candidates stopped, and the risk: the client rounds whose set of helped candidates changed,
candidates stopped although they improve on the baseline, and the largest change of any weight.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, markdown_table, save_figure, script_main, spread  # noqa: E402
from models import lenet  # noqa: E402

import fomo_core as fc  # noqa: E402
from fomo_core.adapters.torch import flatten_module, train_sgd  # noqa: E402
from fomo_core.adapters.torch_evaluate import EarlyStop, evaluate_module  # noqa: E402
from fomo_core.simulate.data import load_digits, split_clients  # noqa: E402
from fomo_core.simulate.partition import latent_groups  # noqa: E402

CLIENTS, GROUPS = 10, 5
SETTINGS = [(3.0, 16, 4), (3.0, 16, 2), (3.0, 8, 2), (2.0, 8, 2)]  # (z, batch size, min batches)


def federation(model: str, epochs: int, seed: int = 0) -> list:
    """[(module, flat params, (val X, val y))] per client after `epochs` of local training."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    part = latent_groups(data.y, CLIENTS, GROUPS, rng)
    clients = split_clients(data, part, rng, val_fraction=0.5, test_fraction=0.1)
    torch.manual_seed(seed)
    if model == "MLP":
        build = lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # noqa: E731
        shape = lambda x: torch.from_numpy(x)  # noqa: E731
    else:
        build = lenet

        def shape(x):
            images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
            return nn.functional.interpolate(images, size=32, mode="nearest").repeat(1, 3, 1, 1)

    start = build()
    out = []
    for k, c in enumerate(clients):
        net = copy.deepcopy(start)
        flat = flatten_module(net)
        train_sgd(
            net,
            (shape(c.x_train), torch.from_numpy(c.y_train)),
            epochs=epochs,
            lr=0.05,
            momentum=0.5,
            batch_size=16,
            generator=torch.Generator().manual_seed(k),
        )
        out.append((net, flat, (shape(c.x_val), torch.from_numpy(c.y_val))))
    return out


def _weights(flat_local, flat_cands, l0, losses) -> np.ndarray:
    return np.asarray(fc.compute_weights(flat_local, flat_cands, l0, np.asarray(losses, dtype=np.float64)))


def case(model: str, epochs: int, repeats: int, tick: Optional[Callable] = None) -> list:
    clients = federation(model, epochs)
    rounds = []
    for i, (net, flat, val) in enumerate(clients):
        others = torch.stack([clients[j][1] for j in range(CLIENTS) if j != i]).detach()
        l0 = float(evaluate_module(net, flat.detach()[None], val).loss[0])
        rounds.append((net, flat.detach(), others, val, l0))

    def full():
        return [evaluate_module(net, others, val).loss for net, _, others, val, _ in rounds]

    def early(z, b, k):
        rule = lambda l0: EarlyStop(l0, z=z, batch_size=b, min_batches=k)  # noqa: E731
        return lambda: [evaluate_module(net, others, val, early_stop=rule(l0)) for net, _, others, val, l0 in rounds]

    methods = {"full": full, **{f"z={z}, batch {b}, min {k}": early(z, b, k) for z, b, k in SETTINGS}}
    full_losses = full()
    rows = []
    for name, fn in methods.items():
        if name == "full":
            continue
        evs = fn()
        changed = wrongly_stopped = stopped = total = 0
        max_dw = 0.0
        for (_net, flat, others, _val, l0), ev, ref in zip(rounds, evs, full_losses):
            w_full = _weights(flat, others, l0, ref.numpy())
            w_early = _weights(flat, others, l0, ev.loss.numpy())
            changed += int(not np.array_equal(w_full > 0, w_early > 0))
            wrongly_stopped += int((ev.stopped & (ref.numpy() < l0)).sum())
            # a stopped candidate's loss is an estimate from its first batches: the check that it is
            # above the baseline, which the stop promised
            assert (ev.loss.numpy()[ev.stopped] > l0).all(), name
            stopped += int(ev.stopped.sum())
            total += len(ev.stopped)
            max_dw = max(max_dw, float(np.abs(w_full - w_early).max(initial=0.0)))
        rows.append(
            {
                "setting": name,
                "stopped_fraction": stopped / total,
                "rounds_with_changed_helpers": changed,
                "rounds": len(rounds),
                "improving_candidates_stopped": wrongly_stopped,
                "max_weight_change": max_dw,
            }
        )
    samples = interleaved_samples(methods, repeats, warmup=1, tick=tick, clock=time.process_time)
    base = spread(samples["full"])["median"]
    for r in rows:
        s = spread(samples[r["setting"]])
        r.update({"median_ms": s["median"], "q1_ms": s["q1"], "q3_ms": s["q3"], "speedup_vs_full": base / s["median"]})
    return [
        {"model": model, "epochs": epochs, "full_ms": base, "val_samples": [len(r[3][1]) for r in rounds], **r}
        for r in rows
    ]


def _cases(quick: bool) -> list:
    return [("MLP", 1), ("LeNet", 1)] if quick else [("MLP", 1), ("MLP", 3), ("LeNet", 1), ("LeNet", 3)]


def _repeats(quick: bool) -> int:
    return 3 if quick else 7


def count_ticks(quick: bool) -> int:
    return len(_cases(quick)) * (1 + len(SETTINGS)) * _repeats(quick)


def run(quick: bool = False, tick: Optional[Callable] = None) -> dict:
    torch.set_num_threads(1)
    fc.set_num_threads(1)
    rows = []
    for model, epochs in _cases(quick):
        rows += case(model, epochs, _repeats(quick), tick)
    return {
        "name": "early-stop",
        "quick": quick,
        "clients": CLIENTS,
        "groups": GROUPS,
        "M": CLIENTS - 1,
        "torch_threads": 1,
        "rows": rows,
    }


def table(payload: dict) -> str:
    return markdown_table(
        [
            "model",
            "local epochs",
            "setting",
            "median ms (all clients)",
            "x vs full",
            "candidates stopped",
            "rounds whose helped set changed",
            "improving candidates stopped",
            "max weight change",
        ],
        [
            [
                r["model"],
                r["epochs"],
                r["setting"],
                r["median_ms"],
                r["speedup_vs_full"],
                f"{100 * r['stopped_fraction']:.0f}%",
                f"{r['rounds_with_changed_helpers']} of {r['rounds']}",
                r["improving_candidates_stopped"],
                r["max_weight_change"],
            ]
            for r in payload["rows"]
        ],
    )


def plot(payload: dict, folder: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model in dict.fromkeys(r["model"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["model"] == model]
        ax.scatter(
            [r["speedup_vs_full"] for r in rows],
            [r["rounds_with_changed_helpers"] / r["rounds"] for r in rows],
            label=model,
        )
        for r in rows:
            ax.annotate(
                f"{r['setting']}, e{r['epochs']}",
                (r["speedup_vs_full"], r["rounds_with_changed_helpers"] / r["rounds"]),
                fontsize=6,
            )
    ax.set_xlabel("evaluation speed vs full evaluation (median of the same run)")
    ax.set_ylabel("share of client rounds whose helped set changed")
    ax.set_title("Early stopping of candidate evaluation: gain vs risk (digits, latent groups)")
    ax.legend()
    return [save_figure(fig, folder / "early-stop.png")]


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__], "early-stop"))
