"""Speed of FedFomo's weights + update: fomo_core against the ways peers compute it.

Headline: ResNet-18's parameters (P = 11,181,642 as its 62 real layer shapes, CIFAR-10 head),
float32, M = 10 candidates, all improving. In the same process, on one thread (fomo_core's, torch's
and the BLAS's), medians over interleaved repeats of the calling thread's CPU time (time the
scheduler gives other processes on a shared machine does not count):

- fomo_core.fomo_step over the layer list (a new output, a reused out= buffer, and in place), and
  over a flat [M, P] array (new output);
- a PFLlib-style per-layer torch loop (clientfomo: cat of per-layer differences, torch.norm + 1e-5,
  zero the model, accumulate w_n * theta_n layer by layer);
- flat NumPy and flat torch, vectorised the obvious way ([M, P] differences);
- a dot-product bandwidth probe (np.dot and torch.dot over two P-long arrays).

Effective bandwidth counts the bytes the op must move, (M_d + M+ + 3) * P * bytes: M_d distances
read, M+ improving candidates read by the update, and local read twice plus the output written.

Also: float16/bfloat16/float64 storage, half the candidates not improving
(skipped), M = 1..20; small models as layer lists against the same data flat, with and without a
plan (fomo_core.plan: the per-array intake paid once); Fortran-order layers (time and peak memory
against the same values in C order). Writes results/kernels.{json,md,png}.

    python benchmarks/bench_kernels.py            # full run (a few minutes)
    python benchmarks/bench_kernels.py --quick    # smaller sizes, fewer repeats (smoke test)

``run(quick)`` returns the results as a dict (for the benchmark suite); ``main`` also writes them.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import fomo_core as fc
from fomo_core.layout import offsets_of, split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_ms, keep_freed_memory, machine, markdown_table, peak_extra_mib, write_results  # noqa: E402

CLOCK = time.thread_time  # the calling thread's CPU time: every kernel runs on it (one thread)
BYTES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2}


def resnet18_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet18(num_classes) in state_dict order (no buffers)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for channels in (64, 128, 256, 512):
        for block in range(2):
            block_in = in_channels if block == 0 else channels
            shapes += [
                (channels, block_in, 3, 3),
                (channels,),
                (channels,),
                (channels, channels, 3, 3),
                (channels,),
                (channels,),
            ]
            if block == 0 and block_in != channels:
                shapes += [(channels, block_in, 1, 1), (channels,), (channels,)]
        in_channels = channels
    return shapes + [(num_classes, 512), (num_classes,)]


def small_cnn_shapes() -> list[tuple[int, ...]]:
    """A LeNet-style CNN for 3x32x32 inputs: 62,006 parameters."""
    return [(6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]


class Problem:
    """A local model and M candidates as layer lists (torch) and as flat arrays (NumPy and torch)."""

    def __init__(self, shapes, m: int, dtype: torch.dtype, improving: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.shapes = shapes
        self.p = sum(math.prod(s) for s in shapes)
        self.m = m
        self.dtype = dtype
        self.flat_local = torch.randn(self.p, generator=gen).to(dtype)
        # candidates near the local model, as after a round of local training
        noise = torch.randn(m, self.p, generator=gen).to(dtype)
        self.flat_candidates = self.flat_local + 0.01 * noise
        self.layers_local = self._split(self.flat_local)
        self.layers_candidates = [self._split(row) for row in self.flat_candidates]
        # a reused output buffer: what a training loop passes as out= (no fresh pages every call)
        self.layers_out = self._split(torch.zeros_like(self.flat_local))
        self.local_loss = 1.0
        # the first `improving` candidates lower the loss, the rest raise it
        self.losses = np.array([0.5 + 0.02 * n if n < improving else 1.5 for n in range(m)])
        self.improving = improving

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return split(flat, self.shapes, offsets_of(self.shapes)[0])

    def bytes_moved(self, measured: int) -> int:
        return (measured + self.improving + 3) * self.p * BYTES[self.dtype]

    def step(self, **options):
        """fomo_core's fused step over the layer lists into the reused output buffer."""
        return fc.fomo_step(
            self.layers_local, self.layers_candidates, self.local_loss, self.losses, out=self.layers_out, **options
        )


