"""The client round's guard: distances bounded layer by layer, candidates rescaled to the client's
balance. Each test pins an attack the guard must stop, or a cost it must not have: a
reparametrised copy of a good model (the same function, layers out of balance) used to pass the
whole-model bound and wreck the victim's next local training; a poison in one small layer hid
in a bound over the whole model."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import fomo_core as fc
from fomo_core.adapters.numpy import MLPClassifierClient, get_flat_params, initialise_mlp, mlp_spec
from fomo_core.adapters.torch import FedFomoClient, flatten_module, guard_layout, train_sgd
from fomo_core.adapters.torch_evaluate import dense_spec
from fomo_core.guard import (  # _checked, _scale_units: to rescale the units of any linked layout
    Balancer,
    GuardLayout,
    Link,
    _checked,
    _scale_units,
    dense_layout,
    guard_layers,
    layer_distances,
    rebalance,
)
from fomo_core.round import federate
from fomo_core.simulate.attacks import edge_scale, reparametrise

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import models as benchmark_models  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESET = fc.get_preset("fomo-core").client


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def lenet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return benchmark_models.lenet()  # the round benchmark's: convolutions, pooling, a flattening


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.from_numpy((d.data / 16.0).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500])


def outputs(module: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What ``module`` with the parameters ``flat`` computes on x."""
    module = copy.deepcopy(module)
    vector_to_parameters(flat, module.parameters())
    with torch.no_grad():
        return module(x)


# --- the layers ------------------------------------------------------------------------------------


def test_layers_are_each_weight_and_each_weight_with_what_follows_it():
    shapes = [(3,), (16, 3, 3, 3), (16,), (16,), (32, 16), (10, 32), (10,)]
    assert guard_layers(shapes) == ((0,), (1,), (1, 2, 3), (4,), (5,), (5, 6))
    assert guard_layers([(7,)]) == ((0,),)


def _distances_by_hand(local, cands, groups, offsets, sizes, order):
    out = []
    for c in cands:
        ratios = []
        for group in groups:
            pick = np.concatenate([np.arange(offsets[k], offsets[k] + sizes[k]) for k in group])
            d, n = np.linalg.norm(c[pick] - local[pick], order), np.linalg.norm(local[pick], order)
            ratios.append(0.0 if d == 0 else d / n)
        out.append(max(ratios))
    return np.array(out)


@pytest.mark.parametrize("norm, order", [("l2", 2), ("l1", 1)])
def test_layer_distances_are_the_largest_ratio_over_the_layers(norm, order):
    rng = np.random.default_rng(0)
    shapes = ((4, 5), (4,), (3, 4), (3,))
    layout = GuardLayout(shapes)
    local = rng.standard_normal(39)
    cands = local + rng.standard_normal((3, 39)) * [[0.0], [0.1], [1.0]]
    cands[1, 36:] += 5.0  # the output bias: a small layer far away
    offsets, sizes = [0, 20, 24, 36], [20, 4, 12, 3]
    want = _distances_by_hand(local, cands, guard_layers(shapes), offsets, sizes, order)
    for c in (cands, list(cands), torch.from_numpy(cands)):
        x = torch.from_numpy(local) if isinstance(c, torch.Tensor) else local
        np.testing.assert_allclose(layer_distances(x, c, layout, norm=norm), want, rtol=1e-12)
    whole = np.linalg.norm(cands - local, order, axis=1) / np.linalg.norm(local, order)
    np.testing.assert_allclose(layer_distances(local, cands, norm=norm), whole, rtol=1e-12)
    assert layer_distances(local, np.zeros((0, 39)), layout).shape == (0,)


def test_layer_distances_edge_values():
    layout = GuardLayout(((2, 2), (2,)))
    local = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # a zero bias: its layer has the weight's norm
    same, moved_bias = local.copy(), local + [0, 0, 0, 0, 1, 0]
    nan = np.full(6, np.nan)
    got = layer_distances(local, np.stack([same, moved_bias, nan]), layout)
    assert got[0] == 0 and got[1] == pytest.approx(1 / math.sqrt(2)) and math.isnan(got[2])
    zero = GuardLayout(((2, 2),))
    assert layer_distances(np.zeros(4), np.stack([np.zeros(4), np.ones(4)]), zero).tolist() == [0.0, math.inf]
    with pytest.raises(ValueError, match="the layout's shapes cover 6 elements, but the model has 5"):
        layer_distances(np.zeros(5), np.zeros((1, 5)), layout)


