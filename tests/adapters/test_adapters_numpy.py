"""fomo_core.adapters.numpy: layer lists <-> flat buffers, and scikit-learn MLPClassifier clients
on the digits data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier

import fomo_core as fc
from fomo_core.adapters.numpy import (
    ArrayLayout,
    MLPClassifierClient,
    evaluate_mlp,
    from_flat,
    get_flat_params,
    initialise_mlp,
    mlp_spec,
    set_flat_params,
    to_flat,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float64)
    return (x[:600], d.target[:600]), (x[600:900], d.target[600:900]), (x[900:1200], d.target[900:1200])


def fitted(seed: int, data, iters: int) -> MLPClassifier:
    clf = MLPClassifier(hidden_layer_sizes=(24,), max_iter=iters, random_state=seed, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # few iterations on purpose: unequal models
        clf.fit(*data)
    return clf


# --- layer lists <-> flat -------------------------------------------------------------------------


def test_to_flat_and_back_keras_style():
    rng = np.random.default_rng(0)
    weights = [
        rng.standard_normal((5, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
        rng.standard_normal((3, 2, 2)).astype(np.float32),
        np.float32(rng.standard_normal((1,))),
    ]
    flat, layout = to_flat(weights)
    assert flat.dtype == np.float32 and flat.shape == (15 + 3 + 12 + 1,)
    assert layout.shapes == ((5, 3), (3,), (3, 2, 2), (1,)) and layout.offsets == (0, 15, 18, 30)
    back = from_flat(flat, layout)
    for a, b in zip(weights, back):
        assert np.array_equal(a, b) and b.base is flat  # views into the buffer
    back[1][0] = 42.0
    assert flat[15] == 42.0


def test_to_flat_into_an_existing_buffer_and_dtype():
    weights = [np.ones((2, 2)), np.zeros(3)]
    out = np.full(7, -1.0)
    flat, layout = to_flat(weights, out=out)
    assert flat is out and flat.tolist() == [1, 1, 1, 1, 0, 0, 0]
    f32, _ = to_flat(weights, dtype=np.float32)
    assert f32.dtype == np.float32


def test_layer_list_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"arrays\[1\] has dtype int64, expected a floating dtype"):
        ArrayLayout.of([np.zeros(2), np.zeros(2, dtype=np.int64)])
    with pytest.raises(TypeError, match="arrays must be a list of ndarrays, got ndarray"):
        to_flat(np.zeros(3))
    with pytest.raises(ValueError, match=r"out must be an ndarray of shape \(3,\), got \(4,\)"):
        to_flat([np.zeros(3)], out=np.zeros(4))
    _, layout = to_flat([np.zeros(3)])
    with pytest.raises(ValueError, match=r"flat has shape \(2,\), expected \(3,\)"):
        from_flat(np.zeros(2), layout)


# --- scikit-learn ---------------------------------------------------------------------------------


def test_flat_params_round_trip_and_change_predictions(digits):
    train, val, _ = digits
    a, b = fitted(0, train, 30), fitted(1, train, 5)
    spec = mlp_spec(a)
    flat_a = get_flat_params(a)
    assert flat_a.shape == (spec.num_params,) == (64 * 24 + 24 + 24 * 10 + 10,)
    coef_before = a.coefs_[0]
    set_flat_params(a, get_flat_params(b))
    assert a.coefs_[0] is coef_before  # written in place, the estimator keeps its arrays
    np.testing.assert_array_equal(a.predict_proba(val[0]), b.predict_proba(val[0]))
    set_flat_params(a, flat_a)
    np.testing.assert_array_equal(get_flat_params(a), flat_a)
    with pytest.raises(ValueError, match=r"flat has shape \(3,\), expected \(1810,\)"):
        set_flat_params(a, np.zeros(3))


def test_evaluate_mlp_equals_log_loss_and_score(digits):
    train, val, _ = digits
    models = [fitted(s, train, it) for s, it in ((0, 40), (1, 5), (2, 15))]
    host = models[0]
    cands = np.stack([get_flat_params(m) for m in models])
    losses, accs = evaluate_mlp(host, cands, *val)
    for m, model in enumerate(models):
        # float64 on both sides; the fused kernel sums in another order than scikit-learn
        assert losses[m] == pytest.approx(
            log_loss(val[1], model.predict_proba(val[0]), labels=model.classes_), rel=1e-9
        )
        assert accs[m] == pytest.approx(model.score(*val), abs=1e-12)


def test_initialise_mlp_allocates_parameters_once(digits):
    train, _, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", batch_size=16, random_state=0)
    assert initialise_mlp(clf, *train, classes=np.arange(10)) is clf
    assert clf.coefs_[0].shape == (64, 8) and list(clf.classes_) == list(range(10))
    before = get_flat_params(clf)
    initialise_mlp(clf, *train, classes=np.arange(10))  # already initialised: untouched
    np.testing.assert_array_equal(get_flat_params(clf), before)


def test_client_update_matches_fomo_core_and_loads_the_estimator(digits):
    train, val, _ = digits
    local = fitted(0, train, 3)
    peers = [fitted(1, train, 40), fitted(2, train, 1), fitted(3, train, 20)]
    cands = np.stack([get_flat_params(p) for p in peers])
    theta = get_flat_params(local)
    l0 = log_loss(val[1], local.predict_proba(val[0]), labels=local.classes_)
    # the fomo-core preset rescales improving candidates to the client's balance and bounds their
    # layers' distances: this test checks the bare algorithm
    unguarded = fc.get_preset("fomo-core").client.replace(guard=None, rebalance=False)
    client = MLPClassifierClient(local, val, train, policy=unguarded)
    res = client.update(cands)
    assert res.baseline_loss == pytest.approx(l0, rel=1e-9)  # float64 throughout, summation order only
    expected = fc.fomo_step(theta, cands, res.baseline_loss, res.candidate_losses)
    np.testing.assert_array_equal(res.weights, expected.weights)
    np.testing.assert_array_equal(client.params, expected.params)
    np.testing.assert_array_equal(get_flat_params(local), client.params)  # the estimator holds the update
    assert res.weights.sum() == pytest.approx(1.0) and res.weights[1] == 0


def test_client_round_trains_with_partial_fit(digits):
    train, val, test = digits
    clf = MLPClassifier(hidden_layer_sizes=(24,), solver="sgd", learning_rate_init=0.1, batch_size=32, random_state=0)
    initialise_mlp(clf, *train, classes=np.arange(10))
    client = MLPClassifierClient(clf, val, train, epochs=3)
    acc0 = client.evaluate(client.params[None], test)[1][0]
    res = client.round(np.zeros((0, client.params.size)))
    acc1 = client.evaluate(client.params[None], test)[1][0]
    assert res.train_seconds > 0 and res.weights.shape == (0,)
    assert acc1 > acc0 + 0.3  # three SGD epochs on 600 digits take an untrained MLP far above chance
    np.testing.assert_array_equal(get_flat_params(clf), client.params)


def test_client_user_training_hook(digits):
    train, val, _ = digits
    seen = []
    client = MLPClassifierClient(
        fitted(0, train, 3), val, train_fn=lambda est: (seen.append(est), est.partial_fit(*train))
    )
    before = client.get_flat()
    client.round(np.stack([get_flat_params(fitted(1, train, 30))]))
    assert seen == [client.estimator] and not np.array_equal(before, client.params)


def test_client_rejects_bad_arguments(digits):
    train, val, _ = digits
    with pytest.raises(ValueError, match="estimator must have parameters"):
        MLPClassifierClient(MLPClassifier(), val, train)
    clf = fitted(0, train, 2)
    with pytest.raises(ValueError, match="train_data is required unless train_fn is given"):
        MLPClassifierClient(clf, val)
    with pytest.raises(TypeError, match="val_data must be a pair"):
        MLPClassifierClient(clf, val[0], train)
    client = MLPClassifierClient(clf, val, train)
    with pytest.raises(ValueError, match=r"candidates has shape \(2, 3\), expected \(M, 1810\)"):
        client.update(np.zeros((2, 3)))
