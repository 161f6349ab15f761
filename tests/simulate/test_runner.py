"""The experiment runner on a small grid (seconds): cells, outputs, paired statistics, resume,
atomic writes, and the ``fomo-core experiment`` command."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from fomo_core.simulate import run_experiment
from fomo_core.simulate.cli import main
from fomo_core.simulate.files import write_atomic, write_json_atomic
from fomo_core.simulate.runner import DEFAULT_GRID, Grid, config_from_flat, run_grid, summarise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"dataset": "digits", "clients": 4, "groups": 2, "rounds": 2, "m": 2, "epochs": 1, "hidden": 8}


def tiny_grid(**kw) -> Grid:
    return Grid(
        settings=kw.pop("settings", {"plain": {}, "scarce": {"max_train": 10}}),
        methods=kw.pop("methods", ("fedfomo", "fedavg", "local")),
        seeds=kw.pop("seeds", (0, 1)),
        base={**TINY, **kw.pop("base", {})},
    )


class Counting:
    """run_experiment, counting the cells it runs."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, on_round=None):
        self.calls.append((cfg.methods, cfg.federation.seed, cfg.max_train))
        return run_experiment(cfg, on_round)


def test_a_small_grid_writes_every_output(tmp_path):
    grid = tiny_grid()
    counting = Counting()
    done = run_grid(grid, str(tmp_path), progress=False, run=counting)
    assert len(counting.calls) == 2 * 3 * 2 and not done["reused"]
    assert all(len(methods) == 1 for methods, _, _ in counting.calls)  # one method per cell
    for name in ("results.json", "results.csv", "summary.md", "grid.json", "plain.png", "scarce.png"):
        assert os.path.getsize(tmp_path / name) > 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["cells"]) == 12 and set(res["metrics"]) == {"after_update", "after_training"}
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["method"] for r in rows} == {"fedfomo", "fedavg", "local"}
    # each cell reproduces a stand-alone run of the same setting, seed and method
    cell = json.loads((tmp_path / "cells" / "scarce__local__seed1.json").read_text())
    alone = run_experiment(config_from_flat({**TINY, "max_train": 10}, seed=1, method="local"))
    assert cell["after_training_per_round"] == alone["methods"]["local"]["accuracy_per_round"]
    assert cell["after_update"] == alone["methods"]["local"]["final_accuracy_after_update"]
    md = (tmp_path / "summary.md").read_text()
    assert "### plain" in md and "after local training *" in md and "± " in md


def test_summary_statistics_are_paired_by_seed():
    grid = tiny_grid(methods=("fedfomo", "local"), seeds=(0, 1, 2), settings={"s": {}})
    acc = {
        ("fedfomo", 0): 0.9,
        ("fedfomo", 1): 0.8,
        ("fedfomo", 2): 0.7,
        ("local", 0): 0.85,
        ("local", 1): 0.6,
        ("local", 2): 0.75,
    }
    records = [
        {"setting": "s", "method": m, "seed": s, "target": "local", "after_training": a, "after_update": a - 0.1}
        for (m, s), a in acc.items()
    ]
    summary = summarise(records, grid)["s"]
    assert summary["headline"] == "after_training"
    fomo = summary["methods"]["fedfomo"]
    assert fomo["after_training"]["mean"] == pytest.approx(0.8)
    assert fomo["after_training"]["sd"] == pytest.approx(0.1)  # sample sd (ddof 1)
    d = summary["methods"]["local"]["paired_difference"]["after_training"]
    diffs = np.array([0.05, 0.2, -0.05])
    assert d["mean"] == pytest.approx(diffs.mean()) and d["sd"] == pytest.approx(diffs.std(ddof=1))
    assert d["reference_better_seeds"] == 2 and d["seeds"] == 3 and d["min"] == pytest.approx(-0.05)
    assert summary["methods"]["local"]["paired_difference"]["after_update"]["mean"] == pytest.approx(diffs.mean())
    assert "paired_difference" not in fomo
    # shifted targets: the headline is the accuracy after the federated update
    shifted = [{**r, "target": "shifted"} for r in records]
    assert summarise(shifted, grid)["s"]["headline"] == "after_update"


