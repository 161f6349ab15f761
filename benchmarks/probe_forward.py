"""The cost of ONE model's forward over the round benchmark's validation set, by route.

What a client round's evaluation costs per model, against what it cannot beat (plain torch
inference on the same rows) and against PFLlib's evaluation of one model (recalculate_loss:
train mode, autograd on, batches of 10; benchmarks/pfllib_round.py). Variants:

- fomo-core: ``evaluate_module`` of one candidate (a module, as the server hands them over; and
  a flat [P] vector, as the client's own model and rebalanced candidates are read), and of a
  module with its input left in NCHW (the loop route before it took channels_last);
- torch: ``model.eval(); with torch.inference_mode(): cross_entropy(model(X), y)`` on the same
  rows, also with channels_last, and with BatchNorm folded into the preceding convolution (the
  folding itself, made per model, timed with it);
- PFLlib: its recalculate_loss over batches of 10; and the pfllib preset's evaluation (train
  mode, batches of 10, no autograd) against plain torch's train-mode forward without autograd.

And the evaluation batch size: the rows of a larger validation set (ResNet-18: 256, LeNet: 1,024)
through one model whole vs in chunks of 16 to 256 rows (CPU time per row).

One torch thread, process CPU time, interleaved repeats, median (and min) ms.

    python benchmarks/probe_forward.py [--repeats N] [--rows N] [--write]   # --write: results/forward.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_round import BATCH, SUBJECTS, data, loader  # noqa: E402
from common import interleaved_samples, machine, markdown_table, spread, write_results  # noqa: E402
from pfllib_round import PFLlibStyleClient  # noqa: E402

import fomo_core  # noqa: E402
from fomo_core.adapters import torch_evaluate  # noqa: E402
from fomo_core.adapters.torch import evaluate_batches, evaluate_module  # noqa: E402

CLOCK = time.process_time


def folded(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with every BatchNorm2d that directly follows a Conv2d inside a
    Sequential or a block (attribute pairs conv*/bn*, and Sequential(conv, bn)) folded into it:
    w' = w * g / sqrt(v + eps) per output channel, b' = (b - m) * g / sqrt(v + eps) + beta."""
    out = copy.deepcopy(model)

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
        )
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        return fused

    for module in list(out.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], nn.BatchNorm2d):
                    module._modules[a] = fold(module._modules[a], module._modules[b])
                    module._modules[b] = nn.Identity()
        for k in (1, 2):
            conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{k}", fold(conv, bn))
                setattr(module, f"bn{k}", nn.Identity())
    return out.eval()


