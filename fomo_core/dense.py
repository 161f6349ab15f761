"""Batched evaluation of dense networks: :class:`DenseSpec` and :func:`evaluate_candidates`.

A :class:`DenseSpec` describes a fully connected network whose parameters live in one flat buffer
(per layer the weight, then the bias, the weight in the spec's layout), so that M candidate models
are M rows of a [M, P] array. :func:`evaluate_candidates` runs all of them over a validation set in
one compiled call and returns the mean loss and the accuracy of each.

Flat layout, for layer l with ``n_in = sizes[l]`` inputs and ``n_out = sizes[l + 1]`` outputs:

- ``weight_layout="out_in"`` (torch.nn.Linear): the weight as a row-major [n_out, n_in] matrix;
- ``weight_layout="in_out"`` (scikit-learn ``coefs_``, Keras): a row-major [n_in, n_out] matrix;

followed by the bias [n_out]; layers follow one another. This is exactly
``torch.nn.utils.parameters_to_vector(seq.parameters())`` for an ``nn.Sequential`` of Linear
layers, and the concatenation of ``coefs_[l].ravel(), intercepts_[l]`` for scikit-learn (the
adapters build specs from those: ``fomo_core.adapters.torch.dense_spec`` and
``fomo_core.adapters.numpy.mlp_spec``).

Outputs (``output=``):

- ``"softmax"``: softmax cross-entropy over C = sizes[-1] logits, y holds class indices in [0, C);
  accuracy is the share of samples whose first largest logit is the label.
- ``"logistic"``: one logistic output unit (binary classification as scikit-learn's MLPClassifier
  does it); y in {0, 1}; loss softplus(z) - y z, prediction z > 0.
- ``"squared_error"``: identity output, loss mean over outputs of (z - y)^2 (as
  ``torch.nn.functional.mse_loss``; scikit-learn's MLPRegressor reports half of it); y float
  [B] or [B, C]; accuracy is NaN.

Losses and accuracies are means over the samples, weighted by ``sample_weight`` when given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _C
from ._models import is_floating, is_torch
from .layout import join, offsets_of, split
from .ops import _cuda_index, _device_vectors

__all__ = ["DenseSpec", "Evaluation", "evaluate_candidates", "evaluate_dense", "flat_from_layers", "layers_from_flat"]

# The names the kernels know, in code order; the codes are defined once, by the extension.
ACTIVATIONS = tuple(_C.ACTIVATIONS)
OUTPUTS = tuple(_C.OUTPUTS)
LAYOUTS = ("out_in", "in_out")


@dataclass(frozen=True)
class Evaluation:
    """Per-candidate results of an evaluation.

    loss:     [M] float64, mean (or sample-weighted mean) loss of each candidate
    accuracy: [M] float64, share of correctly classified samples (weighted likewise); NaN for
              regression outputs
    method:   how the candidates were run ("fused", "vmap" or "loop")
    """

    loss: Any
    accuracy: Any
    method: str = "fused"


@dataclass(frozen=True)
class DenseSpec:
    """A dense network over a flat parameter buffer.

    sizes:         layer widths (inputs, hidden..., outputs), at least two entries
    activation:    of the hidden layers: one of "relu", "tanh", "logistic", "identity", or a
                   tuple with one name per hidden layer
    weight_layout: "out_in" (torch.nn.Linear) or "in_out" (scikit-learn, Keras)
    output:        "softmax" (cross-entropy), "logistic" (one unit, binary) or "squared_error"
    """

    sizes: tuple
    activation: Union[str, tuple] = "relu"
    weight_layout: str = "out_in"
    output: str = "softmax"

    def __post_init__(self) -> None:
        try:
            sizes = tuple(int(s) for s in self.sizes)
        except (TypeError, ValueError):
            raise TypeError(f"sizes must be a sequence of integers, got {self.sizes!r}") from None
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must hold at least two positive widths (inputs, outputs), got {self.sizes!r}")
        object.__setattr__(self, "sizes", sizes)
        hidden = len(sizes) - 2
        acts = (self.activation,) * hidden if isinstance(self.activation, str) else tuple(self.activation)
        if isinstance(self.activation, str) and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if len(acts) != hidden or any(a not in ACTIVATIONS for a in acts):
            raise ValueError(
                f"activation must be one of {ACTIVATIONS} or a tuple of {hidden} of them (one per hidden "
                f"layer), got {self.activation!r}"
            )
        if not isinstance(self.activation, str):
            object.__setattr__(self, "activation", acts)
        if self.weight_layout not in LAYOUTS:
            raise ValueError(f"weight_layout must be 'out_in' or 'in_out', got {self.weight_layout!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "logistic" and sizes[-1] != 1:
            raise ValueError(f"output='logistic' needs one output unit (binary), got sizes[-1] = {sizes[-1]}")

    # ---- shape of the flat buffer ----
    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def num_inputs(self) -> int:
        return self.sizes[0]

    @property
    def num_outputs(self) -> int:
        return self.sizes[-1]

    @property
    def activations(self) -> tuple:
        """One activation name per hidden layer."""
        if isinstance(self.activation, str):
            return (self.activation,) * (len(self.sizes) - 2)
        return self.activation

    @property
    def num_params(self) -> int:
        return sum(n_out * n_in + n_out for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]))

    def weight_shape(self, layer: int) -> tuple:
        n_in, n_out = self.sizes[layer], self.sizes[layer + 1]
        return (n_out, n_in) if self.weight_layout == "out_in" else (n_in, n_out)

    @property
    def shapes(self) -> list:
        """The arrays of the flat buffer in order: [W_1, b_1, W_2, b_2, ...], weights in the spec's layout."""
        return [s for layer in range(self.num_layers) for s in (self.weight_shape(layer), (self.sizes[layer + 1],))]

    def offsets(self) -> list:
        """[(weight_offset, bias_offset)] of each layer in the flat buffer."""
        at, _ = offsets_of(self.shapes)
        return list(zip(at[0::2], at[1::2]))


