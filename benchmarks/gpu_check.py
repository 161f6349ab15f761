"""GPU check: are fomo_core's CUDA kernels right on this machine's GPUs, and how fast are they?

Runs with no arguments on any machine with an NVIDIA GPU, a CUDA build of torch and fomo_core built
with CUDA (nvcc on the PATH at `pip install` time):

    python benchmarks/gpu_check.py

1. Correctness, on every CUDA device, on fresh random data (the seed is printed): every op
   (candidate_distances, first_order_scores, compute_weights, apply_update, fomo_step with all
   scores and without) against fomo_core.reference, the pure-Python float64 oracle, for every
   storage dtype (float32, float64, float16, bfloat16), flat [M, P] and layer-list models (with a
   strided and a misaligned layer), both norms, and NaN/inf cases; results must stay on the device.
   Then, at ResNet-18 size, the fused step against fomo_core's CPU kernels on host copies; and the
   dense evaluation (evaluate_candidates, every dtype and output) against the oracle on host copies.
2. Speed, on every device: weights + update (fomo_step, all_scores=False, in place) at ResNet-18
   size (P = 11,181,642 as its 62 layers, M = 10, all improving) against a torch-on-GPU baseline
   (flat [M, P], vectorised the obvious way) and against the device-to-device copy bandwidth
   measured in the same run. Effective bandwidth counts the bytes the op must move,
   (M_d + M+ + 3) * P * bytes_per_element; the target is at least 80% of the copy bandwidth.

Prints a table, writes results/gpu-check-<gpu>.{json,md}, and exits 1 with every mismatch listed
when any check fails; exits 2 when there is nothing to check (no GPU, or no CUDA in this build).
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import machine, markdown_table, write_results  # noqa: E402
from cuda_models import flat_model, layered_model  # noqa: E402
from tolerances import distance_rtol, score_rtol, update_bound, update_value_and_magnitude, weight_rtol  # noqa: E402

from fomo_core._models import floating_leaves, parse_model  # noqa: E402

TARGET = 0.80  # of the copy bandwidth, for weights + update (the CUDA target in docs/design.md)


def fail_early(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(2)


def preflight():
    try:
        import torch
    except ImportError:
        fail_early("torch is not installed; the check needs a CUDA build of torch (pip install torch)")
    if not torch.cuda.is_available():
        fail_early(
            "no GPU is present (torch.cuda.is_available() is False"
            + ("; this torch is a CPU-only build" if torch.version.cuda is None else "")
            + "). Nothing was checked: run this on a machine with an NVIDIA GPU."
        )
    import fomo_core

    info = fomo_core.build_info()
    if not info["cuda"]:
        fail_early(
            "this fomo_core was built without CUDA kernels; reinstall it with nvcc on the PATH "
            "(FOMO_CUDA=ON pip install .). Nothing was checked."
        )
    if not fomo_core.has_cuda():
        fail_early(
            f"torch sees {torch.cuda.device_count()} GPU(s) but fomo_core's CUDA {info['cuda_version']} runtime "
            "sees none: the NVIDIA driver is probably too old for that CUDA version. Nothing was checked."
        )
    try:
        from fomo_core import reference
    except ImportError:
        reference = None
    return torch, fomo_core, reference


class Checker:
    """Collects mismatches instead of stopping at the first, so that one run reports them all."""

    def __init__(self):
        self.failures: list[str] = []
        self.checks = 0

    def expect(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            self.failures.append(what)
            print(f"  MISMATCH: {what}", flush=True)

    def close(self, got: np.ndarray, want: np.ndarray, rtol: float, what: str) -> None:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        same_nan = np.array_equal(np.isnan(got), np.isnan(want))
        fine = np.isnan(want) | (np.abs(got - want) <= rtol * np.abs(want))
        worst = float(np.nanmax(np.abs(got - want) / np.maximum(np.abs(want), 1e-300), initial=0.0))
        self.expect(same_nan and bool(fine.all()), f"{what}: relative error {worst:.3g} > {rtol:.3g}")


def main() -> int:
    torch, fc, reference = preflight()
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"gpu_check: fomo_core {fc.build_info()['version']} (CUDA {fc.build_info()['cuda_version']}), seed {seed}")
    if reference is None:
        print("gpu_check: fomo_core.reference is not installed; comparing with fomo_core's CPU kernels instead")
    oracle = reference if reference is not None else fc
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    checker = Checker()
    payload = {
        "machine": machine(),
        "seed": seed,
        "oracle": "reference" if reference else "cpu-kernels",
        "build": fc.build_info(),
        "devices": [],
    }
    rows = []
    for device in devices:
        name = torch.cuda.get_device_name(device)
        print(f"\n== {device}: {name}")
        t = time.perf_counter()
        check_device(torch, fc, oracle, device, np.random.default_rng(seed), checker)
        check_at_scale(torch, fc, device, checker)
        check_dense(torch, fc, oracle, device, np.random.default_rng(seed), checker)
        print(f"  {checker.checks} checks so far, {len(checker.failures)} mismatches ({time.perf_counter() - t:.1f} s)")
        speed = time_device(torch, fc, device)
        payload["devices"].append({"device": str(device), "name": name, **speed})
        for r in speed["runs"]:
            rows.append([str(device), name, r["what"], r["ms"], r["gb_per_s"], r["of_copy"], r["speedup_vs_torch"]])

    headers = ["device", "GPU", "what", "ms", "GB/s", "of copy bw", "x torch"]
    table = markdown_table(headers, rows)
    print("\n" + table)
    payload["checks"] = checker.checks
    payload["mismatches"] = checker.failures
    gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(devices[0]).lower()).strip("-")
    json_path, _ = write_results(f"gpu-check-{gpu}", payload, table)
    print(f"\nwrote {json_path}")
    for d in payload["devices"]:
        fused = next(r for r in d["runs"] if r["what"].startswith("fomo_core"))
        verdict = "meets" if fused["of_copy"] >= TARGET else "BELOW"
        print(
            f"{d['device']}: weights + update at {fused['of_copy']:.0%} of copy bandwidth "
            f"({verdict} the {TARGET:.0%} target)"
        )
    if checker.failures:
        print(f"\ngpu_check: FAILED: {len(checker.failures)} of {checker.checks} checks mismatched:", file=sys.stderr)
        for f in checker.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"\ngpu_check: all {checker.checks} checks passed on {len(devices)} device(s)")
    return 0


# ---- correctness --------------------------------------------------------------------------------


def host(torch, x):
    if isinstance(x, dict):
        return {k: host(torch, v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(host(torch, v) for v in x)
    return x.detach().cpu()


def as_np(torch, x) -> np.ndarray:
    x = x.detach().cpu()
    return (x.double() if x.is_floating_point() else x).numpy()


def leaves(model) -> list:
    """The floating-point arrays of a model, as the ops see them (integer entries take no part)."""
    return floating_leaves(*parse_model(model, "model"))


def make_model(torch, kind, device, dtype, m, rng):
    """Flat: x [P], c [M, P]. Layers: every path of the ops (tests/cuda_models.py)."""

    def randn(*shape):
        return torch.from_numpy(rng.standard_normal(shape))

    if kind == "flat":
        return flat_model(randn, device, dtype, m, 50000)
    return layered_model(torch, randn, device, dtype, m)


def check_update(torch, checker, params, local, cands, weights, dtype, what):
    """|out - v| <= 2 u_s |v| + (M + 4) u_c S + tiny with v = x + sum w (c - x) in float64, S = |x| +
    sum |w| |c - x|: two roundings to storage, the accumulation in the compute type, a subnormal floor."""
    w = as_np(torch, weights)
    cand_models = cands if isinstance(cands, list) else [cands[i] for i in range(cands.shape[0])]
    for out_leaf, x_leaf, *c_leaves in zip(leaves(params), leaves(local), *map(leaves, cand_models)):
        v, s = update_value_and_magnitude(as_np(torch, x_leaf).ravel(), [as_np(torch, c).ravel() for c in c_leaves], w)
        err = np.abs(as_np(torch, out_leaf).ravel() - v)
        bound = update_bound(str(dtype).removeprefix("torch."), len(w), v, s)
        checker.expect(
            bool((err <= bound).all()),
            f"{what}: update off by up to {float(err.max()):.3g} (bound {float(bound.min()):.3g}+)",
        )


def check_device(torch, fc, oracle, device, rng, checker):
    m = 6
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for kind in ("flat", "layers"):
            local, cands = make_model(torch, kind, device, dtype, m, rng)
            n = sum(leaf.numel() for leaf in leaves(local))
            losses = list(rng.uniform(0.2, 1.8, size=m))
            losses[0], losses[1] = 0.5, 1.5
            for norm in ("l2", "l1"):
                what = f"{device} {str(dtype)[6:]} {kind} {norm}"
                name = str(dtype).removeprefix("torch.")
                rtol, srtol, wrtol = distance_rtol(n, name), score_rtol(n, name), weight_rtol(n, m, name)
                d = fc.candidate_distances(local, cands, norm=norm)
                s = fc.first_order_scores(local, cands, 1.0, losses, norm=norm, eps=1e-5)
                w = fc.compute_weights(local, cands, 1.0, losses, norm=norm)
                for all_scores in (True, False):
                    step = fc.fomo_step(local, cands, 1.0, losses, norm=norm, all_scores=all_scores)
                    ref = oracle.fomo_step(
                        host(torch, local), host(torch, cands), 1.0, losses, norm=norm, all_scores=all_scores
                    )
                    tag = f"{what} fomo_step(all_scores={all_scores})"
                    results = [
                        step.weights,
                        step.scores,
                        step.distances,
                        step.rejected,
                        step.skipped,
                        *leaves(step.params),
                    ]
                    checker.expect(all(r.device == device for r in results), f"{tag}: a result left {device}")
                    checker.close(
                        as_np(torch, step.distances), np.asarray(ref.distances, dtype=float), rtol, f"{tag} distances"
                    )
                    checker.close(
                        as_np(torch, step.scores), np.asarray(ref.scores, dtype=float), srtol, f"{tag} scores"
                    )
                    checker.close(
                        as_np(torch, step.weights), np.asarray(ref.weights, dtype=float), wrtol, f"{tag} weights"
                    )
                    checker.expect(
                        np.array_equal(as_np(torch, step.rejected), np.asarray(ref.rejected)), f"{tag} rejected"
                    )
                    checker.expect(
                        np.array_equal(as_np(torch, step.skipped), np.asarray(ref.skipped)), f"{tag} skipped"
                    )
                    check_update(torch, checker, step.params, local, cands, step.weights, dtype, tag)
                ref = oracle.fomo_step(host(torch, local), host(torch, cands), 1.0, losses, norm=norm, eps=1e-5)
                checker.expect(
                    d.device == device and s.scores.device == device and w.device == device,
                    f"{what}: distances/scores/weights left {device}",
                )
                checker.close(
                    as_np(torch, d), np.asarray(ref.distances, dtype=float), rtol, f"{what} candidate_distances"
                )
                checker.close(
                    as_np(torch, s.scores), np.asarray(ref.scores, dtype=float), srtol, f"{what} first_order_scores"
                )
                checker.expect(np.array_equal(as_np(torch, w), as_np(torch, step.weights)), f"{what} compute_weights")
                upd = fc.apply_update(local, cands, w)
                check_update(torch, checker, upd, local, cands, w, dtype, f"{what} apply_update")
            check_nan_cases(torch, fc, checker, device, dtype, rng)


def check_nan_cases(torch, fc, checker, device, dtype, rng):
    what = f"{device} {str(dtype)[6:]} NaN cases"
    x = torch.from_numpy(rng.standard_normal(5000)).to(dtype).to(device)
    c = (x.double() + 0.1 * torch.from_numpy(rng.standard_normal((4, 5000))).to(device)).to(dtype)
    c[2, 17] = float("nan")
    res = fc.fomo_step(x, c, 1.0, [0.5, float("nan"), 0.4, float("inf")])
    checker.expect(as_np(torch, res.rejected).tolist() == [False, True, True, True], f"{what}: rejected")
    checker.expect(as_np(torch, res.weights).tolist() == [1.0, 0.0, 0.0, 0.0], f"{what}: weights")
    checker.expect(bool(torch.isfinite(res.params.double()).all()), f"{what}: a poisoned value reached the model")
    res = fc.fomo_step(x, c, float("nan"), [0.5] * 4)
    checker.expect(
        torch.equal(res.params, x) and not as_np(torch, res.weights).any(), f"{what}: NaN local loss moved the model"
    )
    res = fc.fomo_step(x, c, 1.0, [2.0, 3.0, 1.0, 5.0])
    checker.expect(torch.equal(res.params, x), f"{what}: nobody improves but the model changed")


def check_at_scale(torch, fc, device, checker):
    """The fused step at ResNet-18 size (hundreds of pieces per layer list) against the CPU kernels,
    which do the same element arithmetic: only the float64 summation order differs."""
    local, cands, _ = resnet_problem(torch, device, torch.float32, m=10, seed=7)
    losses = [0.5 + 0.04 * i for i in range(10)]
    gpu = fc.fomo_step(local, cands, 1.0, losses)
    cpu = fc.fomo_step(host(torch, local), host(torch, cands), 1.0, losses)
    n = sum(t.numel() for t in local)
    # the float64 parts of the bounds (the float32 difference rounding is the same on both sides)
    checker.close(
        as_np(torch, gpu.distances),
        as_np(torch, cpu.distances),
        distance_rtol(n, "float64"),
        f"{device} resnet18 distances vs CPU",
    )
    checker.close(
        as_np(torch, gpu.weights),
        as_np(torch, cpu.weights),
        weight_rtol(n, 10, "float64"),
        f"{device} resnet18 weights vs CPU",
    )
    check_update(
        torch, checker, list(gpu.params), local, cands, gpu.weights, torch.float32, f"{device} resnet18 update"
    )


def check_dense(torch, fc, oracle, device, rng, checker):
    """evaluate_candidates on the device against the oracle on float64 host copies of the same
    (rounded) values: float64 differs in the summation order only, the others compute in float32."""
    specs = (
        fc.DenseSpec((20, 16, 12, 5), ("tanh", "relu")),
        fc.DenseSpec((20, 9, 1), "logistic", "in_out", "logistic"),
        fc.DenseSpec((20, 7, 3), "identity", "out_in", "squared_error"),
    )
    for spec in specs:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            what = f"{device} {str(dtype)[6:]} evaluate_candidates {spec.output}"
            cands = torch.from_numpy(rng.standard_normal((5, spec.num_params)) * 0.5).to(dtype).to(device)
            X = torch.from_numpy(rng.standard_normal((300, spec.num_inputs))).to(dtype).to(device)
            if spec.output == "squared_error":
                y = torch.from_numpy(rng.standard_normal((300, spec.num_outputs))).to(device)
            else:
                classes = 2 if spec.output == "logistic" else spec.num_outputs
                y = torch.from_numpy(rng.integers(0, classes, 300)).to(device)
            ev = fc.evaluate_candidates(spec, cands, X, y)
            on_device = ev.loss.device == device and ev.accuracy.device == device
            checker.expect(on_device, f"{what}: a result left {device}")
            host_cands, host_X = host(torch, cands).double(), host(torch, X).double()
            want = oracle.evaluate_candidates(spec, host_cands, host_X, host(torch, y))
            loss = want[0] if isinstance(want, tuple) else as_np(torch, want.loss)  # reference: a tuple
            checker.close(as_np(torch, ev.loss), loss, 1e-10 if dtype == torch.float64 else 1e-4, f"{what} loss")


# ---- speed --------------------------------------------------------------------------------------


def resnet_problem(torch, device, dtype, m, seed):
    from bench_kernels import resnet18_shapes

    g = torch.Generator(device=device).manual_seed(seed)
    shapes = resnet18_shapes()
    local = [torch.randn(s, generator=g, device=device).to(dtype) for s in shapes]
    cands = [
        [(t.float() + 0.01 * torch.randn(s, generator=g, device=device)).to(dtype) for t, s in zip(local, shapes)]
        for _ in range(m)
    ]
    return local, cands, sum(math.prod(s) for s in shapes)


def gpu_ms(torch, fn, repeats=20, warmup=3) -> float:
    """Median of per-call times measured with CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def torch_flat_step(torch, flat_x, flat_c, losses: list):
    """The same step in plain torch on flat buffers (local loss 1.0), the baseline of the timing."""
    diff = flat_c - flat_x
    d = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float32)
    s = torch.clamp((1.0 - torch.tensor(losses, device=flat_x.device)) / d, min=0)
    w = s / s.sum()
    return flat_x + (w.to(flat_x.dtype)[:, None] * diff).sum(0)


