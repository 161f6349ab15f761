"""The ``fomo-core`` command line.

    fomo-core demo                 # FedFomo vs FedAvg vs Local on scikit-learn's digits
    fomo-core demo --help          # every option
    fomo-core info                 # how this copy was built
    fomo-core --version            # also: python -m fomo_core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from ._optional import MissingExtraError, optional_import
from .presets import PRESETS

__all__ = ["main", "build_parser"]

_NAMES = {"fedfomo": "FedFomo", "fedavg": "FedAvg", "local": "Local"}


# --- argument types: each names what it expected and what it got --------------------------------


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _real_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not (value == value) or too_low or too_high:
            lb, hb = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"expected a number in {lb}{low}, {high}{hb}, got {text}")
        return value

    return parse


def _positive_real(text: str) -> float:
    return _real_in(0.0, float("inf"), low_open=True, high_open=True)(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo-core", description="fomo-core: fast FedFomo for personalised federated learning"
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fomo-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,info}")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="simulate FedFomo vs FedAvg vs Local training and plot the results",
        description=(
            "Simulates a personalised federation on scikit-learn's bundled digits (or a local "
            "CIFAR-10 folder): clients in latent groups, FedFomo compared with FedAvg and purely local "
            "training under the same training budget. Writes results.json, accuracy.png and affinity.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = demo.add_argument_group("federation")
    g.add_argument("--clients", type=_int_at_least(2), default=15, help="number of clients")
    g.add_argument("--groups", type=_int_at_least(1), default=5, help="latent groups (partition 'groups')")
    g.add_argument("--rounds", type=_int_at_least(1), default=20, help="communication rounds")
    g.add_argument("-M", "--M", dest="m", type=_int_at_least(1), default=5, help="candidates per client and round")
    g.add_argument("--preset", choices=sorted(PRESETS), default="fomo-core",
                   help="whose FedFomo round to run: this library's, the authors' (paper), PFLlib's or FL-bench's")
    g.add_argument("--epsilon", type=_real_in(0, 1), default=None,
                   help="initial exploration probability (default: the preset's)")
    g.add_argument("--epsilon-decay", type=_real_in(0, 1), default=None,
                   help="subtracted from epsilon each round (default: the preset's)")
    g.add_argument("--affinity-update", choices=("raw", "normalised"), default=None,
                   help="A[i,n] += s (raw) or s / |sum s| (normalised); default: the preset's")
    g.add_argument("--participation", type=_real_in(0, 1, low_open=True), default=1.0,
                   help="fraction of the clients training each round")
    g.add_argument("--methods", default="fedfomo,fedavg,local", help="comma-separated: fedfomo, fedavg, local")
    g.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of everything")
    d = demo.add_argument_group("data")
    d.add_argument("--partition", choices=("groups", "pathological", "dirichlet"), default="groups",
                   help="latent groups of classes, n classes per client, or Dirichlet label skew")
    d.add_argument("--classes-per-client", type=_int_at_least(1), default=2, help="partition 'pathological'")
    d.add_argument("--alpha", type=_positive_real, default=0.5, help="partition 'dirichlet'")
    d.add_argument("--target", choices=("local", "shifted"), default="local",
                   help="clients' validation/test data from their own distribution, or from another group's")
    d.add_argument("--val-fraction", type=_real_in(0, 1, low_open=True, high_open=True), default=0.2,
                   help="share of each client's data for validation")
    d.add_argument("--test-fraction", type=_real_in(0, 1, low_open=True, high_open=True), default=0.4,
                   help="share of each client's data for testing")
    d.add_argument("--cifar10", metavar="DIR", default=None,
                   help="use CIFAR-10 from this folder (torchvision layout; needs torchvision) instead of digits")
    d.add_argument("--max-samples", type=_int_at_least(0), default=0, help="CIFAR-10: use a random subset (0: all)")
    t = demo.add_argument_group("training (the same for every method)")
    t.add_argument("--backend", choices=("torch", "sklearn"), default="torch",
                   help="PyTorch modules or scikit-learn MLPClassifiers")
    t.add_argument("--epochs", type=_int_at_least(1), default=2, help="local epochs per round")
    t.add_argument("--lr", type=_positive_real, default=0.05, help="SGD learning rate")
    t.add_argument("--momentum", type=_real_in(0, 1, high_open=True), default=0.5, help="SGD momentum")
    t.add_argument("--batch-size", type=_int_at_least(1), default=16, help="SGD batch size")
    t.add_argument("--hidden", type=_int_at_least(1), default=64, help="MLP hidden units")
    t.add_argument("--threads", type=_int_at_least(1), default=1,
                   help="torch threads (tiny models run fastest on one)")
    o = demo.add_argument_group("output")
    o.add_argument("--out", default="fomo-demo-out", help="output folder")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--no-plots", action="store_true", help="skip the PNGs (results.json only)")
    demo.set_defaults(command_parser=demo)
    sub.add_parser("info", help="print how this copy of fomo-core was built")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """Cross-option checks; returns the methods."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in _NAMES]
    if not methods or bad:
        parser.error(f"argument --methods: expected a comma-separated subset of fedfomo,fedavg,local, got {args.methods!r}")
    if len(set(methods)) != len(methods):
        parser.error(f"argument --methods: a method is repeated in {args.methods!r}")
    if args.m >= args.clients:
        parser.error(f"argument -M/--M: expected fewer candidates than clients ({args.clients}), got {args.m}")
    if args.partition == "groups" and args.groups > args.clients:
        parser.error(f"argument --groups: expected at most --clients ({args.clients}) groups, got {args.groups}")
    if args.val_fraction + args.test_fraction >= 1:
        parser.error(
            f"arguments --val-fraction + --test-fraction must leave training data (sum < 1), "
            f"got {args.val_fraction} + {args.test_fraction}"
        )
    if args.cifar10 is not None:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            parser.error("argument --cifar10: needs torchvision, which is not installed (pip install torchvision)")
        if not os.path.isdir(args.cifar10):
            parser.error(f"argument --cifar10: folder {args.cifar10!r} does not exist")
        if args.backend == "sklearn":
            parser.error("argument --backend: CIFAR-10 needs the convolutional network of backend 'torch'")
    num_classes = 10
    if args.partition == "groups" and args.groups > num_classes:
        parser.error(f"argument --groups: expected at most {num_classes} groups (one class each at least), got {args.groups}")
    if args.partition == "pathological" and args.classes_per_client > num_classes:
        parser.error(f"argument --classes-per-client: expected at most {num_classes}, got {args.classes_per_client}")
    return methods