def test_torch_layouts_link_layers_joined_by_relu_like_operations():
    layout = guard_layout(lenet())
    assert [tuple(s) for s in layout.shapes][:6] == [(6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,)]
    assert layout.links == (Link(0, 1, 2), Link(2, 3, 4), Link(4, 5, 6), Link(6, 7, 8))  # the flattening too
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.ReLU()), nn.Dropout(), nn.Linear(5, 2, bias=False))
    assert guard_layout(nested).links == (Link(0, 1, 2),)
    broken = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    assert guard_layout(broken).links == ()  # tanh and normalisation do not commute with a rescaling
    assert len(guard_layout(broken, include_buffers=True).shapes) == 10  # ... running mean and var after

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    assert guard_layout(Custom()).links == ()  # no graph known: distances only
    spec = fc.DenseSpec((4, 5, 6, 2), ("relu", "tanh"), "in_out", "softmax")
    assert dense_layout(spec).links == (Link(0, 1, 2, "in_out"),)


# --- rebalancing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, x", [(mlp, torch.rand(5, 64)), (lenet, torch.rand(5, 3, 32, 32))])
def test_rebalancing_keeps_the_function_and_undoes_any_rescaling(make, x):
    module = make()
    layout = guard_layout(module)
    own = parameters_to_vector(module.parameters()).detach().clone()
    other = own + 0.05 * torch.randn_like(own)  # another model from the same start
    kept = other.clone()
    balanced = rebalance(other, own, layout)
    assert torch.equal(other, kept)  # the input is not written
    torch.testing.assert_close(outputs(module, balanced, x), outputs(module, other, x), rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)
    rescaled = other.clone()
    shapes, offsets = _checked(rescaled, layout)
    for link in layout.links:  # every link's units by factors from 1/20 to 20
        units = layout.shapes[link.weight_in][0]
        array = lambda flat, k: flat[offsets[k] : offsets[k] + math.prod(shapes[k])]  # noqa: E731
        _scale_units(rescaled, array, link, shapes, np.exp(rng.uniform(-3, 3, units)))
    torch.testing.assert_close(outputs(module, rescaled, x), outputs(module, other, x), rtol=1e-4, atol=1e-4)
    assert float((rescaled - other).norm()) > float(other.norm())
    torch.testing.assert_close(rebalance(rescaled, own, layout), balanced, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [mlp, lenet])
def test_rebalancing_many_models_at_once_gives_each_what_it_gets_alone(make):
    """One solve for all the round's candidates: each model keeps its own iterates and stopping
    rule, so a model that needs many Newton steps (rescaled far) next to ones that need few, and a
    non-finite one (left as it is), come out bit for bit as when rebalanced alone."""
    module = make()
    layout = guard_layout(module)
    own = parameters_to_vector(module.parameters()).detach().clone()
    g = torch.Generator().manual_seed(1)
    models = [own + 0.05 * torch.randn(own.shape, generator=g) for _ in range(3)]
    far = models[0].clone()
    shapes, offsets = _checked(far, layout)
    array = lambda flat, k: flat[offsets[k] : offsets[k] + math.prod(shapes[k])]  # noqa: E731
    for link in layout.links:
        _scale_units(far, array, link, shapes, np.exp(np.linspace(-3, 3, layout.shapes[link.weight_in][0])))
    broken = models[1].clone()
    broken[5] = float("nan")
    models = [models[0], far, broken, models[2], own]
    balance = Balancer(own, layout)
    together = balance.many(models)
    for model, got in zip(models, together):  # bit for bit (NaN where the broken model has it)
        torch.testing.assert_close(got, balance(model), rtol=0, atol=0, equal_nan=True)
    np.testing.assert_array_equal(together[2].numpy(), broken.numpy())  # NaN where it was: left as it is
    d = load_digits()
    clf = initialise_mlp(MLPClassifier(hidden_layer_sizes=(16,), random_state=0), d.data, d.target, np.arange(10))
    flat = get_flat_params(clf)
    spec = mlp_spec(clf)
    batch = [flat + 0.01, reparametrise(flat + 0.01, spec, np.linspace(0.05, 20, 16)), flat]
    sklearn_balance = Balancer(flat, dense_layout(spec))
    for model, got in zip(batch, sklearn_balance.many(batch)):
        np.testing.assert_array_equal(got, sklearn_balance(model))