def time_device(torch, fc, device) -> dict:
    runs = []
    with torch.cuda.device(device):
        # device-to-device copy bandwidth over a buffer far larger than L2: read + write bytes
        src = torch.empty(256 << 20, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        copy_gbs = 2 * src.numel() / (gpu_ms(torch, functools.partial(dst.copy_, src)) * 1e6)
        del src, dst
        for dtype, label in ((torch.float32, "float32"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
            m = 10
            local, cands, p = resnet_problem(torch, device, dtype, m, seed=1)
            losses = [0.5] * m  # all improving: M_d = M+ = M
            moved = (m + m + 3) * p * local[0].element_size()
            out = [torch.empty_like(t) for t in local]
            ms = gpu_ms(torch, functools.partial(fc.fomo_step, local, cands, 1.0, losses, all_scores=False, out=out))
            flat_x = torch.cat([t.reshape(-1) for t in local])
            flat_c = torch.stack([torch.cat([t.reshape(-1) for t in c]) for c in cands])
            del cands
            torch_ms = gpu_ms(torch, functools.partial(torch_flat_step, torch, flat_x, flat_c, losses))
            for what, t in ((f"fomo_core fomo_step {label} (layers)", ms), (f"torch flat {label}", torch_ms)):
                gbs = moved / (t * 1e6)
                runs.append(
                    {
                        "what": what,
                        "ms": t,
                        "gb_per_s": gbs,
                        "of_copy": gbs / copy_gbs,
                        "speedup_vs_torch": torch_ms / t,
                        "P": p,
                        "M": m,
                        "bytes_moved": moved,
                    }
                )
            del local, out, flat_x, flat_c
            torch.cuda.empty_cache()
    return {"copy_gb_per_s": copy_gbs, "runs": runs}


if __name__ == "__main__":
    sys.exit(main())