# ---- flat buffers <-> layer lists ----
def flat_from_layers(spec: DenseSpec, weights: Sequence, biases: Sequence, *, dtype: Any = None) -> np.ndarray:
    """One flat NumPy vector [P] from per-layer weights (in the spec's layout) and biases."""
    if len(weights) != spec.num_layers or len(biases) != spec.num_layers:
        raise ValueError(
            f"expected {spec.num_layers} weights and biases, got {len(weights)} weights and {len(biases)} biases"
        )
    arrays = []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        w, b = np.asarray(w), np.asarray(b)
        if w.shape != spec.weight_shape(layer):
            raise ValueError(f"weights[{layer}] has shape {w.shape}, expected {spec.weight_shape(layer)}")
        if b.shape != (spec.sizes[layer + 1],):
            raise ValueError(f"biases[{layer}] has shape {b.shape}, expected {(spec.sizes[layer + 1],)}")
        arrays += [w, b]
    out = np.empty(spec.num_params, dtype=dtype or np.result_type(*arrays))
    return join(arrays, offsets_of(spec.shapes)[0], out)


def layers_from_flat(spec: DenseSpec, flat: Any) -> tuple[list, list]:
    """Views (no copy) of a flat vector [P] as per-layer weights (spec's layout) and biases."""
    if tuple(flat.shape) != (spec.num_params,):
        raise ValueError(f"flat has shape {tuple(flat.shape)}, expected ({spec.num_params},)")
    arrays = split(flat, spec.shapes, offsets_of(spec.shapes)[0])
    return arrays[0::2], arrays[1::2]


# ---- evaluation ----


def _candidates_for_kernel(candidate_params: Any) -> Any:
    """The [M, P] array itself, or a list with per candidate either a flat vector or a list of
    layer arrays (a state_dict's values, or [W1, b1, W2, b2, ...])."""
    if hasattr(candidate_params, "shape") and hasattr(candidate_params, "dtype"):
        return candidate_params
    if (
        isinstance(candidate_params, Mapping)
        or not isinstance(candidate_params, Sequence)
        or isinstance(candidate_params, (str, bytes))
    ):
        raise TypeError(
            "candidate_params must be a 2-D array [M, P] or a sequence of M models (flat vectors or "
            f"layer lists), got {type(candidate_params).__name__}"
        )
    out = []
    for m, c in enumerate(candidate_params):
        if isinstance(c, Mapping):
            c = [v for v in c.values() if hasattr(v, "dtype") and is_floating(v)]  # BatchNorm counters out
        elif not (hasattr(c, "shape") and hasattr(c, "dtype")) and not isinstance(c, Sequence):
            raise TypeError(
                f"candidate_params[{m}] must be a flat vector or a list of layer arrays, got {type(c).__name__}"
            )
        out.append(c if hasattr(c, "shape") else list(c))
    return out