# ---- the baselines, written as their authors' code computes it ----


def pfllib_loop(problem: Problem, model: list[torch.Tensor]) -> list[torch.Tensor]:
    weights = []
    for layers, loss in zip(problem.layers_candidates, problem.losses):
        diff = torch.cat([(c - x).view(-1) for c, x in zip(layers, problem.layers_local)])
        weights.append((problem.local_loss - loss) / (torch.norm(diff) + 1e-5))
    w = torch.clamp(torch.tensor(weights), min=0)
    total = w.sum()
    if total > 0:
        w = w / total
        for param in model:
            param.zero_()
        for wn, layers in zip(w, problem.layers_candidates):
            for param, c in zip(model, layers):
                param += c.clone() * wn
    return model


def numpy_flat(problem: Problem, x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    diff = candidates - x
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
    s = np.maximum((problem.local_loss - problem.losses) / d, 0)
    w = s / s.sum() if s.sum() > 0 else np.zeros_like(s)
    return x + w.astype(x.dtype) @ diff


def torch_flat(problem: Problem) -> torch.Tensor:
    diff = problem.flat_candidates - problem.flat_local
    d = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64)
    s = torch.clamp((problem.local_loss - torch.from_numpy(problem.losses)) / d, min=0)
    w = s / s.sum() if s.sum() > 0 else torch.zeros_like(s)
    return problem.flat_local + w.to(problem.dtype) @ diff


class Probe:
    """Read bandwidth of a dot product over two float32 arrays of P elements (larger than the
    caches), timed interleaved with the methods of each table so that both see the same machine."""

    def __init__(self, p: int):
        self.a = torch.randn(p, generator=torch.Generator().manual_seed(1))
        self.b = torch.randn(p, generator=torch.Generator().manual_seed(2))
        self.a_np, self.b_np = self.a.numpy(), self.b.numpy()
        self.nbytes = 2 * p * 4
        self.methods = {
            "probe np.dot": lambda: np.dot(self.a_np, self.b_np),
            "probe torch.dot": lambda: torch.dot(self.a, self.b),
        }

    def timed(self, methods: dict, repeats: int) -> tuple[dict, dict]:
        """Median ms of every method, interleaved with the probe; and the probe's GB/s."""
        timed = interleaved_ms({**methods, **self.methods}, repeats, clock=CLOCK)
        times = {name: median for name, (median, _) in timed.items()}
        gbs = {name: self.nbytes / times.pop(name) / 1e6 for name in self.methods}
        return times, {
            "gbs": max(gbs.values()),
            "numpy_dot_gbs": gbs["probe np.dot"],
            "torch_dot_gbs": gbs["probe torch.dot"],
        }


def row(name: str, ms: float, problem: Problem, measured: int, probe: float, baseline_ms: float, mem) -> dict:
    gbs = problem.bytes_moved(measured) / ms / 1e6
    return {
        "method": name,
        "ms": ms,
        "gbs": gbs,
        "fraction_of_probe": gbs / probe,
        "speedup_vs_pfllib": baseline_ms / ms,
        "peak_extra_mib": mem,
    }


