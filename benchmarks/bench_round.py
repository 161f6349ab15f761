"""The whole FedFomo client round: fomo-core's FedFomoClient against PFLlib's client round.

Three clients: fomo-core's own round (its default policy with PFLlib's eps = 1e-5, so that the
weights compare), fomo-core running the "pfllib" preset (PFLlib's round reproduced: train-mode
evaluation over PFLlib's batches of 10, the mean of batch losses), and PFLlib's round re-stated
from its code (benchmarks/pfllib_round.py).

One round: evaluate the baseline and M candidates on the client's validation data, weigh them,
update the model, train one local epoch. The candidates are the server's models, handed to every
client by reference as PFLlib's server does (serverfomo.py keeps one module per client and passes
them on without copying): M modules near the client's model. Every client gets the same model,
data and training batches (PFLlib's defaults: batch 10, lr 0.005, SGD, validation = 1/4 of the
training size as its 0.2 split gives; all train from the same DataLoader; PFLlib's re-reading of
the client's files every round is left out). Subjects: the digits MLP 64-200-200-10 on
scikit-learn's digits, a LeNet-style CNN and a CIFAR-size ResNet-18 on CIFAR-shaped data
(3x32x32, random: only time and agreement matter); M = 5 and 10.

Before timing, each case checks that fomo-core's clients agree with PFLlib's round, with
tolerances derived from float32 and the magnitudes compared (benchmarks/agreement.py): the
losses; the weights and the parameters after the update, given the same losses; and, from the
same updated model, the local epoch bit for bit. fomo-core's own round evaluates in eval mode where
PFLlib uses train mode, so its losses are compared only on models without BatchNorm. A
disagreement raises.

Timing: interleaved rounds (each round runs every client from the same starting state), each
phase by the calling thread's CPU time (one torch thread: time given to other processes on a
shared machine does not count): evaluation, weights + update, local training, and copies
(fomo-core: reading the candidates, the baseline's copy; PFLlib: clone_model to old_model).
FedFomo's own part is evaluation + weights + update + copies: all of the round but the training.

    python benchmarks/bench_round.py [--quick]
"""

from __future__ import annotations

import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agreement import distance_rtol, loss_rtol, update_bound, weight_rtol  # noqa: E402
from common import markdown_table, save_figure, script_main, spread  # noqa: E402
from models import ResNet18, digits_mlp, lenet  # noqa: E402
from pfllib_round import CLOCK, PFLlibStyleClient, Phases  # noqa: E402

import fomo_core  # noqa: E402
import fomo_core.adapters.torch as torch_adapter  # noqa: E402
from fomo_core import round as round_module  # noqa: E402
from fomo_core.adapters.torch import FedFomoClient  # noqa: E402
from fomo_core.presets import get_preset  # noqa: E402

BATCH, LR = 10, 0.005  # PFLlib's defaults (main.py:399-400)
OURS, OURS_PFLLIB, PEER = "fomo-core", "fomo-core, pfllib preset", "PFLlib"
CLIENTS = (OURS, OURS_PFLLIB, PEER)
PHASES = ("eval", "weights+update", "train", "copies")
OWN = ("eval", "weights+update", "copies")  # FedFomo's own part: the round but the training

# subject -> (model builder, has BatchNorm, (train, val) sizes full, (train, val) sizes quick)
SUBJECTS = {
    "digits MLP": (digits_mlp, False, (400, 100), (400, 100)),
    "LeNet CNN": (lenet, False, (400, 100), (200, 50)),
    "ResNet-18": (ResNet18, True, (40, 10), (10, 10)),
}


