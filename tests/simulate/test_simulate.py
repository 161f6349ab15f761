"""fomo_core.simulate: partitioners, per-client splits, metrics and short federations on both
backends, with the real digits data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fomo_core.simulate import ExperimentConfig, FederationSettings, TrainSettings, run_experiment
from fomo_core.simulate.backends import make_backend
from fomo_core.simulate.data import _stratified_split, image_dataset, load_digits, split_clients, target_clients
from fomo_core.simulate.federation import participants, run_local
from fomo_core.simulate.metrics import within_group_fraction
from fomo_core.simulate.partition import Partition, latent_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# --- splits and targets ---------------------------------------------------------------------------


def test_local_splits_are_disjoint_and_stratified(digits):
    rng = np.random.default_rng(0)
    p = latent_groups(digits.y, 10, 5, rng)
    data = split_clients(digits, p, rng, val_fraction=0.2, test_fraction=0.4)
    for k, d in enumerate(data):
        n = p.indices[k].size
        assert d.target == k
        assert d.y_train.size + d.y_val.size + d.y_test.size == n
        assert abs(d.y_test.size - 0.4 * n) <= 2 and abs(d.y_val.size - 0.2 * n) <= 2  # rounding per class
        for split in (d.y_train, d.y_val, d.y_test):
            assert set(np.unique(split)) == set(p.classes[k].tolist())


def test_a_client_split_uses_each_sample_once(digits):
    idx = np.arange(0, 600, 2)
    train, val, test = _stratified_split(idx, digits.y, 0.2, 0.3, np.random.default_rng(0))
    together = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(together), idx)


def test_shifted_targets_take_val_and_test_from_another_group(digits):
    rng = np.random.default_rng(0)
    p = latent_groups(digits.y, 15, 5, rng)
    targets = target_clients(p, "shifted")
    assert np.all(p.groups[targets] == (p.groups + 1) % 5)
    assert sorted(targets.tolist()) == list(range(15))  # a permutation: every val/test split used once
    data = split_clients(digits, p, rng, target="shifted")
    for k, d in enumerate(data):
        assert set(np.unique(d.y_train)) == set(p.classes[k].tolist())
        assert set(np.unique(d.y_val)) == set(np.unique(d.y_test)) == set(p.classes[targets[k]].tolist())
    no_groups = Partition(p.indices, None, p.classes)
    assert target_clients(no_groups, "shifted").tolist() == [(k + 1) % 15 for k in range(15)]


def test_split_errors(digits):
    p = latent_groups(digits.y, 5, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        split_clients(digits, p, np.random.default_rng(0), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="target must be one of"):
        split_clients(digits, p, np.random.default_rng(0), target="global")


# --- metrics and participation --------------------------------------------------------------------


def test_within_group_fraction_by_hand():
    groups = np.array([0, 0, 1, 1])
    a = np.array(
        [
            [9.0, 3.0, 1.0, -5.0],  # positive mass 4 (the diagonal is left out), 3 in the own group
            [1.0, 0.0, 0.0, 0.0],  # all of it in the own group
            [-1.0, -1.0, 0.0, -2.0],  # no positive affinity: not counted
            [2.0, 0.0, 2.0, 0.0],  # half
        ]
    )
    frac, counted = within_group_fraction(a, groups)
    assert counted == 3 and frac == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    frac, _ = within_group_fraction(a, groups, reference=np.array([1, 1, 0, 0]))
    assert frac == pytest.approx((0.25 + 0.0 + 0.5) / 3)
    assert within_group_fraction(-np.ones((2, 2)), np.array([0, 1])) == (None, 0)


def test_participants_are_seeded_and_sized():
    assert participants(10, 1.0, 3, 0).tolist() == list(range(10))
    p = participants(10, 0.3, 4, 7)
    assert p.size == 3 and np.array_equal(p, participants(10, 0.3, 4, 7)) and np.all(np.diff(p) > 0)
    draws = {tuple(participants(10, 0.3, r, 7).tolist()) for r in range(20)}
    assert len(draws) > 5  # a new draw every round
    assert participants(4, 0.01, 0, 0).size == 1


# --- federations ----------------------------------------------------------------------------------


def small(backend: str, **kw) -> ExperimentConfig:
    fed = dict(rounds=4, m=3, seed=0)
    fed.update({k: kw.pop(k) for k in list(kw) if k in FederationSettings.__dataclass_fields__})
    return ExperimentConfig(
        clients=6,
        groups=3,
        backend=backend,
        federation=FederationSettings(**fed),
        training=TrainSettings(epochs=1, hidden=(16,)),
        **kw,
    )


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_a_short_federation_reports_every_metric(backend):
    res = run_experiment(small(backend))
    assert set(res["methods"]) == {"fedfomo", "fedavg", "local"}
    for run in res["methods"].values():
        acc = run["accuracy_per_round"]
        assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc)
        assert len(run["final_client_accuracy"]) == 6 and run["final_accuracy"] == acc[-1]
        assert run["seconds"]["train"] > 0
    fomo = res["methods"]["fedfomo"]
    assert fomo["seconds"]["eval"] > 0 and fomo["seconds"]["step"] > 0
    assert len(fomo["accuracy_after_update_per_round"]) == 4
    assert np.array(fomo["client_accuracy_per_round"]).shape == (4, 6)
    assert fomo["affinity_per_round"][-1] == res["affinity"] and len(fomo["affinity_per_round"]) == 4
    assert "affinity_per_round" not in res["methods"]["local"]
    a = np.array(res["affinity"])
    assert a.shape == (6, 6) and np.all(np.diag(a) == 0.1)  # the client never scores itself
    assert np.any(a[~np.eye(6, dtype=bool)] < 0)  # other groups' models raised the loss
    assert res["groups"] == [0, 1, 2, 0, 1, 2]
    assert res["clients"][0]["train"] > 0 and res["clients"][0]["target"] == 0


def test_the_same_seed_gives_the_same_results():
    first, second = (
        run_experiment(small("torch", methods=("fedfomo",))),
        run_experiment(small("torch", methods=("fedfomo",))),
    )
    assert first["methods"]["fedfomo"]["accuracy_per_round"] == second["methods"]["fedfomo"]["accuracy_per_round"]
    assert first["affinity"] == second["affinity"]


def test_partial_participation_trains_only_the_drawn_clients(digits):
    rng = np.random.default_rng(0)
    data = split_clients(digits, latent_groups(digits.y, 6, 3, rng), rng)
    backend = make_backend("torch", digits, TrainSettings(epochs=1, hidden=(8,)), seed=0)
    init = backend.init_params()
    clients = [backend.new_client(d, init, k) for k, d in enumerate(data)]
    fed = FederationSettings(rounds=1, participation=0.5, seed=3)
    run_local(backend, clients, init, fed)
    drawn = participants(6, 0.5, 0, 3).tolist()
    assert len(drawn) == 3
    for k, c in enumerate(clients):
        assert torch.equal(c.params, init) == (k not in drawn)


def test_fedavg_with_one_client_is_local_training():
    """FedAvg over a single client averages one model: it must equal Local, round by round."""
    cfg = ExperimentConfig(
        clients=1,
        groups=1,
        methods=("fedavg", "local"),
        federation=FederationSettings(rounds=3, m=1),
        training=TrainSettings(epochs=1, hidden=(8,)),
    )
    res = run_experiment(cfg)
    assert res["methods"]["fedavg"]["accuracy_per_round"] == res["methods"]["local"]["accuracy_per_round"]


def test_experiment_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        run_experiment(small("jax"))
    with pytest.raises(ValueError, match="partition must be"):
        run_experiment(small("torch", partition="iid"))
    with pytest.raises(ValueError, match="methods must be among"):
        run_experiment(small("torch", methods=("fedprox",)))


def digit_images(digits, n: int):
    """The digits as 32x32 RGB uint8 images (each pixel blown up 4x4, grey in all channels)."""
    grey = (digits.x[:n].reshape(n, 8, 8) * 255).astype(np.uint8)
    big = np.kron(grey, np.ones((1, 4, 4), dtype=np.uint8))
    return np.repeat(big[..., None], 3, axis=3), digits.y[:n]


def test_image_dataset_normalises_per_channel(digits):
    images, labels = digit_images(digits, 300)
    ds = image_dataset("digit-images", images, labels, 10, max_samples=200, seed=0)
    assert ds.x.shape == (200, 3, 32, 32) and ds.x.dtype == np.float32 and ds.y.shape == (200,)
    # statistics taken in float64, applied in float32: mean 0 and std 1 up to float32 rounding
    np.testing.assert_allclose(ds.x.mean(axis=(0, 2, 3), dtype=np.float64), 0, atol=1e-6)
    np.testing.assert_allclose(ds.x.std(axis=(0, 2, 3), dtype=np.float64), 1, atol=1e-6)
    with pytest.raises(ValueError, match="images must be"):
        image_dataset("bad", images[:, :, :, 0], labels, 10)


def test_the_convolutional_torch_backend_runs_on_images(digits, monkeypatch):
    """The CIFAR-10 path (torchvision is not needed for this part): images go to the CNN."""
    from fomo_core.simulate import experiment

    images, labels = digit_images(digits, 400)
    monkeypatch.setattr(experiment, "load_dataset", lambda cfg: image_dataset("digit-images", images, labels, 10))
    cfg = ExperimentConfig(
        clients=4, groups=2, federation=FederationSettings(rounds=2, m=2), training=TrainSettings(epochs=1)
    )
    res = experiment.run_experiment(cfg)
    assert res["dataset"]["name"] == "digit-images"
    assert all(len(r["accuracy_per_round"]) == 2 for r in res["methods"].values())
    assert res["methods"]["fedfomo"]["seconds"]["eval"] > 0