def headline(problem: Problem, repeats: int, probe: Probe) -> tuple[list[dict], dict]:
    model = [t.clone() for t in problem.layers_local]
    flat_x = problem.flat_local.numpy()
    flat_c = problem.flat_candidates.numpy()
    inplace = [t.clone() for t in problem.layers_local]
    args = (problem.local_loss, problem.losses)
    methods = {
        "fomo_core.fomo_step (layers, new output)": lambda: fc.fomo_step(
            problem.layers_local, problem.layers_candidates, *args
        ),
        "fomo_core.fomo_step (layers, out=)": problem.step,
        "fomo_core.fomo_step (layers, in place)": lambda: fc.fomo_step(
            inplace, problem.layers_candidates, *args, out=inplace
        ),
        "fomo_core.fomo_step (flat [M, P])": lambda: fc.fomo_step(flat_x, flat_c, *args),
        "PFLlib-style per-layer torch loop": lambda: pfllib_loop(problem, model),
        "flat NumPy": lambda: numpy_flat(problem, flat_x, flat_c),
        "flat torch": lambda: torch_flat(problem),
    }
    # Memory first, and the PFLlib-style loop as it runs in a default process: glibc returns its big
    # temporaries to the system, so every call pays the page faults of fresh ones.
    memory = {name: peak_extra_mib(fn) for name, fn in methods.items()}
    pair = {"ours": problem.step, "pfllib": methods["PFLlib-style per-layer torch loop"]}
    default_allocator, _ = probe.timed(pair, repeats)
    # Then every method at its best, with freed memory kept for reuse.
    keep_freed_memory()
    times, bandwidth = probe.timed(methods, repeats)
    baseline = times["PFLlib-style per-layer torch loop"]
    rows = [row(name, times[name], problem, problem.m, bandwidth["gbs"], baseline, memory[name]) for name in methods]
    bandwidth["default_allocator"] = {
        "fomo_core_ms": default_allocator["ours"],
        "pfllib_ms": default_allocator["pfllib"],
        "speedup_vs_pfllib": default_allocator["pfllib"] / default_allocator["ours"],
    }
    return rows, bandwidth


def dtypes(shapes, m: int, repeats: int, probe: Probe) -> list[dict]:
    problems = {
        str(d).removeprefix("torch."): Problem(shapes, m, d, improving=m)
        for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    }
    times, bandwidth = probe.timed({name: pb.step for name, pb in problems.items()}, repeats)
    rows = []
    for name, pb in problems.items():
        gbs = pb.bytes_moved(m) / times[name] / 1e6
        rows.append(
            {
                "dtype": name,
                "ms": times[name],
                "gbs": gbs,
                "fraction_of_probe": gbs / bandwidth["gbs"],
                "speedup_vs_float32": times["float32"] / times[name],
            }
        )
    return rows


