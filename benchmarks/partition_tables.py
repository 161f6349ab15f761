"""The partition tables of README.md and docs/concepts/partitions.md, from the committed grid.

    python benchmarks/partition_tables.py                 # docs/results/partitions/results.json
    python benchmarks/partition_tables.py --metric both   # both metrics per partition (the docs page)
    python benchmarks/partition_tables.py --write         # rewrites both tables in README.md and the page

Prints Markdown: one table for the current split and one for the equal label budget. Every number
is computed here from the grid's cells (mean ± sd over seeds of the final-round accuracy, mean over
clients; differences paired by seed, with the seeds where fomo-core is ahead and its worst seed);
nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "partitions" / "results.json"
# where the tables stand: (file, the line that opens them, the line that follows them, metrics)
PLACES = (
    (ROOT / "README.md", "Current split:\n", "The misses, plainly", ("after_training",)),
    (
        ROOT / "docs" / "concepts" / "partitions.md",
        "### Current split\n",
        "What the grid shows",
        ("after_training", "after_update"),
    ),
)
METHODS = ("fedfomo", "fedavg", "local", "fedavg_ft")
NAMES = {"fedfomo": "fomo-core", "fedavg": "FedAvg", "local": "Local", "fedavg_ft": "FedAvg+FT"}
METRICS = {"after_training": "after local training", "after_update": "after the update"}


def _label(setting: str, config: dict) -> str:
    """A partition's name for a reader, from its cell's configuration."""
    partition = config.get("partition")
    if partition == "groups":
        text = f"latent groups ({config.get('groups')})"
    elif partition == "dirichlet":
        text = f"Dirichlet α = {config.get('alpha')}"
    elif partition == "pathological":
        text = f"class shards ({config.get('shards_per_client')} per client)"
    else:
        text = setting
    if config.get("clients", 20) != 20:
        text += f", {config['clients']} clients"
    participation = config.get("participation", 1.0)
    if participation < 1.0:
        text += f", {100 * participation:.0f}% per round"
    return text


def _mean_sd(values: list, sign: str = "") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{sign}.1f} ± {sd:.1f}"


def _paired(ours: dict, theirs: dict) -> str:
    """fomo-core minus a method, seed by seed: mean ± sd (seeds ahead / seeds; worst seed)."""
    diffs = [ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))]
    return f"{_mean_sd(diffs, '+')} ({sum(d > 0 for d in diffs)}/{len(diffs)}; worst {min(diffs):+.1f})"


def tables(results: dict, metrics: tuple) -> str:
    """The two tables (current split, equal budget) as Markdown."""
    cells: dict = {}
    configs: dict = {}
    shares: dict = {}
    for c in results["cells"]:
        for metric in metrics:
            cells.setdefault((c["setting"], c["method"], metric), {})[c["seed"]] = 100 * c[metric]
        configs[c["setting"]] = c["config"]
        if c["method"] == "fedfomo" and c.get("no_positive_weight_share") is not None:
            shares.setdefault(c["setting"], []).append(
                (100 * c["no_positive_weight_share"], 100 * (c.get("moved_to_global_share") or 0.0))
            )
    out = []
    settings = list(results["grid"]["settings"])
    for title, equal in (("Current split", False), ("Equal label budget", True)):
        rows = [s for s in settings if (configs[s].get("budget", "free") == "equal") == equal]
        if not rows:
            continue
        head = ["partition", *(["metric"] if len(metrics) > 1 else [])]
        both = len(metrics) > 1
        head += [NAMES[m] for m in METHODS] + [f"fomo-core − {NAMES[m]}" for m in METHODS[1:]]
        head.append("no +w, to g" if both else "no +w")
        title_line = [f"### {title}", ""] if both else [f"{title}:", ""]
        out += [*title_line, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in rows:
            for metric in metrics:
                ours = cells[(s, "fedfomo", metric)]
                row = [_label(s, configs[s]), *([METRICS[metric]] if len(metrics) > 1 else [])]
                row += [_mean_sd(list(cells[(s, m, metric)].values())) for m in METHODS]
                row += [_paired(ours, cells[(s, m, metric)]) for m in METHODS[1:]]
                share = ""
                if s in shares and metric == metrics[0]:
                    no_weight, to_global = (statistics.fmean(v) for v in zip(*shares[s]))
                    share = f"{no_weight:.0f}%, {to_global:.0f}%" if both else f"{no_weight:.0f}%"
                row.append(share)
                out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def placed(path: Path, start: str, end: str) -> tuple:
    """(text, i, j): the file's text and the span of its tables, from the line ``start`` to the
    line that begins with ``end``."""
    text = path.read_text()
    i = text.index(start)
    return text, i, text.index("\n" + end, i) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="the grid's results.json")
    parser.add_argument("--metric", choices=("after_training", "after_update", "both"), default="after_training")
    parser.add_argument("--write", action="store_true", help="rewrite the tables in README.md and the partitions page")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    if args.write:
        for path, start, end, metrics in PLACES:
            text, i, j = placed(path, start, end)
            path.write_text(text[:i] + tables(results, metrics) + "\n" + text[j:])
        return
    metrics = ("after_training", "after_update") if args.metric == "both" else (args.metric,)
    print(tables(results, metrics))


if __name__ == "__main__":
    main()
