"""Each peer preset reproduces its peer's FedFomo round: one client round (models, weights, scores,
affinity) on an MLP and a BatchNorm CNN with M = 1, 3, 5, and whole federations (selection,
affinity, models) over several rounds. The peers' code paths are re-stated in tests/peers.py
(file:line there); the models are compared to float32 rounding.

Tolerances: the peers sum in float32 in their own order, fomo-core accumulates distances in float64
and rounds the update once, so parameters agree to a few float32 ulps of their magnitude
(rtol 1e-5, atol 1e-6) and scores to float32 precision of the loss differences (rtol 1e-4,
atol 1e-6: a loss difference of two float32-rounded batch means carries about 1e-7 absolute).
"""

from __future__ import annotations

import copy

import numpy as np
import peers
import pytest
import torch
from torch import nn

import fomo_core as fc
from fomo_core.adapters.torch import FedFomoClient

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL_BATCH = 32
PARAMS = dict(rtol=1e-5, atol=1e-6)
SCORES = dict(rtol=1e-4, atol=1e-6)


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    )


def gd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5, lr: float = 0.5) -> nn.Module:
    """Deterministic local training, the same on both sides: full-batch gradient descent in train
    mode (BatchNorm running statistics move)."""
    model.train()
    for _ in range(steps):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return model


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    member = [torch.isin(y, torch.tensor(g)) for g in groups]
    # client 0 cares about group 0; 90 validation rows make batches of 32, 32 and 26
    val = (x[member[0]][:90], y[member[0]][:90])
    train = [(x[m][100 + 60 * k : 160 + 60 * k], y[m][100 + 60 * k : 160 + 60 * k]) for m in member for k in range(2)]
    return val, train  # train[0], train[1]: group 0; [2], [3]: group 1; [4], [5]: group 2


def trained(kind: str, base: nn.Module, part: tuple, steps: int = 5) -> nn.Module:
    return gd(copy.deepcopy(base), *part, steps=steps)


def nan_model(model: nn.Module) -> nn.Module:
    bad = copy.deepcopy(model)
    with torch.no_grad():
        next(bad.parameters())[0].fill_(float("nan"))
    return bad


def scenario(kind: str, case: str, m: int, data) -> dict:
    """The client's models before and after its last training, and m candidates from the others."""
    val, train = data
    base = build(kind, 0)
    good = trained(kind, base, train[0])  # the client's own model after training on its group
    helpful = [trained(kind, base, train[1], steps=3 + k) for k in range(m)]
    harmful = [trained(kind, base, train[2 + k % 4], steps=3 + k) for k in range(m)]
    if case == "mixed":
        others = [helpful[k] if k % 2 == 0 else harmful[k] for k in range(m)]
    elif case == "nothing_helps":
        others = harmful
        good = trained(kind, good, train[3], steps=10)  # its own training went astray too
    elif case == "equal":
        others = [copy.deepcopy(base)] + helpful[: m - 1]
    else:  # "nan"
        others = [nan_model(helpful[0])] + helpful[1:m]
    return dict(val=val, last_update=base, current=good, others=others, ids=list(range(1, m + 1)))


def our_update(preset: str, s: dict, candidates: list) -> tuple:
    """fomo-core's client with the preset: the same models, the same candidates."""
    module = copy.deepcopy(s["last_update"])
    client = FedFomoClient(module, s["val"], train_fn=lambda m: None, preset=preset, eval_batch_size=EVAL_BATCH)
    client.set_flat(client.params.clone())  # the last federated update
    module.load_state_dict(s["current"].state_dict())  # then its training
    res = client.update([c.state_dict() for c in candidates])
    return module.state_dict(), res


def assert_states(ours: dict, theirs: dict) -> None:
    for name, value in theirs.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[name], value, **PARAMS, msg=lambda m, n=name: f"{n}: {m}")


CASES = ["mixed", "nothing_helps", "equal", "nan"]