def plain(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(F.cross_entropy(model(X), y, reduction="sum"))


def no_grad_train(model: nn.Module, batches: list, channels_last: bool) -> float:
    """Train-mode losses over the batches without autograd (running statistics move: timing only)."""
    total = 0.0
    with torch.inference_mode():
        for x, t in batches:
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            total += F.cross_entropy(model(x), t).item()
    return total / len(batches)


def per_forward(subject: str, repeats: int) -> dict:
    build, _, (n_train, n_val), _ = SUBJECTS[subject]
    torch.manual_seed(0)
    model = build()
    _, (X, y) = data(subject, n_train, n_val)
    # running statistics away from 0/1, as after training (else folding is near the identity)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    server_model = copy.deepcopy(model)
    nchw = copy.deepcopy(model)  # a template the loop hands its input as given (not channels_last)
    torch_evaluate._TAKES_CHANNELS_LAST[nchw] = False
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    X_last = X.contiguous(memory_format=torch.channels_last)
    train_copy = copy.deepcopy(model).train()
    train_last = copy.deepcopy(train_copy).to(memory_format=torch.channels_last)
    batches = list(loader((X, y), BATCH, drop_last=False))
    pfllib = PFLlibStyleClient(copy.deepcopy(train_copy), [], batches, num_clients=1)  # its val batches
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    methods = {
        "torch eval": lambda: plain(model, X, y),
        "fomo-core, a module": lambda: evaluate_module(model, [server_model], (X, y)).loss,
        "fomo-core, a flat vector": lambda: evaluate_module(model, [flat], (X, y)).loss,
        "fomo-core, a module, NCHW input": lambda: evaluate_module(nchw, [server_model], (X, y)).loss,
        "torch eval, channels_last": lambda: plain(last, X_last, y),
        "PFLlib recalculate_loss": lambda: pfllib.recalculate_loss(train_copy),
    }
    if has_bn:  # the pfllib preset's evaluation: train mode (batch statistics), batches of 10, no autograd
        methods["fomo-core, train mode, batches of 10"] = lambda: (
            evaluate_batches(model, [server_model], (X, y), batch_size=BATCH, training=True).loss
        )
        methods["torch train mode, no autograd, batches of 10"] = lambda: no_grad_train(train_copy, batches, False)
        methods["same, channels_last"] = lambda: no_grad_train(train_last, batches, True)
        methods["torch eval, BatchNorm folded (fold timed)"] = lambda: plain(folded(model), X, y)
        fold_only = folded(model)
        methods["torch eval, BatchNorm folded (fold untimed)"] = lambda: plain(fold_only, X, y)
    samples = interleaved_samples(methods, repeats, warmup=2, clock=CLOCK)
    reference = plain(model, X, y) / len(y)
    losses = {"torch eval": reference}
    if has_bn:
        losses["BatchNorm folded"] = plain(folded(model), X, y) / len(y)
    losses["fomo-core, a module"] = float(evaluate_module(model, [server_model], (X, y)).loss[0])
    base = spread(samples["torch eval"])["median"]
    return {
        "subject": subject,
        "rows": len(y),
        "ms": {name: spread(s) for name, s in samples.items()},
        "vs torch eval": {name: spread(s)["median"] / base for name, s in samples.items()},
        "losses": losses,
    }


def chunk_sweep(subject: str, rows: int, repeats: int, chunks=(None, 16, 32, 64, 128, 256)) -> dict:
    """One model of ``subject``, eval mode: CPU ms per row of evaluate_module over ``rows`` rows with
    each batch_size (None: all rows in one forward), and with its default, and the loss each gives."""
    torch.manual_seed(0)
    model = SUBJECTS[subject][0]().eval()
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(rows, 3, 32, 32, generator=g), torch.randint(0, 10, (rows,), generator=g)
    # "all": every row in one forward; "default": evaluate_module's own (batch_size None)
    sizes = {"batch default": None, **{f"batch {c or 'all'}": c or rows for c in chunks}}
    methods = {
        name: (lambda c=c: evaluate_module(model, [model], (X, y), batch_size=c).loss) for name, c in sizes.items()
    }
    samples = interleaved_samples(methods, repeats, warmup=1, clock=CLOCK)
    losses = {name: float(evaluate_module(model, [model], (X, y), batch_size=c).loss[0]) for name, c in sizes.items()}
    return {
        "subject": subject,
        "rows": rows,
        "ms per row": {name: spread([v / rows for v in s]) for name, s in samples.items()},
        "losses": losses,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--rows", type=int, default=256, help="rows of the batch-size sweep (ResNet-18; LeNet 4x)")
    parser.add_argument("--subjects", nargs="*", default=["LeNet CNN", "ResNet-18"])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/forward.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fomo_core.set_num_threads(1)
    out = {
        "machine": machine(),
        "threads": 1,
        "clock": "process CPU time",
        "per_forward": [per_forward(s, args.repeats) for s in args.subjects],
    }
    if not args.no_sweep:
        reps = max(3, args.repeats * 2 // 3)
        out["chunk_sweep"] = [chunk_sweep("ResNet-18", args.rows, reps), chunk_sweep("LeNet CNN", 4 * args.rows, reps)]
    out["load_average_after"] = list(os.getloadavg())
    text = table(out)
    print(text)
    if args.write:
        write_results("forward", out, text)
    return 0


def table(out: dict) -> str:
    """Markdown: per subject the CPU ms median [min] of each variant and its ratio to plain torch;
    the sweep's CPU ms per row and loss per batch size."""
    rows = []
    for r in out["per_forward"]:
        for name, t in r["ms"].items():
            rows.append(
                [
                    r["subject"],
                    r["rows"],
                    name,
                    f"{t['median']:.1f} [{t['min']:.1f}]",
                    f"{r['vs torch eval'][name]:.2f}x",
                ]
            )
    text = markdown_table(["subject", "rows", "one model's evaluation", "CPU ms median [min]", "vs torch eval"], rows)
    for sweep in out.get("chunk_sweep", []):
        rows = [
            [name, f"{t['median']:.3f} [{t['min']:.3f}]", f"{sweep['losses'][name]:.9f}"]
            for name, t in sweep["ms per row"].items()
        ]
        text += f"\n\n{sweep['subject']}, one model over {sweep['rows']} rows, evaluate_module by batch size:\n\n"
        text += markdown_table(["batch_size", "CPU ms per row median [min]", "loss"], rows)
    before, after = out["machine"].get("load_average", [float("nan")])[0], out["load_average_after"][0]
    text += f"\n\n1 torch thread, process CPU time; load average {before:.1f} before, {after:.1f} after."
    return text


if __name__ == "__main__":
    raise SystemExit(main())
