"""Batched candidate evaluation: the fused dense kernel and the PyTorch adapter against the
per-candidate loops that FedFomo implementations run.

M = 10 candidates; the digits MLP 64-200-200-10 (ReLU), a LeNet-style CNN and a CIFAR-size
ResNet-18 (M = 5) on 3x32x32 inputs; validation batches of B = 100 and 500 (ResNet-18: 32).
Methods:

- fused f32 / f64: fomo_core.evaluate_candidates on the [M, P] flat buffers (float32 as torch's
  models, float64 as scikit-learn's);
- torch loop: one model, load_state_dict + eval + forward + cross_entropy per candidate (no_grad);
- sklearn loop: log_loss(y, clf.predict_proba(X)) per fitted MLPClassifier (and predict_proba
  alone, the stricter baseline);
- adapter vmap / loop / auto: fomo_core.adapters.torch_evaluate.evaluate_module with flat [M, P]
  candidates or with state_dicts ("sd").

CNNs, beside the adapter's routes (loop, vmap, auto, bfloat16 autocast): the ablations that
decided them, each a per-candidate functional_call loop with one change: inference_mode, inputs
in channels_last, max_pool2d by strided maxima; the adapter's loop (strided maxima and the first
layer of all candidates as one wide call); and vmap without any of those.

Every method evaluates the same networks (the torch MLPs carry the scikit-learn weights) and the
script checks that their losses agree before timing: bit for bit where stated, elsewhere within
tolerances derived from the dtype and the model's sums (benchmarks/agreement.py); a disagreement
raises. Timings are medians over interleaved rounds (each round runs every method once) of CPU
time: the calling thread's on one thread, the process's on two (torch's worker threads included),
which time given to other processes does not inflate; ratios are against the baselines of the
same run.

    python benchmarks/bench_evaluate.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn.utils import parameters_to_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agreement import autocast_rtol, loss_rtol  # noqa: E402
from common import interleaved_samples, markdown_table, save_figure, script_main, spread  # noqa: E402
from models import ResNet18, lenet  # noqa: E402

import fomo_core  # noqa: E402
from fomo_core.adapters._torch_fast import Rewrites  # noqa: E402
from fomo_core.adapters.numpy import get_flat_params, mlp_labels, mlp_spec  # noqa: E402
from fomo_core.adapters.torch import dense_spec  # noqa: E402
from fomo_core.adapters.torch_evaluate import evaluate_module as adapter_evaluate  # noqa: E402
from fomo_core.dense import evaluate_candidates  # noqa: E402

M = 10
SIZES = (100, 500)


def digits_mlps():
    """Ten fitted scikit-learn MLPs on digits and the equal torch nn.Sequential models."""
    data = load_digits()
    X, y = data.data / 16.0, data.target
    train, val = slice(0, 1297), slice(1297, None)
    classifiers = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few epochs: candidates, not finished models
        for seed in range(M):
            clf = MLPClassifier(hidden_layer_sizes=(200, 200), max_iter=3, random_state=seed)
            classifiers.append(clf.fit(X[train], y[train]))
    models = []
    for clf in classifiers:
        net = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
        with torch.no_grad():
            for layer, (w, b) in zip([net[0], net[2], net[4]], zip(clf.coefs_, clf.intercepts_)):
                layer.weight.copy_(torch.from_numpy(w.T))
                layer.bias.copy_(torch.from_numpy(b))
        models.append(net)
    return classifiers, models, X[val], y[val]


def make_torch_loop(template: nn.Module, state_dicts, X, y):
    """The per-candidate loop of existing implementations: one model, load_state_dict each time."""
    net = copy.deepcopy(template)

    def run():
        out = []
        with torch.no_grad():
            for sd in state_dicts:
                net.load_state_dict(sd)
                net.eval()
                out.append(mean_loss(net(X), y))
        return np.array(out)

    return run


def mean_loss(out: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy summed over the batch in float32, divided by B in float64: how the adapter
    combines batches, so that equal forwards give equal losses bit for bit."""
    return nn.functional.cross_entropy(out, y, reduction="sum").double().item() / len(y)


def as_numpy(v):
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