def _targets(spec: DenseSpec, y: Any, rows: int) -> tuple:
    """(labels int64 [B] or None, targets float64 [B, C] or None), on y's device for torch."""
    torch_y = is_torch(y)
    if torch_y:
        import torch

        y = y.detach().resolve_conj().resolve_neg()  # lazily negated labels would be read un-negated
        shape = tuple(y.shape)
        is_float = y.is_floating_point()
        is_int = not is_float and y.dtype not in (torch.complex64, torch.complex128)
    else:
        y = np.asarray(y)
        shape = y.shape
        is_float = y.dtype.kind == "f"
        is_int = y.dtype.kind in "iub"
    if spec.output == "squared_error":
        c = spec.num_outputs
        if shape not in ((rows, c),) + (((rows,),) if c == 1 else ()):
            raise ValueError(f"y has shape {shape}, expected ({rows}, {c})" + (f" or ({rows},)" if c == 1 else ""))
        if not (is_float or is_int):
            raise TypeError(f"y must hold real targets for output='squared_error', got dtype {y.dtype}")
        if torch_y:
            t = y.detach().to(torch.float64).reshape(rows, c).contiguous()
            return None, (t.numpy() if t.device.type == "cpu" else t)
        return None, np.ascontiguousarray(y, dtype=np.float64).reshape(rows, c)
    if shape != (rows,):
        raise ValueError(f"y has shape {shape}, expected ({rows},) (one class index per row of X)")
    if not is_int:
        raise TypeError(
            f"y must hold integer class indices for output={spec.output!r}, got dtype {y.dtype} "
            "(fomo_core.adapters.numpy.mlp_labels(estimator, y) maps scikit-learn labels)"
        )
    limit = 2 if spec.output == "logistic" else spec.num_outputs
    if torch_y:
        labels = y.detach().to(torch.int64).contiguous()
        bad = ((labels < 0) | (labels >= limit)).nonzero()
        if bad.numel():
            first = int(bad[0, 0])
            raise ValueError(f"y[{first}] is {int(labels[first])}, expected a class index in [0, {limit})")
        if labels.device.type == "cpu":
            labels = labels.numpy()
        return labels, None
    labels = np.ascontiguousarray(y, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= limit))
    if bad.size:
        raise ValueError(f"y[{bad[0]}] is {labels[bad[0]]}, expected a class index in [0, {limit})")
    return labels, None