def test_rebalancing_in_scikit_learns_layout():
    d = load_digits()
    clf = initialise_mlp(MLPClassifier(hidden_layer_sizes=(16,), random_state=0), d.data, d.target, np.arange(10))
    own = get_flat_params(clf)
    spec = mlp_spec(clf)
    layout = dense_layout(spec)
    bad = reparametrise(own + 0.01, spec, np.linspace(0.05, 20, 16))
    # the scales are solved to 1e-7 of each unit's squares (below float32's rounding)
    np.testing.assert_allclose(rebalance(bad, own, layout), rebalance(own + 0.01, own, layout), rtol=1e-6)
    # a unit with no incoming or no outgoing weights has no balance to match: left as it is
    dead = own.copy()
    dead[: 64 * 16].reshape(64, 16)[:, 3] = 0.0
    dead[64 * 16 + 3] = 0.0
    np.testing.assert_array_equal(rebalance(dead, own, layout)[: 64 * 16].reshape(64, 16)[:, 3], 0.0)


# --- the round ----------------------------------------------------------------------------------------


def _trained(start: nn.Module, train, epochs: int, seed: int) -> nn.Module:
    model = copy.deepcopy(start)
    train_sgd(model, train, epochs=epochs, lr=0.1, batch_size=32, generator=torch.Generator().manual_seed(seed))
    return model


def test_a_reparametrised_copy_of_a_good_model_is_undone(digits):
    """The attack: a copy of the model that serves the victim best, its hidden units times 0.05 and
    its output weights divided by 0.05. It computes the same function, so the victim gives it
    weight 1; the whole-model bound lets it through as it is (the victim's layers are then 20 x
    out of balance); the preset's round rebalances it first: the victim ends where the original
    would have taken it."""
    train, val = digits
    start = _trained(mlp(0), train, 1, 0)
    good = flatten_module(_trained(start, train, 4, 1)).detach().clone()
    own = parameters_to_vector(start.parameters()).detach().clone()
    spec = dense_spec(start)
    whole = PRESET.replace(rebalance=False, guard=3.0)  # the bound over the whole model
    a = edge_scale(own, good, spec, whole, None, -np.ones(spec.sizes[1]))  # at 0.99 of it
    assert 0.05 < a[0] < 0.5  # a layer 2 to 20 x out of balance
    bad = reparametrise(good, spec, a)

    def update(candidate, policy, layered=True):
        client = FedFomoClient(copy.deepcopy(start), val, train, policy=policy)
        client.guard_layout = client.guard_layout if layered else None
        res = client.update(candidate[None])
        return client.params.detach().clone(), res

    clean, res = update(good, PRESET)
    assert res.weights.tolist() == [1.0]
    attacked, res = update(bad, PRESET)
    assert res.weights.tolist() == [1.0] and not res.guard_rejected.any()
    torch.testing.assert_close(attacked, clean, rtol=1e-4, atol=1e-5)
    before, res = update(bad, whole, layered=False)
    assert res.weights.tolist() == [1.0]
    torch.testing.assert_close(before, bad, rtol=1e-5, atol=1e-6)  # taken as it is: out of balance
    assert layer_distances(clean, before[None], guard_layout(start))[0] > 1.0


def test_the_scikit_learn_client_rebalances_too():
    d = load_digits()
    x, y = d.data / 16.0, d.target
    make = lambda: MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.1, random_state=0)  # noqa: E731
    own = initialise_mlp(make(), x, y, np.arange(10))
    peer = initialise_mlp(make(), x, y, np.arange(10))
    for _ in range(20):
        peer.partial_fit(x[:1000], y[:1000])
    good = get_flat_params(peer)
    bad = reparametrise(good, mlp_spec(peer), 0.05)
    client = MLPClassifierClient(own, (x[1000:1300], y[1000:1300]), (x[:1000], y[:1000]))
    start = client.get_flat()
    res = client.update(bad[None])
    assert res.weights.tolist() == [1.0]
    expected = rebalance(good, start, dense_layout(mlp_spec(peer)))
    np.testing.assert_allclose(client.get_flat(), expected, rtol=1e-6, atol=1e-9)  # scales solved to 1e-7


