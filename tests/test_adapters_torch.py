"""fomo_core.adapters.torch: flatten_module, CandidateBank and FedFomoClient on real torch models
and the digits data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.utils import parameters_to_vector

import fomo_core as fc
from fomo_core.adapters.torch import CandidateBank, FedFomoClient, flat_layout, flatten_module, train_sgd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int, hidden: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.from_numpy((d.data / 16.0).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    return (x[:600], y[:600]), (x[600:900], y[600:900]), (x[900:1200], y[900:1200])


# --- flatten_module --------------------------------------------------------------------------------


def test_flatten_makes_parameters_views_of_one_buffer():
    model = mlp(0)
    before = parameters_to_vector(model.parameters()).clone()
    flat = flatten_module(model)
    assert flat.shape == (before.numel(),) and flat.is_contiguous()
    assert torch.equal(flat, before)  # same order as parameters_to_vector, values unchanged
    for p in model.parameters():
        assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    with torch.no_grad():
        flat.zero_()
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())


def test_flatten_is_idempotent():
    model = mlp(0)
    flat = flatten_module(model)
    again = flatten_module(model)
    assert again.data_ptr() == flat.data_ptr() and again.shape == flat.shape


def test_an_optimizer_built_before_flattening_keeps_training_the_model(digits):
    (x, y), _, _ = digits
    flattened, plain = mlp(1), mlp(1)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (flattened, plain)]
    flat = flatten_module(flattened)
    snapshot = flat.clone()
    for _ in range(20):
        for model, opt in zip((flattened, plain), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert not torch.equal(flat, snapshot)  # the steps landed in the flat buffer
    # the same arithmetic on the same values: only where the parameters live has changed
    assert torch.equal(flat, parameters_to_vector(plain.parameters()))


def test_tied_parameters_appear_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    flat = flatten_module(model)
    assert flat.numel() == 16 + 4 + 4
    assert model.a.weight is model.b.weight


def test_include_buffers_moves_batchnorm_statistics_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    flat = flatten_module(model, include_buffers=True)
    layout = flat_layout(model, include_buffers=True)
    assert layout.names[-2:] == ("1.running_mean", "1.running_var")  # num_batches_tracked is integer: left out
    assert flat.numel() == layout.size == 8 * 6 + 6 + 6 + 6 + 6 * 3 + 3 + 6 + 6
    model.train()
    model(torch.randn(32, 8))  # updates the running statistics in place
    mean = layout.views(flat)["1.running_mean"]
    assert torch.count_nonzero(mean) > 0 and torch.equal(mean, model[1].running_mean)


def test_flatten_rejects_mixed_dtypes_and_empty_modules():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2).double())
    with pytest.raises(TypeError, match=r"module parameter '1.weight' has dtype torch.float64, expected torch.float32"):
        flatten_module(model)
    with pytest.raises(ValueError, match="at least one floating-point parameter"):
        flatten_module(nn.ReLU())
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got list"):
        flatten_module([1, 2])


# --- CandidateBank --------------------------------------------------------------------------------


def test_bank_fills_from_state_dicts_modules_and_flat_arrays():
    template = mlp(0)
    peers = [mlp(s) for s in (1, 2, 3, 4)]
    vecs = [parameters_to_vector(p.parameters()).detach().clone() for p in peers]
    bank = CandidateBank(template, capacity=5)
    rows = bank.fill([peers[0].state_dict(), peers[1], vecs[2].numpy(), vecs[3]])
    assert rows.shape == (4, vecs[0].numel()) and len(bank) == 4
    for m in range(4):
        assert torch.equal(rows[m], vecs[m])
    assert rows.data_ptr() == bank.buffer.data_ptr()  # a view, not a copy
    bank.clear()
    assert bank.add(vecs[1]) == 0 and torch.equal(bank.candidates[0], vecs[1])


def test_bank_fill_rows_gathers_without_a_temporary():
    template = mlp(0)
    table = torch.randn(6, flat_layout(template).size)
    bank = CandidateBank(template, capacity=3)
    rows = bank.fill_rows(table, [4, 0, 2])
    assert torch.equal(rows, table[[4, 0, 2]])
    with pytest.raises(ValueError, match=r"rows must be indices in \[0, 6\)"):
        bank.fill_rows(table, [6])


def test_bank_rejects_bad_models_before_writing():
    template = mlp(0)
    bank = CandidateBank(template, capacity=2)
    good = mlp(1)
    bank.fill([good])
    before = bank.buffer.clone()
    bad = mlp(2).state_dict()
    bad["2.weight"] = torch.zeros(10, 31)
    with pytest.raises(ValueError, match=r"models\[1\]\['2.weight'\] has shape \(10, 31\), expected \(10, 32\)"):
        bank.fill([good, bad])
    missing = {k: v for k, v in mlp(2).state_dict().items() if k != "0.bias"}
    with pytest.raises(ValueError, match=r"models\[0\] has no entry '0.bias'"):
        bank.fill([missing])
    with pytest.raises(ValueError, match=r"models\[0\] has shape \(7,\), expected \(2410,\)"):
        bank.fill([torch.zeros(7)])
    with pytest.raises(ValueError, match="more than the bank's capacity 2"):
        bank.fill([good, good, good])
    # compared bit for bit: the unfilled row is torch.empty memory, which may hold NaNs (never equal)
    assert torch.equal(bank.buffer.view(torch.int32), before.view(torch.int32)) and len(bank) == 1


# --- FedFomoClient --------------------------------------------------------------------------------


# The fomo-core preset rescales improving candidates to the client's balance and bounds their
# layers' distances: these tests check the bare algorithm against a hand computation.
UNGUARDED = fc.get_preset("fomo-core").client.replace(guard=None, rebalance=False)


def _trained(seed: int, data, steps: int) -> nn.Sequential:
    model = mlp(seed)
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_update_matches_the_algorithm_computed_by_hand(digits):
    train, val, _ = digits
    local = _trained(0, train, 5)
    peers = [_trained(1, train, 60), mlp(2), _trained(3, train, 20)]  # better, useless, better
    theta = parameters_to_vector(local.parameters()).detach().double().clone()
    cands = torch.stack([parameters_to_vector(p.parameters()).detach() for p in peers])
    with torch.no_grad():
        l0 = nn.functional.cross_entropy(local(val[0]), val[1]).item()
        ln = [nn.functional.cross_entropy(p(val[0]), val[1]).item() for p in peers]
    d = torch.linalg.vector_norm(cands.double() - theta, dim=1).numpy()
    s = (l0 - np.array(ln)) / d
    w = np.maximum(s, 0) / np.maximum(s, 0).sum()
    expected = theta + (torch.from_numpy(w)[:, None] * (cands.double() - theta)).sum(0)

    client = FedFomoClient(local, val, train, seed=0, policy=UNGUARDED)
    res = client.update(cands)
    assert w[0] > 0 and w[1] == 0 and w[2] > 0
    # losses: the adapter and F.cross_entropy both reduce 300 float32 terms, in different orders
    np.testing.assert_allclose(res.candidate_losses, ln, rtol=1e-5)
    assert res.baseline_loss == pytest.approx(l0, rel=1e-5)
    np.testing.assert_allclose(res.scores, s, rtol=1e-4)  # the loss differences carry the 1e-5 above
    np.testing.assert_allclose(res.weights, w, rtol=1e-4)
    # parameters are float32: the update is exact up to float32 rounding of values of order 1
    torch.testing.assert_close(client.params.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(parameters_to_vector(local.parameters()), client.params)  # the model moved
    assert res.train_seconds == 0.0 and res.eval_seconds > 0


def test_update_with_no_improving_candidate_leaves_the_model_bit_for_bit(digits):
    train, val, _ = digits
    local = _trained(0, train, 60)
    before = parameters_to_vector(local.parameters()).detach().clone()
    client = FedFomoClient(local, val, train)
    res = client.update([mlp(5), mlp(6)])  # untrained models: worse on the validation data
    assert np.all(res.weights == 0) and np.all(res.scores < 0)
    assert torch.equal(client.params, before)


def test_round_trains_with_the_default_loop_and_reports_time(digits):
    train, val, test = digits
    client = FedFomoClient(mlp(0), val, train, epochs=3, lr=0.1, batch_size=32, seed=0)
    acc0 = client.evaluate(client.params.unsqueeze(0), test)[1][0]
    res = client.round(torch.zeros(0, client.params.numel()))
    acc1 = client.evaluate(client.params.unsqueeze(0), test)[1][0]
    assert res.weights.shape == (0,) and res.train_seconds > 0
    assert acc1 > acc0 + 0.3  # three epochs on 600 digits take an untrained MLP far above chance
    assert res.params.data_ptr() == client.params.data_ptr()


def test_round_uses_the_user_training_hook_and_a_dataloader(digits):
    train, val, _ = digits
    calls = []
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=50, shuffle=False)

    def hook(module):
        calls.append(module)
        train_sgd(module, loader, epochs=1, lr=0.1)

    model = mlp(0)
    client = FedFomoClient(model, val, train_fn=hook)
    before = client.get_flat()
    client.round([mlp(1)])
    assert calls == [model]
    assert not torch.equal(before, client.params)


def test_client_set_and_get_flat():
    client = FedFomoClient(mlp(0), (torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64)), train_fn=lambda m: None)
    v = torch.arange(client.params.numel(), dtype=torch.float32)
    client.set_flat(v.numpy())
    assert torch.equal(client.get_flat(), v)
    assert client.get_flat().data_ptr() != client.params.data_ptr()
    with pytest.raises(ValueError, match=r"flat has shape \(3,\), expected \(2410,\)"):
        client.set_flat(torch.zeros(3))


def test_client_rejects_bad_arguments():
    val = (torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="train_data is required unless train_fn is given"):
        FedFomoClient(mlp(0), val)
    with pytest.raises(TypeError, match="train_fn must be callable"):
        FedFomoClient(mlp(0), val, train_fn=3)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0, got -1"):
        FedFomoClient(mlp(0), val, val, epochs=-1)
    client = FedFomoClient(mlp(0), val, val)
    with pytest.raises(ValueError, match=r"candidates has shape \(2, 5\), expected \(M, 2410\)"):
        client.update(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="candidates must be a CandidateBank"):
        client.update("models")


def test_the_fused_step_is_what_fomo_core_computes(digits):
    """The client is a thin adapter: its weights are fomo_core.compute_weights on the same inputs."""
    train, val, _ = digits
    local = _trained(0, train, 5)
    cands = torch.stack([parameters_to_vector(_trained(s, train, 30).parameters()).detach() for s in (1, 2)])
    theta = parameters_to_vector(local.parameters()).detach().clone()
    client = FedFomoClient(local, val, train, policy=UNGUARDED)
    res = client.update(cands)
    w = fc.compute_weights(theta, cands, res.baseline_loss, res.candidate_losses)
    np.testing.assert_array_equal(res.weights, w.numpy())


# --- candidates read where they are; the flat SGD step ----------------------------------------------


def test_module_candidates_are_read_in_place_and_give_the_flat_round(digits):
    """Modules (a server's models by reference) are evaluated and combined where they are: the
    client's bank stays empty, and the round equals the one over the same models as [M, P]. The
    default preset's guard reads flat models: it takes them through the bank, to the same round."""
    train, val, _ = digits
    peers = [_trained(s, train, 10 * s) for s in (1, 2, 3)]
    flat = torch.stack([parameters_to_vector(p.parameters()).detach() for p in peers])
    unguarded = fc.get_preset("fomo-core").client.replace(guard=None, rebalance=False)
    by_rows = FedFomoClient(_trained(0, train, 5), val, train, policy=unguarded)
    in_place = FedFomoClient(_trained(0, train, 5), val, train, policy=unguarded)
    guarded = FedFomoClient(_trained(0, train, 5), val, train)
    expected = by_rows.update(flat)
    res = in_place.update(peers)
    assert len(in_place.bank) == 0  # nothing was copied into the bank
    np.testing.assert_array_equal(guarded.update(peers).candidate_losses, expected.candidate_losses)
    assert len(guarded.bank) == 3
    assert res.params.data_ptr() == in_place.params.data_ptr()
    np.testing.assert_array_equal(res.candidate_losses, expected.candidate_losses)
    np.testing.assert_array_equal(res.weights, expected.weights)
    # the update over layer lists: the same float32 arithmetic per element as over rows
    torch.testing.assert_close(in_place.params, by_rows.params, rtol=0, atol=0)
    for peer, row in zip(peers, flat):  # nothing of theirs changed
        torch.testing.assert_close(parameters_to_vector(peer.parameters()), row, rtol=0, atol=0)


def test_candidates_in_another_dtype_are_converted_into_the_bank(digits):
    train, val, _ = digits
    peers = [_trained(s, train, 20) for s in (1, 2)]
    client = FedFomoClient(_trained(0, train, 5), val, train)
    reference = FedFomoClient(_trained(0, train, 5), val, train)
    res = client.update([{k: v.double() for k, v in p.state_dict().items()} for p in peers])
    assert len(client.bank) == 2  # converted to the client's float32 first
    np.testing.assert_array_equal(res.weights, reference.update([p.state_dict() for p in peers]).weights)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "weight_decay": 1e-3}])
def test_train_sgd_gives_torch_sgd_values_bit_for_bit(digits, options):
    """A flattened module trains by one flat step per batch (plain SGD) or by torch.optim.SGD
    (momentum, weight decay): either way the values of torch.optim.SGD on an ordinary module."""
    train, _, _ = digits
    flat_model, plain = mlp(3), mlp(3)
    flatten_module(flat_model)
    train_sgd(flat_model, train, epochs=2, lr=0.1, batch_size=50, generator=torch.Generator().manual_seed(0), **options)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, **options)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(600, generator=g)
        for i in range(0, 600, 50):
            idx = order[i : i + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(plain(train[0][idx]), train[1][idx]).backward()
            opt.step()
    for a, b in zip(flat_model.parameters(), plain.parameters()):
        assert torch.equal(a, b)
        assert (a.grad is None) == (not options)  # the flat step leaves no gradient views behind