def mlp_case(B: int, classifiers, models, X_all, y_all, repeats: int, tick=None) -> dict:
    X64, y = X_all[:B], y_all[:B]
    X32 = torch.tensor(X64, dtype=torch.float32)
    yt = torch.tensor(y)
    labels = mlp_labels(classifiers[0], y)
    spec64 = mlp_spec(classifiers[0])
    flat64 = np.stack([get_flat_params(c) for c in classifiers])
    spec32 = dense_spec(models[0])
    flat32 = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    state_dicts = [m.state_dict() for m in models]
    classes = classifiers[0].classes_

    methods = {
        "fused f32": lambda: evaluate_candidates(spec32, flat32, X32, yt).loss,
        "fused f64": lambda: evaluate_candidates(spec64, flat64, X64, labels).loss,
        "torch loop": make_torch_loop(models[0], state_dicts, X32, yt),
        "sklearn loop": lambda: np.array([log_loss(y, c.predict_proba(X64), labels=classes) for c in classifiers]),
        "sklearn predict_proba": lambda: [c.predict_proba(X64) for c in classifiers],
        "adapter auto": lambda: adapter_evaluate(models[0], flat32, (X32, yt)).loss,
        "adapter vmap": lambda: adapter_evaluate(models[0], flat32, (X32, yt), method="vmap").loss,
        "adapter loop": lambda: adapter_evaluate(models[0], flat32, (X32, yt), method="loop").loss,
        "adapter vmap sd": lambda: adapter_evaluate(models[0], state_dicts, (X32, yt), method="vmap").loss,
        "adapter loop sd": lambda: adapter_evaluate(models[0], state_dicts, (X32, yt), method="loop").loss,
    }
    reference = methods["fused f64"]()
    rtol = loss_rtol(models[0], B, 10)  # float32 against float64: the float32 side's roundings
    for name, fn in methods.items():
        if name == "sklearn predict_proba":
            continue
        got = as_numpy(fn())
        if not np.allclose(got, reference, rtol=rtol, atol=0):
            raise AssertionError(f"{name}: losses {got} differ from float64's {reference} beyond rtol {rtol:.3g}")
    assert adapter_evaluate(models[0], flat32, (X32, yt)).method == "fused"
    return interleaved_samples(methods, repeats, tick=tick, clock=_clock())


def functional_loop(
    module: nn.Module, state_dicts, X, y, *, grad_mode=torch.no_grad, channels_last=False, fast_pool=False
) -> Callable:
    """An ablation: the adapter's per-candidate functional_call loop with one change at a time."""
    from torch.func import functional_call

    net = copy.deepcopy(module).eval()
    Xin = X.contiguous(memory_format=torch.channels_last) if channels_last else X

    def run():
        with grad_mode(), Rewrites() if fast_pool else contextlib.nullcontext():
            return np.array([mean_loss(functional_call(net, sd, (Xin,)), y) for sd in state_dicts])

    return run


def plain_vmap(module: nn.Module, state_dicts, X, y) -> Callable:
    """An ablation: vmap over the stacked candidates, NCHW, torch's max_pool2d, no_grad."""
    from torch.func import functional_call, vmap

    net = copy.deepcopy(module).eval()
    stacked = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    call = vmap(lambda p, x: functional_call(net, p, (x,)), in_dims=(0, None))

    def run():
        with torch.no_grad():
            out = call(stacked, X)
            return np.array([mean_loss(o, y) for o in out])

    return run


def cnn_case(build: Callable, M: int, B: int, repeats: int, tick=None, ablations: bool = True) -> dict:
    """Times the CNN methods; checks first that every method's losses agree with the torch loop."""
    torch.manual_seed(0)
    models = [build().eval() for _ in range(M)]
    X = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))
    state_dicts = [m.state_dict() for m in models]
    template = models[0]
    methods = {
        "torch loop": make_torch_loop(template, state_dicts, X, y),
        "adapter loop": lambda: adapter_evaluate(template, state_dicts, (X, y), method="loop").loss,
        "adapter vmap": lambda: adapter_evaluate(template, state_dicts, (X, y), method="vmap").loss,
        "adapter auto": lambda: adapter_evaluate(template, state_dicts, (X, y)).loss,
        "adapter loop bf16": lambda: (
            adapter_evaluate(template, state_dicts, (X, y), method="loop", autocast=torch.bfloat16).loss
        ),
        "adapter vmap bf16": lambda: (
            adapter_evaluate(template, state_dicts, (X, y), method="vmap", autocast=torch.bfloat16).loss
        ),
    }
    if ablations:
        methods.update(
            {
                "ablation: loop, no_grad": functional_loop(template, state_dicts, X, y),
                "ablation: + inference_mode": functional_loop(
                    template, state_dicts, X, y, grad_mode=torch.inference_mode
                ),
                "ablation: + channels_last": functional_loop(
                    template, state_dicts, X, y, grad_mode=torch.inference_mode, channels_last=True
                ),
                "ablation: + strided max pool": functional_loop(
                    template, state_dicts, X, y, grad_mode=torch.inference_mode, fast_pool=True
                ),
                "ablation: + shared first layer (the adapter's loop)": lambda: (
                    adapter_evaluate(template, state_dicts, (X, y), method="loop").loss
                ),
                "ablation: vmap, NCHW, torch pool": plain_vmap(template, state_dicts, X, y),
            }
        )
    reference = methods["torch loop"]()
    exact = {
        "adapter loop",
        "ablation: loop, no_grad",
        "ablation: + inference_mode",
        "ablation: + strided max pool",
        "ablation: + shared first layer (the adapter's loop)",
    }
    for name, fn in methods.items():
        got = as_numpy(fn())
        # loop routes: the same forward, bit for bit; batched kernels and channels_last: float32
        # rounding of the model's sums; bfloat16: its roundings per layer
        if name in exact:
            rtol = 0.0
        elif "bf16" in name:
            rtol = autocast_rtol(template, B, 10, torch.bfloat16)
        else:
            rtol = loss_rtol(template, B, 10)
        if not np.allclose(got, reference, rtol=rtol, atol=0):
            raise AssertionError(
                f"{name}: losses {got} differ from the torch loop's {reference} beyond rtol {rtol:.3g}"
            )
    return interleaved_samples(methods, repeats, warmup=1, tick=tick, clock=_clock())


