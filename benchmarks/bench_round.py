"""The whole FedFomo client round: fomo-core's FedFomoClient against a PFLlib-style client round.

Three clients: fomo-core's own round (its default policy with PFLlib's eps = 1e-5, so that the
weights compare), fomo-core running the "pfllib" preset (PFLlib's round reproduced: train-mode
evaluation, the mean of batch losses), and the PFLlib-style round (benchmarks/pfllib_round.py).

One round: evaluate the baseline and M candidates on the client's validation data, weigh them,
update the model, train one local epoch. Both implementations get the same M candidates as
state_dicts (what a client receives), the same model, the same data and the same training batches
(PFLlib's defaults: batch 10, lr 0.005, SGD, validation = 1/4 of the training size as its 0.2
split gives; both train from the same DataLoader; PFLlib's own re-reading of the client's files
every round, data_utils.py:19-20, is left out). Subjects: the digits MLP 64-200-200-10 on
scikit-learn's digits, a LeNet-style CNN and a CIFAR-size ResNet-18 on CIFAR-shaped data
(3x32x32, random: only time and agreement matter); M = 5 and 10.

Before timing, each case checks that fomo-core's clients agree with the PFLlib-style round (a
fresh PFLlib client's old_model is its model, fomo-core's baseline convention): the losses, the
weights, the parameters after the update and after the epoch; fomo-core's own round on ResNet-18
given the same losses, since it evaluates in eval mode where PFLlib uses train mode (batch
statistics). A disagreement raises.

Timing: interleaved rounds (each round runs both implementations from the same starting state),
medians with quartiles, and the time of each phase: evaluation, weights + update, training,
copies (fomo-core: filling its candidate bank; PFLlib: modules from the state_dicts and the clone
to old_model).

    python benchmarks/bench_round.py [--quick]
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DotProbe, markdown_table, save_figure, script_main, spread  # noqa: E402
from models import ResNet18, digits_mlp, lenet  # noqa: E402
from pfllib_round import PFLlibStyleClient, Phases  # noqa: E402

import fomo_core  # noqa: E402
from fomo_core import ClientPolicy  # noqa: E402
from fomo_core.adapters.torch import FedFomoClient  # noqa: E402

BATCH, LR = 10, 0.005  # PFLlib's defaults (main.py:399-400)
OURS, OURS_PFLLIB, PEER = "fomo-core", "fomo-core, pfllib preset", "PFLlib-style"
PHASES = ("eval", "weights+update", "train", "copies")

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


def candidates(model: nn.Module, val: tuple, m: int, seed: int = 1) -> list:
    """M state_dicts near the model, as peers' models after a round: even ones a step down the
    validation gradient (they improve), odd ones perturbed at random (they do not), all with a
    little noise."""
    g = torch.Generator().manual_seed(seed)
    probe = copy.deepcopy(model)
    probe.eval()
    nn.functional.cross_entropy(probe(val[0]), val[1]).backward()
    out = []
    for n in range(m):
        sd = copy.deepcopy(model.state_dict())
        for name, p in probe.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 1e-3 * (1 + p.detach().abs().mean())
            step = -0.5 * (n + 2) / m * p.grad if n % 2 == 0 else 10 * noise
            sd[name] = sd[name] + step + noise
        out.append(sd)
    return out


class Case:
    """One subject and M: the two clients, resettable to the same starting state."""

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
        self.state_dicts = candidates(self.template, self.val, m)
        self.ids = list(range(1, m + 1))
        self.start = copy.deepcopy(self.template.state_dict())
        self.m, self.subject = m, subject
        # fomo-core's own round (PFLlib's eps, so that the weights can be compared), and fomo-core
        # running PFLlib's preset (train-mode evaluation, batch-mean loss, ...), which must match it
        self.clients = {
            OURS: self._fomo_client(policy=ClientPolicy(eps=1e-5)),
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

    @property
    def ours(self) -> FedFomoClient:
        return self.clients[OURS]

    def reset(self) -> None:
        """Every client back to the starting model (baselines too: a first round)."""
        with torch.no_grad():
            for client in self.clients.values():
                client.module.load_state_dict(self.start)
                client.module.train()
                if getattr(client, "last_update", None) is not None:  # the "last_update" baseline
                    client.last_update.copy_(client.params)
            self.peer.model.load_state_dict(self.start)
            self.peer.old_model.load_state_dict(self.start)

    def run_fomo(self, name: str) -> dict:
        c0, t0 = time.process_time(), time.perf_counter()
        res = self.clients[name].round(self.state_dicts)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        ev, step, train = (getattr(res, k, float("nan")) for k in ("eval_seconds", "step_seconds", "train_seconds"))
        return {
            "total": total,
            "cpu": cpu,
            "eval": ev,
            "weights+update": step,
            "train": train,
            "copies": total - ev - step - train,
        }

    def run_peer(self) -> dict:
        c0, t0 = time.process_time(), time.perf_counter()
        ph = self.peer.round(self.ids, self.state_dicts)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "total": total,
            "cpu": cpu,
            "eval": ph.eval,
            "weights+update": ph.weights + ph.update,
            "train": ph.train,
            "copies": ph.copies,
        }


def _close(where: str, name: str, got, expected, rtol: float, atol: float) -> None:
    got = torch.as_tensor(np.asarray(got, dtype=np.float64))
    expected = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
        raise AssertionError(
            f"{where}: fomo-core and the PFLlib-style round disagree on {name} (largest difference "
            f"{float((got - expected).abs().max()) if got.shape == expected.shape else float('nan'):.3g}):\n"
            f"  fomo-core {got.tolist() if got.numel() < 12 else got}\n  PFLlib    "
            f"{expected.tolist() if expected.numel() < 12 else expected}"
        )


def _params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).double()


def _check_client(case: Case, name: str, compare_losses: bool) -> int:
    """One round of fomo-core's client `name` and of the PFLlib-style client from the same state;
    raises unless they agree. Returns the number of improving candidates."""
    case.reset()
    client = case.clients[name]
    ours = client.update(case.state_dicts)
    losses = [ours.baseline_loss, *np.asarray(ours.candidate_losses)]
    phases = Phases()
    case.peer.receive_state_dicts(case.ids, case.state_dicts, phases)
    case.peer.aggregate_parameters(phases, losses_given=None if compare_losses else losses)
    peer_weights = phases.weights_used if len(phases.weights_used) else torch.zeros(case.m)
    where = f"{case.subject}, M = {case.m}, {name}"
    if compare_losses:
        _close(where, "the losses", losses, phases.losses, 1e-5, 0)
    _close(where, "the weights", ours.weights, peer_weights, 1e-4, 1e-7)
    scale = float(_params(case.peer.model).abs().max())
    _close(
        where, "the parameters after the update", _params(client.module), _params(case.peer.model), 1e-6, 1e-6 * scale
    )
    client.train()
    case.peer.clone_model(phases)
    case.peer.train_epoch(phases)
    # BatchNorm over batches of 10 amplifies last-bit differences: measured on this ResNet-18, one
    # parameter nudged by 1e-7 alone moves the parameters by 2.2e-4 after the 4 steps of the epoch
    # (the same epoch run twice agrees exactly); so 1e-3 there
    after = 1e-3 if case.has_bn else 1e-5
    _close(
        where,
        "the parameters after the local epoch",
        _params(client.module),
        _params(case.peer.model),
        after,
        after * scale,
    )
    return int((np.asarray(ours.weights) > 0).sum())


def check_agreement(case: Case) -> dict:
    """Runs one round of each fomo-core client and of the PFLlib-style client from the same state
    and compares what must agree (raises if not): losses, weights, the parameters after the update
    and after the local epoch. fomo-core's own round evaluates in eval mode, PFLlib in train mode,
    so on BatchNorm models their losses differ by design and that client is compared given the
    same losses; fomo-core's "pfllib" preset must match PFLlib's losses too.

    Tolerances: the peer sums in float32 (its loss a float32 mean per batch, its norm float32),
    fomo-core in float64, so losses and weights agree to float32 rounding of sums over 10-100
    terms (rtol 1e-5 on losses, 1e-4 on weights, whose denominators are differences of losses);
    parameters to 1e-6 relative of their magnitude after the update, 1e-5 after the epoch (the
    update's rounding carried through 1-40 SGD steps on the same batches; 1e-3 with BatchNorm, which
    amplifies it: see _check_client).
    """
    improving = _check_client(case, OURS, compare_losses=not case.has_bn)
    _check_client(case, OURS_PFLLIB, compare_losses=True)
    return {
        "improving_candidates": improving,
        "checked": (
            "losses, weights, update, epoch"
            if not case.has_bn
            else "fomo-core: weights, update, epoch given the same losses (PFLlib evaluates in train mode); "
            "its pfllib preset: losses too"
        ),
    }


def time_case(
    case: Case, repeats: int, warmup: int, tick: Optional[Callable] = None, probe: Optional[DotProbe] = None
) -> dict:
    """Interleaved rounds: each repeat resets the clients (untimed) and runs one round of each (in
    a rotating order), and (given a probe) times the bandwidth probe beside them."""
    order = [
        (OURS, lambda: case.run_fomo(OURS)),
        (OURS_PFLLIB, lambda: case.run_fomo(OURS_PFLLIB)),
        (PEER, case.run_peer),
    ]
    runs: dict = {name: [] for name, _ in order}
    probes: list = []
    for r in range(warmup + repeats):
        if probe is not None and r >= warmup:
            probes.append(probe())
        for name, fn in order[r % 3 :] + order[: r % 3]:
            case.reset()
            result = fn()
            if r >= warmup:
                runs[name].append(result)
                if tick is not None:
                    tick()
    out = {}
    for name, results in runs.items():
        out[name] = {key: spread([1e3 * x[key] for x in results]) for key in ("total", "cpu", *PHASES)}
    base = out[PEER]["total"]["median"]
    for name in runs:
        out[name]["speedup_vs_pfllib"] = base / out[name]["total"]["median"]
        # by the process's CPU time: on one thread, time given to other processes does not count
        out[name]["cpu_speedup_vs_pfllib"] = out[PEER]["cpu"]["median"] / out[name]["cpu"]["median"]
        # the ratio's own spread: every round of this client against every PFLlib round of the run
        pairs = [b["total"] / a["total"] for a in runs[name] for b in runs[PEER]]
        out[name]["speedup_range"] = [min(pairs), max(pairs)]
    if probes:
        out["probe_gbs"] = spread(probes)
    return out


def step_bandwidth(case: Case, timing: dict, improving: int) -> Optional[dict]:
    """fomo-core's weights + update as effective GB/s: the bytes the step must move, (M + M+ + 3) P
    4 (every distance read, the improving candidates read again by the update, the local model read
    twice and written), over its median time; and that against the same run's probe."""
    if "probe_gbs" not in timing:
        return None
    P = sum(p.numel() for p in case.ours.module.parameters())
    nbytes = (case.m + improving + 3) * P * 4
    ms = timing[OURS]["weights+update"]["median"]
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {
        "P": P,
        "bytes": nbytes,
        "gbs": gbs,
        "probe_gbs": timing["probe_gbs"]["median"],
        "fraction_of_probe": gbs / timing["probe_gbs"]["median"],
    }


