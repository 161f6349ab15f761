"""The simulator's figures: the demo's mean personalised accuracy per round and FedFomo's affinity
matrix with the clients ordered by group (both read the results dict of fomo_core.simulate), and
the experiment runner's accuracy per round, mean ± sd over seeds, for each setting.

Every accuracy axis says which accuracy it shows: after the federated update, or after local
training (the model a client ends the round with)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from fomo_core._optional import optional_import

__all__ = ["plot_accuracy", "plot_affinity", "plot_grid_setting", "method_label"]

_LABELS = {
    "fedfomo": "FedFomo",
    "fedavg": "FedAvg",
    "local": "Local",
    "fedavg_ft": "FedAvg+FT",
    "oracle": "per-group FedAvg (oracle)",
}
_COLORS = {"fedfomo": "#d62728", "fedavg": "#1f77b4", "local": "#7f7f7f", "fedavg_ft": "#2ca02c", "oracle": "#9467bd"}


def method_label(name: str) -> str:
    """ "FedFomo", "FedFomo (paper)" for "fedfomo:paper", "FedAvg+FT", ..."""
    base, _, preset = name.partition(":")
    label = _LABELS.get(base, base)
    return f"{label} ({preset})" if preset else label


def _color(name: str, k: int) -> Optional[str]:
    if ":" in name:  # presets of FedFomo: colours of their own
        return f"C{(k + 5) % 10}"
    return _COLORS.get(name)


def _save(fig, path: str) -> None:
    """Renders to memory, then writes the file atomically."""
    import io

    from .files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format=path.rsplit(".", 1)[-1] if "." in path else "png")
    write_atomic(path, buf.getvalue())


def _pyplot():
    with optional_import("fomo_core.simulate.plots"):
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt

    return plt


def plot_accuracy(results: dict, path: str, *, title: Optional[str] = None) -> None:
    """Mean test accuracy (%) per round, one colour per method: solid after local training (the
    model a client ends the round with), dashed after the federated update where it differs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=130)
    for k, (name, run) in enumerate(results["methods"].items()):
        acc = 100 * np.asarray(run["accuracy_per_round"], dtype=float)
        rounds = np.arange(1, acc.size + 1)
        color = _color(name, k)
        after = run.get("accuracy_after_update_per_round")
        same = after is None or np.array_equal(after, run["accuracy_per_round"])
        label = f"{method_label(name)}, " + (
            "averaged model (no training after it)" if same and after is not None else "after local training"
        )
        ax.plot(
            rounds, acc, marker="o", ms=3, lw=2, color=color, label=label, zorder=3 if name == "fedfomo" else 2
        )  # FedFomo on top where the lines meet
        if not same:
            ax.plot(
                rounds,
                100 * np.asarray(after, dtype=float),
                ls="--",
                lw=1.5,
                color=color,
                label=f"{method_label(name)}, after the update",
            )
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mean test accuracy over clients (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    ax.set_title(title or "Personalised accuracy per round", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_grid_setting(records: list, methods: Sequence[str], path: str, *, title: Optional[str] = None) -> None:
    """The runner's figure for one setting: two panels (after the federated update, after local
    training), mean accuracy per round over the seeds with a ± 1 sd band, one line per method.
    records: the setting's cell records (after_update_per_round, after_training_per_round)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), dpi=130, sharey=True)
    panels = (
        ("after_update_per_round", "after the federated update"),
        ("after_training_per_round", "after local training"),
    )
    for ax, (key, what) in zip(axes, panels):
        for k, name in enumerate(methods):
            curves = [r[key] for r in records if r["method"] == name and r[key] and r[key][0] is not None]
            if not curves:
                continue
            acc = 100 * np.asarray(curves, dtype=float)  # [seeds, rounds]
            mean = acc.mean(axis=0)
            sd = acc.std(axis=0, ddof=1) if acc.shape[0] > 1 else np.zeros_like(mean)
            rounds = np.arange(1, mean.size + 1)
            color = _color(name, k)
            ax.plot(rounds, mean, lw=2, color=color, label=method_label(name), zorder=3 if name == "fedfomo" else 2)
            ax.fill_between(rounds, mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
        ax.set_title(f"accuracy {what}", fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    seeds = len({r["seed"] for r in records})
    axes[0].set_ylabel(f"mean test accuracy over clients (%)\nmean ± sd over {seeds} seeds")
    axes[1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_affinity(results: dict, path: str, *, title: Optional[str] = None) -> None:
    """FedFomo's affinity matrix A[i, n] (row i: how much client n's models helped client i),
    clients ordered by latent group with the groups outlined, the diagonal (a client is not its
    own candidate) in grey. A symmetric log colour scale keeps the small within-group values
    visible next to the large negative ones."""
    plt = _pyplot()
    from matplotlib.colors import SymLogNorm

    a = np.asarray(results["affinity"], dtype=float)
    n = a.shape[0]
    groups = results.get("groups")
    order = np.argsort(np.asarray(groups), kind="stable") if groups is not None else np.arange(n)
    a = a[np.ix_(order, order)]
    off = a[~np.eye(n, dtype=bool)]
    vmax = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
    positive = off[off > 0]
    linthresh = max(float(np.median(positive)) / 4, vmax * 1e-4) if positive.size else vmax * 1e-3
    fig, ax = plt.subplots(figsize=(6.0, 5.2), dpi=130)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#bbbbbb")  # the diagonal: not its own candidate
    shown = np.ma.masked_array(a, mask=np.eye(n, dtype=bool))
    im = ax.imshow(shown, cmap=cmap, norm=SymLogNorm(linthresh=linthresh, vmin=-vmax, vmax=vmax, base=10))
    labels = [f"{k}" if groups is None else f"{k} (g{groups[k]})" for k in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if groups is not None:
        g = np.asarray(groups)[order]
        edges = np.flatnonzero(np.diff(g)) + 0.5
        for e in edges:
            ax.axhline(e, color="k", lw=0.8)
            ax.axvline(e, color="k", lw=0.8)
    ax.set_xlabel("candidate client n (ordered by group)")
    ax.set_ylabel("client i")
    fig.colorbar(im, ax=ax, shrink=0.85, label="affinity (symmetric log scale)")
    ax.set_title(title or "FedFomo affinity: red = helpful, blue = harmful")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
