"""fomo_core.evaluate_candidates (the fused dense kernel): parity with torch and scikit-learn,
candidate forms, dtypes, determinism.

Tolerance table (every comparison below names its row):

- F64_REFERENCE (rtol 1e-10, atol 1e-12): the same float64 values; only the summation order
  differs (the kernel adds each unit's inputs in order from the bias with FMA, NumPy/BLAS in
  blocks): relative differences of a few eps times the layer width; observed below 1e-15.
- F32_TORCH (rtol 2e-5, atol 2e-6): both float32 with different summation orders and exp/log
  implementations: ~sqrt(K) eps32 relative per layer over three layers of K <= 200 inputs.
- F32_REFERENCE (rtol 1e-4, atol 1e-5): the float32 kernel against the float64 reference on the
  very same (rounded) values: float32 rounding of every sum, up to eps32 * K * |terms| on random
  shapes with cancellation.
- SKLEARN (rtol 1e-10, atol computed): scikit-learn forms probabilities and then takes their log
  (1 - p for the binary case): each per-sample loss carries an error of a few eps / p_true, so the
  absolute bound is computed from the data as 8 eps mean(1 / p_true).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, log_loss
from sklearn.neural_network import MLPClassifier, MLPRegressor
from torch import nn
from torch.nn.utils import parameters_to_vector

import fomo_core
from fomo_core import _C
from fomo_core import reference_dense as reference
from fomo_core.adapters.numpy import get_flat_params, mlp_labels, mlp_spec
from fomo_core.adapters.torch import dense_spec
from fomo_core.dense import ACTIVATIONS, OUTPUTS, DenseSpec, evaluate_candidates, flat_from_layers, layers_from_flat

F64_REFERENCE = dict(rtol=1e-10, atol=1e-12)
F32_TORCH = dict(rtol=2e-5, atol=2e-6)
F32_REFERENCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0), data.target.astype(np.int64)


def _mlp(dtype, seed, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 40), act(), nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 10)).to(dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=1e-12, atol=1e-13)), (torch.float32, F32_TORCH)])
def test_matches_torch_cross_entropy_on_the_equivalent_sequential(digits, dtype, tol):
    # Prepare: five differently initialised networks as a flat [M, P] tensor (parameters() order)
    X_np, y_np = digits
    X = torch.tensor(X_np[:300], dtype=dtype)
    y = torch.tensor(y_np[:300])
    models = [_mlp(dtype, seed) for seed in range(5)]
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    spec = dense_spec(models[0])
    # Execute
    ev = evaluate_candidates(spec, flat, X, y)
    # Assert: loss against F.cross_entropy (mean), accuracy against argmax; torch in, torch out
    with torch.no_grad():
        expected = torch.stack([nn.functional.cross_entropy(m(X), y).double() for m in models])
        expected_acc = torch.stack([(m(X).argmax(1) == y).double().mean() for m in models])
    assert isinstance(ev.loss, torch.Tensor) and ev.loss.dtype == torch.float64
    torch.testing.assert_close(ev.loss, expected, **tol)
    torch.testing.assert_close(ev.accuracy, expected_acc, rtol=0, atol=0)


def test_squared_error_matches_torch_mse_loss():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 11), nn.Sigmoid(), nn.Linear(11, 3)).double()
    X, t = torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    spec = dense_spec(model, output="squared_error")
    ev = evaluate_candidates(spec, parameters_to_vector(model.parameters()).detach()[None], X, t)
    with torch.no_grad():
        expected = nn.functional.mse_loss(model(X), t).item()
    assert ev.loss[0].item() == pytest.approx(expected, rel=1e-12)
    assert torch.isnan(ev.accuracy).all()


def _fit(X, y, hidden, activation, seed=0):
    clf = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=30, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short fit on purpose: unsaturated probabilities
        return clf.fit(X, y)


def _sklearn_bound(clf, X, labels):
    p_true = clf.predict_proba(X)[np.arange(len(labels)), labels]
    assert p_true.min() > 1e-15, "log_loss would clip; the parity below assumes it does not"
    return 8 * np.finfo(np.float64).eps * np.mean(1.0 / p_true)


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_matches_sklearn_log_loss_of_fitted_mlpclassifiers(digits, binary, activation):
    # Prepare: three fitted classifiers (different seeds) on digits or on digits >= 5
    X, y = digits
    y = (y >= 5).astype(np.int64) * 3 + 2 if binary else y  # binary labels {2, 5}: mapped by classes_
    classifiers = [_fit(X[:1200], y[:1200], (24, 16), activation, seed) for seed in range(3)]
    spec = mlp_spec(classifiers[0])
    assert spec.output == ("logistic" if binary else "softmax") and spec.weight_layout == "in_out"
    candidates = np.stack([get_flat_params(c) for c in classifiers])
    X_val, y_val = X[1200:], y[1200:]
    labels = mlp_labels(classifiers[0], y_val)
    weights = np.linspace(0.5, 2.0, len(y_val))
    # Execute
    ev = evaluate_candidates(spec, candidates, X_val, labels)
    ev_w = evaluate_candidates(spec, candidates, X_val, labels, sample_weight=weights)
    # Assert: SKLEARN row
    for m, clf in enumerate(classifiers):
        bound = _sklearn_bound(clf, X_val, labels)
        proba = clf.predict_proba(X_val)
        assert ev.loss[m] == pytest.approx(log_loss(y_val, proba, labels=clf.classes_), rel=1e-10, abs=bound)
        assert ev_w.loss[m] == pytest.approx(
            log_loss(y_val, proba, sample_weight=weights, labels=clf.classes_), rel=1e-10, abs=bound * weights.max()
        )
        assert ev.accuracy[m] == accuracy_score(y_val, clf.predict(X_val))
        assert ev_w.accuracy[m] == pytest.approx(accuracy_score(y_val, clf.predict(X_val), sample_weight=weights))


def test_sklearn_layer_lists_and_flat_vectors_agree(digits):
    X, y = digits
    clf = _fit(X[:600], y[:600], (20,), "relu")
    spec = mlp_spec(clf)
    flat = get_flat_params(clf)
    coefs, intercepts = layers_from_flat(spec, flat)
    for a, b in zip(coefs + intercepts, clf.coefs_ + clf.intercepts_):
        np.testing.assert_array_equal(a, b)
    layer_list = [arr for pair in zip(clf.coefs_, clf.intercepts_) for arr in pair]
    labels = mlp_labels(clf, y[600:])
    by_flat = evaluate_candidates(spec, flat[None], X[600:], labels)
    by_layers = evaluate_candidates(spec, [layer_list], X[600:], labels)
    np.testing.assert_array_equal(by_flat.loss, by_layers.loss)  # the same values read through other strides


def test_squared_error_matches_half_of_sklearn_regressor_loss_curve_definition(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(X[:500], y[:500].astype(float))
    spec = mlp_spec(reg)
    ev = evaluate_candidates(spec, get_flat_params(reg)[None], X[500:], y[500:].astype(float))
    expected = np.mean((reg.predict(X[500:]) - y[500:]) ** 2)  # scikit-learn's own loss_ is half of this
    assert ev.loss[0] == pytest.approx(expected, rel=1e-10)


def test_flat_and_layer_helpers_round_trip():
    spec = DenseSpec((3, 4, 2), "tanh", "in_out")
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(spec.weight_shape(layer)) for layer in range(2)]
    biases = [rng.standard_normal(spec.sizes[layer + 1]) for layer in range(2)]
    flat = flat_from_layers(spec, weights, biases)
    assert flat.shape == (spec.num_params,)
    back_w, back_b = layers_from_flat(spec, flat)
    for a, b in zip(back_w + back_b, weights + biases):
        np.testing.assert_array_equal(a, b)
    assert np.shares_memory(back_w[0], flat)


def test_state_dict_values_strided_and_transposed_views_are_read_in_place():
    # Prepare: candidates as a strided [M, P] view, and as layer lists with a transposed weight
    rng = np.random.default_rng(1)
    spec = DenseSpec((5, 7, 3), "relu")
    wide = rng.standard_normal((4, 2 * spec.num_params))
    strided = wide[:, ::2]
    X = np.asfortranarray(rng.standard_normal((33, 5)))
    y = rng.integers(0, 3, 33)
    expected = reference.evaluate_candidates(spec, strided, X, y)
    ev = evaluate_candidates(spec, strided, X, y)
    np.testing.assert_allclose(ev.loss, expected[0], **F64_REFERENCE)
    # The same networks as [W1, b1, W2, b2] with W1 given through a transpose of an in_out array
    lists = []
    for row in strided:
        (w1, w2), (b1, b2) = layers_from_flat(spec, np.ascontiguousarray(row))
        lists.append([np.ascontiguousarray(w1.T).T, b1, w2, b2])
    ev_lists = evaluate_candidates(spec, lists, X, y)
    np.testing.assert_allclose(ev_lists.loss, expected[0], **F64_REFERENCE)


def test_torch_state_dicts_are_accepted_as_layer_lists(digits):
    X_np, y_np = digits
    models = [_mlp(torch.float32, s) for s in range(3)]
    spec = dense_spec(models[0])
    X, y = torch.tensor(X_np[:100], dtype=torch.float32), torch.tensor(y_np[:100])
    by_dicts = evaluate_candidates(spec, [m.state_dict() for m in models], X, y)
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    by_flat = evaluate_candidates(spec, flat, X, y)
    torch.testing.assert_close(by_dicts.loss, by_flat.loss, rtol=0, atol=0)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_16_bit_storage_computes_in_float32(storage):
    rng = np.random.default_rng(2)
    spec = DenseSpec((9, 12, 4), "tanh")
    dtype = getattr(torch, storage)
    cands = torch.tensor(rng.standard_normal((3, spec.num_params)) * 0.5, dtype=dtype)
    X = torch.tensor(rng.standard_normal((70, 9)), dtype=dtype)
    y = torch.tensor(rng.integers(0, 4, 70))
    ev = evaluate_candidates(spec, cands, X, y)
    # the reference sees the very same (rounded) values in float64: F32_REFERENCE row
    loss, acc = reference.evaluate_candidates(spec, cands.double(), X.double(), y)
    np.testing.assert_allclose(ev.loss.numpy(), loss, **F32_REFERENCE)


def test_inputs_of_another_dtype_are_converted_tile_by_tile():
    # float64 X with float32 candidates: computed in float32 (the candidates' compute type)
    rng = np.random.default_rng(8)
    spec = DenseSpec((10, 14, 6), "logistic", "in_out")
    cands = rng.standard_normal((3, spec.num_params)).astype(np.float32)
    X = rng.standard_normal((75, 10))
    y = rng.integers(0, 6, 75)
    ev = evaluate_candidates(spec, cands, X, y)
    want = reference.evaluate_candidates(spec, cands, X.astype(np.float32), y)
    np.testing.assert_allclose(ev.loss, want[0], **F32_REFERENCE)


def test_results_do_not_depend_on_the_thread_count(digits):
    X, y = digits
    rng = np.random.default_rng(4)
    spec = DenseSpec((64, 50, 30, 10), ("relu", "logistic"))
    cands = rng.standard_normal((7, spec.num_params)).astype(np.float32) * 0.2
    before = fomo_core.get_num_threads()
    try:
        fomo_core.set_num_threads(1)
        one = evaluate_candidates(spec, cands, X.astype(np.float32), y)
        fomo_core.set_num_threads(2)
        two = evaluate_candidates(spec, cands, X.astype(np.float32), y)
    finally:
        fomo_core.set_num_threads(before)
    np.testing.assert_array_equal(one.loss, two.loss)  # bitwise
    np.testing.assert_array_equal(one.accuracy, two.accuracy)


def test_numpy_and_torch_inputs_give_identical_results():
    rng = np.random.default_rng(5)
    spec = DenseSpec((4, 6, 3))
    cands, X, y = rng.standard_normal((3, spec.num_params)), rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    a = evaluate_candidates(spec, cands, X, y)
    b = evaluate_candidates(spec, torch.from_numpy(cands), torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(a.loss, b.loss.numpy())


def test_inputs_are_left_unchanged_and_m_zero_gives_empty_results():
    rng = np.random.default_rng(6)
    spec = DenseSpec((4, 5, 3), "relu")
    cands, X, y = rng.standard_normal((2, spec.num_params)), rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    copies = cands.copy(), X.copy(), y.copy()
    evaluate_candidates(spec, cands, X, y)
    for a, b in zip((cands, X, y), copies):
        np.testing.assert_array_equal(a, b)
    empty = evaluate_candidates(spec, np.zeros((0, spec.num_params)), X, y)
    assert empty.loss.shape == (0,) and empty.accuracy.shape == (0,)
    assert evaluate_candidates(spec, [], X, y).loss.shape == (0,)


def test_portable_kernels_agree_with_the_reference():
    # FOMO_CPU_ISA=base forces the baseline build of the kernels in a fresh process.
    code = (
        "import numpy as np, fomo_core\n"
        "from fomo_core.dense import DenseSpec, evaluate_candidates\n"
        "from fomo_core.reference_dense import evaluate_candidates as ref\n"
        "assert fomo_core.build_info()['simd'] == 'base'\n"
        "rng = np.random.default_rng(7)\n"
        "for dt, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):\n"
        "    spec = DenseSpec((11, 13, 7, 5), ('tanh', 'relu'))\n"
        "    c = rng.standard_normal((3, spec.num_params)).astype(dt)\n"
        "    X = rng.standard_normal((81, 11)).astype(dt); y = rng.integers(0, 5, 81)\n"
        "    np.testing.assert_allclose(evaluate_candidates(spec, c, X, y).loss, ref(spec, c, X, y)[0], rtol=tol)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FOMO_CPU_ISA="base")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_codes_come_from_the_extension_and_the_reference_knows_every_name():
    # The extension defines the codes once; the Python names and the reference's tables follow them.
    assert _C.ACTIVATIONS == {"identity": 0, "relu": 1, "tanh": 2, "logistic": 3}
    assert _C.OUTPUTS == {"softmax": 0, "logistic": 1, "squared_error": 2}
    assert ACTIVATIONS == tuple(_C.ACTIVATIONS) and OUTPUTS == tuple(_C.OUTPUTS)
    assert set(reference.ACTIVATE) == set(_C.ACTIVATIONS)
    assert set(reference.PER_SAMPLE) == set(_C.OUTPUTS)
