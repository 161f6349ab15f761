"""Smoke test of the benchmark suite's round subject (a few seconds): the PFLlib-style round and
fomo-core's client agree on a small CNN, one timed round of each runs, the agreement check fails
loudly when the two are set up differently, and the suite's command line rejects bad subjects.
Timings are never asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench_round():
    import bench_round

    return bench_round


def test_round_subject_agrees_and_times_one_round(bench_round):
    case = bench_round.Case("LeNet CNN", 3, quick=True, sizes=(60, 20))
    agreement = bench_round.check_agreement(case)
    assert agreement["checked"].startswith("losses; weights and update")
    assert 0 < agreement["improving_candidates"] <= 3  # the benchmark's candidates include helpful ones
    timing = bench_round.time_case(case, repeats=1, warmup=0)
    for name in bench_round.CLIENTS:
        phases = timing[name]
        assert phases["cpu"]["n"] == 1
        parts = sum(phases[p]["median"] for p in bench_round.PHASES)
        assert parts == pytest.approx(phases["cpu"]["median"], rel=0.05)  # the phases cover the round
        assert phases["own"]["median"] == pytest.approx(parts - phases["train"]["median"])


def test_agreement_check_fails_loudly(bench_round):
    from fomo_core import ClientPolicy
    from fomo_core.adapters.torch import FedFomoClient

    case = bench_round.Case("LeNet CNN", 2, quick=True, sizes=(20, 10))
    case.clients[bench_round.OURS] = FedFomoClient(
        case.clients[bench_round.OURS].module,
        val_data=case.val,
        train_data=case.train_batches,
        lr=bench_round.LR,
        policy=ClientPolicy(norm="l1", eps=1e-5),  # not PFLlib's distance
    )
    with pytest.raises(AssertionError, match="disagree on the weights"):
        bench_round.check_agreement(case)


def test_suite_rejects_unknown_subjects(capsys):
    from suite import main

    with pytest.raises(SystemExit):
        main(["--only", "kernels,speed", "--no-progress"])
    assert "expected a comma-separated subset of kernels,evaluate,round,early-stop,server" in capsys.readouterr().err


def test_cli_bench_hands_its_options_to_the_suite(capsys):
    from fomo_core.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--only", "speed"])  # the suite's own parser answers
    assert "argument --only: expected a comma-separated subset" in capsys.readouterr().err


def test_readme_speed_section_is_the_generated_one():
    """README's Speed section is benchmarks/readme.py's output from the committed results, not
    edited by hand, and it names the machine's CPU, SIMD sets and bfloat16 support."""
    import readme

    text = readme.README.read_text()
    start = text.index(readme.HEADING + "\n")
    end = text.find("\n## ", start + len(readme.HEADING))
    generated = readme.section()
    assert text[start : end + 1 if end >= 0 else len(text)] == generated
    machine = next(line for line in generated.splitlines() if line.startswith("Measured on: "))
    assert "bfloat16 instructions" in machine and "torch dispatches" in machine


def test_server_subject_measures_a_small_federation(tmp_path):
    import bench_server

    assert bench_server.check_agreement()["clients"] == 12
    cfg = dict(N=40, P=16, participation=0.1, dtype="float32", rounds=1, folder=str(tmp_path))
    run = bench_server.child_run(cfg)
    loaded = bench_server.child_load(cfg)
    assert run["participants"] == 4 and run["round"] == loaded["loaded_round"] == 2
    assert run["select_us"] > 0 and run["select_many_us"] > 0 and run["checkpoint_mib"] > 0
    row = {**cfg, **run, **loaded}
    assert "| 40 | 16 |" in bench_server.table({"rows": [row]})


def test_partition_tables_are_the_generated_ones():
    """README's and the partitions page's tables are benchmarks/partition_tables.py's output from
    the committed grid (docs/results/partitions/results.json), not typed in by hand."""
    import json

    import partition_tables as pt

    results = json.loads(pt.RESULTS.read_text())
    for path, start, end, metrics in pt.PLACES:
        text, i, j = pt.placed(path, start, end)
        assert text[i:j] == pt.tables(results, metrics) + "\n", f"{path.name}: run partition_tables.py --write"
