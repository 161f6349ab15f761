"""NumPy adapter: models as lists of ndarrays (the Flower / Keras convention) and scikit-learn
MLPClassifier clients.

>>> flat, layout = to_flat(weights)              # [W1, b1, W2, b2] -> one vector [P]
>>> weights = from_flat(flat, layout)            # views, no copy
>>> client = MLPClassifierClient(clf, val_data=(Xv, yv), train_data=(Xt, yt))
>>> result = client.round(candidates)            # evaluate, fomo_step, partial_fit

Everything here converts and dispatches: the maths is fomo_core's (fomo_step, and the fused
dense evaluation for the MLPs, fomo_core.dense).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from fomo_core.guard import dense_layout
from fomo_core.layout import join, offsets_of, split
from fomo_core.policy import ClientPolicy
from fomo_core.presets import client_policy
from fomo_core.round import ClientRound, as_float64, batch_loss, check_client_options, federate_client, train_client

from ..dense import DenseSpec, evaluate_candidates, flat_from_layers, layers_from_flat

__all__ = [
    "ArrayLayout",
    "to_flat",
    "from_flat",
    "mlp_spec",
    "mlp_labels",
    "get_flat_params",
    "set_flat_params",
    "initialise_mlp",
    "evaluate_mlp",
    "train_mlp",
    "MLPClassifierClient",
    "ClientRound",
]


# --- lists of arrays <-> flat buffers -------------------------------------------------------------


@dataclass(frozen=True)
class ArrayLayout:
    """The shapes of a list of arrays laid end to end in one flat buffer (row-major each)."""

    shapes: tuple
    offsets: tuple
    size: int
    dtype: np.dtype

    @classmethod
    def of(cls, arrays: Sequence) -> ArrayLayout:
        """The layout of ``arrays`` (a list of ndarrays, e.g. Keras ``get_weights()``)."""
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
            raise TypeError(f"arrays must be a list of ndarrays, got {type(arrays).__name__}")
        for k, a in enumerate(arrays):
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"arrays[{k}] must be an ndarray, got {type(a).__name__}")
            if np.dtype(a.dtype).kind != "f":
                raise TypeError(f"arrays[{k}] has dtype {a.dtype}, expected a floating dtype")
        shapes = tuple(tuple(a.shape) for a in arrays)
        offsets, size = offsets_of(shapes)
        dtype = np.result_type(*[np.dtype(a.dtype) for a in arrays]) if shapes else np.dtype(np.float32)
        return cls(shapes, offsets, size, dtype)


def to_flat(arrays: Sequence, *, dtype: Any = None, out: Optional[np.ndarray] = None) -> tuple:
    """(flat [P], layout): the arrays copied end to end into one vector.

    dtype: of the vector (default: the arrays' common dtype). out: an existing vector [P] to fill
    instead of allocating one (checked before anything is written).
    """
    layout = ArrayLayout.of(arrays)
    if out is None:
        out = np.empty(layout.size, dtype=dtype or layout.dtype)
    elif not isinstance(out, np.ndarray) or out.shape != (layout.size,):
        shape = out.shape if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be an ndarray of shape ({layout.size},), got {shape}")
    join([np.asarray(a) for a in arrays], layout.offsets, out)
    return out, ArrayLayout(layout.shapes, layout.offsets, layout.size, out.dtype)


def from_flat(flat: np.ndarray, layout: ArrayLayout) -> list:
    """The arrays of ``layout`` as views (no copy) into ``flat`` [P]."""
    flat = np.asarray(flat)
    if flat.shape != (layout.size,):
        raise ValueError(f"flat has shape {flat.shape}, expected ({layout.size},) (the layout's size)")
    return split(flat, layout.shapes, layout.offsets)


# --- scikit-learn MLPClassifier -----------------------------------------------------------------


def mlp_spec(estimator: Any) -> DenseSpec:
    """The DenseSpec of an initialised (fitted or partial_fit) MLPClassifier (softmax, or one
    logistic unit when binary) or MLPRegressor (squared error); weight layout "in_out" as
    ``coefs_``."""
    for attr in ("coefs_", "intercepts_", "activation", "out_activation_"):
        if not hasattr(estimator, attr):
            raise TypeError(
                f"estimator must be a fitted scikit-learn MLPClassifier or MLPRegressor, "
                f"{type(estimator).__name__} has no {attr}"
            )
    out = estimator.out_activation_
    n_out = estimator.coefs_[-1].shape[1]
    if out == "softmax":
        output = "softmax"
    elif out == "logistic" and n_out == 1:
        output = "logistic"
    elif out == "identity":
        output = "squared_error"
    else:
        raise ValueError(f"estimator has out_activation_={out!r} with {n_out} outputs (multilabel), not supported")
    sizes = (estimator.coefs_[0].shape[0],) + tuple(c.shape[1] for c in estimator.coefs_)
    return DenseSpec(sizes, estimator.activation, "in_out", output)


def mlp_labels(estimator: Any, y: Any) -> np.ndarray:
    """Class indices [B] (int64, positions in ``estimator.classes_``) of labels y, as the kernel
    expects them; for a binary MLPClassifier index 1 is the positive class."""
    classes = np.asarray(estimator.classes_)
    y = np.asarray(y)
    index = np.searchsorted(classes, y)
    index = np.clip(index, 0, len(classes) - 1)
    unknown = classes[index] != y
    if np.any(unknown):
        first = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"y[{first}] = {y[first].item()!r} is not one of estimator.classes_ {classes.tolist()}")
    return index.astype(np.int64)


def get_flat_params(estimator: Any, *, dtype: Any = None) -> np.ndarray:
    """A new flat vector [P] of the estimator's ``coefs_`` and ``intercepts_`` (layer by layer,
    weight then bias, ``mlp_spec``'s layout)."""
    return flat_from_layers(mlp_spec(estimator), estimator.coefs_, estimator.intercepts_, dtype=dtype)


def set_flat_params(estimator: Any, flat: Any) -> None:
    """Copies a flat vector [P] into the estimator's ``coefs_`` and ``intercepts_`` in place (the
    arrays the estimator and its optimizer hold stay the same objects)."""
    spec = mlp_spec(estimator)
    if hasattr(flat, "detach"):
        flat = flat.detach().cpu().numpy()
    flat = np.asarray(flat)
    if flat.shape != (spec.num_params,):
        raise ValueError(f"flat has shape {flat.shape}, expected ({spec.num_params},) (the estimator's parameters)")
    weights, biases = layers_from_flat(spec, flat)
    for dst, src in zip(list(estimator.coefs_) + list(estimator.intercepts_), weights + biases):
        dst[...] = src


def initialise_mlp(estimator: Any, x: np.ndarray, y: np.ndarray, classes: Any) -> Any:
    """Allocates an unfitted MLPClassifier's parameters through its own ``partial_fit`` (one call
    on the first sample of x, y, declaring all ``classes``), so that set_flat_params can then
    load a common initial model. Returns the estimator."""
    if hasattr(estimator, "coefs_"):
        return estimator
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"x, y must be [B, D] and [B] with B >= 1, got shapes {x.shape} and {y.shape}")
    with warnings.catch_warnings():
        # one sample is smaller than any batch_size: scikit-learn warns that it clips the batch
        warnings.filterwarnings("ignore", message="Got `batch_size` less than 1 or larger than sample size")
        estimator.partial_fit(x[:1], y[:1], classes=np.asarray(classes))
    return estimator


