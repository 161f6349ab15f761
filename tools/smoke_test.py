"""Smoke test of an installed fomo-core wheel in an environment that holds only numpy (run by
tools/build_wheel.sh): the compiled kernels load and agree with the formulas written in NumPy,
and the wheel carries its typing marker and licence."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import sys

import numpy as np

import fomo_core as fc
from fomo_core._optional import MissingExtraError


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"smoke test failed: {what}")


def step_by_formula(local, cands, l0, losses):
    distances = np.sqrt(((cands.astype(np.float64) - local) ** 2).sum(axis=1))
    scores = (l0 - losses) / distances
    positive = np.maximum(scores, 0.0)
    weights = positive / positive.sum() if positive.sum() > 0 else positive
    return weights, local + (weights[:, None] * (cands - local)).sum(axis=0)


def main() -> None:
    check(importlib.util.find_spec("torch") is None, "this environment should hold numpy only, but torch is there")
    info = fc.build_info()
    print("fomo_core", fc.__version__, "from", fc.__file__)
    print("build:", info)
    check(info["openmp"], "built without OpenMP")

    rng = np.random.default_rng(0)
    local = rng.standard_normal(10_000)
    cands = local + 0.1 * rng.standard_normal((4, 10_000))
    losses = np.array([0.5, 1.5, 0.7, 0.9])
    result = fc.fomo_step(local, cands, 1.0, losses)
    weights, params = step_by_formula(local, cands, 1.0, losses)
    check(np.allclose(result.weights, weights, rtol=1e-12, atol=0), f"weights {result.weights} != {weights}")
    check(np.allclose(result.params, params, rtol=1e-12, atol=1e-12), "updated parameters differ from the formula")
    for threads in (1, 2):
        fc.set_num_threads(threads)
        again = fc.fomo_step(local, cands, 1.0, losses)
        check(np.array_equal(again.params, result.params), f"results differ with {threads} thread(s)")

    layers = [local[:6000].reshape(60, 100), local[6000:]]
    per_layer = fc.fomo_step(layers, [[c[:6000].reshape(60, 100), c[6000:]] for c in cands], 1.0, losses)
    # the same model as two layers: the distances are summed in another order, so equal to rounding
    joined = np.concatenate([a.ravel() for a in per_layer.params])
    check(np.allclose(joined, result.params, rtol=1e-12, atol=1e-12), "a layer list gives another update")

    spec = fc.DenseSpec(sizes=(8, 5, 3), activation="relu", weight_layout="in_out")
    flat = rng.standard_normal((2, spec.num_params)).astype(np.float32)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    ev = fc.evaluate_candidates(spec, flat, x, y)
    for m in range(2):
        w1, b1 = flat[m, :40].reshape(8, 5), flat[m, 40:45]
        w2, b2 = flat[m, 45:60].reshape(5, 3), flat[m, 60:63]
        z = np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        loss = (np.log(np.exp(z).sum(axis=1)) - z[np.arange(20), y]).mean()
        check(abs(ev.loss[m] - loss) < 1e-5, f"dense evaluation loss {ev.loss[m]} != {loss}")

    check(importlib.resources.files("fomo_core").joinpath("py.typed").is_file(), "py.typed missing")
    files = [str(f) for f in importlib.metadata.files("fomo-core") or []]
    check(any(f.endswith("LICENSE") for f in files), "LICENSE missing from the wheel's metadata")
    try:
        import fomo_core.adapters.torch  # noqa: F401
    except MissingExtraError as error:
        check("pip install 'fomo-core[torch]'" in str(error), f"unhelpful error without torch: {error}")
    else:
        check(False, "fomo_core.adapters.torch imported without torch")
    print("smoke test passed")


if __name__ == "__main__":
    main()
