"""The FedFomo server at scale: memory, selection, rounds and checkpoints from 1,000 to 100,000 clients.

Each configuration runs in a fresh subprocess (so its peak resident memory is its own) with the
models in a disk model store (``fomo_core.model_store.open_model_store``):

1. build: the store and ``Server(N, init, m=M, models=store)``;
2. history: every client's affinity row receives H updates of M random clients with random scores
   (a long-running server's rows, without running H·N client rounds);
3. rounds at the participation rate (clients sampled without replacement, in sampled order): for
   each participant ``candidates`` (its M models read from the store), ``receive`` (a model, M
   scores and its contribution to the global model, as the fomo-core round sends), then
   ``end_round``; the round's process CPU time;
4. select per client: ``Server.select`` over 1,000 sampled clients (thread CPU time per call), and
   ``Server.select_many`` over the same clients in one call where the server has it;
5. checkpoint: ``save`` (wall and CPU time, bytes written), then ``Server.load`` in a second fresh
   subprocess (its own peak memory).

Peak RSS is the kernel's high-water mark (VmHWM) of each subprocess: every resident page the
process ever held, its imports included (``baseline``: after the imports). Times are CPU time, the
medians of the repeats. Before any timing a small federation checks that a server on a store and
one in memory make the same selections and keep the same affinity, and that a checkpoint reloads
to a server that continues identically (it raises if not).

    python benchmarks/bench_server.py [--quick]     # or: python -m benchmarks --only server
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import markdown_table, save_figure, script_main  # noqa: E402

M = 5
HISTORY = 4  # updates of M clients per affinity row before the timed phases
SELECT_SAMPLE = 1000
UPLOADS = 2  # distinct upload vectors, reused (generating P random values per upload would dominate)


def configs(quick: bool) -> list:
    """The configurations: (name, N, P, participation, store dtype, timed rounds)."""
    if quick:
        return [
            dict(N=1_000, P=10_000, participation=0.01, dtype="float32", rounds=3),
            dict(N=10_000, P=10_000, participation=0.01, dtype="float32", rounds=3),
            dict(N=100, P=1_000_000, participation=1.0, dtype="float32", rounds=2),
        ]
    return [
        dict(N=1_000, P=10_000, participation=0.01, dtype="float32", rounds=5),
        dict(N=10_000, P=10_000, participation=0.01, dtype="float32", rounds=5),
        dict(N=100_000, P=10_000, participation=0.01, dtype="float32", rounds=5),
        dict(N=100, P=11_181_642, participation=1.0, dtype="float32", rounds=2),
        # 1,000 x 11.2M float16 = 22 GB of store for one round of first uploads (the disk is checked
        # first); no warm-up round, which would double it
        dict(N=1_000, P=11_181_642, participation=1.0, dtype="float16", rounds=1, warmup=False),
    ]


# --- inside the subprocess ------------------------------------------------------------------------


def _status(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _drive_round(server, clients, uploads, rng) -> None:
    for i in clients:
        ids, _ = server.candidates(int(i))
        upload = uploads[int(i) % len(uploads)]
        # the fomo-core round's contribution to the global model too: one more [P] per upload
        server.receive(int(i), upload, ids, rng.standard_normal(len(ids)), global_update=upload)
    server.end_round()


def child_run(cfg: dict) -> dict:
    """Build, history, rounds, selection and save of one configuration (in this process)."""
    import numpy as np

    import fomo_core as fc
    from fomo_core.model_store import open_model_store

    folder = Path(cfg["folder"])
    n, p, dtype = cfg["N"], cfg["P"], np.dtype(cfg["dtype"])
    out = {"baseline_mib": _status("VmRSS")}
    rng = np.random.default_rng(0)
    init = (0.01 * rng.standard_normal(p)).astype(dtype)
    uploads = [(0.01 * rng.standard_normal(p)).astype(dtype) for _ in range(UPLOADS)]

    start = time.process_time()
    store = open_model_store(folder / "models.npy", n, p, dtype=dtype)
    server = fc.Server(n, init, m=M, seed=0, models=store)
    out["build_cpu_s"] = time.process_time() - start

    start = time.process_time()
    for _ in range(HISTORY):
        for i in range(n):
            ids = rng.choice(n - 1, M, replace=False)
            ids += ids >= i  # M other clients
            server.affinity.update(i, ids, rng.standard_normal(M))
    out["history_cpu_s"] = time.process_time() - start

    per_round = max(1, int(round(cfg["participation"] * n)))
    if cfg.get("warmup", True):  # a first round: uploads exist, rows are replaced
        _drive_round(server, rng.choice(n, per_round, replace=False), uploads, rng)
    round_cpu, round_wall = [], []
    for _ in range(cfg["rounds"]):
        clients = rng.choice(n, per_round, replace=False)
        wall, start = time.perf_counter(), time.process_time()
        _drive_round(server, clients, uploads, rng)
        round_cpu.append(time.process_time() - start)
        round_wall.append(time.perf_counter() - wall)
    out["round_cpu_s"], out["round_wall_s"] = statistics.median(round_cpu), statistics.median(round_wall)
    out["round_cpu_all_s"] = round_cpu
    out["participants"] = per_round

    sample = [int(i) for i in rng.choice(n, min(n, SELECT_SAMPLE), replace=False)]
    single, batched = [], []
    for _ in range(3):
        start = time.thread_time()
        for i in sample:
            server.select(i)
        single.append((time.thread_time() - start) / len(sample))
        if hasattr(server, "select_many"):
            start = time.thread_time()
            server.select_many(sample)
            batched.append((time.thread_time() - start) / len(sample))
    out["select_us"] = 1e6 * statistics.median(single)
    out["select_many_us"] = 1e6 * statistics.median(batched) if batched else None

    ckpt = folder / "ckpt.npz"
    wall, cpu = time.perf_counter(), time.process_time()
    server.save(ckpt)
    out["save_s"], out["save_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out["checkpoint_mib"] = ckpt.stat().st_size / 2**20
    out["store_disk_mib"] = sum(f.stat().st_blocks * 512 for f in folder.glob("models.npy*")) / 2**20
    out["round"] = server.round
    out["peak_rss_mib"] = _status("VmHWM")
    return out


def child_load(cfg: dict) -> dict:
    """Server.load of the configuration's checkpoint (in this process)."""
    import numpy as np

    import fomo_core as fc
    from fomo_core.model_store import open_model_store

    folder = Path(cfg["folder"])
    out = {"load_baseline_mib": _status("VmRSS")}
    wall, cpu = time.perf_counter(), time.process_time()
    store = open_model_store(folder / "models.npy", cfg["N"], cfg["P"], dtype=np.dtype(cfg["dtype"]))
    server = fc.Server.load(folder / "ckpt.npz", models=store)
    out["load_s"], out["load_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out["load_peak_rss_mib"] = _status("VmHWM")
    out["loaded_round"] = server.round
    return out


# --- the parent -------------------------------------------------------------------------------------


def _subprocess(kind: str, cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, f"--child-{kind}", json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench_server {kind} {cfg} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_agreement() -> dict:
    """A store server and an in-memory one agree; a checkpoint continues identically (raises if not)."""
    import numpy as np

    import fomo_core as fc
    from fomo_core.model_store import open_model_store

    n, p = 12, 7
    with tempfile.TemporaryDirectory() as tmp:
        init = np.linspace(-1, 1, p, dtype=np.float32)
        memory = fc.Server(n, init, m=3, seed=1)
        disk = fc.Server(n, init, m=3, seed=1, models=open_model_store(Path(tmp) / "m.npy", n, p))
        for server in (memory, disk):
            rng = np.random.default_rng(2)
            for _ in range(4):
                _drive_round(server, rng.choice(n, 6, replace=False), [rng.standard_normal(p).astype(np.float32)], rng)
        picks = [[memory.select(i).tolist() for i in range(n)], [disk.select(i).tolist() for i in range(n)]]
        same_global = np.array_equal(memory.global_params(), disk.global_params())
        if picks[0] != picks[1] or not np.array_equal(memory.affinity.matrix, disk.affinity.matrix) or not same_global:
            raise AssertionError("a server on a model store and one in memory disagree")
        disk.save(Path(tmp) / "c.npz")
        back = fc.Server.load(Path(tmp) / "c.npz", models=open_model_store(Path(tmp) / "m.npy", n, p))
        if [back.select(i).tolist() for i in range(n)] != [disk.select(i).tolist() for i in range(n)] or not (
            np.array_equal(back.global_params(), disk.global_params())
        ):
            raise AssertionError("a reloaded server selects differently from the one that saved it")
    checked = "store vs memory selections, affinity and global model; checkpoint continuation"
    return {"checked": checked, "clients": n}


def _free_disk_gib(folder: Path) -> float:
    return shutil.disk_usage(folder).free / 2**30


def _store_gib(cfg: dict) -> float:
    """The store's bytes for one version of every row plus one more for every participant."""
    itemsize = 2 if cfg["dtype"] == "float16" else 4
    rounds = cfg["rounds"] + cfg.get("warmup", True)
    rows = min(cfg["N"], rounds * int(round(cfg["participation"] * cfg["N"])))  # first uploads
    rows += int(round(cfg["participation"] * cfg["N"])) * (rounds > 1)  # this round's, beside last round's
    return rows * cfg["P"] * itemsize / 2**30


def count_ticks(quick: bool) -> int:
    return 2 * len(configs(quick))


def run(quick: bool = False, tick: Optional[Callable] = None, scratch: Optional[str] = None) -> dict:
    """Every configuration in its own subprocesses; a configuration whose store would not fit on
    the disk (with 10 GiB to spare for others) is skipped and says so."""
    payload = {"name": "server", "quick": quick, "M": M, "history": HISTORY, "agreement": check_agreement(), "rows": []}
    for cfg in configs(quick):
        root = Path(tempfile.mkdtemp(prefix="bench_server_", dir=scratch))
        row = dict(cfg)
        try:
            need = _store_gib(cfg)
            if _free_disk_gib(root) < need + 10:
                row["skipped"] = f"needs {need:.0f} GiB of disk, {_free_disk_gib(root):.0f} GiB free"
            else:
                cfg = dict(cfg, folder=str(root))
                row.update(_subprocess("run", cfg))
                if tick:
                    tick()
                row.update(_subprocess("load", cfg))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if tick:
            tick()
        payload["rows"].append(row)
        print(json.dumps(row), file=sys.stderr)
    return payload


def _fmt(x: Optional[float], digits: str = ".3g") -> str:
    return "" if x is None else format(x, digits)


def table(payload: dict) -> str:
    rows = []
    for r in payload["rows"]:
        if "skipped" in r:
            rows.append([f"{r['N']:,}", f"{r['P']:,}", r["dtype"], r["participation"], "skipped: " + r["skipped"]])
            continue
        rows.append(
            [
                f"{r['N']:,}",
                f"{r['P']:,}",
                r["dtype"],
                r["participation"],
                f"{r['peak_rss_mib']:.0f} ({r['baseline_mib']:.0f})",
                _fmt(r["select_us"]),
                _fmt(r.get("select_many_us")),
                f"{r['round_cpu_s']:.3g} / {r['round_wall_s']:.3g} ({r['participants']:,})",
                f"{r['save_s']:.3g} / {r['checkpoint_mib']:.3g}",
                f"{r['load_s']:.3g} / {r['load_peak_rss_mib']:.0f}",
                f"{r['store_disk_mib']:.0f}",
            ]
        )
    return markdown_table(
        [
            "N",
            "P",
            "store",
            "participation",
            "peak RSS MiB (after imports)",
            "select µs/client",
            "select_many µs/client",
            "round s: CPU / wall (clients)",
            "save s / checkpoint MiB",
            "load s / peak RSS MiB",
            "store on disk MiB",
        ],
        rows,
    )


def plot(payload: dict, folder: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["rows"] if "skipped" not in r and r["P"] <= 10_000]
    if not rows:
        return []
    ns = [r["N"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    axes[0].plot(ns, [r["peak_rss_mib"] for r in rows], "o-", label="run (build, rounds, save)")
    axes[0].plot(ns, [r["load_peak_rss_mib"] for r in rows], "s--", label="load")
    axes[0].set_ylabel("peak RSS (MiB)")
    axes[1].plot(ns, [r["select_us"] for r in rows], "o-", label="select")
    if all(r.get("select_many_us") for r in rows):
        axes[1].plot(ns, [r["select_many_us"] for r in rows], "s--", label="select_many, per client")
    axes[1].set_ylabel("CPU µs per client")
    axes[2].plot(ns, [r["round_cpu_s"] for r in rows], "o-", label=f"participation {rows[0]['participation']}")
    axes[2].set_ylabel("CPU s per round")
    for ax, title in zip(axes, ("memory", "selection", "a round")):
        ax.set_xscale("log")
        ax.set_xlabel("clients N")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"FedFomo server, P = {rows[0]['P']:,}, M = {payload['M']}, models in a disk store", fontsize=9)
    return [save_figure(fig, folder / "server.png")]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--child-run", "--child-load"):
        fn = child_run if sys.argv[1] == "--child-run" else child_load
        print(json.dumps(fn(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(script_main(sys.modules[__name__], "server"))
