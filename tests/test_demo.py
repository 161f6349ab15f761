"""`fomo-core demo`: the acceptance criteria on the default configuration, the files it writes,
the other backends and modes, and clear errors for bad options."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fomo_core.cli import main


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The demo sets torch's thread count (--threads, 1 by default); give the others theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_demo_meets_the_acceptance_criteria(tmp_path, capsys):
    """The default run (digits, 15 clients in 5 groups of 2 classes, 20 rounds, M=5, torch) takes
    a few seconds, so the acceptance is checked on exactly the configuration users run."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "FedFomo" in printed and "FedAvg" in printed and "Local" in printed and "affinity:" in printed

    res = json.loads((out / "results.json").read_text())
    methods = res["methods"]
    fomo, avg, local = (methods[m]["final_accuracy"] for m in ("fedfomo", "fedavg", "local"))
    assert all(len(methods[m]["accuracy_per_round"]) == 20 for m in methods)
    assert fomo >= avg + 0.10  # "by a wide margin": at least 10 points
    assert fomo >= local
    assert res["affinity_within_group_fraction"] >= 0.8
    assert len(res["affinity"]) == 15 and len(res["groups"]) == 15

    import matplotlib.image as mpimg

    for name in ("accuracy.png", "affinity.png"):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


def test_sklearn_backend_and_other_modes_run(tmp_path, capsys):
    out = tmp_path / "sk"
    argv = ["demo", "--backend", "sklearn", "--rounds", "3", "--clients", "6", "--groups", "3", "-M", "2",
            "--partition", "pathological", "--target", "shifted", "--participation", "0.5", "--out", str(out),
            "--no-progress", "--no-plots"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["backend"] == "sklearn" and res["config"]["target"] == "shifted"
    assert len(res["methods"]["fedfomo"]["accuracy_after_update_per_round"]) == 3
    assert not (out / "accuracy.png").exists()
    assert "before local training" in capsys.readouterr().out


def test_dirichlet_without_groups(tmp_path):
    out = tmp_path / "dir"
    argv = ["demo", "--partition", "dirichlet", "--alpha", "0.3", "--rounds", "2", "--clients", "5", "-M", "2",
            "--methods", "fedfomo,local", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["groups"] is None and "affinity_within_group_fraction" not in res
    assert set(res["methods"]) == {"fedfomo", "local"}
    assert os.path.getsize(out / "affinity.png") > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--clients", "1"], "argument --clients: expected an integer >= 2, got 1"),
        (["--rounds", "many"], "argument --rounds: expected an integer, got 'many'"),
        (["-M", "15"], "argument -M/--M: expected fewer candidates than clients (15), got 15"),
        (["--epsilon", "1.5"], r"argument --epsilon: expected a number in [0, 1], got 1.5"),
        (["--backend", "jax"], "argument --backend: invalid choice: 'jax'"),
        (["--partition", "iid"], "argument --partition: invalid choice: 'iid'"),
        (["--groups", "11"], "argument --groups: expected at most 10 groups"),
        (["--participation", "0"], r"argument --participation: expected a number in (0, 1], got 0"),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], "--val-fraction + --test-fraction must leave training data"),
        (["--methods", "fedfomo,fedprox"], "argument --methods: expected a comma-separated subset"),
        (["--cifar10", "/nonexistent/cifar"], "argument --cifar10: "),
    ],
)
def test_bad_options_get_clear_messages(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--out", str(tmp_path / "x"), *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written


def test_cifar10_without_torchvision_says_so(capsys, tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed here; the message under test is for its absence")
    with pytest.raises(SystemExit):
        main(["demo", "--cifar10", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "needs torchvision, which is not installed" in capsys.readouterr().err


def test_info_prints_the_build(capsys):
    assert main(["info"]) == 0
    assert "simd:" in capsys.readouterr().out