def test_a_poison_in_one_small_layer_is_rejected_layer_by_layer():
    layout = GuardLayout(((4, 4), (4,), (2, 2), (2,)))  # a big layer, then a small one
    local = np.concatenate([np.ones(16), np.zeros(4), np.full(4, 0.05), np.zeros(2)])
    honest = local + 0.01
    poison = local.copy()
    poison[20:24] *= 40  # the small weight only: 19.5 x its norm away, 0.5 x the whole model's
    assert np.linalg.norm(poison - local) < fc.distance_bound(local, 3.0)

    def round_(candidates, losses, layout):
        params = local.copy()

        def evaluate(models):
            out = [next((v for c, v in zip(candidates, losses) if np.array_equal(m, c)), 1.0) for m in models]
            return np.array(out), np.zeros(len(models))

        res = federate(PRESET, params, np.stack(candidates), evaluate, layout=layout, copy=np.copyto)
        return params, res

    _, res = round_([honest, poison], [0.9, 0.0], None)  # no layers known: the whole model
    assert res.weights[1] > 0 and not res.guard_rejected.any()
    params, res = round_([honest, poison], [0.9, 0.0], layout)
    assert res.guard_rejected.tolist() == [False, True] and res.weights.tolist() == [1.0, 0.0]
    assert res.scores[1] == 0.0
    np.testing.assert_array_equal(params, honest)
    far = local * 10  # far in every layer, but no better: its negative score reaches the affinity
    _, res = round_([far], [2.0], layout)
    assert not res.guard_rejected.any() and res.scores[0] < 0
    _, res = round_([far], [0.5], layout)
    assert res.guard_rejected.tolist() == [True] and res.scores[0] == 0.0


def test_layer_distances_read_models_given_as_lists_of_their_arrays():
    module = lenet()
    layout = guard_layout(module)
    local = parameters_to_vector(module.parameters()).detach().clone()
    g = torch.Generator().manual_seed(3)
    cands = torch.stack([local + s * torch.randn(local.shape, generator=g) for s in (0.01, 0.5, 3.0)])

    def arrays(flat):  # the model as the list of its arrays, in the layout's order
        shapes, offsets = _checked(flat, layout)
        return [flat[o : o + math.prod(s)].reshape(s) for o, s in zip(offsets, shapes)]

    listed = layer_distances(arrays(local), [arrays(c) for c in cands], layout)
    np.testing.assert_array_equal(listed, layer_distances(local, cands, layout))  # the same kernel, layer by layer
    with pytest.raises(ValueError, match="needs a layout"):
        layer_distances(arrays(local), [arrays(c) for c in cands])
    with pytest.raises(ValueError, match="the model's arrays have shapes"):
        layer_distances(arrays(local)[::-1], [arrays(c)[::-1] for c in cands], layout)  # the same sizes, reordered


@pytest.mark.parametrize("guard", [PRESET.guard, 1e-3])
def test_the_guard_reads_modules_in_place_where_nothing_is_rebalanced(digits, guard):
    """A model whose layers are not linked (BatchNorm between them): the guarded round reads the
    server's modules where they are (nothing is copied into the bank) and ends as the round on the
    same models copied into an [M, P] tensor: the same model, the same rejections (with a tight
    guard every improving candidate is rejected), the weights to float64 rounding."""
    train, val = digits
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    assert guard_layout(start).links == ()
    peers = [_trained(start, train, epochs=1, seed=s) for s in (1, 2, 3)]
    runs = {}
    for form in ("modules", "tensor"):
        client = FedFomoClient(copy.deepcopy(start), val, train, policy=PRESET.replace(guard=guard))
        given = peers if form == "modules" else torch.stack([flatten_module(m).detach() for m in peers])
        res = client.update(given)
        runs[form] = (res, client.get_flat(), client.bank.count)
    (in_place, flat, written), (copied, flat_copied, _) = runs["modules"], runs["tensor"]
    assert written == 0  # read where they are
    improving = in_place.candidate_losses < in_place.baseline_loss
    assert improving.any() and in_place.guard_rejected.tolist() == copied.guard_rejected.tolist()
    assert in_place.guard_rejected.tolist() == (improving.tolist() if guard < 1 else [False] * 3)
    assert torch.equal(flat, flat_copied)
    # the distances add up layer by layer rather than over the flat model: float64 rounding apart
    np.testing.assert_allclose(in_place.weights, copied.weights, rtol=1e-12, atol=0)


