"""The fomo-core round's global model and training check: the policy fields (on in "fomo-core",
off in the peer presets), the client's move toward the global model, the kept-or-reverted local
training, the contributions (trained copy or followed change), the server's GlobalModel, and the
peer presets' rounds bit for bit unchanged when a global model is offered."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from round_models import mlp
from torch import nn

import fomo_core as fc
from fomo_core.adapters.numpy import MLPClassifierClient, get_flat_params, initialise_mlp
from fomo_core.adapters.torch import FedFomoClient, flatten_module, train_sgd
from fomo_core.global_model import GlobalModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PEERS = ("paper", "pfllib", "fl-bench")


def trained_flat(seed: int, train, epochs: int = 5) -> torch.Tensor:
    model = mlp(seed)
    train_sgd(model, train, epochs=epochs, lr=0.1, generator=torch.Generator().manual_seed(seed))
    return flatten_module(model).detach().clone()


# --- the policy fields ----------------------------------------------------------------------------


def test_fomo_core_turns_the_mechanism_on_and_the_peers_keep_it_off():
    core = fc.get_preset("fomo-core")
    assert core.client.global_model == "train" and core.client.keep_training == "if_not_worse"
    assert core.server.global_model == "average" and core.server.global_guard == fc.policy.GUARD
    for name in PEERS:
        p = fc.get_preset(name)
        assert (p.client.global_model, p.client.keep_training) == ("off", "always")
        assert (p.server.global_model, p.server.global_guard) == ("off", None)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: fc.ClientPolicy(global_model="fedavg"), ValueError, "global_model must be one of"),
        (lambda: fc.ClientPolicy(keep_training="never"), ValueError, "keep_training must be one of"),
        (lambda: fc.ClientPolicy(global_steps=(0.5, 1.5)), ValueError, "global_steps[1] must be a finite number"),
        (lambda: fc.ClientPolicy(global_steps=(0.0,)), ValueError, "global_steps[0] must be a finite number"),
        (lambda: fc.ClientPolicy(global_steps="0.5"), TypeError, "global_steps must be a sequence"),
        (lambda: fc.ClientPolicy(global_model="train", global_steps=()), ValueError, "at least one share"),
        (lambda: fc.ServerPolicy(global_model="median"), ValueError, "global_model must be one of"),
        (lambda: fc.ServerPolicy(global_guard=-1.0), ValueError, "global_guard must be a number"),
    ],
)
def test_bad_mechanism_fields_are_refused_naming_the_field(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_global_steps_from_json_lists_become_tuples():
    policy = fc.ClientPolicy.from_dict({**fc.ClientPolicy().as_dict(), "global_steps": [0.5, 1]})
    assert policy.global_steps == (0.5, 1.0)


# --- the peers' rounds: the global model changes nothing -----------------------------------------


@pytest.mark.parametrize("preset", PEERS)
def test_a_peer_round_is_bit_identical_with_a_global_model_offered(preset, digits):
    train, val = digits
    peers = [trained_flat(s, train, epochs=2) for s in (1, 2, 3)]
    carries = fc.get_preset(preset).client.carries_buffers
    g = trained_flat(7, train)

    def client():
        c = FedFomoClient(mlp(0), val, train, preset=preset, seed=5, epochs=1, lr=0.1)
        if carries:  # the flat models carry no buffers here (an MLP has none)
            assert c.params.numel() == g.numel()
        return c

    plain, offered = client(), client()
    res_plain = plain.round(torch.stack(peers))
    res_offered = offered.round(torch.stack(peers), global_params=g)
    assert torch.equal(plain.get_flat(), offered.get_flat())
    np.testing.assert_array_equal(res_plain.weights, res_offered.weights)
    np.testing.assert_array_equal(res_plain.scores, res_offered.scores)
    assert res_offered.global_step is None and res_offered.global_update is None
    assert res_offered.training == "kept"


# --- the client's move toward the global model ----------------------------------------------------


def core_client(val, train, **changes) -> FedFomoClient:
    policy = fc.get_preset("fomo-core").client.replace(**changes)
    return FedFomoClient(mlp(0), val, train, policy=policy, seed=5, epochs=1, lr=0.1)


def test_a_better_global_model_is_taken_and_a_worse_one_changes_nothing(digits):
    train, val = digits
    peers = torch.stack([trained_flat(s, train, epochs=1) for s in (1, 2)])
    good = trained_flat(7, train, epochs=20)

    taker = core_client(val, train)
    res = taker.update(peers, global_params=good)
    assert res.global_step == 1.0  # the fully trained model beats every mix toward it
    assert torch.equal(taker.get_flat(), good)
    assert res.update_loss == pytest.approx(float(taker.evaluate([good])[0][0]))

    worse = good * 30  # confidently wrong: no mix toward it helps
    without, stayer = core_client(val, train, global_model="off"), core_client(val, train)
    res_without = without.update(peers)
    res_stayer = stayer.update(peers, global_params=worse)
    assert res_stayer.global_step == 0.0
    assert torch.equal(stayer.get_flat(), without.get_flat())  # FedFomo's step, bit for bit
    np.testing.assert_array_equal(res_stayer.weights, res_without.weights)


def test_the_chosen_mix_has_the_lowest_validation_loss_of_the_steps(digits):
    train, val = digits
    client = core_client(val, train, global_steps=(0.25, 0.5, 0.75, 1.0))
    own = client.get_flat()
    g = trained_flat(7, train, epochs=20)
    res = client.update(torch.stack([own * 5]), global_params=g)  # a useless peer: u is the own model
    mixes = [own + t * (g - own) for t in (0.25, 0.5, 0.75)] + [g]
    losses = client.evaluate(mixes)[0]
    assert res.global_step == (0.25, 0.5, 0.75, 1.0)[int(np.argmin(losses))]
    assert res.update_loss == pytest.approx(float(losses.min()))


def test_no_global_model_given_leaves_the_round_as_fedfomo(digits):
    train, val = digits
    peers = torch.stack([trained_flat(s, train, epochs=1) for s in (1, 2)])
    on, off = core_client(val, train), core_client(val, train, global_model="off", keep_training="always")
    res_on, res_off = on.round(peers), off.round(peers)
    assert res_on.global_step is None and res_on.global_update is None
    np.testing.assert_array_equal(res_on.weights, res_off.weights)


# --- local training: kept only when it does not hurt; the contribution ----------------------------


def test_training_that_raises_the_validation_loss_is_reverted(digits):
    train, val = digits
    g = trained_flat(7, train, epochs=20)

    def ruin(module: nn.Module) -> None:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(-3.0)

    policy = fc.get_preset("fomo-core").client.replace(global_model="off")
    client = FedFomoClient(mlp(0), val, train_fn=ruin, policy=policy)
    client.set_flat(g)
    res = client.update(torch.stack([g * 5]))
    before = client.get_flat()
    client.train_round(res)
    assert res.training == "reverted" and torch.equal(client.get_flat(), before)

    helped = FedFomoClient(mlp(0), val, train, policy=policy, epochs=3, lr=0.1, seed=1)
    res = helped.round(torch.stack([g * 5]))
    assert res.training == "kept" and float(helped.evaluate([helped.get_flat()])[0][0]) <= res.update_loss


class Recording(FedFomoClient):
    """A client that records how many models each of its evaluations takes; ``flat_alone``
    overrides :attr:`FedFomoClient.loss_of_flat_alone` (None: the client's own answer)."""

    flat_alone = None

    def evaluate(self, models, data=None):
        self.calls = [*getattr(self, "calls", []), len(models)]
        return super().evaluate(models, data)

    @property
    def loss_of_flat_alone(self):
        return super().loss_of_flat_alone if self.flat_alone is None else self.flat_alone


@pytest.mark.parametrize("lr, training", [(0.1, "kept"), (40.0, "reverted")])
def test_the_check_evaluates_the_model_before_training_with_the_trained_one_and_decides_alike(digits, lr, training):
    """Where a model's loss is its flat model's alone, the model before training is evaluated after
    training, in one call with the trained one: the same loss, the same decision, one call less."""
    train, val = digits
    peers = torch.stack([trained_flat(s, train, epochs=1) for s in (1, 2)])
    policy = fc.get_preset("fomo-core").client.replace(global_model="off")
    rounds = {}
    for flat_alone in (True, False):
        client = Recording(mlp(0), val, train, policy=policy, seed=5, epochs=1, lr=lr)
        client.flat_alone = flat_alone
        res = client.round(peers)
        rounds[flat_alone] = (res, client.get_flat(), client.calls)
    (deferred, after, calls), (eager, after_eager, calls_eager) = rounds[True], rounds[False]
    assert deferred.outcome == "updated" and (deferred.training, eager.training) == (training, training)
    assert deferred.update_loss == eager.update_loss and torch.equal(after, after_eager)
    assert (calls, calls_eager) == ([3, 2], [3, 1, 1])


def test_when_nothing_helps_the_check_reuses_the_baselines_loss(digits):
    train, val = digits
    own = trained_flat(7, train, epochs=20)
    policy = fc.get_preset("fomo-core").client.replace(global_model="off")
    client = Recording(mlp(0), val, train, policy=policy, seed=5, epochs=1, lr=0.1)
    client.set_flat(own)
    worse = torch.stack(
        [own + 0.5 * torch.randn(own.shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    )
    res = client.update(worse)
    assert res.outcome == "nothing_helps" and torch.equal(client.get_flat(), own)
    client.calls = []
    client.train_round(res)
    assert res.update_loss == res.baseline_loss == float(client.evaluate([own])[0][0])  # its loss, exactly
    assert client.calls[0] == 1  # the trained model only; then the check above


def test_buffers_training_moves_outside_the_flat_model_keep_the_evaluation_before_training(digits):
    train, val = digits
    with_bn = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    core = fc.get_preset("fomo-core").client
    assert FedFomoClient(mlp(0), val, train).loss_of_flat_alone
    assert not FedFomoClient(copy.deepcopy(with_bn), val, train).loss_of_flat_alone  # its statistics stay
    assert FedFomoClient(copy.deepcopy(with_bn), val, train, policy=core.replace(buffers="moved")).loss_of_flat_alone
    assert not FedFomoClient(mlp(0), val, train_fn=lambda m: None).loss_of_flat_alone  # a hook may change anything
    assert not FedFomoClient(mlp(0), val, train, policy=core.replace(evaluation="train")).loss_of_flat_alone
    client = Recording(copy.deepcopy(with_bn), val, train, policy=core.replace(global_model="off"), seed=5, lr=0.1)
    peers = torch.stack([client.get_flat() + 0.01 * torch.randn(client.get_flat().shape) for _ in range(2)])
    client.round(peers)
    assert client.calls[1:] == [1, 1]


def one_full_batch_step(train):
    x, y = train

    def step(module: nn.Module) -> None:  # deterministic training: one gradient step on all data
        module.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        with torch.no_grad():
            for p in module.parameters():
                p.sub_(0.5 * p.grad)

    return step


def test_the_trained_copy_of_the_global_model_is_the_contribution(digits):
    train, val = digits
    g = trained_flat(7, train, epochs=1)
    step = one_full_batch_step(train)
    policy = fc.get_preset("fomo-core").client.replace(keep_training="always")
    client = FedFomoClient(mlp(0), val, train_fn=step, policy=policy)
    res = client.update(torch.stack([g * 5]), global_params=g)
    own = client.get_flat()

    client.train_round(res, global_params=g)

    reference = mlp(0)
    flat = flatten_module(reference)
    with torch.no_grad():
        flat.copy_(g)
    step(reference)
    torch.testing.assert_close(res.global_update, flat.detach() - g, rtol=0, atol=0)
    with torch.no_grad():
        flat.copy_(own)
    step(reference)
    assert torch.equal(client.get_flat(), flat.detach())  # the personal model trained from itself


def test_the_copy_of_the_global_model_trains_on_global_train_data_when_given(digits):
    train, val = digits
    both = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    g = trained_flat(7, train, epochs=1)
    policy = fc.get_preset("fomo-core").client.replace(keep_training="always")
    options = dict(policy=policy, seed=3, epochs=1, lr=0.1)
    client = FedFomoClient(mlp(0), val, train, global_train_data=both, **options)
    res = client.update(torch.stack([g * 5]), global_params=g)
    own = client.get_flat()
    client.train_round(res, global_params=g)

    # the same trainings by hand, in the same order on the same generator
    reference = FedFomoClient(mlp(0), val, train, **options)
    reference.set_flat(g)
    reference.train(both)
    assert torch.equal(res.global_update, reference.get_flat() - g)  # the copy trained on both
    reference.set_flat(own)
    reference.train()
    assert torch.equal(client.get_flat(), reference.get_flat())  # the own model on its training data only


def test_global_train_data_is_checked():
    from sklearn.neural_network import MLPClassifier

    x, y = np.random.default_rng(0).standard_normal((6, 4)), np.arange(6) % 3
    data = (torch.from_numpy(x).float(), torch.from_numpy(y))
    with pytest.raises(ValueError, match="global_train_data is data for the default SGD loop, which train_fn replaces"):
        FedFomoClient(nn.Sequential(nn.Linear(4, 3)), data, train_fn=lambda m: None, global_train_data=data)
    est = initialise_mlp(MLPClassifier(hidden_layer_sizes=(4,), solver="sgd"), x, y, np.arange(3))
    with pytest.raises(TypeError, match="global_train_data must be a pair"):
        MLPClassifierClient(est, (x, y), (x, y), global_train_data=x)
    with pytest.raises(ValueError, match="global_train_data is data for the default training"):
        MLPClassifierClient(est, (x, y), train_fn=lambda e: None, global_train_data=(x, y))


def test_follow_contributes_the_change_of_the_own_training(digits):
    train, val = digits
    policy = fc.get_preset("fomo-core").client.replace(global_model="follow", keep_training="always")
    client = FedFomoClient(mlp(0), val, train_fn=one_full_batch_step(train), policy=policy)
    g = trained_flat(7, train, epochs=1)
    res = client.update(torch.stack([g * 5]), global_params=g)
    before = client.get_flat()
    client.train_round(res, global_params=g)
    assert torch.equal(res.global_update, client.get_flat() - before)


def test_the_scikit_learn_client_runs_the_whole_default_round():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x, y = d.data / 16.0, d.target

    def estimator(seed: int):
        est = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=0.1, random_state=seed)
        return initialise_mlp(est, x, y, np.arange(10))

    client = MLPClassifierClient(estimator(0), (x[300:400], y[300:400]), (x[:100], y[:100]), epochs=2)
    good = estimator(1)
    for _ in range(20):
        good.partial_fit(x[:300], y[:300])
    g = get_flat_params(good)
    res = client.round(np.stack([get_flat_params(estimator(2))]), global_params=g)
    assert res.global_step == 1.0 and res.global_update is not None and res.global_update.shape == g.shape
    assert res.training in ("kept", "reverted")
    np.testing.assert_array_equal(client.get_flat(), get_flat_params(client.estimator))

    # the copy of the global model trains on global_train_data when given (the own model does not)
    updates = []
    for extra in (None, (x[:300], y[:300])):
        other = MLPClassifierClient(estimator(0), (x[300:400], y[300:400]), (x[:100], y[:100]), global_train_data=extra)
        updates.append(other.round(np.stack([get_flat_params(estimator(2))]), global_params=g).global_update)
    assert not np.array_equal(updates[0], updates[1])


# --- the server's global model --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_global_model_moves_by_the_weighted_mean_and_drops_bad_contributions(kind):
    as_array = (lambda a: torch.tensor(a, dtype=torch.float32)) if kind == "torch" else (lambda a: np.array(a))
    g = GlobalModel(as_array([1.0, 1.0, 1.0, 1.0]), guard=3.0)
    assert g.receive(as_array([1.0, 0.0, 0.0, 0.0]), weight=1)
    assert g.receive(as_array([0.0, 2.0, 0.0, 0.0]), weight=3)
    assert not g.receive(as_array([np.nan, 0.0, 0.0, 0.0]))  # not finite
    assert not g.receive(as_array([7.0, 0.0, 0.0, 0.0]))  # longer than 3 x ||g|| = 6
    with pytest.raises(ValueError, match=r"global_update has shape \(3,\), expected \(4,\)"):
        g.receive(as_array([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="weight must be a finite number"):
        g.receive(as_array([0.0, 0.0, 0.0, 0.0]), weight=0)
    g.end_round()
    np.testing.assert_allclose(np.asarray(g.params), [1.25, 2.5, 1.0, 1.0])
    assert (g.accepted, g.rejected) == (2, 2)
    before = copy.deepcopy(g.params)
    g.end_round()  # a round without contributions leaves it as it was
    np.testing.assert_array_equal(np.asarray(g.params), np.asarray(before))


def test_the_server_keeps_and_checkpoints_its_global_model(tmp_path):
    init = np.zeros(3, dtype=np.float32)
    server = fc.Server(2, init, preset="fomo-core", m=1, seed=0)
    server.receive(0, init, [], [], global_update=np.array([1.0, 0.0, 0.0], np.float32), num_examples=1)
    server.receive(1, init, [], [], global_update=np.array([0.0, 1.0, 0.0], np.float32), num_examples=3)
    np.testing.assert_array_equal(server.global_params(), init)  # visible from the next round
    server.end_round()
    np.testing.assert_allclose(server.global_params(), [0.25, 0.75, 0.0])
    server.save(tmp_path / "s.npz")
    restored = fc.Server.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(restored.global_params(), server.global_params())
    assert fc.Server(2, init, preset="paper", m=1).global_params() is None


def _rounds(server: fc.Server, rounds: int, rng: np.random.Generator) -> None:
    p = server.num_params
    for _ in range(rounds):
        for client in rng.permutation(server.num_clients)[:3]:
            ids = server.select(int(client))
            update = rng.standard_normal(p).astype(np.float32) * 1e-3
            server.receive(
                int(client), rng.standard_normal(p), ids, rng.standard_normal(ids.size), global_update=update
            )
        server.end_round()


@pytest.mark.parametrize("init_dtype, models_dtype", [("float32", "float32"), ("float64", "float32")])
def test_a_checkpoint_holds_the_global_model_in_its_dtype_and_resumes_exactly(tmp_path, init_dtype, models_dtype):
    # the global model keeps init_params' dtype (a float64 one beside float32 models too): stored
    # as such (4P bytes for float32, not 8P) and restored as such, so the resumed run is the same
    init = np.random.default_rng(1).standard_normal(50).astype(init_dtype)
    table = np.empty((6, 50), dtype=models_dtype)
    server = fc.Server(6, init, m=2, seed=0, models=table)
    _rounds(server, 2, np.random.default_rng(2))
    server.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert z["global_params"].dtype == np.dtype(init_dtype)
    back = fc.Server.load(tmp_path / "s.npz")
    assert back.global_params().dtype == server.global_params().dtype == np.dtype(init_dtype)
    _rounds(server, 2, np.random.default_rng(3))
    _rounds(back, 2, np.random.default_rng(3))
    np.testing.assert_array_equal(back.global_params(), server.global_params())


def test_a_torch_global_model_is_stored_in_its_dtype(tmp_path):
    server = fc.Server(3, torch.arange(4, dtype=torch.float32) / 3, m=1, seed=0)
    server.receive(0, torch.zeros(4), [], [], global_update=torch.full((4,), 0.1), num_examples=1)
    server.end_round()
    server.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert z["global_params"].dtype == np.float32
    back = fc.Server.load(tmp_path / "s.npz")
    assert back.global_params().dtype == torch.float32
    assert torch.equal(back.global_params(), server.global_params())


def test_a_checkpoint_with_a_float64_global_model_and_no_dtype_still_loads(tmp_path):
    # checkpoints written before the dtype was recorded hold float64 values of the models' dtype
    server = fc.Server(6, np.zeros(4, np.float32), m=2, seed=0)
    _rounds(server, 2, np.random.default_rng(2))
    server.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["global_dtype"]
    arrays.update(meta=np.array(json.dumps(meta)), global_params=arrays["global_params"].astype(np.float64))
    np.savez(tmp_path / "old.npz", **arrays)
    back = fc.Server.load(tmp_path / "old.npz")
    assert back.global_params().dtype == np.float32
    np.testing.assert_array_equal(back.global_params(), server.global_params())
