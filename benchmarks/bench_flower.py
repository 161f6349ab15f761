"""Flower at many clients: the example app (examples/flower-app) on Flower's Simulation Runtime at
100, 250 and 1,000 virtual clients, FedFomo against Flower's FedAvg on the same app, data and
local training.

    python benchmarks/bench_flower.py                    # the committed table (about an hour)
    python benchmarks/bench_flower.py --quick            # 20 and 60 clients, 3 rounds (minutes)

Every run starts its own SuperLink in simulation mode on a free loopback port (its own Flower
home and Ray temp folder) and runs ``flwr run`` on it; runs of the methods are interleaved, each
repeated. A thread samples the CPU time of the SuperLink and all its descendants (ServerApp,
simulation, Ray's processes and workers, whose ClientApps do the clients' work) every 0.25 s; the
ServerApp writes each round's start and length, and a round's CPU time is the sampled total
interpolated at its start and end. Reported per method: time per round (median over rounds 2..R
of all repeats; round 1 is the start-up: Ray's workers start and import, and FedFomo asks the
nodes it samples for their client ids) by CPU and by wall clock, and round 1 alone.

Methods: FedFomo (M = 2, clients asked for their id when first sampled), FedFomo asking every
node before round 1 (``identify-all``: the start-up before this was changed) and FedAvg
(evaluating as many clients per round as FedFomo, which evaluates its training clients in their
train reply). Each client holds 60 samples of its group's digits (``samples-per-client``),
``local-epochs`` 1, one CPU per virtual client; the machine's 2 cores run 2 at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import flower_runtime as fr  # noqa: E402
from common import machine, markdown_table, save_figure, write_results  # noqa: E402

APP = HERE.parent / "examples" / "flower-app"
METHODS = {
    "fedfomo": "strategy='fedfomo' global-model='follow'",  # the app's default
    "fedfomo-train": "strategy='fedfomo' global-model='train'",
    "fedavg": "strategy='fedavg'",
}
IDENTIFY_ALL = {"fedfomo-identify-all": "strategy='fedfomo' global-model='follow' identify-all=true"}
LABELS = {
    "fedfomo": "FedFomo (global model followed)",
    "fedfomo-train": "FedFomo (global model trained)",
    "fedavg": "FedAvg",
    "fedfomo-identify-all": "FedFomo, every node identified",
}
# (clients, fraction of them per round); the target's case first
SETTINGS = [(1000, 0.1), (1000, 0.01), (100, 0.1), (250, 0.1)]
QUICK = [(20, 0.25), (60, 0.1)]


SIMULATION = "simulation (ServerApp and Ray's driver)"
PROCESS_KINDS = ("superlink", "superexec", SIMULATION, "ray workers (ClientApps)", "ray services", "other")


def process_kind(pid: int) -> str:
    """Which part of the run a process is, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    for needle, kind in (
        ("flower-superlink", "superlink"),
        ("flower-superexec", "superexec"),
        ("flwr-simulation", SIMULATION),
        ("ray::", "ray workers (ClientApps)"),
        ("default_worker.py", "ray workers (ClientApps)"),
        ("ray", "ray services"),
    ):
        if needle in command:
            return kind
    return "other"