def test_the_peer_presets_have_no_guard_and_the_policy_checks_its_fields():
    assert PRESET.guard == 3.0 and PRESET.rebalance is True
    for name in ("paper", "pfllib", "fl-bench"):
        assert fc.get_preset(name).client.guard is None and fc.get_preset(name).client.rebalance is False
    with pytest.raises(TypeError, match="rebalance must be True or False"):
        fc.ClientPolicy(rebalance="yes")
    with pytest.raises(ValueError, match="guard must be a number"):
        fc.ClientPolicy(guard=-1.0)


def test_the_simulators_reparam_attack_keeps_the_function_at_the_edge_of_the_guard(digits):
    from fomo_core.simulate.attacks import AttackSettings, corrupt
    from fomo_core.simulate.backends import make_backend
    from fomo_core.simulate.data import load_digits as simulator_digits
    from fomo_core.simulate.train_settings import TrainSettings

    train, val = digits
    client = FedFomoClient(mlp(0), val, train)
    spec = dense_spec(client.module)
    own = client.get_flat()
    settings = AttackSettings(kind="reparam", attackers=1)
    rng = np.random.default_rng(0)
    x = train[0][:8]
    for policy, a in ((PRESET.replace(guard=None, rebalance=False), 0.14), (PRESET.replace(rebalance=False), None)):
        client.policy = policy
        bad = corrupt(own, settings, rng, spec=spec, client=client)
        torch.testing.assert_close(outputs(client.module, bad, x), outputs(client.module, own, x), rtol=1e-4, atol=1e-5)
        if a is not None:  # no guard: the a
            torch.testing.assert_close(bad[: 64 * 32], own[: 64 * 32] * a)
        else:  # the layer bound: at 0.99 of it
            assert layer_distances(own, bad[None], client.guard_layout)[0] == pytest.approx(0.99 * 3.0, rel=1e-3)
    with pytest.raises(ValueError, match="the reparam attack needs a dense network"):
        corrupt(own, settings, rng, spec=None, client=client)
    backends = [make_backend(name, simulator_digits(), TrainSettings(hidden=(8,)), 0) for name in ("torch", "sklearn")]
    assert [b.dense_spec().weight_layout for b in backends] == ["out_in", "in_out"]


@pytest.mark.parametrize(
    "layout, error, message",
    [
        ("flat", TypeError, "layout must be a fomo_core.guard.GuardLayout or None, got str"),
        (GuardLayout(((4, 5), (4,), (3, -4))), ValueError, "layout.shapes must be sequences of sizes >= 0"),
        (GuardLayout(((4, 5), (4,), (3, 4), (3,)), (Link(0, 1, 5),)), ValueError, "weight_out must be an index"),
        (GuardLayout(((4, 5), (4,), (3, 4), (3,)), (Link(0, 3, 2),)), ValueError, r"bias_in must have shape \(4,\)"),
        (GuardLayout(((4, 5), (4,), (3, 4), (3,)), (Link(1, None, 2),)), ValueError, "must be weights"),
        (GuardLayout(((4, 5), (4,), (4, 3), (3,)), (Link(0, 1, 2),)), ValueError, r"does not read the 4 units"),
        (GuardLayout(((4, 5), (4,), (3, 4), (3,)), (Link(0, 1, 2, "sideways"),)), ValueError, "order must be"),
        (GuardLayout(((4, 5), (4,), (3, 4), (3,)), ((0, 1, 2),)), TypeError, "layout.links must hold"),
    ],
)
def test_a_bad_layout_is_refused_by_name(layout, error, message):
    model = np.zeros(39)
    with pytest.raises(error, match=message):
        rebalance(model, model, layout)
    with pytest.raises(error, match=message):
        layer_distances(model, model[None], layout)