def data(subject: str, n_train: int, n_val: int, seed: int = 0) -> tuple:
    """(train X, y), (val X, y) as float32 / int64 tensors."""
    if subject == "digits MLP":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = torch.from_numpy((X / 16.0).astype(np.float32))
        y = torch.from_numpy(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: n_train + n_val]
        X, y = X[order], y[order]
    else:
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(n_train + n_val, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def loader(pair: tuple, size: int, drop_last: bool) -> DataLoader:
    """PFLlib's loaders: a DataLoader over a list of (x, y) samples (data_utils.py:39-42), without
    shuffling (cf:70-71)."""
    X, y = pair
    return DataLoader(list(zip(X, y)), size, drop_last=drop_last, shuffle=False)


def server_models(model: nn.Module, val: tuple, m: int, seed: int = 1) -> list:
    """The M modules the server holds for the client's peers (each a copy of a peer's model, as
    serverfomo.py:110 makes them), near the client's model: even ones a step down the validation
    gradient (they improve), odd ones perturbed at random (they do not), all with a little noise."""
    g = torch.Generator().manual_seed(seed)
    probe = copy.deepcopy(model)
    probe.eval()
    nn.functional.cross_entropy(probe(val[0]), val[1]).backward()
    out = []
    for n in range(m):
        peer = copy.deepcopy(model)
        with torch.no_grad():
            for p, q in zip(peer.parameters(), probe.parameters()):
                noise = torch.randn(p.shape, generator=g) * 1e-3 * (1 + p.abs().mean())
                p += (-0.5 * (n + 2) / m * q.grad if n % 2 == 0 else 10 * noise) + noise
        out.append(peer)
    return out


def _flat32(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _flat(module: nn.Module) -> np.ndarray:
    return _flat32(module).double().numpy()


class Case:
    """One subject and M: the clients and the server's models, resettable to the same state."""

    def __init__(self, subject: str, m: int, quick: bool, sizes: Optional[tuple] = None):
        build, self.has_bn, full, small = SUBJECTS[subject]
        n_train, n_val = sizes or (small if quick else full)
        torch.manual_seed(0)
        self.template = build()
        self.template.train()
        self.train, self.val = data(subject, n_train, n_val)
        self.train_batches = loader(self.train, BATCH, drop_last=True)
        # cf:71 drops the last validation batch when cb:35-39 finds a BatchNorm2d among the model's
        # direct children (not deeper: so not in this ResNet-18, whose BatchNorms sit in blocks)
        top_level_bn = any(isinstance(layer, nn.BatchNorm2d) for layer in self.template.children())
        self.val_batches = loader(self.val, BATCH, drop_last=top_level_bn)
        self.server = server_models(self.template, self.val, m)
        # PFLlib's train-mode evaluation updates the server's modules' running statistics: reset too
        self.server_buffers = [copy.deepcopy(dict(s.named_buffers())) for s in self.server]
        self.ids = list(range(1, m + 1))
        self.start = copy.deepcopy(self.template.state_dict())
        self.m, self.subject = m, subject
        ours = get_preset("fomo-core").client.replace(eps=1e-5)  # PFLlib's eps, so that the weights compare
        self.clients = {
            OURS: self._fomo_client(policy=ours),
            OURS_PFLLIB: self._fomo_client(preset="pfllib", eval_batch_size=BATCH),
        }
        self.peer = PFLlibStyleClient(copy.deepcopy(self.template), self.train_batches, self.val_batches, m + 1, lr=LR)

    def _fomo_client(self, **options) -> FedFomoClient:
        # the same training loader (PFLlib's order), lr and batch size; validation as a tensor pair
        return FedFomoClient(
            copy.deepcopy(self.template),
            val_data=self.val,
            train_data=self.train_batches,
            lr=LR,
            batch_size=BATCH,
            capacity=self.m,
            **options,
        )

    def reset(self) -> None:
        """Every client back to the starting model (baselines too: a first round), the server's
        modules back to their buffers."""
        with torch.no_grad():
            for client in self.clients.values():
                client.module.load_state_dict(self.start)
                client.module.train()
                if getattr(client, "last_update", None) is not None:  # the "last_update" baseline
                    client.last_update.copy_(client.params)
            self.peer.model.load_state_dict(self.start)
            self.peer.old_model.load_state_dict(self.start)
        self.reset_server()

    def reset_server(self) -> None:
        """The server's modules back to their buffers (PFLlib's train-mode evaluation moves them)."""
        with torch.no_grad():
            for module, buffers in zip(self.server, self.server_buffers):
                for name, b in module.named_buffers():
                    b.copy_(buffers[name])

    def run_fomo(self, name: str) -> dict:
        client = self.clients[name]
        with cpu_phases(client) as spent:
            c0, t0 = CLOCK(), time.perf_counter()
            client.round(self.server)
            cpu, wall = CLOCK() - c0, time.perf_counter() - t0
        checks = spent["eval"] - spent["eval in federate"]  # the training check's evaluations
        return {
            "cpu": cpu,
            "wall": wall,
            "eval": spent["eval"],
            "weights+update": spent["federate"] - spent["eval in federate"],
            "train": spent["train"],
            "copies": cpu - spent["federate"] - spent["train"] - checks,
        }

    def run_peer(self) -> dict:
        c0, t0 = CLOCK(), time.perf_counter()
        ph = self.peer.round(self.ids, self.server)
        cpu, wall = CLOCK() - c0, time.perf_counter() - t0
        return {
            "cpu": cpu,
            "wall": wall,
            "eval": ph.eval,
            "weights+update": ph.weights + ph.update,
            "train": ph.train,
            "copies": ph.copies,
        }


@contextmanager
def cpu_phases(client: FedFomoClient):
    """CPU seconds of a fomo-core client's phases during the block: its evaluate and train calls,
    and the federated update around them (fomo_core.round.federate, as the client calls it); the
    evaluations made inside the federated update also apart (the rest check local training)."""
    spent = {"eval": 0.0, "train": 0.0, "federate": 0.0, "eval in federate": 0.0}
    inside = []

    def timing(fn: Callable, phase: str) -> Callable:
        def run(*args, **kwargs):
            t0 = CLOCK()
            inside.append(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                inside.pop()
                spent[phase] += CLOCK() - t0
                if phase == "eval" and "federate" in inside:
                    spent["eval in federate"] += CLOCK() - t0

        return run

    federate = round_module.federate
    client.evaluate = timing(type(client).evaluate.__get__(client), "eval")
    client.train = timing(type(client).train.__get__(client), "train")
    patched = [(mod, mod.federate) for mod in (round_module, torch_adapter) if hasattr(mod, "federate")]
    for mod, _ in patched:
        mod.federate = timing(federate, "federate")
    try:
        yield spent
    finally:
        for mod, original in patched:
            mod.federate = original
        del client.evaluate, client.train


def _close(where: str, name: str, got, expected, bound) -> None:
    """|got - expected| <= bound elementwise (bound: an array or a scalar), else AssertionError."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    if got.shape != expected.shape or not np.all(np.abs(got - expected) <= bound):
        err = np.abs(got - expected) if got.shape == expected.shape else np.array([np.nan])
        worst = int(np.nanargmax(err / np.maximum(bound, 1e-300))) if err.size > 1 else 0
        raise AssertionError(
            f"{where}: fomo-core and PFLlib's round disagree on {name} (largest difference "
            f"{float(np.nanmax(err)):.3g} where at most {float(bound.reshape(-1)[worst]):.3g} is allowed):\n"
            f"  fomo-core {got.tolist() if got.size < 12 else got}\n  PFLlib    "
            f"{expected.tolist() if expected.size < 12 else expected}"
        )


def _check_client(case: Case, name: str, compare_losses: bool) -> int:
    """One round of fomo-core's client `name` and of PFLlib's round from the same state; raises
    unless they agree. Returns the number of improving candidates."""
    case.reset()
    client, peer = case.clients[name], case.peer
    # fomo-core's guard rescales improving candidates to the client's balance before the distances
    # (a departure PFLlib does not make): the step is compared without it, and timed with it
    policy = client.policy
    client.policy = policy.replace(rebalance=False)
    try:
        ours = client.update(case.server)
    finally:
        client.policy = policy
    losses = [ours.baseline_loss, *np.asarray(ours.candidate_losses)]
    where = f"{case.subject}, M = {case.m}, {name}"
    if compare_losses:  # PFLlib's own evaluation (cf:104, 111)
        theirs = [peer.recalculate_loss(peer.old_model)] + [peer.recalculate_loss(s) for s in case.server]
        classes = 10
        tol = loss_rtol(case.template, len(case.val[1]), classes) * np.abs(theirs)
        _close(where, "the losses", losses, theirs, tol)
        case.reset_server()  # PFLlib's train-mode evaluation moved the server's running statistics
        with torch.no_grad():
            peer.old_model.load_state_dict(case.start)
    phases = Phases()
    peer.receive_models(case.ids, case.server)
    peer.aggregate_parameters(phases, losses_given=losses)  # the same losses: weights and update compare
    peer_weights = np.asarray(phases.weights_used if len(phases.weights_used) else torch.zeros(case.m))
    start = _start_module(case)  # both rounds' baseline: the starting model (a first round)
    x32, cands32 = _flat32(start), [_flat32(s) for s in case.server]
    w_tol = weight_rtol(distance_rtol(x32, cands32), case.m)
    _close(where, "the weights", ours.weights, peer_weights, w_tol * peer_weights)
    x, cands = x32.double().numpy(), [c.double().numpy() for c in cands32]
    bound = update_bound(x, cands, peer_weights, w_tol)
    _close(where, "the parameters after the update", _flat(client.module), _flat(peer.model), bound)
    # the local epoch from the same updated model: the same SGD on the same batches, bit for bit
    with torch.no_grad():
        for p, q in zip(peer.model.parameters(), client.module.parameters()):
            p.copy_(q)
    client.train()
    peer.train_epoch(phases)
    ours_after = client.module.state_dict()
    for key, value in peer.model.state_dict().items():
        if not torch.equal(ours_after[key], value):
            diff = float((ours_after[key].double() - value.double()).abs().max())
            raise AssertionError(f"{where}: after the same local epoch, {key} differs by up to {diff:.3g}")
    return int((np.asarray(ours.weights) > 0).sum())


def _start_module(case: Case) -> nn.Module:
    module = copy.deepcopy(case.template)
    module.load_state_dict(case.start)
    return module


def check_agreement(case: Case) -> dict:
    """Runs one round of each fomo-core client and of PFLlib's from the same state and compares
    what must agree (raises if not). fomo-core's own round evaluates in eval mode, PFLlib in train
    mode, so on BatchNorm models their losses differ by design and only the pfllib preset's are
    compared there; the weights and the update are compared given the same losses."""
    improving = _check_client(case, OURS, compare_losses=not case.has_bn)
    _check_client(case, OURS_PFLLIB, compare_losses=True)
    case.reset()
    return {
        "improving_candidates": improving,
        "checked": (
            "losses; weights and update given the same losses; the local epoch bit for bit"
            if not case.has_bn
            else "weights and update given the same losses; the local epoch bit for bit (fomo-core evaluates in "
            "eval mode, PFLlib in train mode); its pfllib preset: losses too"
        ),
    }


def time_case(case: Case, repeats: int, warmup: int = 0, tick: Optional[Callable] = None) -> dict:
    """Interleaved rounds: each repeat resets the clients (untimed) and runs one round of each, in a
    rotating order. Per client: every phase's spread (CPU ms), the round's (CPU and wall ms),
    FedFomo's own part, and the ratios of PFLlib's medians to the client's."""
    order = [
        (OURS, lambda: case.run_fomo(OURS)),
        (OURS_PFLLIB, lambda: case.run_fomo(OURS_PFLLIB)),
        (PEER, case.run_peer),
    ]
    runs: dict = {name: [] for name, _ in order}
    for r in range(warmup + repeats):
        for name, fn in order[r % 3 :] + order[: r % 3]:
            case.reset()
            result = fn()
            if r >= warmup:
                result["own"] = sum(result[p] for p in OWN)
                runs[name].append(result)
                if tick is not None:
                    tick()
    out = {}
    for name, results in runs.items():
        out[name] = {key: spread([1e3 * x[key] for x in results]) for key in ("cpu", "wall", "own", *PHASES)}
    for name in runs:
        t = out[name]
        t["round_speedup"] = out[PEER]["cpu"]["median"] / t["cpu"]["median"]
        t["own_speedup"] = out[PEER]["own"]["median"] / t["own"]["median"]
        # the ratio's spread: every round of this client against every PFLlib round of the run
        pairs = [b["cpu"] / a["cpu"] for a in runs[name] for b in runs[PEER]]
        t["round_speedup_range"] = [min(pairs), max(pairs)]
    return out


def cases(quick: bool) -> list:
    if quick:
        return [("digits MLP", 5), ("digits MLP", 10), ("LeNet CNN", 5), ("ResNet-18", 5)]
    return [(s, m) for s in SUBJECTS for m in (5, 10)]


def _repeats(subject: str, quick: bool, repeats: Optional[int]) -> int:
    heavy = subject == "ResNet-18"
    return repeats or ((3 if heavy else 5) if quick else (5 if heavy else 11))


def run(
    quick: bool = False, repeats: Optional[int] = None, tick: Optional[Callable] = None, threads: Optional[int] = 1
) -> dict:
    """The round benchmark on ``threads`` torch threads (default one, the targets' setting);
    returns its results (rows, per-case spreads, agreement checks)."""
    if threads is not None:
        torch.set_num_threads(threads)
        fomo_core.set_num_threads(threads)
    rows = []
    for subject, m in cases(quick):
        case = Case(subject, m, quick)
        agreement = check_agreement(case)  # also the warm-up
        reps = _repeats(subject, quick, repeats)
        rows.append(
            {
                "subject": subject,
                "M": m,
                "train": len(case.train[1]),
                "val": len(case.val[1]),
                "repeats": reps,
                "agreement": agreement,
                "timing": time_case(case, reps, tick=tick),
            }
        )
    return {
        "name": "round",
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "clock": "thread CPU time",
        "batch_size": BATCH,
        "lr": LR,
        "rows": rows,
    }


def count_ticks(quick: bool, repeats: Optional[int] = None) -> int:
    return sum(3 * _repeats(subject, quick, repeats) for subject, _ in cases(quick))


def _phases(t: dict) -> str:
    return " / ".join(f"{t[p]['median']:.3g}" for p in PHASES)


def table(results: dict) -> str:
    out = []
    for r in results["rows"]:
        for name in CLIENTS:
            t = r["timing"][name]
            lo, hi = t["round_speedup_range"]
            out.append(
                [
                    r["subject"],
                    r["M"],
                    name,
                    f"{t['cpu']['median']:.1f} [{t['cpu']['q1']:.1f}, {t['cpu']['q3']:.1f}]",
                    *(f"{t[p]['median']:.1f}" for p in PHASES),
                    f"{t['own']['median']:.1f}",
                    f"{t['own_speedup']:.2f}x",
                    f"{t['round_speedup']:.2f}x" + ("" if name == PEER else f" ({lo:.2f}-{hi:.2f})"),
                    f"{t['wall']['median']:.1f}",
                ]
            )
    return markdown_table(
        [
            "subject",
            "M",
            "client round",
            "CPU ms median [IQR]",
            "eval ms",
            "weights+update ms",
            "train ms",
            "copies ms",
            "own part ms",
            "own part vs PFLlib",
            "round vs PFLlib (range)",
            "wall ms",
        ],
        out,
    )


def plot(results: dict, folder: Path) -> list:
    """One PNG per subject: the stacked phases (CPU ms) of the three rounds, M = 5 and 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"eval": "#1f77b4", "weights+update": "#d62728", "train": "#2ca02c", "copies": "#ff7f0e"}
    for subject in dict.fromkeys(r["subject"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["subject"] == subject]
        fig, ax = plt.subplots(figsize=(10, 1.4 + 0.9 * len(rows)))
        labels, y = [], 0
        for r in rows:
            for name in (PEER, OURS_PFLLIB, OURS):
                left = 0.0
                for p in PHASES:
                    v = r["timing"][name][p]["median"]
                    ax.barh(y, v, left=left, color=colors[p], label=p if y == 0 else None)
                    left += v
                t = r["timing"][name]["cpu"]
                ax.errorbar(
                    t["median"], y, xerr=[[t["median"] - t["q1"]], [t["q3"] - t["median"]]], color="k", capsize=3
                )
                speed = r["timing"][name]
                labels.append(
                    f"{name}, M={r['M']}"
                    + (
                        f" (round {speed['round_speedup']:.2f}x, own {speed['own_speedup']:.2f}x)"
                        if name != PEER
                        else ""
                    )
                )
                y += 1
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("CPU ms per client round, one thread (median; bar: IQR of the total)")
        ax.set_title(f"FedFomo client round, {subject}: where the time goes")
        ax.legend(loc="lower right", fontsize=8)
        path = folder / f"round-{subject.lower().replace(' ', '-')}.png"
        paths.append(save_figure(fig, path))
    return paths


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__], "round"))
