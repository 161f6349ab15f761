"""Checked by mypy in tests/ops/test_typing.py (never run): the ops keep the caller's array type.

Lines ending in ``# wrong`` state a type that is NOT the result's: mypy must flag exactly those,
which proves the check can fail."""

from typing import Any

import numpy as np
import torch
from typing_extensions import assert_type

import fomo_core as fc

x: np.ndarray = np.zeros(4, np.float32)
c: np.ndarray = np.ones((2, 4), np.float32)
assert_type(fc.candidate_distances(x, c), np.ndarray)
assert_type(fc.compute_weights(x, c, 1.0, [0.5, 2.0]), np.ndarray)
assert_type(fc.first_order_scores(x, c, 1.0, [0.5, 2.0]).scores, np.ndarray)
assert_type(fc.apply_update(x, c, [0.5, 0.5]), np.ndarray)
assert_type(fc.fomo_step(x, c, 1.0, [0.5, 2.0]).params, np.ndarray)
assert_type(fc.fomo_step(x, c, 1.0, [0.5, 2.0]).weights, np.ndarray)
layers: list[np.ndarray] = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
assert_type(fc.fomo_step(layers, [layers], 1.0, [0.5]).params, list[np.ndarray])
assert_type(fc.fomo_step(layers, [layers], 1.0, [0.5]).weights, np.ndarray)

t = torch.zeros(4)
tc = torch.ones(2, 4)
assert_type(fc.candidate_distances(t, tc), torch.Tensor)
assert_type(fc.compute_weights(t, tc, 1.0, [0.5, 2.0]), torch.Tensor)
assert_type(fc.first_order_scores(t, tc, 1.0, [0.5, 2.0]).rejected, torch.Tensor)
assert_type(fc.apply_update(t, tc, [0.5, 0.5]), torch.Tensor)
assert_type(fc.fomo_step(t, tc, 1.0, [0.5, 2.0], out=t).params, torch.Tensor)
assert_type(fc.fomo_step(t, tc, 1.0, [0.5, 2.0], out=t).weights, torch.Tensor)
state: dict[str, torch.Tensor] = {"w": torch.zeros(3)}
assert_type(fc.fomo_step(state, [state], 1.0, [0.5]).params, dict[str, torch.Tensor])
assert_type(fc.fomo_step(state, [state], 1.0, [0.5]).scores, torch.Tensor)

# the weights with the scores from the same pass (what Server.receive takes)
assert_type(fc.compute_weights(x, c, 1.0, [0.5, 2.0], return_scores=True), tuple[np.ndarray, fc.Scores[np.ndarray]])
assert_type(fc.compute_weights(t, tc, 1.0, [0.5, 2.0], return_scores=True)[1].scores, torch.Tensor)

# the server's rows keep init_params' array type
assert_type(fc.Server(3, x).candidates(0), tuple[np.ndarray, np.ndarray])
assert_type(fc.Server(3, t).candidates(0)[1], torch.Tensor)
assert_type(fc.Server(3, t).model(0), torch.Tensor)
assert_type(fc.layout.flatten(state), torch.Tensor)
assert_type(fc.layout.flatten(layers), np.ndarray)

anything: Any = x
assert_type(fc.compute_weights(anything, c, 1.0, [0.5]), Any)


class OtherCudaArray:  # CuPy, Numba, JAX on a GPU: accepted, results of their own (unnamed) type
    __cuda_array_interface__: dict = {}


assert_type(fc.candidate_distances(OtherCudaArray(), [OtherCudaArray()]), Any)

assert_type(fc.candidate_distances(t, tc), np.ndarray)  # wrong
assert_type(fc.compute_weights(x, c, 1.0, [0.5, 2.0]), torch.Tensor)  # wrong
assert_type(fc.fomo_step(state, [state], 1.0, [0.5]).params, torch.Tensor)  # wrong
assert_type(fc.Server(3, x).candidates(0), tuple[np.ndarray, torch.Tensor])  # wrong