def test_resume_runs_only_the_missing_and_changed_cells(tmp_path):
    grid = tiny_grid(methods=("local", "fedavg"), settings={"plain": {}})
    first = Counting()
    run_grid(grid, str(tmp_path), progress=False, plots=False, run=first)
    assert len(first.calls) == 4
    before = (tmp_path / "cells" / "plain__local__seed0.json").read_text()

    # nothing to do
    again = Counting()
    done = run_grid(grid, str(tmp_path), progress=False, plots=False, run=again)
    assert again.calls == [] and len(done["reused"]) == 4

    # a lost cell and a new seed run; the others are read back unchanged
    os.remove(tmp_path / "cells" / "plain__fedavg__seed1.json")
    more = Counting()
    run_grid(
        tiny_grid(methods=("local", "fedavg"), settings={"plain": {}}, seeds=(0, 1, 2)),
        str(tmp_path),
        progress=False,
        plots=False,
        run=more,
    )
    assert sorted((m[0], s) for m, s, _ in more.calls) == [("fedavg", 1), ("fedavg", 2), ("local", 2)]
    assert (tmp_path / "cells" / "plain__local__seed0.json").read_text() == before

    # a half-written or stale cell is run again: its configuration changed, or it does not parse
    (tmp_path / "cells" / "plain__local__seed1.json").write_text('{"config": ')
    changed = Counting()
    run_grid(
        tiny_grid(methods=("local", "fedavg"), settings={"plain": {}}),
        str(tmp_path),
        progress=False,
        plots=False,
        run=changed,
    )
    assert [(m[0], s) for m, s, _ in changed.calls] == [("local", 1)]
    changed = Counting()
    run_grid(
        tiny_grid(methods=("local",), settings={"plain": {"max_train": 5}}),
        str(tmp_path),
        progress=False,
        plots=False,
        run=changed,
    )
    assert len(changed.calls) == 2 and all(cap == 5 for _, _, cap in changed.calls)


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(str(path), "old")

    with pytest.raises(TypeError, match="data must be str or bytes"):
        write_atomic(str(path), 12345)
    assert path.read_text() == "old"

    class Unjsonable:
        pass

    with pytest.raises(TypeError):  # fails while serialising, before any byte is written
        write_json_atomic(str(path), {"x": Unjsonable()})
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary file left behind
    write_atomic(str(path), b"new")
    assert path.read_text() == "new"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(settings={}), "settings must name at least one setting"),
        (dict(settings={"a/b": {}}), "setting names must be non-empty"),
        (dict(methods=()), "methods must name at least one method"),
        (dict(methods=("fedfomo", "fedfomo")), "methods must not repeat"),
        (dict(methods=("fedprox",)), "methods must be among"),
        (dict(seeds=(0, -1)), "seeds must be integers >= 0"),
        (dict(settings={"a": {"colour": "red"}}), "unknown setting key\\(s\\) \\['colour'\\]"),
        (dict(settings={"a": {"partition": "iid"}}), "setting key 'partition' must be one of"),
    ],
)
def test_grid_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_grid(**kwargs)


def test_the_default_grid_is_the_readme_run():
    assert DEFAULT_GRID.seeds == (0, 1, 2, 3, 4)
    assert DEFAULT_GRID.methods[0] == "fedfomo" and "oracle" in DEFAULT_GRID.methods
    for name in DEFAULT_GRID.settings:
        cfg = config_from_flat(DEFAULT_GRID.flat(name), seed=0, method="fedfomo")
        assert cfg.dataset == "mnist5k" and cfg.clients == 20 and cfg.groups == 2


@pytest.mark.usefixtures("restore_torch_threads")
def test_the_experiment_command_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = (
        "experiment --setting noisy:label_noise=0.2 --methods fedfomo,oracle --seeds 0-1 --no-progress --no-plots"
    ).split() + ["--set", ",".join(f"{k}={v}" for k, v in TINY.items()), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ran 4 cells, reused 0" in printed and "### noisy" in printed
    assert main(argv) == 0
    assert "ran 0 cells, reused 4" in capsys.readouterr().out
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "a-b"], "expected seeds such as 0-4"),
        (["--set", "rounds"], "--set: expected KEY=VALUE, got 'rounds'"),
        (["--setting", "x:colour=red"], "unknown setting key(s) ['colour']"),
        (["--methods", "fedfomo,fedprox"], "methods must be among"),
        (["--grid", "/nonexistent/grid.json"], "experiment grid: "),
    ],
)
def test_experiment_command_errors(argv, message, cli_refuses):
    cli_refuses("experiment", argv, message)