def _sample_weight(sample_weight: Any, rows: int) -> Any:
    if sample_weight is None:
        return None
    if is_torch(sample_weight):
        import torch

        if sample_weight.is_complex() or sample_weight.dtype == torch.bool:
            raise TypeError(f"sample_weight must hold real numbers, got dtype {sample_weight.dtype}")
        w = sample_weight.detach().resolve_neg().to(torch.float64).contiguous()
    else:
        try:
            w = np.asarray(sample_weight)
            if w.dtype.kind not in "iuf":
                raise TypeError
            w = np.ascontiguousarray(w, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(
                f"sample_weight must be an array of real numbers, got {type(sample_weight).__name__}"
            ) from None
    if tuple(w.shape) != (rows,):
        raise ValueError(f"sample_weight has shape {tuple(w.shape)}, expected ({rows},) (one weight per row of X)")
    finite_nonneg = bool(((w >= 0) & (w < float("inf"))).all())
    if not finite_nonneg:
        raise ValueError("sample_weight must hold finite values >= 0")
    largest = float(w.max())
    if not largest > 0:
        raise ValueError("sample_weight must have a positive sum")
    # The weighted means do not change when every weight is divided by the largest, and the sums of
    # weights (and of weighted losses) then stay far from float64's range at both ends: weights of
    # 1e307 overflowed them (NaN losses), and tiny ones no longer underflow in w * loss.
    w = w / largest
    if is_torch(w) and w.device.type == "cpu":
        w = w.numpy()
    return w


def evaluate_candidates(
    spec: DenseSpec, candidate_params: Any, X: Any, y: Any, *, sample_weight: Any = None
) -> Evaluation:
    """Mean loss and accuracy of M dense networks on one validation set, in one fused call.

    spec:             the network (:class:`DenseSpec`)
    candidate_params: [M, P] array of flat parameter vectors, or a sequence of M models each a
                      flat vector [P] or a list of layer arrays [W1, b1, ..., WL, bL] (weights
                      shaped as ``spec.weight_shape(l)``; a state_dict's values qualify). One
                      dtype for all: float32, float64, float16 or bfloat16 (float16/bfloat16
                      are computed in float32). Read in place, never copied.
    X:                [B, D] inputs, any of the four float dtypes (converted tile by tile to the
                      compute type), any strides
    y:                [B] class indices (int) for "softmax"/"logistic"; [B] or [B, C] float
                      targets for "squared_error"
    sample_weight:    optional [B] non-negative weights: the loss and accuracy become weighted
                      means sum(w_i l_i) / sum(w_i)

    Returns an :class:`Evaluation` with ``loss`` [M] and ``accuracy`` [M], float64: NumPy arrays,
    or torch tensors on the candidates' device when the candidates are torch tensors. On a CUDA
    device (a build with CUDA) the kernel runs on the current stream and the results stay on the
    device, in the arrays' library (torch, or CuPy for other CUDA arrays), without waiting for it.
    """
    if not isinstance(spec, DenseSpec):
        raise TypeError(f"spec must be a DenseSpec, got {type(spec).__name__}")
    if not (hasattr(X, "shape") and hasattr(X, "dtype")):
        raise TypeError(f"X must be a 2-D array [B, D], got {type(X).__name__}")
    if len(X.shape) != 2:  # B is needed here to read y; the bindings check the rest of X
        raise ValueError(f"X has shape {tuple(X.shape)}, expected (B, {spec.num_inputs})")
    rows = int(X.shape[0])
    if rows == 0:
        raise ValueError("X has no rows; the mean loss over an empty validation set is undefined")
    candidates = _candidates_for_kernel(candidate_params)
    labels, targets = _targets(spec, y, rows)
    weights = _sample_weight(sample_weight, rows)
    loss, accuracy = _C.evaluate_candidates(
        list(spec.sizes),
        [_C.ACTIVATIONS[a] for a in spec.activations],
        spec.weight_layout == "in_out",
        _C.OUTPUTS[spec.output],
        candidates,
        X,
        labels,
        targets,
        weights,
        _device_results(X, _count(candidates)),
    )
    return _in_callers_type(Evaluation(loss, accuracy), _first_array(candidates), X)


#: The same function under the name it had in the development versions before 0.2 (never
#: released), kept so that code written against them keeps working.
evaluate_dense = evaluate_candidates


def _count(candidates: Any) -> int:
    """M, as the bindings will see it (they reject a shape that is not [M, P] by name)."""
    if isinstance(candidates, list):
        return len(candidates)
    return int(candidates.shape[0]) if len(candidates.shape) else 0


def _device_results(X: Any, m: int) -> Any:
    """(loss, accuracy) vectors [M] on X's CUDA device, or None for host arrays (the bindings then
    return NumPy). Without usable CUDA there is nothing to allocate on: the bindings reject the
    CUDA arrays with an error that says so."""
    index = _cuda_index(X)
    if index is None or not _C.has_cuda():
        return None
    loss, accuracy = _device_vectors(X, index, m, 2)[:2]  # the third, a status vector, is not needed
    return loss, accuracy


def _first_array(candidates: Any) -> Any:
    """The first candidate array (it decides the result type), or None when there is none."""
    first = candidates
    while isinstance(first, list):
        first = first[0] if first else None
    return first


def _in_callers_type(ev: Evaluation, first: Any, X: Any) -> Evaluation:
    """Torch tensors on the candidates' device (X's when M = 0) for torch input, else NumPy; CUDA
    results are already device vectors of the caller's library."""
    source = first if first is not None else X
    if not is_torch(source) or not isinstance(ev.loss, np.ndarray):
        return ev
    import torch

    return Evaluation(torch.from_numpy(ev.loss).to(source.device), torch.from_numpy(ev.accuracy).to(source.device))