def _config(args: argparse.Namespace, methods: list):
    from .simulate import ExperimentConfig, FederationSettings, TrainSettings

    return ExperimentConfig(
        dataset="cifar10" if args.cifar10 else "digits",
        cifar10=args.cifar10,
        max_samples=args.max_samples,
        clients=args.clients,
        groups=args.groups,
        partition=args.partition,
        classes_per_client=args.classes_per_client,
        alpha=args.alpha,
        target=args.target,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        backend=args.backend,
        methods=tuple(methods),
        federation=FederationSettings(
            rounds=args.rounds, m=args.m, participation=args.participation, preset=args.preset, epsilon=args.epsilon,
            epsilon_decay=args.epsilon_decay, affinity_update=args.affinity_update, seed=args.seed,
        ),
        training=TrainSettings(
            epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, hidden=(args.hidden,)
        ),
    )


def _headline(cfg) -> str:
    part = {
        "groups": f"{cfg.clients} clients in {cfg.groups} latent groups of classes",
        "pathological": f"{cfg.clients} clients with {cfg.classes_per_client} classes each",
        "dirichlet": f"{cfg.clients} clients, Dirichlet(alpha={cfg.alpha}) label skew",
    }[cfg.partition]
    f = cfg.federation
    target = ", validation/test from another group (shifted targets)" if cfg.target == "shifted" else ""
    return (
        f"fomo-core demo: {cfg.dataset}, {part}{target}; {f.rounds} rounds, M={f.m}, preset {f.preset} "
        f"(epsilon {f.server_policy().epsilon}), "
        f"participation={f.participation}, {cfg.training.epochs} local epochs, backend {cfg.backend}"
    )