def cases(quick: bool) -> list:
    if quick:
        return [("digits MLP", 5), ("digits MLP", 10), ("LeNet CNN", 5), ("ResNet-18", 5)]
    return [(s, m) for s in SUBJECTS for m in (5, 10)]


def run(
    quick: bool = False, repeats: Optional[int] = None, tick: Optional[Callable] = None, threads: Optional[int] = None
) -> dict:
    """The round benchmark; returns its results (rows, per-case spreads, agreement checks)."""
    if threads is not None:
        torch.set_num_threads(threads)
        fomo_core.set_num_threads(threads)
    rows = []
    probe = DotProbe()
    for subject, m in cases(quick):
        heavy = subject == "ResNet-18"
        reps = repeats or ((3 if heavy else 5) if quick else (3 if heavy else 7))
        case = Case(subject, m, quick)
        agreement = check_agreement(case)
        timing = time_case(case, reps, warmup=0, tick=tick, probe=probe)  # the agreement check warmed up
        rows.append(
            {
                "subject": subject,
                "M": m,
                "train": len(case.train[1]),
                "val": len(case.val[1]),
                "repeats": reps,
                "agreement": agreement,
                "timing": timing,
                "step_bandwidth": step_bandwidth(case, timing, agreement["improving_candidates"]),
            }
        )
    return {
        "name": "round",
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "batch_size": BATCH,
        "lr": LR,
        "rows": rows,
    }