@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_pfllib_client_round(kind, case, m, data):
    s = scenario(kind, case, m, data)
    # PFLlib's top-M often includes the client's own uploaded (trained) model: it takes the last
    # place here when there are two or more
    if m == 1:
        cands, ids = s["others"][:1], s["ids"][:1]
    else:
        cands, ids = [*s["others"][: m - 1], s["current"]], [*s["ids"][: m - 1], 0]
    has_bn = peers.has_batchnorm(s["current"])
    loader = peers.batches(*s["val"], EVAL_BATCH, drop_last=has_bn)
    model, old_model, weight_vector = peers.pfllib_client_round(s["current"], s["last_update"], ids, cands, loader, 6)

    ours, res = our_update("pfllib", s, cands)

    assert_states(ours, model.state_dict())
    finite = np.isfinite(weight_vector[ids])  # PFLlib's NaN scores: fomo-core reports 0 (a departure)
    np.testing.assert_allclose(res.scores[finite], weight_vector[ids][finite], **SCORES)
    assert np.all(res.scores[~finite] == 0)
    if case == "nan":
        assert res.outcome == "skipped"


@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_flbench_client_round(kind, case, m, data):
    s = scenario(kind, case, m, data)
    own = s["current"].state_dict()
    param_names = [n for n, _ in s["current"].named_parameters()]
    # the server sends the others' parameters only, and the client's own full state last
    # (server/fedfomo.py:44-49)
    selected = {cid: {k: c.state_dict()[k] for k in param_names} for cid, c in zip(s["ids"], s["others"])}
    selected[0] = own
    loader = peers.batches(*s["val"], EVAL_BATCH)
    state, weights = peers.flbench_client_round(own, selected, 0, s["current"], loader)

    ours, res = our_update("fl-bench", s, [*s["others"], s["current"]])

    assert_states(
        ours, {k: v for k, v in state.items() if k != "num_batches_tracked" and not k.endswith("num_batches_tracked")}
    )
    theirs = np.array([weights[cid] for cid in [*s["ids"], 0]])
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(res.scores[finite], theirs[finite], **SCORES)
    assert res.scores[-1] == 0.0  # its own model: distance 0, score 0 (FL-bench's too)
    for name, buf in ours.items():  # integer buffers keep their dtype (FL-bench makes them float)
        if name.endswith("num_batches_tracked"):
            assert buf.dtype == torch.int64


@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_paper_client_round(kind, case, m, data):
    s = scenario(kind, case, m, data)
    n = 6
    row = np.zeros(n)
    row[0] = 0.1  # client.py:285-288
    loader = peers.batches(*s["val"], EVAL_BATCH)
    # client.py:320: the client's own (trained) model first, then the others
    state, their_row, deltas = peers.paper_client_round(
        s["last_update"], [s["current"], *s["others"]], [0, *s["ids"]], loader, row
    )

    ours, res = our_update("paper", s, s["others"])

    assert_states(ours, state)
    ours_scores = np.array([res.self_score, *res.scores])
    deltas = np.array(deltas)
    finite = np.isfinite(deltas)
    np.testing.assert_allclose(ours_scores[finite], deltas[finite], **SCORES)
    assert np.all(ours_scores[~finite] == 0)
    aff = fc.Affinity.from_preset("paper", n)
    aff.update(0, [0, *s["ids"]], ours_scores)
    if finite.all():  # with a NaN score the authors' whole row becomes NaN (a departure)
        np.testing.assert_allclose(aff.matrix[0], their_row, **SCORES)
    else:
        assert np.isfinite(aff.matrix).all()


# --- whole federations: selection, affinity and models over rounds --------------------------------


# Who takes part, in the order a sampler produced them: FL-bench draws each round's clients with
# random.sample (src/server/fedavg.py:122-128 at 06e658b), trains them in that order
# (src/utils/trainer.py:42) and ranks the previous round's clients with torch.topk over that list
# (src/server/fedfomo.py:35-42), so with tied affinities the order decides who is sent.
SCHEDULE = [[3, 0, 5, 1, 4, 2], [4, 1, 0, 3], [5, 2, 0, 3], [2, 5, 1, 4, 3]]
# Sparse affinity rows: k = 1 keeps one entry per row (these federations fill up to 3), so entries
# are evicted, parked and forgotten; None keeps every entry (dense).
ROW_ENTRIES = [None, 1]


