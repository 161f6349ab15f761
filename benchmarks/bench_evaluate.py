"""Batched candidate evaluation (issue 4): the fused dense kernel and the PyTorch adapter against
the per-candidate loops that FedFomo implementations run.

M = 10 candidates; the digits MLP 64-200-200-10 (ReLU) and a LeNet-style CNN on 3x32x32 inputs;
validation batches of B = 100 and 500. Methods:

- fused f32 / f64: fomo_core.evaluate_candidates on the [M, P] flat buffers (float32 as torch's
  models, float64 as scikit-learn's);
- torch loop: one model, load_state_dict + eval + forward + cross_entropy per candidate (no_grad);
- sklearn loop: log_loss(y, clf.predict_proba(X)) per fitted MLPClassifier (and predict_proba
  alone, the stricter baseline);
- adapter vmap / loop / auto: fomo_core.adapters.torch_evaluate.evaluate_candidates with flat [M, P]
  candidates or with state_dicts ("sd").

Every method evaluates the same ten networks (the torch MLPs carry the scikit-learn weights) and
the script checks that their losses agree before timing. Timings are medians over interleaved
rounds (each round runs every method once), so load from other processes hits all methods alike;
ratios are against the baselines of the same run.

    python benchmarks/bench_evaluate.py [--repeats 25] [--name evaluate]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

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
from common import interleaved_ms, machine, markdown_table, write_results  # noqa: E402

import fomo_core  # noqa: E402
from fomo_core.adapters.torch_evaluate import evaluate_candidates as adapter_evaluate  # noqa: E402
from fomo_core.dense import DenseSpec, evaluate_candidates, sklearn_labels, sklearn_params  # noqa: E402

M = 10
SIZES = (100, 500)


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


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
                out.append(nn.functional.cross_entropy(net(X), y).item())
        return np.array(out)

    return run


def as_numpy(v):
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


def mlp_case(B: int, classifiers, models, X_all, y_all, repeats: int) -> dict:
    X64, y = X_all[:B], y_all[:B]
    X32 = torch.tensor(X64, dtype=torch.float32)
    yt = torch.tensor(y)
    labels = sklearn_labels(classifiers[0], y)
    spec64 = DenseSpec.from_sklearn(classifiers[0])
    flat64 = np.stack([sklearn_params(c) for c in classifiers])
    spec32 = DenseSpec.from_module(models[0])
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
    for name, fn in methods.items():
        if name == "sklearn predict_proba":
            continue
        got = as_numpy(fn())
        assert np.allclose(got, reference, rtol=1e-4), (name, got, reference)  # float32 against float64
    assert adapter_evaluate(models[0], flat32, (X32, yt)).method == "fused"
    return interleaved_ms(methods, repeats)


def cnn_case(B: int, repeats: int) -> dict:
    torch.manual_seed(0)
    models = [lenet() for _ in range(M)]
    X = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    state_dicts = [m.state_dict() for m in models]
    methods = {
        "torch loop": make_torch_loop(models[0], state_dicts, X, y),
        "adapter auto": lambda: adapter_evaluate(models[0], flat, (X, y)).loss,
        "adapter vmap": lambda: adapter_evaluate(models[0], flat, (X, y), method="vmap").loss,
        "adapter loop": lambda: adapter_evaluate(models[0], flat, (X, y), method="loop").loss,
        "adapter vmap sd": lambda: adapter_evaluate(models[0], state_dicts, (X, y), method="vmap").loss,
        "adapter loop sd": lambda: adapter_evaluate(models[0], state_dicts, (X, y), method="loop").loss,
    }
    reference = methods["torch loop"]()
    for name, fn in methods.items():
        assert np.allclose(as_numpy(fn()), reference, rtol=1e-4), name
    return interleaved_ms(methods, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds of the MLP cases (median)")
    parser.add_argument("--cnn-repeats", type=int, default=7, help="interleaved timing rounds of the CNN cases")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (torch and fomo_core alike)")
    parser.add_argument("--name", default="evaluate", help="results/<name>.json and .md")
    args = parser.parse_args()

    load_before = os.getloadavg()
    classifiers, models, X_val, y_val = digits_mlps()
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        fomo_core.set_num_threads(threads)
        with threadpool_limits(threads):  # NumPy's BLAS (scikit-learn) with the same thread count
            for B in SIZES:
                cases = (
                    ("digits MLP 64-200-200-10", mlp_case(B, classifiers, models, X_val, y_val, args.repeats)),
                    ("LeNet CNN 3x32x32", cnn_case(B, args.cnn_repeats)),
                )
                for model, times in cases:
                    for method, (median, best) in times.items():
                        results.append({"threads": threads, "model": model, "B": B, "method": method,
                                        "median_ms": median, "min_ms": best})

    def base(r, method):
        hits = [
            x["median_ms"]
            for x in results
            if (x["threads"], x["model"], x["B"], x["method"]) == (r["threads"], r["model"], r["B"], method)
        ]
        return hits[0] if hits else None

    rows = []
    for r in results:
        torch_ms, sk_ms = base(r, "torch loop"), base(r, "sklearn loop")
        r["speedup_vs_torch_loop"] = torch_ms / r["median_ms"] if torch_ms else None
        r["speedup_vs_sklearn_loop"] = sk_ms / r["median_ms"] if sk_ms else None
        rows.append([r["threads"], r["model"], r["B"], r["method"], r["median_ms"], r["min_ms"],
                     r["speedup_vs_torch_loop"], r["speedup_vs_sklearn_loop"]])
    table = markdown_table(
        ["threads", "model", "B", "method", "median ms", "min ms", "x vs torch loop", "x vs sklearn loop"], rows
    )
    info = fomo_core.build_info()
    header = (
        f"# Batched candidate evaluation (M = {M})\n\n"
        f"Medians of {args.repeats} (MLP) and {args.cnn_repeats} (CNN) interleaved rounds; 'x vs' = baseline median / "
        "method median (higher is faster); torch and fomo_core run with the same thread count.\n"
        f"fomo_core {info['version']} ({info['simd']}), torch {torch.__version__}, {machine().get('cpu', '?')}, "
        f"{os.cpu_count()} cores shared with other work; load average before: {load_before[0]:.1f}, "
        f"after: {os.getloadavg()[0]:.1f}\n\n"
    )
    payload = {
        "M": M,
        "repeats": {"mlp": args.repeats, "cnn": args.cnn_repeats},
        "machine": machine(),
        "build_info": info,
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    json_path, md_path = write_results(args.name, payload, header + table)
    print(header + table)
    print(f"\nwritten: {json_path} {md_path}")


if __name__ == "__main__":
    main()