def _clock():
    """CPU time: the calling thread's on one torch thread, the process's (workers included) on more."""
    return time.thread_time if torch.get_num_threads() == 1 else time.process_time


def cases(quick: bool) -> list:
    """(threads, model, B, M) of every table."""
    threads = (1,) if quick else (1, 2)
    out = []
    for t in threads:
        for B in (100,) if quick else SIZES:
            out += [(t, "digits MLP 64-200-200-10", B, M), (t, "LeNet CNN 3x32x32", B, M)]
        out.append((t, "ResNet-18 3x32x32", 8 if quick else 32, 3 if quick else 5))
    return out


def count_ticks(quick: bool) -> int:
    n = 0
    for _, model, B, _ in cases(quick):
        per = 10 if "MLP" in model else (12 if "LeNet" in model and not quick and B == SIZES[0] else 6)
        reps = _repeats(model, quick)
        n += per * reps
    return n


def _repeats(model: str, quick: bool) -> int:
    if "MLP" in model:
        return 5 if quick else 11
    if "LeNet" in model:
        return 3 if quick else 5
    return 2 if quick else 3


def run(quick: bool = False, tick: Optional[Callable] = None) -> dict:
    classifiers, models, X_val, y_val = digits_mlps()
    results = []
    for threads, model, B, m in cases(quick):
        torch.set_num_threads(threads)
        fomo_core.set_num_threads(threads)
        reps = _repeats(model, quick)
        with threadpool_limits(threads):  # NumPy's BLAS (scikit-learn) with the same thread count
            if "MLP" in model:
                samples = mlp_case(B, classifiers, models, X_val, y_val, reps, tick)
            elif "LeNet" in model:
                samples = cnn_case(lenet, m, B, reps, tick, ablations=not quick and B == SIZES[0])
            else:
                samples = cnn_case(ResNet18, m, B, reps, tick, ablations=False)
        base = {name: spread(t)["median"] for name, t in samples.items()}
        for method, t in samples.items():
            s = spread(t)
            results.append(
                {
                    "threads": threads,
                    "model": model,
                    "B": B,
                    "M": m,
                    "method": method,
                    **{f"{k}_ms": v for k, v in s.items() if k != "n"},
                    "repeats": s["n"],
                    "speedup_vs_torch_loop": base["torch loop"] / s["median"],
                    "speedup_vs_sklearn_loop": base["sklearn loop"] / s["median"] if "sklearn loop" in base else None,
                }
            )
    return {"name": "evaluate", "quick": quick, "results": results}


def table(payload: dict) -> str:
    rows = [
        [
            r["threads"],
            r["model"],
            r["B"],
            r["M"],
            r["method"],
            r["median_ms"],
            f"{r['q1_ms']:.3g}-{r['q3_ms']:.3g}",
            r["speedup_vs_torch_loop"],
            r["speedup_vs_sklearn_loop"],
        ]
        for r in payload["results"]
    ]
    return markdown_table(
        ["threads", "model", "B", "M", "method", "median ms", "IQR ms", "x vs torch loop", "x vs sklearn loop"], rows
    )


def plot(payload: dict, folder: Path) -> list:
    """One PNG per model: every method's speed against the torch loop (median, IQR bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in dict.fromkeys(r["model"] for r in payload["results"]):
        rows = [r for r in payload["results"] if r["model"] == model]
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.22 * len(rows)))
        labels = [f"{r['method']} (t={r['threads']}, B={r['B']})" for r in rows]
        speed = [r["speedup_vs_torch_loop"] for r in rows]
        base = {(r["threads"], r["B"]): r["median_ms"] for r in rows if r["method"] == "torch loop"}
        lo = [s - base[(r["threads"], r["B"])] / r["q3_ms"] for s, r in zip(speed, rows)]
        hi = [base[(r["threads"], r["B"])] / r["q1_ms"] - s for s, r in zip(speed, rows)]
        colours = ["#1f77b4" if "adapter" in label or "fused" in label else "#999999" for label in labels]
        ax.barh(range(len(rows)), speed, xerr=[lo, hi], color=colours)
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speed vs the per-candidate torch loop of the same run (median; bars: IQR)")
        ax.set_title(f"Candidate evaluation, {model}")
        path = folder / f"evaluate-{model.split()[0].lower()}.png"
        paths.append(save_figure(fig, path))
    return paths


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__], "evaluate"))