def count_ticks(quick: bool, repeats: Optional[int] = None) -> int:
    total = 0
    for subject, _ in cases(quick):
        heavy = subject == "ResNet-18"
        total += 3 * (repeats or ((3 if heavy else 5) if quick else (3 if heavy else 7)))
    return total


def table(results: dict) -> str:
    out = []
    for r in results["rows"]:
        for name in (OURS, OURS_PFLLIB, PEER):
            t = r["timing"][name]
            cells = [
                r["subject"],
                r["M"],
                name,
                f"{t['total']['median']:.1f} [{t['total']['q1']:.1f}, {t['total']['q3']:.1f}]",
            ]
            cells += [f"{t[p]['median']:.1f}" for p in PHASES]
            lo, hi = t["speedup_range"]
            cells.append(f"{t['speedup_vs_pfllib']:.2f}x" + ("" if name == PEER else f" ({lo:.2f}-{hi:.2f})"))
            cells += [f"{t['cpu']['median']:.1f}", f"{t['cpu_speedup_vs_pfllib']:.2f}x"]
            out.append(cells)
    text = markdown_table(
        [
            "subject",
            "M",
            "client round",
            "total ms median [IQR]",
            "eval ms",
            "weights+update ms",
            "train ms",
            "copies ms",
            "vs PFLlib (range)",
            "CPU ms",
            "vs PFLlib by CPU time",
        ],
        out,
    )
    bw = [
        [
            r["subject"],
            r["M"],
            r["step_bandwidth"]["P"],
            r["step_bandwidth"]["gbs"],
            r["step_bandwidth"]["probe_gbs"],
            r["step_bandwidth"]["fraction_of_probe"],
        ]
        for r in results["rows"]
        if r.get("step_bandwidth")
    ]
    if bw:
        text += (
            "\n\nfomo-core's weights + update inside the round, as effective bandwidth ((M + M+ + 3) P 4 bytes):\n\n"
        )
        text += markdown_table(["subject", "M", "P", "GB/s", "probe GB/s (same run)", "of probe"], bw)
    return text