def evaluate_mlp(estimator: Any, candidates: Any, x: Any, y: Any) -> tuple:
    """(losses [M], accuracies [M]) float64 of candidates [M, P] with the estimator's architecture
    on (x, y), in one fused call (fomo_core.evaluate_candidates). The losses equal
    ``sklearn.metrics.log_loss(y, predict_proba(x))`` of each candidate."""
    ev = evaluate_candidates(mlp_spec(estimator), candidates, x, mlp_labels(estimator, y))
    return as_float64(ev.loss), as_float64(ev.accuracy)


def train_mlp(estimator: Any, x: Any, y: Any, *, epochs: int = 1) -> None:
    """Local training through the estimator's own ``partial_fit``: ``epochs`` passes over (x, y)."""
    for _ in range(epochs):
        estimator.partial_fit(x, y)


class MLPClassifierClient:
    """One FedFomo client around a scikit-learn MLPClassifier, running its preset's round: each
    :meth:`round` evaluates the baseline and the candidates on the validation data (one fused
    call), weighs them and moves the model (:func:`fomo_core.round.federate`), then trains it with
    ``partial_fit``.

    estimator:       an MLPClassifier whose parameters exist (fitted, or :func:`initialise_mlp`)
    val_data:        (X [B, D], y [B]) validation data from the client's target distribution
    train_data:      (X, y) local training data for the default training
    preset:          a preset or its name (default "fomo-core"); ``policy`` overrides its client
                     policy (an MLP has no buffers and no BatchNorm: the buffer, evaluation-mode
                     and drop-last choices change nothing)
    train_fn:        ``train_fn(estimator)`` replaces the default (``epochs`` partial_fit passes)
    global_train_data: (X, y) the copy of the server's global model trains on in the fomo-core
                     round (default: train_data; the default training only)
    eval_batch_size: rows per validation batch, for the "batch_mean"/"batch_sum_per_sample"
                     losses (default: one batch)

    The flat model is :func:`get_flat_params`'s vector: ``get_flat()`` / ``set_flat()`` (not
    scikit-learn's ``get_params``, which means hyperparameters). With the fomo-core preset the
    estimator also trains a copy of the server's global model each round; scikit-learn keeps its
    SGD momentum between ``partial_fit`` calls, so the two trainings share it.
    """

    def __init__(
        self,
        estimator: Any,
        val_data: tuple,
        train_data: Optional[tuple] = None,
        *,
        preset: Any = "fomo-core",
        policy: Optional[ClientPolicy] = None,
        train_fn: Optional[Callable[[Any], Any]] = None,
        global_train_data: Optional[tuple] = None,
        epochs: int = 1,
        eval_batch_size: Optional[int] = None,
    ):
        self.policy = client_policy(preset, policy)
        if not hasattr(estimator, "coefs_"):
            raise ValueError(
                "estimator must have parameters: fit it, or call initialise_mlp(estimator, X, y, classes) first"
            )
        check_client_options(train_fn, train_data, epochs, eval_batch_size, "the default training", global_train_data)
        pairs = (("val_data", val_data), ("train_data", train_data), ("global_train_data", global_train_data))
        for name, data in pairs:
            if data is not None and not (isinstance(data, (tuple, list)) and len(data) == 2):
                raise TypeError(f"{name} must be a pair (X, y), got {type(data).__name__}")
        if len(val_data[1]) == 0:
            raise ValueError("val_data holds no samples: FedFomo weighs the candidates by their validation loss")
        self.estimator = estimator
        self.params = get_flat_params(estimator)
        self.guard_layout = dense_layout(mlp_spec(estimator))  # [W_1, b_1, ...]: for the policy's guard
        self.last_update = self.params.copy() if self.policy.baseline == "last_update" else None
        self.val_data = val_data
        self.train_data = train_data
        self.global_train_data = global_train_data
        self.train_fn = train_fn
        self.epochs = epochs
        self.eval_batch_size = eval_batch_size

    @property
    def loss_of_flat_alone(self) -> bool:
        """Whether a model's validation loss depends on its flat model alone (an MLP has nothing
        else), so that the training check may evaluate the model before training after it
        (:func:`fomo_core.round.train_round`): with the default training (a ``train_fn`` may
        change anything)."""
        return self.train_fn is None

    def evaluate(self, models: Any, data: Optional[tuple] = None) -> tuple:
        """(losses [K], accuracies [K]) float64 of K flat models ([K, P] or a list of [P]) on
        ``data`` (default: the validation data, with the policy's loss)."""
        models = np.stack([np.asarray(m) for m in models]) if isinstance(models, list) else models
        x, y = self.val_data if data is None else data
        size = len(y)
        step = size if (data is not None or self.eval_batch_size is None) else self.eval_batch_size
        per_batch, correct, sizes = [], 0.0, []
        for start in range(0, size, step):
            loss, acc = evaluate_mlp(self.estimator, models, x[start : start + step], y[start : start + step])
            n = len(y[start : start + step])
            per_batch.append(loss)
            correct = correct + acc * n
            sizes.append(n)
        return batch_loss("mean" if data is not None else self.policy.loss, per_batch, sizes), correct / size

    def get_flat(self) -> np.ndarray:
        """A copy of the model's flat parameters, [P]: what the client uploads."""
        return self.params.copy()

    def set_flat(self, flat: Any) -> None:
        """Loads flat parameters [P] into the model (and as its last federated update)."""
        set_flat_params(self.estimator, flat)
        self.params[...] = np.asarray(flat)
        if self.last_update is not None:
            self.last_update[...] = self.params

    def train(self, data: Optional[tuple] = None) -> None:
        """Local training (the user's hook or partial_fit on ``data``, default the training data),
        then the flat buffer follows the model."""
        if self.train_fn is not None:
            self.train_fn(self.estimator)
        else:
            train_mlp(self.estimator, *(self.train_data if data is None else data), epochs=self.epochs)
        self.params[...] = get_flat_params(self.estimator)

    def _global(self, global_params: Any) -> Optional[np.ndarray]:
        if global_params is None:
            return None
        if hasattr(global_params, "detach"):
            global_params = global_params.detach().cpu().numpy()
        g = np.asarray(global_params)
        if g.shape != self.params.shape or g.dtype.kind != "f":
            raise ValueError(
                f"global_params must be a floating vector of shape {self.params.shape}, got {g.dtype} {g.shape}"
            )
        return g.astype(self.params.dtype, copy=False)

    def update(self, candidates: Any, global_params: Any = None) -> ClientRound:
        """The federated half of a round (into the flat buffer, then loaded into the estimator).
        No training.

        candidates:    [M, P] flat models (rows of :func:`get_flat_params`'s layout)
        global_params: the server's global model [P] (``Server.global_params()``), which the
                       policy may move toward; peers' presets ignore it"""
        cands = np.asarray(candidates) if not hasattr(candidates, "shape") else candidates
        if len(cands.shape) != 2 or cands.shape[1] != self.params.size:
            raise ValueError(f"candidates has shape {tuple(cands.shape)}, expected (M, {self.params.size})")
        res = federate_client(self, cands, copy=self._copy, global_params=self._global(global_params))
        set_flat_params(self.estimator, self.params)
        if self.last_update is not None:
            self.last_update[...] = self.params
        return res

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)
        if dst is self.params:  # the estimator follows its flat buffer
            set_flat_params(self.estimator, self.params)

    def train_round(self, result: ClientRound, global_params: Any = None) -> ClientRound:
        """The training half of a round under the policy (:func:`fomo_core.round.train_round`):
        :meth:`train`, and with the fomo-core policy a trained copy of the global model
        (``result.global_update``) and the check that training did not worsen the validation loss.
        ``global_params``: the same global model :meth:`update` received."""
        train_client(self, result, copy=self._copy, global_params=self._global(global_params))
        return result

    def round(self, candidates: Any, global_params: Any = None) -> ClientRound:
        """One whole FedFomo round: :meth:`update`, then :meth:`train_round`.

        candidates: [M, P] flat models (rows of :func:`get_flat_params` layout); global_params:
        the server's global model [P], when it keeps one."""
        return self.train_round(self.update(candidates, global_params), global_params)