def fleet(kind: str, data) -> tuple:
    val, train = data
    base = build(kind, 0)
    vals = [(train[k][0][:30], train[k][1][:30]) for k in range(6)]
    trains = [(train[k][0][30:], train[k][1][30:]) for k in range(6)]
    return base, vals, trains


def our_federation(preset: str, kind: str, data, m: int, **server_changes) -> tuple:
    base, vals, trains = fleet(kind, data)
    policy = fc.get_preset(preset).server.replace(**server_changes)
    clients = [
        FedFomoClient(
            copy.deepcopy(base),
            vals[k],
            train_fn=lambda mod, k=k: gd(mod, *trains[k], steps=2),
            preset=preset,
            eval_batch_size=16,
        )
        for k in range(6)
    ]
    server = fc.Server(6, clients[0].get_flat(), preset=preset, m=m, seed=0, policy=policy)
    selections = []
    for part in SCHEDULE:
        chosen = {}
        for i in part:
            ids, cands = server.candidates(i)
            chosen[i] = ids.tolist()
            res = clients[i].round(cands)
            server.receive(i, clients[i].get_flat(), ids, res.scores, self_score=res.self_score)
        server.end_round()
        selections.append(chosen)
    return selections, server.affinity, [c.module.state_dict() for c in clients]


def assert_same_federation(ours: tuple, selections: list, affinity: np.ndarray, states: list) -> None:
    """Our federation (our_federation's selections, Affinity and models) against the peer's. With
    sparse rows that evicted entries, what each row keeps equals the peer's affinity and every
    evicted entry is at most the smallest one kept in its row (it fell out of the row's top k)."""
    ours_sel, ours_aff, ours_models = ours
    assert ours_sel == selections
    for mine, theirs in zip(ours_models, states):
        assert_states(mine, theirs)
    dense = ours_aff.matrix
    if ours_aff.evicted == 0:
        np.testing.assert_allclose(dense, affinity, **SCORES)
        return
    kept = dense != 0
    np.testing.assert_allclose(dense[kept], affinity[kept], **SCORES)
    for i in range(len(dense)):
        others = np.arange(len(dense)) != i
        evicted = others & ~kept[i] & (affinity[i] != 0)
        assert evicted.sum() <= ours_aff.evicted
        if evicted.any():
            assert affinity[i, evicted].max() <= dense[i, others & kept[i]].min(initial=np.inf) + 1e-6


@pytest.mark.parametrize("k", ROW_ENTRIES)
def test_pfllib_federation(data, k):
    kind, m = "cnn", 2
    base, vals, trains = fleet(kind, data)
    # serverfomo.py:20-23: identity affinity, every client's server copy starts as the global model
    P = torch.eye(6)
    client_models = [copy.deepcopy(base) for _ in range(6)]
    models = [copy.deepcopy(base) for _ in range(6)]
    old_models = [copy.deepcopy(base) for _ in range(6)]  # clientfomo.py:15
    uploaded_ids: list = []
    selections = []
    for part in SCHEDULE:
        chosen = {}
        sent = {i: peers.pfllib_send_ids(P, i, m, uploaded_ids) for i in range(6)}  # send_models, :69-89
        for i in part:  # serverfomo.py:41-42: the selected clients train
            ids = sent[i]
            chosen[i] = ids
            loader = peers.batches(*vals[i], 16, drop_last=True)
            models[i], old_models[i], wv = peers.pfllib_client_round(
                models[i], old_models[i], ids, [client_models[j] for j in ids], loader, 6
            )
            gd(models[i], *trains[i], steps=2)
            P[i] += torch.tensor(wv, dtype=P.dtype)  # receive_models, :111 (after all trained)
        for i in part:
            client_models[i] = copy.deepcopy(models[i])  # :110
        uploaded_ids = list(part)
        selections.append(chosen)

    ours = our_federation("pfllib", kind, data, m, affinity_k=k)
    assert_same_federation(ours, selections, P.double().numpy(), [model.state_dict() for model in models])


