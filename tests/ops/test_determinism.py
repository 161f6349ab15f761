"""Determinism: bitwise the same results whatever the thread count (in process and through
OMP_NUM_THREADS in a fresh process), NumPy and torch inputs giving the same bits, and the two CPU
builds (base and avx2) agreeing within the tolerance table (they may differ by FMA contraction).

The models are large enough for the kernels to split them into many 16384-element chunks and to
run them in parallel (OpenMP only starts above build_info()["parallel_threshold"] element-candidate
pairs of work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from strategies import BLOCK_VIEWS, Case, bits, cases, entries, place_leaf
from tolerances import distance_rtol, update_bound, weight_rtol

import fomo_core as fc

CHUNK = fc._C.CHUNK_ELEMENTS
PARALLEL_THRESHOLD = fc.build_info()["parallel_threshold"]


def big_models(backend: str):
    """A flat model of 400,000 float32 with 6 candidates (a block), and a layer dict of 4 dtypes
    with strided and transposed views, 4 candidates; losses with improving and worse candidates."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(400_000)
    block = (x + rng.standard_normal((6, 400_000)) * np.arange(1, 7)[:, None] * 0.01).astype(np.float32)
    flat_local = x.astype(np.float32)
    specs = [
        ((1200, 300), "float16", "transposed"),
        ((150_001,), "float64", "strided"),
        ((200_000,), "float32", "offset"),
        ((3, 7), "bfloat16", "contiguous"),
    ]
    if backend == "numpy":
        specs = [s for s in specs if s[1] != "bfloat16"]
    layer_values = [rng.standard_normal(shape) for shape, _, _ in specs]

    def layers(shift):
        return {
            f"{dtype}": place_leaf(v + shift[i], dtype, backend, view).view
            for i, ((shape, dtype, view), v) in enumerate(zip(specs, layer_values))
        }

    layer_local = layers([0.0] * len(specs))
    layer_cands = [layers([rng.standard_normal(v.shape) * 0.05 * (n + 1) for v in layer_values]) for n in range(4)]
    if backend == "torch":
        flat_local, block = torch.from_numpy(flat_local), torch.from_numpy(block)
    return [(flat_local, block, [1.5, 2.5, 1.0, 1.9, 3.0, 0.5]), (layer_local, layer_cands, [1.2, 2.2, 0.9, 2.0])]


def run_all(local, cands, losses) -> list:
    """Every op's outputs, flattened to arrays (bits compared by the tests)."""
    step = fc.fomo_step(local, cands, 2.0, losses)
    lean = fc.fomo_step(local, cands, 2.0, losses, norm="l1", eps=1e-5, all_scores=False)
    scores = fc.first_order_scores(local, cands, 2.0, losses, norm="l1", eps=1e-5)
    weights = np.linspace(-0.5, 1.0, len(losses))
    updated = fc.apply_update(local, cands, weights)
    out = []
    for params in (step.params, lean.params, updated):
        out += list(params.values()) if isinstance(params, dict) else [params]
    out += [
        step.weights,
        step.scores,
        step.distances,
        lean.weights,
        scores.scores,
        scores.distances,
        fc.candidate_distances(local, cands, norm="l1"),
    ]
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_thread_count_does_not_change_any_bit(backend, restore_threads):
    for local, cands, losses in big_models(backend):
        total = sum(int(np.prod(a.shape)) for a in (local.values() if isinstance(local, dict) else [local]))
        assert total > 4 * CHUNK and total * len(losses) > PARALLEL_THRESHOLD
        results = {}
        for threads in (1, 2, 1):
            fc.set_num_threads(threads)
            assert fc.get_num_threads() == threads
            results.setdefault(threads, []).append([bits(a) for a in run_all(local, cands, losses)])
        for a, b, c in zip(results[1][0], results[2][0], results[1][1]):
            assert np.array_equal(a, b) and np.array_equal(a, c)


def mirror_to_torch(case: Case):
    """The case's NumPy inputs as torch tensors with the very same layouts (own memory)."""
    views = {id(p.view): p.select(torch.from_numpy(p.base.copy())) for p in case.placed}

    def convert(obj):
        if isinstance(obj, np.ndarray):
            return views[id(obj)] if id(obj) in views else torch.from_numpy(obj.copy())
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(convert(v) for v in obj)
        return obj

    return convert(case.local), convert(case.candidates)


@settings(max_examples=150)
@given(
    case=cases(
        backends=("numpy",),
        dtypes=("float32", "float64", "float16"),
        leaf_views=("contiguous", "offset", "strided", "transposed"),
        block_views=tuple(v for v in BLOCK_VIEWS if v != "reversed"),
    )
)
def test_numpy_and_torch_inputs_agree_bitwise(case: Case):
    t_local, t_cands = mirror_to_torch(case)
    numpy_results = [bits(v) for v in run_case(case.local, case.candidates, case)]
    torch_results = [bits(v) for v in run_case(t_local, t_cands, case)]
    assert len(numpy_results) == len(torch_results)
    for x, y in zip(numpy_results, torch_results):
        assert np.array_equal(x, y)


def run_case(local, cands, case: Case) -> list:
    step = fc.fomo_step(
        local, cands, case.local_loss, case.losses, norm=case.norm, eps=case.eps, all_scores=case.all_scores
    )
    updated = fc.apply_update(local, cands, case.weights)
    out = [step.weights, step.scores, step.distances, step.rejected, step.skipped]
    for params in (step.params, updated):
        out += [e for e, f in zip(entries(case.layout, params), case.layout.floating) if f]
    return out


