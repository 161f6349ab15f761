"""The benchmark suite in one command: ``python -m benchmarks`` (or ``fomo-core bench``).

Subjects (each checks first that the implementations it compares agree, and raises if not):

- kernels:    weights + update against the PFLlib-style loop and the bandwidth probe (bench_kernels)
- evaluate:   candidate evaluation, fused kernel and torch routes against per-candidate loops
- round:      the whole client round, fomo-core against a PFLlib-style round, with its breakdown
- early-stop: opt-in early stopping of candidate evaluation: time saved against weights changed
- server:     the server from 1,000 to 100,000 clients and at ResNet-18 size: memory, selection,
              rounds and checkpoints, each configuration in its own subprocess

``--quick`` (a couple of minutes) writes to benchmarks/results/quick/, the full run to
benchmarks/results/: per subject <name>.json, <name>.md and PNGs, and suite.json with the
machine's description (CPU, cores, load average, versions, fomo_core.build_info()).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import RESULTS, machine, write_atomic, write_results  # noqa: E402

SUBJECTS = ("kernels", "evaluate", "round", "early-stop", "server")


def run_kernels(quick: bool, folder: Path) -> dict:
    """bench_kernels' results, written to `folder` as kernels.{json,md,png}: its run(quick), report()
    and plot(). (The one place that knows how to call it.)"""
    import bench_kernels

    payload = bench_kernels.run(quick)
    write_results("kernels", payload, bench_kernels.report(payload), folder)
    bench_kernels.plot(payload, folder / "kernels.png")
    return payload


def _subject(name: str, quick: bool, folder: Path, tick: Callable) -> dict:
    if name == "kernels":
        return run_kernels(quick, folder)
    if name == "evaluate":
        import bench_evaluate as bench
    elif name == "round":
        import bench_round as bench
    elif name == "server":
        import bench_server as bench
    else:
        import bench_early_stop as bench
    payload = bench.run(quick, tick=tick)
    payload["machine"] = machine()
    write_results(name, payload, bench.table(payload), folder)
    bench.plot(payload, folder)
    return payload


def ticks(name: str, quick: bool) -> int:
    """Progress units of a subject (timed calls; the kernel subject, which reports none, counts 20)."""
    if name == "kernels":
        return 20
    module = {
        "evaluate": "bench_evaluate",
        "round": "bench_round",
        "early-stop": "bench_early_stop",
        "server": "bench_server",
    }[name]
    return __import__(module).count_ticks(quick)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a couple of minutes)")
    parser.add_argument("--only", default=",".join(SUBJECTS), help=f"comma-separated subset of {','.join(SUBJECTS)}")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results[/quick])")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int, default=None, help="torch and fomo_core threads (default: as found)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SUBJECTS]
    if not chosen or bad:
        parser.error(f"argument --only: expected a comma-separated subset of {','.join(SUBJECTS)}, got {args.only!r}")
    folder = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)

    import torch

    import fomo_core

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        fomo_core.set_num_threads(args.threads)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(ticks(s, args.quick) for s in chosen), unit="call", file=sys.stderr, dynamic_ncols=True)
    described = machine()
    suite = {"quick": args.quick, "machine_before": described, "subjects": {}, "seconds": {}}
    try:
        for name in chosen:
            if bar is not None:
                bar.set_description(name)
            start = time.perf_counter()
            threads = (torch.get_num_threads(), fomo_core.get_num_threads())
            suite["subjects"][name] = _subject(
                name, args.quick, folder, (lambda: bar.update(1)) if bar else (lambda: None)
            )
            torch.set_num_threads(threads[0])  # subjects set their own thread counts
            fomo_core.set_num_threads(threads[1])
            suite["seconds"][name] = time.perf_counter() - start
            if bar is not None and name == "kernels":
                bar.update(ticks(name, args.quick))
    finally:
        if bar is not None:
            bar.close()
    suite["machine_after"] = machine()
    write_atomic(folder / "suite.json", json.dumps(suite, indent=1, default=str) + "\n")
    print(f"wrote {folder}/ ({', '.join(f'{k} {v:.0f} s' for k, v in suite['seconds'].items())})")
    return 0