def skipping(shapes, m: int, repeats: int, probe: Probe) -> list[dict]:
    full = Problem(shapes, m, torch.float32, improving=m)
    half = Problem(shapes, m, torch.float32, improving=m // 2)
    cases = {
        f"all {m} improving": (full, m, full.step),
        f"{m // 2} of {m} improving, all_scores=True": (half, m, lambda: half.step(all_scores=True)),
        f"{m // 2} of {m} improving, all_scores=False": (half, m // 2, lambda: half.step(all_scores=False)),
    }
    times, _ = probe.timed({name: fn for name, (_, _, fn) in cases.items()}, repeats)
    base_ms, base_bytes = times[f"all {m} improving"], full.bytes_moved(m)
    return [
        {
            "case": name,
            "ms": times[name],
            "relative_time": times[name] / base_ms,
            "relative_bytes": pb.bytes_moved(measured) / base_bytes,
            "gbs": pb.bytes_moved(measured) / times[name] / 1e6,
        }
        for name, (pb, measured, _) in cases.items()
    ]


def m_sweep(shapes, ms_list, repeats: int, probe: Probe) -> list[dict]:
    rows = []
    for m in ms_list:
        problem = Problem(shapes, m, torch.float32, improving=m)
        model = [t.clone() for t in problem.layers_local]
        methods = {"ours": problem.step, "pfllib": functools.partial(pfllib_loop, problem, model)}
        times, bandwidth = probe.timed(methods, repeats)
        gbs = problem.bytes_moved(m) / times["ours"] / 1e6
        rows.append(
            {
                "M": m,
                "fomo_core_ms": times["ours"],
                "pfllib_ms": times["pfllib"],
                "speedup_vs_pfllib": times["pfllib"] / times["ours"],
                "gbs": gbs,
                "fraction_of_probe": gbs / bandwidth["gbs"],
            }
        )
        del problem, model
    return rows


def small_model(repeats: int) -> list[dict]:
    problem = Problem(small_cnn_shapes(), 10, torch.float32, improving=10)
    model = [t.clone() for t in problem.layers_local]
    flat_x, flat_c = problem.flat_local.numpy(), problem.flat_candidates.numpy()
    args = (problem.local_loss, problem.losses)
    methods = {
        "fomo_core.fomo_step (layers, out=)": problem.step,
        "fomo_core.fomo_step (flat [M, P])": lambda: fc.fomo_step(flat_x, flat_c, *args),
        "PFLlib-style per-layer torch loop": lambda: pfllib_loop(problem, model),
        "flat NumPy": lambda: numpy_flat(problem, flat_x, flat_c),
        "flat torch": lambda: torch_flat(problem),
    }
    times = {name: median for name, (median, _) in interleaved_ms(methods, repeats * 20, 5, CLOCK).items()}
    base = times["PFLlib-style per-layer torch loop"]
    return [{"method": k, "us": v * 1e3, "speedup_vs_pfllib": base / v} for k, v in times.items()]


SMALL_MODELS = {
    "P = 1,000 as 10 layers, M = 4": ([(10, 10)] * 10, 4),
    "LeNet-style CNN, P = 62,006 as 10 layers, M = 10": (small_cnn_shapes(), 10),
}


def layer_lists(repeats: int) -> list[dict]:
    """A layer-list call against the same data flat, with and without a plan, all into reused
    output buffers (the flat call also with a new output, as most callers make it). First checks
    that every route agrees with the flat call (runs cut at layer ends may round a distance's sum
    differently in the last bit)."""
    rows = []
    for name, (shapes, m) in SMALL_MODELS.items():
        pb = Problem(shapes, m, torch.float32, improving=m)
        args = (pb.local_loss, pb.losses)
        flat_out = torch.empty_like(pb.flat_local)
        plan = fc.plan(pb.layers_local, pb.layers_candidates, out=pb.layers_out)
        methods = {
            "flat, out=": functools.partial(fc.fomo_step, pb.flat_local, pb.flat_candidates, *args, out=flat_out),
            "flat, new output": functools.partial(fc.fomo_step, pb.flat_local, pb.flat_candidates, *args),
            "layers, out=": pb.step,
            "layers through a plan": functools.partial(plan.fomo_step, *args),
        }
        want = methods["flat, out="]().params
        for method in ("layers, out=", "layers through a plan"):
            got = torch.cat([t.reshape(-1) for t in methods[method]().params])
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), f"{name}: {method} differs from the flat call"
        times = {k: med for k, (med, _) in interleaved_ms(methods, repeats * 20, 5, CLOCK).items()}
        base = times["flat, out="]
        for method, ms in times.items():
            rows.append(
                {
                    "model": name,
                    "P": pb.p,
                    "M": m,
                    "layers": len(shapes),
                    "method": method,
                    "us": ms * 1e3,
                    "vs_flat": ms / base,
                }
            )
        del pb, plan, methods
    return rows


def fortran_order(p: int, m: int, repeats: int) -> list[dict]:
    """Layers whose short dimension is the contiguous one for none of the arrays (Fortran order,
    as a transposed [P / 4, 4] weight): every array alike, and one such candidate among C-order ones.
    Time and peak memory against the same values in C order, out= a reused buffer. First checks
    that the three agree (the summation order differs: a float64-sum tolerance)."""
    rows_, cols = p // 4, 4
    gen = torch.Generator().manual_seed(5)
    c_local = torch.randn(rows_, cols, generator=gen)
    c_cands = [c_local + 0.01 * torch.randn(rows_, cols, generator=gen) for _ in range(m)]

    def fortran(t: torch.Tensor) -> torch.Tensor:
        return t.t().contiguous().t()  # the same values, column-major

    cases = {
        "C order (baseline)": ([c_local], [[c] for c in c_cands], [torch.empty_like(c_local)]),
        "Fortran order, every array": (
            [fortran(c_local)],
            [[fortran(c)] for c in c_cands],
            [fortran(torch.empty_like(c_local))],
        ),
        "one Fortran-order candidate among C-order ones": (
            [c_local],
            [[fortran(c_cands[0])]] + [[c] for c in c_cands[1:]],
            [torch.empty_like(c_local)],
        ),
    }
    losses = np.linspace(0.5, 0.8, m)
    methods = {name: (lambda a=a: fc.fomo_step(a[0], a[1], 1.0, losses, out=a[2])) for name, a in cases.items()}
    want = methods["C order (baseline)"]().distances
    for name, fn in methods.items():
        np.testing.assert_allclose(fn().distances.numpy(), want.numpy(), rtol=1e-9, err_msg=name)
    memory = {name: peak_extra_mib(fn) for name, fn in methods.items()}
    times = {k: med for k, (med, _) in interleaved_ms(methods, repeats, clock=CLOCK).items()}
    base = times["C order (baseline)"]
    return [
        {"case": name, "ms": times[name], "vs_c_order": times[name] / base, "peak_extra_mib": memory[name]}
        for name in methods
    ]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["headline"]
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r["method"] for r in rows]
    values = [r["gbs"] for r in rows]
    ax.barh(names[::-1], values[::-1], color=["#1f77b4" if n.startswith("fomo") else "#999999" for n in names[::-1]])
    ax.axvline(results["probe"]["gbs"], color="#d62728", linestyle="--", label="dot-product probe")
    ax.set_xlabel("effective bandwidth (GB/s), higher is better")
    ax.set_title(
        f"FedFomo weights + update\nP = {results['config']['P']:,} float32, M = {results['config']['M']} candidates"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(quick: bool, repeats: Optional[int] = None) -> dict:
    """Every measurement of this script; ``quick`` shrinks the models (a quarter of ResNet-18's
    channels, P = 1e6 for the Fortran-order case) and the repeats."""
    repeats = repeats or (3 if quick else 7)
    from threadpoolctl import threadpool_limits

    threads = (torch.get_num_threads(), fc.get_num_threads())
    torch.set_num_threads(1)
    fc.set_num_threads(1)
    try:
        with threadpool_limits(1):  # NumPy's BLAS (the probe's np.dot, the flat NumPy method) too
            return _run(quick, repeats)
    finally:
        torch.set_num_threads(threads[0])
        fc.set_num_threads(threads[1])


def _run(quick: bool, repeats: int) -> dict:
    shapes = resnet18_shapes()
    if quick:
        shapes = [tuple(max(1, d // 4) if i < 2 else d for i, d in enumerate(s)) for s in shapes]
    p = sum(math.prod(s) for s in shapes)
    m = 10
    load_before = os.getloadavg()[0]
    probe_arrays = Probe(p)
    results = {
        "config": {"P": p, "M": m, "layers": len(shapes), "repeats": repeats, "quick": quick},
        "machine": machine(),
        "build_info": fc.build_info(),
        "threads": 1,
        "clock": "thread CPU time",
    }
    results["headline"], probe = headline(Problem(shapes, m, torch.float32, improving=m), repeats, probe_arrays)
    results["pfllib_default_allocator"] = probe.pop("default_allocator")
    results["probe"] = probe
    results["glibc_keeps_freed_memory"] = keep_freed_memory()  # already applied inside headline()
    results["dtypes"] = dtypes(shapes, m, repeats, probe_arrays)
    results["skip"] = skipping(shapes, m, repeats, probe_arrays)
    results["m_sweep"] = m_sweep(shapes, [1, 5, 10, 20], repeats, probe_arrays)
    results["small_model"] = small_model(repeats)
    results["layer_lists"] = layer_lists(repeats)
    results["fortran_order_p"] = 1_000_000 if quick else 4_000_000
    results["fortran_order"] = fortran_order(results["fortran_order_p"], m, repeats)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    return results


def report(results: dict) -> str:
    """The markdown tables of run()'s results."""
    p, m, repeats = results["config"]["P"], results["config"]["M"], results["config"]["repeats"]
    probe, info = results["probe"], results["build_info"]
    headline_rows = [
        [r["method"], r["ms"], r["gbs"], r["fraction_of_probe"], r["speedup_vs_pfllib"], r["peak_extra_mib"]]
        for r in results["headline"]
    ]
    allocator = results["pfllib_default_allocator"]
    sections = [
        f"P = {p:,} ({results['config']['layers']} layers), float32, M = {m}, all improving; dot-product probe "
        f"{probe['gbs']:.1f} GB/s (np.dot {probe['numpy_dot_gbs']:.1f}, torch.dot {probe['torch_dot_gbs']:.1f}); "
        f"medians of {repeats} interleaved rounds of the calling thread's CPU time (each table times the probe "
        f"with its methods); one thread (fomo_core, torch, BLAS), {info['simd']} kernels; "
        f"load average {results['load_average']['before']:.2f} before, {results['load_average']['after']:.2f} after; "
        f"peak memory measured first; then glibc keeps freed memory for reuse, so no method is timed "
        f"by the page faults of fresh temporaries: {results['glibc_keeps_freed_memory']}.",
        markdown_table(["method", "CPU ms", "GB/s", "of probe", "vs PFLlib", "peak extra MiB"], headline_rows),
        f"Under glibc's default allocator (big temporaries returned to the system after each call), the "
        f"PFLlib-style loop takes {allocator['pfllib_ms']:.0f} ms against fomo_step's "
        f"{allocator['fomo_core_ms']:.1f} ms: {allocator['speedup_vs_pfllib']:.1f}x. The table above keeps freed "
        f"memory for reuse, which is every method's best case.",
        f"Storage dtypes (fomo_step over layers into a reused out=, M = {m}):",
        markdown_table(
            ["dtype", "CPU ms", "GB/s", "of probe", "speed vs float32"],
            [
                [r["dtype"], r["ms"], r["gbs"], r["fraction_of_probe"], r["speedup_vs_float32"]]
                for r in results["dtypes"]
            ],
        ),
        f"Non-improving candidates (float32, M = {m}):",
        markdown_table(
            ["case", "ms", "time vs all improving", "bytes vs all improving", "GB/s"],
            [[r["case"], r["ms"], r["relative_time"], r["relative_bytes"], r["gbs"]] for r in results["skip"]],
        ),
        "Number of candidates (float32):",
        markdown_table(
            ["M", "fomo_core ms", "PFLlib-style ms", "speedup", "GB/s", "of probe"],
            [
                [r["M"], r["fomo_core_ms"], r["pfllib_ms"], r["speedup_vs_pfllib"], r["gbs"], r["fraction_of_probe"]]
                for r in results["m_sweep"]
            ],
        ),
        "Small model (LeNet-style CNN, P = 62,006, M = 10): call overhead",
        markdown_table(
            ["method", "µs", "vs PFLlib"],
            [[r["method"], r["us"], r["speedup_vs_pfllib"]] for r in results["small_model"]],
        ),
        "Layer lists against the same data flat (float32, all improving, torch tensors; a plan is "
        "`fomo_core.plan(local, candidates, out=...)`, which reads the arrays once):",
        markdown_table(
            ["model", "method", "µs", "vs flat out="],
            [[r["model"], r["method"], r["us"], r["vs_flat"]] for r in results["layer_lists"]],
        ),
        f"Fortran-order layers ([P / 4, 4] column-major, P = {results['fortran_order_p']:,}, M = {m}, out= a reused "
        "buffer): time and peak extra memory against the same values in C order:",
        markdown_table(
            ["case", "ms", "time vs C order", "peak extra MiB"],
            [[r["case"], r["ms"], r["vs_c_order"], r["peak_extra_mib"]] for r in results["fortran_order"]],
        ),
    ]
    return "\n\n".join(sections)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of ResNet-18's channels, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (median taken)")
    parser.add_argument("--name", default="kernels", help="results file name under benchmarks/results/")
    args = parser.parse_args(argv)
    print(f"fomo_core {fc.build_info()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = run(args.quick, args.repeats)
    table = report(results)
    print("\n" + table)
    json_path, md_path = write_results(args.name, results, table)
    plot(results, json_path.with_suffix(".png"))
    print(f"\nwrote {json_path}, {md_path} and {json_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