def plot(results: dict, folder: Path) -> list:
    """One PNG per subject: the stacked phases of both rounds, M = 5 and 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"eval": "#1f77b4", "weights+update": "#d62728", "train": "#2ca02c", "copies": "#ff7f0e"}
    for subject in dict.fromkeys(r["subject"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["subject"] == subject]
        fig, (ax, roof) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.9 * len(rows)), gridspec_kw={"width_ratios": [3, 1]})
        labels, y = [], 0
        for r in rows:
            for name in (PEER, OURS_PFLLIB, OURS):
                left = 0.0
                for p in PHASES:
                    v = r["timing"][name][p]["median"]
                    ax.barh(y, v, left=left, color=colors[p], label=p if y == 0 else None)
                    left += v
                t = r["timing"][name]["total"]
                ax.errorbar(
                    t["median"], y, xerr=[[t["median"] - t["q1"]], [t["q3"] - t["median"]]], color="k", capsize=3
                )
                labels.append(
                    f"{name}, M={r['M']}"
                    + (f" ({r['timing'][name]['speedup_vs_pfllib']:.2f}x)" if name != PEER else "")
                )
                y += 1
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("ms per client round (median; bar: IQR of the total)")
        ax.set_title(f"FedFomo client round, {subject}: where the time goes")
        ax.legend(loc="lower right", fontsize=8)
        bw = [(r["M"], r["step_bandwidth"]) for r in rows if r.get("step_bandwidth")]
        if bw:
            roof.bar([f"M={m}" for m, _ in bw], [b["gbs"] for _, b in bw], color="#d62728")
            roof.axhline(
                statistics.median(b["probe_gbs"] for _, b in bw),
                color="k",
                linestyle="--",
                label="dot-product probe (same run)",
            )
            roof.set_ylabel("GB/s")
            roof.set_title("fomo-core weights + update:\nbytes moved / time", fontsize=9)
            roof.legend(fontsize=7, loc="lower right")
        path = folder / f"round-{subject.lower().replace(' ', '-')}.png"
        paths.append(save_figure(fig, path))
    return paths


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__], "round"))
