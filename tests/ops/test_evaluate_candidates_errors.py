"""Bad input to DenseSpec and evaluate_candidates: ValueError/TypeError naming the argument, what
was expected and what was given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from fomo_core import _C
from fomo_core.adapters.numpy import mlp_labels, mlp_spec
from fomo_core.adapters.torch import dense_spec
from fomo_core.dense import DenseSpec, evaluate_candidates

SPEC = DenseSpec((4, 5, 3), "relu")
RNG = np.random.default_rng(0)
CANDS = RNG.standard_normal((2, SPEC.num_params))
X = RNG.standard_normal((6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sizes=(4,)), ValueError, r"sizes must hold at least two positive widths"),
        (dict(sizes=(4, 0, 2)), ValueError, r"sizes must hold"),
        (dict(sizes="ab"), TypeError, r"sizes must be a sequence of integers"),
        (dict(sizes=(4, 2), activation="gelu"), ValueError, r"activation must be one of"),
        (dict(sizes=(4, 3, 3, 2), activation=("relu",)), ValueError, r"tuple of 2 of them"),
        (
            dict(sizes=(4, 2), weight_layout="rows"),
            ValueError,
            r"weight_layout must be 'out_in' or 'in_out', got 'rows'",
        ),
        (dict(sizes=(4, 2), output="hinge"), ValueError, r"output must be one of"),
        (dict(sizes=(4, 2), output="logistic"), ValueError, r"one output unit .* got sizes\[-1\] = 2"),
    ],
)
def test_spec_rejects_bad_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        DenseSpec(**kwargs)


def test_dense_spec_names_the_unsupported_layer():
    with pytest.raises(ValueError, match=r"module\[1\] is GELU"):
        dense_spec(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"module\[0\] is a Linear layer without bias"):
        dense_spec(nn.Sequential(nn.Linear(3, 4, bias=False)))
    with pytest.raises(ValueError, match=r"module\[2\] has in_features=5, expected 4"):
        dense_spec(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match=r"module ends with an activation"):
        dense_spec(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(TypeError, match=r"module must be a torch.nn.Sequential, got Linear"):
        dense_spec(nn.Linear(3, 4))


def test_mlp_spec_needs_a_fitted_mlp():
    with pytest.raises(TypeError, match=r"LogisticRegression has no coefs_"):
        mlp_spec(LogisticRegression())


def test_mlp_labels_rejects_unknown_labels():
    class Fitted:
        classes_ = np.array([2, 5])

    with pytest.raises(ValueError, match=r"y\[1\] = 3 is not one of estimator.classes_ \[2, 5\]"):
        mlp_labels(Fitted(), [2, 3])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(spec="spec"), TypeError, r"spec must be a DenseSpec, got str"),
        (dict(candidate_params=CANDS[:, :-1]), ValueError, r"candidate_params has shape \(2, 42\), expected \(M, 43\)"),
        (dict(candidate_params=CANDS[0]), ValueError, r"candidate_params has shape \(43,\), expected \(M, 43\)"),
        (dict(candidate_params=CANDS.astype(np.int64)), TypeError, r"candidate_params has dtype int64"),
        (
            dict(candidate_params=[CANDS[0], CANDS[1, :5]]),
            ValueError,
            r"candidate_params\[1\] has shape \(5,\), expected \(43,\)",
        ),
        (
            dict(candidate_params=[CANDS[0], CANDS[1].astype(np.float32)]),
            TypeError,
            r"candidate_params\[1\] has dtype float32 but candidate_params\[0\] has float64",
        ),
        (
            dict(candidate_params=[[np.zeros((5, 4)), np.zeros(5), np.zeros((4, 3)), np.zeros(3)]]),
            ValueError,
            r"candidate_params\[0\]\[2\] has shape \(4, 3\), expected \(3, 5\)",
        ),
        (dict(candidate_params=[[np.zeros((5, 4))]]), ValueError, r"candidate_params\[0\] has 1 arrays, expected 4"),
        (dict(candidate_params={"a": CANDS}), TypeError, r"candidate_params must be a 2-D array"),
        (dict(X=X[:, :3]), ValueError, r"X has shape \(6, 3\), expected \(B, 4\)"),
        (dict(X=X[:0]), ValueError, r"X has no rows"),
        (dict(X=X.astype(np.int32)), TypeError, r"X has dtype int32"),
        (dict(X=[[1.0] * 4]), TypeError, r"X must be a 2-D array"),
        (dict(y=np.array([0, 1, 3, 0, 1, 2])), ValueError, r"y\[2\] is 3, expected a class index in \[0, 3\)"),
        (dict(y=np.array([0, -1, 2, 0, 1, 2])), ValueError, r"y\[1\] is -1"),
        (dict(y=Y.astype(float)), TypeError, r"y must hold integer class indices"),
        (dict(y=Y[:5]), ValueError, r"y has shape \(5,\), expected \(6,\)"),
        (dict(sample_weight=np.ones(5)), ValueError, r"sample_weight has shape \(5,\), expected \(6,\)"),
        (dict(sample_weight=-np.ones(6)), ValueError, r"sample_weight must hold finite values >= 0"),
        (dict(sample_weight=np.full(6, np.nan)), ValueError, r"sample_weight must hold finite values >= 0"),
        (dict(sample_weight=np.zeros(6)), ValueError, r"sample_weight must have a positive sum"),
    ],
)
def test_evaluate_rejects_bad_arguments(change, error, match):
    args = dict(spec=SPEC, candidate_params=CANDS, X=X, y=Y)
    sample_weight = change.pop("sample_weight", None)
    args.update(change)
    with pytest.raises(error, match=match):
        evaluate_candidates(args["spec"], args["candidate_params"], args["X"], args["y"], sample_weight=sample_weight)


def test_binary_and_regression_targets_are_checked():
    binary = DenseSpec((4, 1), output="logistic")
    with pytest.raises(ValueError, match=r"y\[0\] is 2, expected a class index in \[0, 2\)"):
        evaluate_candidates(binary, np.zeros((1, 5)), X, np.array([2, 0, 0, 0, 0, 0]))
    regression = DenseSpec((4, 2), output="squared_error")
    with pytest.raises(ValueError, match=r"y has shape \(6,\), expected \(6, 2\)"):
        evaluate_candidates(regression, np.zeros((1, 10)), X, np.zeros(6))


def test_torch_labels_out_of_range_are_named():
    with pytest.raises(ValueError, match=r"y\[3\] is 7"):
        evaluate_candidates(SPEC, torch.from_numpy(CANDS), torch.from_numpy(X), torch.tensor([0, 1, 2, 7, 1, 2]))


def test_the_bindings_check_their_codes_and_arrays():
    # fomo_core.dense passes a checked DenseSpec's codes; the bindings still refuse what no table holds
    # and an output without its y array, naming the argument.
    sizes, acts = list(SPEC.sizes), [_C.ACTIVATIONS["relu"]]
    labels = Y.astype(np.int64)
    with pytest.raises(ValueError, match=r"output is 7, not a code of the table \(0 to 2\)"):
        _C.evaluate_candidates(sizes, acts, False, 7, CANDS, X, labels, None, None)
    with pytest.raises(ValueError, match=r"activations\[0\] is -1, not a code of the table \(0 to 3\)"):
        _C.evaluate_candidates(sizes, [-1], False, _C.OUTPUTS["softmax"], CANDS, X, labels, None, None)
    with pytest.raises(ValueError, match=r"y: output 'softmax' needs integer class labels"):
        _C.evaluate_candidates(sizes, acts, False, _C.OUTPUTS["softmax"], CANDS, X, None, None, None)
    with pytest.raises(ValueError, match=r"y: output 'squared_error' needs float targets"):
        _C.evaluate_candidates(sizes, acts, False, _C.OUTPUTS["squared_error"], CANDS, X, labels, None, None)
    with pytest.raises(TypeError, match=r"y has dtype float64, expected int64"):
        _C.evaluate_candidates(sizes, acts, False, _C.OUTPUTS["softmax"], CANDS, X, Y.astype(float), None, None)