# ---- fresh processes: OMP_NUM_THREADS, and the base build against avx2 ---------------------------

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import fomo_core as fc

    rng = np.random.default_rng(21)
    x = rng.standard_normal(250_000)
    cands = x + rng.standard_normal((5, 250_000)) * np.array([0.01, 0.02, 0.5, 0.03, 0.04])[:, None]
    layer_x = {"a": rng.standard_normal((400, 150)), "b": rng.standard_normal(40_001), "c": rng.standard_normal(9)}
    layer_c = [{k: v + 0.05 * (n + 1) * rng.standard_normal(v.shape) for k, v in layer_x.items()} for n in range(4)]
    dtypes = {"a": np.float16, "b": np.float64, "c": np.float32}
    models = {
        "flat": (x.astype(np.float32), cands.astype(np.float32), [1.5, 1.7, 3.0, 1.0, 2.5]),
        "layers": ({k: v.astype(dtypes[k]).T if v.ndim == 2 else v.astype(dtypes[k])[::2] for k, v in layer_x.items()},
                   [{k: v.astype(dtypes[k]).T if v.ndim == 2 else v.astype(dtypes[k])[::2] for k, v in c.items()}
                    for c in layer_c],
                   [1.1, 2.5, 1.4, 1.9]),
    }
    saved = {}
    for name, (local, cands, losses) in models.items():
        for norm in ("l2", "l1"):
            res = fc.fomo_step(local, cands, 2.0, losses, norm=norm, eps=1e-5)
            for field in ("weights", "scores", "distances"):
                saved[f"{name}/{norm}/{field}"] = getattr(res, field)
            leaves = res.params.items() if isinstance(res.params, dict) else [("", res.params)]
            local_leaves = local.items() if isinstance(local, dict) else [("", local)]
            cand_leaves = [c.items() if isinstance(c, dict) else [("", c)] for c in cands]
            for (key, leaf), (_, x_leaf), *c_leaves in zip(leaves, local_leaves, *cand_leaves):
                saved[f"{name}/{norm}/params{key}"] = np.asarray(leaf, dtype=np.float64)
                x64 = np.asarray(x_leaf, dtype=np.float64)
                value, magnitude = x64.copy(), np.abs(x64)
                for w, (_, c_leaf) in zip(res.weights, c_leaves):
                    d = np.asarray(c_leaf, dtype=np.float64) - x64
                    value += w * d
                    magnitude += abs(w) * np.abs(d)
                saved[f"{name}/{norm}/value{key}"] = value
                saved[f"{name}/{norm}/magnitude{key}"] = magnitude
                saved[f"{name}/{norm}/dtype{key}"] = np.array(str(np.asarray(x_leaf).dtype))
    np.savez(sys.argv[1], **saved)
    def leaves(model):
        return model.values() if isinstance(model, dict) else [model]

    print(json.dumps({"threads": fc.get_num_threads(), "simd": fc.build_info()["simd"],
                      "elements": {k: int(sum(np.size(v) for v in leaves(m[0]))) for k, m in models.items()}}))
    """
)


def run_fresh(tmp_path: Path, name: str, **env_changes) -> tuple:
    """Runs SCRIPT in a fresh interpreter (outside the source tree, so the installed package is
    imported) with the given environment; returns (its report, its saved results)."""
    script = tmp_path / "determinism_script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_NUM_THREADS", "FOMO_CPU_ISA")}
    env.update(env_changes)
    target = tmp_path / f"{name}.npz"
    done = subprocess.run(
        [sys.executable, str(script), str(target)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with np.load(target) as data:
        return json.loads(done.stdout), {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh")
    return {
        "one": run_fresh(tmp, "one", OMP_NUM_THREADS="1"),
        "two": run_fresh(tmp, "two", OMP_NUM_THREADS="2"),
        "base": run_fresh(tmp, "base", OMP_NUM_THREADS="2", FOMO_CPU_ISA="base"),
    }


def test_omp_num_threads_does_not_change_any_bit(fresh_runs):
    (report1, one), (report2, two) = fresh_runs["one"], fresh_runs["two"]
    assert report1["threads"] == 1 and report2["threads"] == 2
    assert min(report1["elements"].values()) > 4 * CHUNK
    assert one.keys() == two.keys()
    for key in one:
        if "params" in key or any(f in key for f in ("weights", "scores", "distances")):
            assert np.array_equal(bits(one[key]), bits(two[key])), key


def test_base_and_avx2_builds_agree_within_tolerance(fresh_runs):
    (report, default), (base_report, base) = fresh_runs["two"], fresh_runs["base"]
    assert base_report["simd"] == "base"
    if report["simd"] == "base":
        pytest.skip("this machine runs the base kernels by default (no AVX2/FMA/F16C): nothing to compare")
    for name, n in report["elements"].items():
        m = len(default[f"{name}/l2/weights"])
        for norm in ("l2", "l1"):
            prefix = f"{name}/{norm}/"
            # each build is within the table's bound of the exact value, so they are within twice it
            # 16/32-bit leaves in both models: float32 differences are the coarsest
            for field, rtol in (("distances", distance_rtol(n, "float32")), ("weights", weight_rtol(n, m, "float32"))):
                a, b = default[prefix + field], base[prefix + field]
                assert np.all(np.abs(a - b) <= 2 * rtol * np.abs(a)), (prefix + field, a, b)
            assert np.any(default[prefix + "weights"] > 0)
            for key in default:
                if key.startswith(prefix + "params"):
                    leaf = key[len(prefix + "params") :]
                    dtype = str(default[prefix + "dtype" + leaf])
                    bound = update_bound(
                        dtype,
                        m,
                        default[prefix + "value" + leaf],
                        default[prefix + "magnitude" + leaf],
                        weight_rtol(n, m, "float32"),
                    )
                    diff = np.abs(default[key] - base[key])
                    assert np.all(diff <= 2 * bound), (key, np.max(diff / (2 * bound)))
