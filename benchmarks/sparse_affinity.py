"""Sparse affinity rows against the dense matrix, on the committed grid (FedFomo, preset fomo-core).

Runs the experiment runner on docs/results/mnist5k/grid.json (MNIST-5k, 20 clients in 2 groups,
20 rounds, M = 5; its "20 train samples" setting is the demo's) with FedFomo alone, three times:
every affinity entry kept (k = 1,000,000 >= N - 1: the dense matrix), the default k = 16, and
k = 4 (the runs in benchmarks/results/affinity-k/); then writes benchmarks/results/sparse_affinity.md
(included in docs/concepts/affinity.md): mean ± sd over the grid's 5 seeds of the
final accuracy, and each k's difference from dense paired by seed. The runs resume (the runner
keeps finished cells), so the command can be repeated:

    python benchmarks/sparse_affinity.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "docs" / "results" / "mnist5k" / "grid.json"
OUT = ROOT / "benchmarks" / "results" / "affinity-k"
SUMMARY = ROOT / "benchmarks" / "results" / "sparse_affinity.md"
RUNS = {"dense": 1_000_000, "k = 16 (default)": 16, "k = 4": 4}
METRICS = {"after_training": "after local training", "after_update": "after the federated update"}


def folder(name: str) -> Path:
    return OUT / ("dense" if name == "dense" else f"k{RUNS[name]}")


def run() -> None:
    for name, k in RUNS.items():
        command = ["fomo-core", "experiment", "--grid", str(GRID), "--methods", "fedfomo"]
        command += ["--set", f"affinity_k={k}", "--out", str(folder(name)), "--no-plots"]
        print(" ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)


def _cells(name: str) -> dict:
    cells = json.loads((folder(name) / "results.json").read_text())["cells"]
    return {(c["setting"], c["seed"]): c for c in cells}


def _mean_sd(values: list) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def summary() -> str:
    runs = {name: _cells(name) for name in RUNS if (folder(name) / "results.json").exists()}
    settings = list(dict.fromkeys(s for s, _ in runs["dense"]))
    seeds = sorted({seed for _, seed in runs["dense"]})
    lines = [
        "Produced by `python benchmarks/sparse_affinity.py` (the experiment runner on the committed grid, "
        f"FedFomo with preset fomo-core, seeds {seeds[0]}-{seeds[-1]}). Accuracy in %, mean ± sd over seeds of "
        "the mean over clients of their final-round test accuracy; beside each k its difference from dense "
        "paired by seed (mean ± sd, and the seeds where it is ahead or level). With 20 clients a row holds "
        "up to 19 entries: k = 16 drops a row's lowest few, k = 4 most of them.",
        "",
    ]
    for key, label in METRICS.items():
        header = ["setting", *runs, *(f"{n} − dense" for n in runs if n != "dense")]
        lines += [f"Accuracy {label}:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for setting in settings:
            values = {n: [runs[n][(setting, s)][key] for s in seeds] for n in runs}
            cells = [_mean_sd(values[n]) for n in runs]
            for n in runs:
                if n == "dense":
                    continue
                diff = [a - b for a, b in zip(values[n], values["dense"])]
                ahead = sum(d >= 0 for d in diff)
                cells.append(
                    f"{100 * statistics.mean(diff):+.1f} ± {100 * statistics.stdev(diff):.1f} ({ahead}/{len(diff)})"
                )
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if "--summary-only" not in sys.argv:
        run()
    SUMMARY.write_text(summary())
    print(f"wrote {SUMMARY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