def results_table(results: dict) -> str:
    """The end-of-run table: accuracy and where the time went, per method."""
    rows = [("method", "final acc", "best acc", "eval s", "weights+update s", "train s")]
    for name, run in results["methods"].items():
        acc = run["accuracy_per_round"]
        s = run["seconds"]
        rows.append((
            _NAMES.get(name, name), f"{100 * run['final_accuracy']:.1f}%", f"{100 * max(acc):.1f}%",
            f"{s['eval']:.2f}", f"{s['step']:.3f}", f"{s['train']:.2f}",
        ))
        if results["config"]["target"] != "local" and "accuracy_after_update_per_round" in run:
            after = run["accuracy_after_update_per_round"]
            rows.append((" before local training", f"{100 * after[-1]:.1f}%", f"{100 * max(after):.1f}%", "", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _affinity_line(results: dict) -> Optional[str]:
    frac = results.get("affinity_within_group_fraction")
    if "affinity" not in results or results.get("groups") is None:
        return None
    n = len(results["affinity"])
    counted = results.get("clients_with_positive_affinity", 0)
    if frac is None:
        return f"affinity: no client gave any other client a positive affinity ({n} clients)"
    line = (
        f"affinity: {100 * frac:.0f}% of the positive affinity lands within the client's own group "
        f"(averaged over the {counted} of {n} clients with any)"
    )
    if results["config"]["target"] != "local" and results.get("affinity_target_group_fraction") is not None:
        line += f"; {100 * results['affinity_target_group_fraction']:.0f}% within its target's group"
    return line


def run_demo(args: argparse.Namespace, methods: list) -> dict:
    from .simulate import run_experiment

    cfg = _config(args, methods)
    if cfg.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    print(_headline(cfg), flush=True)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.federation.rounds * len(methods), unit="round", file=sys.stderr, dynamic_ncols=True)

    def on_round(method: str, record) -> None:
        if bar is not None:
            bar.set_description(_NAMES.get(method, method))
            bar.set_postfix(acc=f"{100 * record.accuracy:.1f}%")
            bar.update(1)

    t0 = time.perf_counter()
    try:
        results = run_experiment(cfg, on_round=on_round)
    finally:
        if bar is not None:
            bar.close()
    results["wall_seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    written = ["results.json"]
    if not args.no_plots:
        from .plots import plot_accuracy, plot_affinity

        title = f"{cfg.dataset}: {cfg.clients} clients, {cfg.partition} partition"
        if cfg.target != "local":
            title += ", shifted targets"
        plot_accuracy(results, os.path.join(args.out, "accuracy.png"), title=f"Personalised accuracy ({title})")
        written.append("accuracy.png")
        if "affinity" in results:
            plot_affinity(results, os.path.join(args.out, "affinity.png"))
            written.append("affinity.png")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print()
    print(results_table(results))
    line = _affinity_line(results)
    if line:
        print(line)
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)} ({results['wall_seconds']:.1f} s)")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        import fomo_core

        for key, value in fomo_core.build_info().items():
            print(f"{key}: {value}")
        return 0
    demo_parser = args.command_parser
    methods = _check(demo_parser, args)
    try:
        with optional_import("fomo-core demo", extra="demo"):
            run_demo(args, methods)
    except MissingExtraError as e:  # one line naming the extra, not a traceback
        demo_parser.exit(2, f"fomo-core: error: {e}\n")
    except RuntimeError as e:  # data that cannot be loaded (CIFAR-10 folder), with the reason
        demo_parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
