"""fomo_core.evaluate_candidates on CUDA devices (csrc/cuda/evaluate_candidates.cu): results stay on
the device, agree with the plain-NumPy reference and the CPU kernel, are bitwise reproducible and
follow the caller's current stream. Parametrised over every CUDA device; skipped with the reason
otherwise (see tests/ops/test_cuda.py).

Tolerances: the rows of tests/ops/test_evaluate_candidates.py. float64 against the reference: F64 (only
the summation order differs); float32/16-bit storage (computed in float32) against the reference
on the very same rounded values: F32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuda_devices import DEVICES

from fomo_core import reference_dense as reference
from fomo_core.dense import DenseSpec, evaluate_candidates

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-4, atol=1e-5)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SPECS = {
    "softmax": DenseSpec((11, 13, 7, 5), ("tanh", "relu")),
    "logistic": DenseSpec((11, 9, 1), "logistic", "in_out", "logistic"),
    "squared_error": DenseSpec((11, 6, 3), "identity", "out_in", "squared_error"),
}


def _problem(spec: DenseSpec, device: str, dtype: torch.dtype, m: int = 4, rows: int = 77, seed: int = 0):
    rng = np.random.default_rng(seed)
    cands = torch.tensor(rng.standard_normal((m, spec.num_params)) * 0.5, dtype=dtype, device=device)
    X = torch.tensor(rng.standard_normal((rows, spec.num_inputs)), dtype=dtype, device=device)
    if spec.output == "squared_error":
        y = torch.tensor(rng.standard_normal((rows, spec.num_outputs)), device=device)
    else:
        classes = 2 if spec.output == "logistic" else spec.num_outputs
        y = torch.tensor(rng.integers(0, classes, rows), device=device)
    weights = torch.tensor(rng.uniform(0.5, 2.0, rows), device=device)
    return cands, X, y, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("output", sorted(SPECS))
def test_results_stay_on_the_device_and_match_the_reference(device, dtype, output):
    spec = SPECS[output]
    cands, X, y, weights = _problem(spec, device, dtype)
    ev = evaluate_candidates(spec, cands, X, y, sample_weight=weights)
    for values in (ev.loss, ev.accuracy):
        assert values.device == torch.device(device) and values.dtype == torch.float64 and values.shape == (4,)
    # the reference reads the very same (rounded) values in float64
    loss, accuracy = reference.evaluate_candidates(
        spec, cands.cpu().double(), X.cpu().double(), y.cpu(), sample_weight=weights.cpu()
    )
    tol = F64 if dtype == torch.float64 else F32
    np.testing.assert_allclose(ev.loss.cpu().numpy(), loss, **tol)
    if output == "squared_error":
        assert torch.isnan(ev.accuracy).all()
    else:
        # float32 rounding may flip a sample whose top logits (or logit and 0) nearly tie: one at most
        # (float64: the weighted sums differ in their order only)
        one_sample = F64 if dtype == torch.float64 else dict(rtol=0, atol=1.001 * float(weights.max() / weights.sum()))
        np.testing.assert_allclose(ev.accuracy.cpu().numpy(), accuracy, **one_sample)


@pytest.mark.parametrize("device", DEVICES)
def test_results_are_bitwise_reproducible(device):
    spec = SPECS["softmax"]
    cands, X, y, _ = _problem(spec, device, torch.float32, m=9, rows=1000, seed=1)
    first = evaluate_candidates(spec, cands, X, y)
    again = evaluate_candidates(spec, cands, X, y)
    assert torch.equal(first.loss, again.loss) and torch.equal(first.accuracy, again.accuracy)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_current_stream(device):
    spec = SPECS["softmax"]
    cands, X, y, _ = _problem(spec, device, torch.float32, m=6, rows=4096, seed=2)
    expected = evaluate_candidates(spec, cands, X, y)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        # produced on `stream` just before the call: only correct if the kernels run after it there
        fresh = X * 1.0
        ev = evaluate_candidates(spec, cands, fresh, y)
    stream.synchronize()
    assert torch.equal(ev.loss, expected.loss)


@pytest.mark.parametrize("device", DEVICES)
def test_no_candidates_gives_empty_device_results(device):
    spec = SPECS["softmax"]
    _, X, y, _ = _problem(spec, device, torch.float32)
    ev = evaluate_candidates(spec, torch.empty(0, spec.num_params, device=device), X, y)
    assert ev.loss.shape == (0,) and ev.loss.device == torch.device(device)