@pytest.mark.parametrize("k", ROW_ENTRIES)
def test_flbench_federation(data, k):
    kind, m = "cnn", 2
    base, vals, trains = fleet(kind, data)
    P = torch.eye(6)  # server/fedfomo.py:25
    personal = [copy.deepcopy(base.state_dict()) for _ in range(6)]  # fedavg.py:256-265
    names = [n for n, _ in base.named_parameters()]
    selections = []
    prev: list = []
    for epoch, part in enumerate(SCHEDULE):
        chosen = {}
        for i in part:  # trainer.py:40-56: one client after the other
            ids = peers.flbench_selected_ids(P, i, m, prev, epoch)
            chosen[i] = ids
            selected = {j: {k: personal[j][k] for k in names} for j in ids if j != i}
            selected = {j: (personal[i] if j == i else selected[j]) for j in ids}
            state, weights = peers.flbench_client_round(personal[i], selected, i, base, peers.batches(*vals[i], 16))
            model = copy.deepcopy(base)
            model.load_state_dict({k: v.to(personal[i][k].dtype) for k, v in state.items()})
            gd(model, *trains[i], steps=2)
            personal[i] = copy.deepcopy(model.state_dict())  # trainer.py:54-56, visible at once
            for j, val in weights.items():  # server/fedfomo.py:29-31
                P[i][j] += val
        prev = list(part)
        selections.append(chosen)

    ours = our_federation("fl-bench", kind, data, m, affinity_k=k)
    assert_same_federation(ours, selections, P.double().numpy(), personal)


@pytest.mark.parametrize(
    "m, k",
    [
        (5, None),  # every other uploader: the two sides' sets must be equal
        (2, None),  # fewer than the pool: ours must be one of the peer's possible choices
        (2, 4),  # sparse rows (they fill 5): entries evicted and scored again restart from their new score
    ],
)
def test_paper_federation(data, m, k):
    kind = "cnn"
    ours_sel, ours_aff, ours_models = our_federation("paper", kind, data, m, epsilon=0.0, affinity_k=k)
    base, vals, trains = fleet(kind, data)
    rows = np.zeros((6, 6))
    np.fill_diagonal(rows, 0.1)  # client.py:285-288
    models = [copy.deepcopy(base) for _ in range(6)]
    first_models = [copy.deepcopy(base) for _ in range(6)]
    uploaded: list = []
    for epoch, part in enumerate(SCHEDULE):
        if epoch > 0:  # server.py:121-122: round 0 only trains
            updates = {}
            for i in part:  # federation.py:273-284: every client's weights before any update
                theirs = peers.paper_federating_ids(rows[i], i, uploaded, m)
                ids = ours_sel[epoch][i]
                # The peer breaks ties at random too (client.py:339-340): ours must be one of its
                # choices, the same values of its row; its round then runs with ours.
                assert sorted(rows[i][ids]) == sorted(rows[i][theirs])
                loader = peers.batches(*vals[i], 16)
                updates[i], rows[i], _ = peers.paper_client_round(
                    first_models[i], [models[i], *[models[j] for j in ids]], [i, *ids], loader, rows[i]
                )
            for i, state in updates.items():  # federation.py:549-554
                models[i].load_state_dict(state, strict=False)
        for i in part:
            first_models[i] = copy.deepcopy(models[i])  # main.py:325-326, server.py:171
            gd(models[i], *trains[i], steps=2)
        uploaded = list(part)  # server.py:266

    for mine, theirs in zip(ours_models, [model.state_dict() for model in models]):
        assert_states(mine, theirs)
    if k is None:
        np.testing.assert_allclose(ours_aff.matrix, rows, **SCORES)
    else:
        assert ours_aff.evicted > 0