class CpuSampler:
    """(time, CPU seconds of the process trees of ``pids``) every ``period`` seconds, in a thread;
    with ``by_kind`` also each sample's CPU seconds by :func:`process_kind`. A process that has
    ended keeps the CPU time last seen of it (Ray's workers end with the run, and nobody in the
    tree reaps them)."""

    def __init__(self, pids: list, period: float = 0.25, by_kind: bool = False):
        self.pids, self.period, self.samples = pids, period, []
        self.by_kind: Optional[list] = [] if by_kind else None  # (time, {kind: CPU seconds})
        self._seen: dict = {}
        self._kinds: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = fr.cpu_by_process(self.pids)
            self._seen.update(now)
            t = time.time()
            self.samples.append((t, sum(self._seen.values())))
            if self.by_kind is not None:
                for key in now:  # every sample: a process forked a moment ago may still show its parent's command
                    self._kinds[key] = process_kind(key[0])
                totals = dict.fromkeys(PROCESS_KINDS, 0.0)
                for key, cpu in self._seen.items():
                    totals[self._kinds[key]] += cpu
                self.by_kind.append((t, totals))
            self._stop.wait(self.period)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float:
        """CPU seconds at wall time ``t``, interpolated between the samples around it."""
        s = self.samples
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        raise ValueError(f"time {t} is outside the samples ({s[0][0]} .. {s[-1][0]})")

    def kinds_between(self, start: float, end: float) -> dict:
        """{kind: CPU seconds} spent from the last sample at or before ``start`` to the first at
        or after ``end``."""
        first = [totals for t, totals in self.by_kind if t <= start][-1]
        last = next(totals for t, totals in self.by_kind if t >= end)
        return {k: last[k] - first[k] for k in PROCESS_KINDS}


def run_once(method: str, clients: int, fraction: float, rounds: int, methods: dict, by_kind: bool = False) -> dict:
    """One ``flwr run`` of the example app; per round: wall seconds, CPU seconds, accuracy; with
    ``by_kind`` also the CPU seconds of rounds 2..R by process kind (``"by_kind"``)."""
    with fr.flower_env() as (home, procs):
        (port,) = fr.free_ports(1)
        fr.connection(home, "sim", port)
        link = procs.start("superlink", fr.superlink_command(port, "--simulation"))
        fr.wait_for_port(port, link, 120)
        out = home / "results"
        run_config = (
            f"{methods[method]} results-dir='{out}' num-server-rounds={rounds} num-clients={clients} num-groups=3 "
            f"samples-per-client=60 fraction-train={fraction} local-epochs=1 server-evaluate=false"
        )
        federation = f"num-supernodes={clients} client-resources-num-cpus=1"
        command = ["flwr", "run", APP, "sim", "--stream", "--federation-config", federation, "--run-config", run_config]
        start = time.time()
        with CpuSampler([link.pid], by_kind=by_kind) as cpu:
            procs.run("flwr-run", command, timeout=3600)
            time.sleep(2 * cpu.period)  # a sample after the last round's end
        results = json.loads((out / "results.json").read_text())
        per_round = []
        for r in results["rounds"]:
            end = r["started"] + r["seconds"]
            per_round.append(
                {
                    "round": r["round"],
                    "wall": r["seconds"],
                    "cpu": cpu.at(end) - cpu.at(r["started"]),
                    "accuracy": r["mean_accuracy"],
                    "failed": len(r.get("failed", {})),
                }
            )
        first = results["rounds"][0]["started"]
        kinds = {}
        if by_kind:
            r2, last = results["rounds"][1], results["rounds"][-1]
            kinds = {"by_kind": cpu.kinds_between(r2["started"], last["started"] + last["seconds"])}
        return kinds | {
            "rounds": per_round,
            "before_round_1": {"wall": first - start, "cpu": cpu.at(first)},
            "load_average_1min": os.getloadavg()[0],  # how loaded the machine was (2 cores)
        }


def summarise(runs: list) -> dict:
    """Medians over the repeats of each run's time per round (rounds 2..R: their total over their
    number, so that the sampling's interpolation errors cancel but at the two ends) and of round 1,
    wall and CPU."""

    def later(run: dict, key: str) -> float:
        return sum(r[key] for r in run["rounds"][1:]) / (len(run["rounds"]) - 1)

    return {
        "per_round_cpu": statistics.median(later(run, "cpu") for run in runs),
        "per_round_wall": statistics.median(later(run, "wall") for run in runs),
        "round_1_cpu": statistics.median(run["rounds"][0]["cpu"] for run in runs),
        "round_1_wall": statistics.median(run["rounds"][0]["wall"] for run in runs),
        "failed": sum(r["failed"] for run in runs for r in run["rounds"]),
        "final_accuracy": statistics.median(run["rounds"][-1]["accuracy"] for run in runs),
    }


