"""Shared pieces of the benchmark scripts: timing by medians, peak-memory probes, result files."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed memory for reuse (no mmap for big blocks, no trimming), so that
    methods allocating large temporaries are timed at their best instead of by the page faults of
    fresh memory on every call. Applies to every method alike; False where glibc is absent."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 62))
    except (OSError, AttributeError):
        return False


def interleaved_samples(
    methods: dict,
    repeats: int,
    warmup: int = 2,
    tick: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """{name: [ms of each round]} of every method over interleaved rounds, after `warmup` calls
    each. Interleaving spreads the drift of a shared machine over all methods alike. ``tick()`` is
    called after every timed call (a progress bar); ``clock`` is wall time unless given (e.g.
    ``time.thread_time``, the calling thread's CPU time)."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = clock()
            fn()
            times[name].append((clock() - start) * 1e3)
            if tick is not None:
                tick()
    return times


def interleaved_ms(
    methods: dict, repeats: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter
) -> dict:
    """{name: (median ms, min ms)} of every method over interleaved rounds (interleaved_samples):
    the median is the figure of merit, the minimum shows the method undisturbed by other processes."""
    samples = interleaved_samples(methods, repeats, warmup, clock=clock)
    return {name: (statistics.median(t), min(t)) for name, t in samples.items()}


def spread(samples: list) -> dict:
    """Median, quartiles, min and max of a list of timings (the quartiles by linear interpolation;
    with fewer than 4 samples they are the min and max)."""
    s = sorted(samples)
    if not s:
        raise ValueError("samples is empty")
    q1, q3 = statistics.quantiles(s, n=4, method="inclusive")[::2] if len(s) >= 4 else (s[0], s[-1])
    return {"median": statistics.median(s), "q1": q1, "q3": q3, "min": s[0], "max": s[-1], "n": len(s)}


class DotProbe:
    """Read bandwidth of a dot product over two float32 arrays (at least 16 MiB each, beyond the
    caches): the memory roof that weights + update are measured against, timed in the same run."""

    def __init__(self, elements: int = 1 << 22):
        import numpy as np

        n = max(int(elements), 1 << 22)
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal(n, dtype=np.float32)
        self.b = rng.standard_normal(n, dtype=np.float32)
        self.nbytes = 2 * n * 4

    def __call__(self) -> float:
        """One timed dot product; returns GB/s."""
        import numpy as np

        start = time.perf_counter()
        np.dot(self.a, self.b)
        return self.nbytes / (time.perf_counter() - start) / 1e9


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object]) -> Optional[float]:
    """Peak resident memory fn() adds above what the process held before it (Linux only).

    Resets the kernel's high-water mark through /proc/self/clear_refs, so allocations made in C++
    (which tracemalloc cannot see) count too. None where that interface is missing.
    """
    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        result = fn()
        peak = _status_kib("VmHWM")
        del result
        return max(0.0, (peak - before) / 1024.0)
    except OSError:
        return None


# the instruction sets that decide the kernels' and torch's speed: vector width, and whether bfloat16
# arithmetic exists in hardware (without it torch emulates bfloat16 in float32, at a loss)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_features() -> dict:
    """The CPU's model name, its SIMD flags among SIMD_FLAGS, whether it has bfloat16 instructions,
    and the instruction set torch dispatches to (Linux /proc/cpuinfo; empty elsewhere)."""
    out: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and "cpu" not in out:
                    out["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and "simd" not in out:
                    flags = set(line.split(":", 1)[1].split())
                    out["simd"] = [flag for flag in SIMD_FLAGS if flag in flags]
                    out["bf16_instructions"] = any(flag in flags for flag in BF16_FLAGS)
    except OSError:
        pass
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return out


def machine() -> dict:
    """The machine's description: CPU model, cores, load average, library versions, build_info()."""
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    info.update(cpu_features())
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    for name in ("numpy", "torch", "sklearn"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        import fomo_core

        info["fomo_core"] = fomo_core.build_info()
    except ImportError:
        pass
    return info


def write_atomic(path: Path, data: str | bytes) -> None:
    """Writes a file whole or not at all: a temporary file beside it, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_results(name: str, payload: dict, table: str, folder: Optional[Path] = None) -> tuple[Path, Path]:
    """Writes <folder>/<name>.json and <name>.md (folder: results/); returns their paths."""
    folder = RESULTS if folder is None else Path(folder)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    write_atomic(json_path, json.dumps(payload, indent=2) + "\n")
    write_atomic(md_path, table + "\n")
    return json_path, md_path


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path) -> Path:
    """Lays out, writes (atomically) and closes a matplotlib figure."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def script_main(bench, name: str, argv=None) -> int:
    """The command line of one benchmark script: ``[--quick]``; runs it, prints its table, writes
    results/<name>.{json,md} and its PNGs."""
    import argparse

    parser = argparse.ArgumentParser(description=(bench.__doc__ or name).split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    args = parser.parse_args(argv)
    payload = bench.run(args.quick)
    payload["machine"] = machine()
    text = bench.table(payload)
    print(text)
    write_results(name, payload, text)
    bench.plot(payload, RESULTS)
    return 0
