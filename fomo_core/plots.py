"""The demo's two figures: mean personalised accuracy per round, and FedFomo's affinity matrix
with the clients ordered by group. Both read the results dict of fomo_core.simulate."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._optional import optional_import

__all__ = ["plot_accuracy", "plot_affinity"]

_LABELS = {"fedfomo": "FedFomo", "fedavg": "FedAvg", "local": "Local"}
_COLORS = {"fedfomo": "#d62728", "fedavg": "#1f77b4", "local": "#7f7f7f"}


def _pyplot():
    with optional_import("fomo_core.plots"):
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt

    return plt


def plot_accuracy(results: dict, path: str, *, title: Optional[str] = None) -> None:
    """Mean personalised test accuracy (%) per round, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=130)
    for name, run in results["methods"].items():
        acc = 100 * np.asarray(run["accuracy_per_round"], dtype=float)
        rounds = np.arange(1, acc.size + 1)
        ax.plot(rounds, acc, marker="o", ms=3, lw=2, color=_COLORS.get(name), label=_LABELS.get(name, name),
                zorder=3 if name == "fedfomo" else 2)  # FedFomo on top where the lines meet
        if results.get("config", {}).get("target", "local") != "local" and "accuracy_after_update_per_round" in run:
            after = 100 * np.asarray(run["accuracy_after_update_per_round"], dtype=float)
            ax.plot(rounds, after, ls="--", lw=1.5, color=_COLORS.get(name),
                    label=f"{_LABELS.get(name, name)} before local training")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mean personalised test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "Personalised accuracy per round", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
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
    fig.savefig(path)
    plt.close(fig)
