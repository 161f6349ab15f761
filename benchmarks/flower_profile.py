"""Where a Flower round's CPU time goes: the example app on the Simulation Runtime, as
``bench_flower.py`` runs it, with the CPU time of rounds 2..R split by process: the SuperLink, the
ServerApp (the strategy), the simulation process (Ray's driver, which hands the messages to the
ClientApps), Ray's services, and Ray's workers (the ClientApps: the clients' work, and Flower's
unpacking and packing of each message), for FedFomo (global model followed / trained) and FedAvg.

    python benchmarks/flower_profile.py                          # 100 clients, fraction 0.1 (minutes)
    python benchmarks/flower_profile.py --clients 1000 --fraction 0.1

Writes benchmarks/results/flower_profile_<clients>_<fraction>.{json,md}: per method, the CPU seconds of a round by
process kind (median over the repeats) and the milliseconds per client of a round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_flower as bf  # noqa: E402
from common import machine, markdown_table, write_results  # noqa: E402


def table(payload: dict) -> str:
    per_round = payload["clients"] * payload["fraction"]
    rows = []
    for method, runs in payload["runs"].items():
        later = len(runs[0]["rounds"]) - 1
        kinds = {k: statistics.median(run["by_kind"][k] for run in runs) / later for k in bf.PROCESS_KINDS}
        total = sum(kinds.values())
        rows.append(
            [bf.LABELS[method], f"{total:.2f}", f"{1e3 * total / per_round:.1f}"]
            + [f"{v:.2f} ({100 * v / total:.0f}%)" for v in kinds.values()]
        )
    headers = ["method", "CPU s per round", "ms per client"] + [f"{k} s" for k in bf.PROCESS_KINDS]
    return markdown_table(headers, rows)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (rounds 2..R are measured)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method, interleaved")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    payload = {"clients": args.clients, "fraction": args.fraction, "rounds": args.rounds, "machine": machine()}
    payload["runs"] = {m: [] for m in bf.METHODS}
    for _ in range(args.repeats):
        for method in bf.METHODS:
            run = bf.run_once(method, args.clients, args.fraction, args.rounds, bf.METHODS, by_kind=True)
            payload["runs"][method].append(run)
            print(f"{method}: {run['by_kind']}", file=sys.stderr, flush=True)
    payload["machine"]["load_average_end"] = os.getloadavg()
    name = f"flower_profile_{args.clients}_{args.fraction:g}"
    write_results(name, payload, table(payload), Path(args.out) if args.out else None)
    print(table(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