def table(payload: dict) -> str:
    """One row per setting: each FedFomo variant's CPU per round against FedAvg's (the ratio), wall
    per round, round 1 and the clients' mean accuracy after the last round."""
    rows = []
    for s in payload["settings"]:
        summary = s["summary"]
        fomo, train, avg = summary["fedfomo"], summary["fedfomo-train"], summary["fedavg"]
        start = [f"{summary[m]['round_1_wall']:.1f} / {summary[m]['round_1_cpu']:.1f}" for m in payload["methods"]]
        rows.append(
            [
                s["clients"],
                s["fraction"],
                f"{s['clients'] * s['fraction']:.0f}",
                f"{fomo['per_round_cpu']:.2f} / {train['per_round_cpu']:.2f} / {avg['per_round_cpu']:.2f}",
                f"{fomo['per_round_cpu'] / avg['per_round_cpu']:.2f}",
                f"{train['per_round_cpu'] / avg['per_round_cpu']:.2f}",
                f"{fomo['per_round_wall']:.1f} / {train['per_round_wall']:.1f} / {avg['per_round_wall']:.1f}",
                " ; ".join(start),
                " / ".join(f"{100 * x['final_accuracy']:.1f}" for x in (fomo, train, avg)),
            ]
        )
    headers = [
        "clients",
        "fraction",
        "per round",
        "CPU s per round: follow / train / FedAvg",
        "ratio follow (CPU)",
        "ratio train (CPU)",
        "wall s per round: follow / train / FedAvg",
        "round 1 wall / CPU s: " + " ; ".join(LABELS[m] for m in payload["methods"]),
        "accuracy % after the last round: follow / train / FedAvg",
    ]
    return markdown_table(headers, rows)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, fraction in zip(axes, (0.1, 0.01)):
        chosen = sorted((s for s in payload["settings"] if s["fraction"] == fraction), key=lambda s: s["clients"])
        for method in payload["methods"]:
            x = [s["clients"] for s in chosen]
            ax.plot(x, [s["summary"][method]["per_round_cpu"] for s in chosen], "o-", label=LABELS[method])
        ax.set_title(f"CPU seconds per round (fraction {fraction})")
        ax.set_xlabel("virtual clients")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 and 60 clients, 3 rounds, 1 repeat")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default 6; quick 3)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method and setting (default 2)")
    parser.add_argument(
        "--identify-all", action="store_true", help="also FedFomo asking every node before round 1 (the old start-up)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results[/quick])")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else SETTINGS
    rounds = args.rounds or (3 if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 2)
    methods = METHODS | (IDENTIFY_ALL if args.identify_all else {})
    folder = Path(args.out) if args.out else HERE / "results" / ("quick" if args.quick else "")
    payload = {"rounds": rounds, "repeats": repeats, "methods": list(methods), "settings": [], "machine": machine()}
    total, done, began = len(settings) * repeats * len(methods), 0, time.time()
    for clients, fraction in settings:
        runs: dict = {m: [] for m in methods}
        for _ in range(repeats):
            for method in methods:  # interleaved: the machine's drift reaches every method alike
                runs[method].append(run_once(method, clients, fraction, rounds, methods))
                done += 1
                elapsed = time.time() - began
                print(
                    f"[{done}/{total}] {clients} clients, fraction {fraction}, {method}: per round "
                    f"{[round(r['cpu'], 2) for r in runs[method][-1]['rounds']]} CPU s; "
                    f"{elapsed / 60:.0f} min elapsed, about {elapsed / done * (total - done) / 60:.0f} min left",
                    file=sys.stderr,
                    flush=True,
                )
        payload["settings"].append(
            {
                "clients": clients,
                "fraction": fraction,
                "runs": runs,
                "summary": {m: summarise(r) for m, r in runs.items()},
            }
        )
        write_results("flower", payload, table(payload), folder)  # after every setting: a cut-off run keeps them
    plot(payload, folder / "flower.png")
    print(table(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
