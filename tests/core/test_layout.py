"""fomo_core.layout: a model's named layers <-> the server's flat rows, and the own-loop round it
makes possible (Server rows -> named candidates -> fomo_step -> flat upload)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fomo_core as fc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_flatten_lays_the_layers_end_to_end_as_a_detached_copy():
    model = mlp(0)
    params = dict(model.named_parameters())
    flat = fc.layout.flatten(params)
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(flat, expected) and flat.dtype == torch.float32
    assert not flat.requires_grad
    with torch.no_grad():
        model[0].weight.add_(1.0)  # a snapshot: later training does not change it
    assert torch.equal(flat, expected)


def test_flatten_writes_into_out_and_takes_numpy_layer_lists():
    layers = [np.arange(6, dtype=np.float64).reshape(2, 3), np.array([7.0, 8.0])]
    out = np.zeros(8)
    assert fc.layout.flatten(layers, out=out) is out
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 5, 7, 8])


def test_unflatten_of_server_rows_gives_models_of_views_laid_out_like_the_model():
    params = dict(mlp(0).named_parameters())
    rows = torch.stack([fc.layout.flatten(dict(mlp(s).named_parameters())) for s in (1, 2, 3)])
    models = fc.layout.unflatten(rows, like=params)
    assert len(models) == 3
    for k, model in enumerate(models):
        assert list(model) == list(params)
        for name, array in model.items():
            assert array.shape == params[name].shape
            assert rows.data_ptr() <= array.data_ptr() < rows.data_ptr() + rows.numel() * 4  # a view, no copy
        assert torch.equal(fc.layout.flatten(model), rows[k])  # the exact inverse
    models[1]["2.bias"][0] = 42.0  # writing a view writes the row
    assert rows[1, -3] == 42.0
    single = fc.layout.unflatten(rows[0], like=params)
    assert isinstance(single, dict) and torch.equal(single["0.weight"], models[0]["0.weight"])


def test_the_own_loop_round_on_named_layers_equals_the_flat_round_bit_for_bit():
    """What docs/how-to/pytorch-loop.md does: the server's rows as named candidates, fomo_step in
    place on the parameters, the flat upload; the same numbers as the all-flat round."""
    model = mlp(0)
    server = fc.Server(4, fc.layout.flatten(dict(model.named_parameters())), m=3, seed=0)
    for client in range(1, 4):
        server.receive(client, fc.layout.flatten(dict(mlp(client).named_parameters())), [], [])
    server.end_round()
    ids, rows = server.candidates(0)
    assert len(ids) == 3
    losses, L0 = [0.5, 1.5, 0.8], 1.0
    flat_before = fc.layout.flatten(dict(model.named_parameters()))
    flat_step = fc.fomo_step(flat_before, rows, L0, losses)

    params = dict(model.named_parameters())
    with torch.no_grad():
        step = fc.fomo_step(params, fc.layout.unflatten(rows, like=params), L0, losses, out=params)
    assert step.params is params
    assert torch.equal(fc.layout.flatten(params), flat_step.params)
    assert torch.equal(step.scores, flat_step.scores) and torch.equal(step.weights, flat_step.weights)
    assert float(step.weights.sum()) == pytest.approx(1.0)
    server.receive(0, fc.layout.flatten(params), ids, step.scores)
    np.testing.assert_array_equal(server.affinity.matrix[0, ids], step.scores.numpy())


def test_a_state_dict_with_integer_buffers_is_refused_naming_the_entry():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(TypeError, match=r'model\["1.num_batches_tracked"\] has dtype torch.int64.*named_parameters'):
        fc.layout.flatten(model.state_dict())
    with pytest.raises(TypeError, match=r'like\["1.num_batches_tracked"\]'):
        fc.layout.unflatten(torch.zeros(2, 100), like=model.state_dict())


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: fc.layout.unflatten(torch.zeros(2, 58), like=p), ValueError, r"58 values per model.*hold 53"),
        (lambda p: fc.layout.unflatten(torch.zeros(2, 2, 53), like=p), ValueError, r"flat must be .* got \(2, 2, 53\)"),
        (lambda p: fc.layout.unflatten(torch.zeros(53, dtype=torch.int32), like=p), TypeError, "floating-point"),
        (lambda p: fc.layout.flatten(p, out=torch.zeros(52)), ValueError, r"out must be .* \(53,\)"),
        (lambda p: fc.layout.flatten(p, out=torch.zeros(53, dtype=torch.float64)), ValueError, "dtype torch.float32"),
        (lambda p: fc.layout.flatten({**p, "x": torch.zeros(2, dtype=torch.float64)}), TypeError, r'model\["x"\]'),
        (lambda p: fc.layout.flatten(torch.zeros(53)), TypeError, "mapping or sequence"),
        (lambda p: fc.layout.flatten({}), ValueError, "no layers"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    params = dict(mlp(0).named_parameters())  # 6*5 + 5 + 5*3 + 3 = 53
    with pytest.raises(error, match=message):
        call(params)


def test_compute_weights_returns_the_scores_of_the_same_pass_measured_before_the_update():
    rng = np.random.default_rng(0)
    local = rng.standard_normal(500).astype(np.float32)
    candidates = local + 0.1 * rng.standard_normal((4, 500)).astype(np.float32)
    L0, losses = 1.0, [0.8, 1.2, 0.9, 1.0]
    weights, scores = fc.compute_weights(local, candidates, L0, losses, return_scores=True)
    np.testing.assert_array_equal(weights, fc.compute_weights(local, candidates, L0, losses))
    before = fc.first_order_scores(local, candidates, L0, losses)
    for field in ("scores", "distances", "rejected", "skipped"):
        np.testing.assert_array_equal(getattr(scores, field), getattr(before, field))
    assert scores.scores[1] < 0  # non-improving candidates are measured too: the affinity adds them
    # the trap that return_scores avoids: scoring after an in-place update measures the moved model
    fc.apply_update(local, candidates, weights, out=local)
    after = fc.first_order_scores(local, candidates, L0, losses)
    assert not np.array_equal(after.scores, scores.scores)

    planned = fc.plan(local, candidates).compute_weights(L0, losses, return_scores=True)
    np.testing.assert_array_equal(planned[1].scores, fc.first_order_scores(local, candidates, L0, losses).scores)
    t_weights, t_scores = fc.compute_weights(
        torch.from_numpy(local), torch.from_numpy(candidates), L0, losses, return_scores=True
    )
    assert isinstance(t_weights, torch.Tensor) and isinstance(t_scores.scores, torch.Tensor)


def test_return_scores_must_be_a_bool():
    x = np.zeros(3, np.float32)
    with pytest.raises((TypeError, ValueError), match="return_scores"):
        fc.compute_weights(x, x[None], 1.0, [0.5], return_scores="yes")
