"""Parity with the published FedFomo implementations: each peer's formula, re-expressed in plain torch
below from its source, against fomo_core run with that peer's preset, on real torch models (an MLP
and a small CNN with BatchNorm, whose state_dict holds running statistics and the integer
num_batches_tracked) trained for a few steps on scikit-learn's digits so that they genuinely differ.

The peers, as published:

- PFLlib (system/flcore/clients/clientfomo.py): per candidate, the parameters' differences
  flattened and concatenated, s = (L - L_n) / (torch.norm(diff) + 1e-5); weights max(s, 0) / sum;
  when the sum is positive the model's parameters are zeroed and sum_n w_n theta_n accumulated
  layer by layer (buffers untouched); otherwise the model stays.
- FL-bench (src/client/fedfomo.py): the whole state_dict vectorised (buffers and
  num_batches_tracked included, promoted to float by torch.cat), s = (L - L_n) / (norm + 1e-5) for
  every selected client, the client itself included (distance 0, score 0); W clipped at 0 and
  normalised; every state_dict entry set to torch.sum(stack(entries) * W).
- The authors (NVlabs/FedFomo, federation.py): s = (L0 - L_n) / sum over parameters() of the
  per-layer float32 L1 norms (no eps), the client's own model among the candidates; positive
  scores normalised; theta_i + sum_n w_n (theta_n - theta_i) over every state_dict entry.

Where they differ from fomo_core's exact semantics (tolerances follow from these, see below):
- The peers compute in the storage dtype (float32): the norms (worst case n * u32 relative for a
  float32 sum of n non-negative terms), PFLlib's L - L_n (float32), the normalisation. fomo_core
  sums in float64. So the float32 runs are compared within those worst-case bounds, and the same
  formulas are also run on float64 copies of the models (the peers' arithmetic then in float64),
  where they must agree to ~1e-12 -- tight enough to tell eps = 1e-5 from eps = 0, l1 from l2, or
  the state_dict from the parameters (checked: the neighbouring options fail that comparison).
- PFLlib and FL-bench zero-then-accumulate: sum_n w_n theta_n equals fomo_core's
  theta_i + sum_n w_n (theta_n - theta_i) only because sum_n w_n = 1, which holds up to rounding.
- The authors' identical own model gets 0/0 = NaN as its score (never positive, weight 0);
  fomo_core rejects it (score 0, weight 0). The weights agree; that score is not compared.
- FL-bench averages num_batches_tracked into a float tensor and counts it in the distance; fomo_core
  leaves non-floating entries alone. The clients here all train the same number of steps, so the
  counts agree and FL-bench's average equals the integer (checked); with unequal counts they would
  not, which is a deliberate difference (an average of step counters means nothing).
- The authors' update loops over the whole state_dict while their distance reads parameters()
  only (their `model_params[k] += ... * w` would raise on an integer num_batches_tracked, so the
  re-expression skips non-floating entries); the "paper" preset says so (include_buffers=False,
  update_buffers=True), so the test measures the parameters and updates the state_dict, as they do.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import fomo_core as fc
from strategies import to_f64

U = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
STEPS = 25


# ---- the federation: real models, real data ------------------------------------------------------


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = torch.from_numpy((X / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    return X, torch.from_numpy(y)


def train(model: nn.Module, X, y, lr: float, seed: int) -> nn.Module:
    """STEPS steps of SGD on minibatches of 32 (every client the same number of steps, so that
    BatchNorm's num_batches_tracked agree)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(STEPS):
        batch = torch.randint(0, len(X), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
        opt.step()
    return model


@torch.no_grad()
def val_loss(model: nn.Module, X, y) -> float:
    model.eval()
    return float(nn.functional.cross_entropy(model(X.to(next(model.parameters()).dtype)), y))


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def federation(request, digits):
    """Client 0 (the local model, trained slowly on digits 0-4) and three candidates from the same
    starting point: two trained on other samples of digits 0-4 (they help), one on digits 5-9 (it
    does not). Returns float32 models and float64 copies, with client 0's validation losses."""
    X, y = digits
    rng = np.random.default_rng(0)
    low, high = rng.permutation(np.flatnonzero(y < 5)), rng.permutation(np.flatnonzero(y >= 5))
    train_sets = [low[:150], low[350:600], low[600:800], high[:300]]
    val = low[150:350]
    torch.manual_seed(0)
    start = mlp() if request.param == "mlp" else cnn()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small train fastest on one thread (and CI shares 2 cores)
    try:
        models = [train(copy.deepcopy(start), X[idx], y[idx], lr, seed)
                  for seed, (idx, lr) in enumerate(zip(train_sets, [0.02, 0.5, 0.3, 0.5]))]
    finally:
        torch.set_num_threads(threads)
    for m in models:
        m.eval()
    doubles = [copy.deepcopy(m).double() for m in models]
    losses32 = [val_loss(m, X[val], y[val]) for m in models]
    losses64 = [val_loss(m, X[val], y[val]) for m in doubles]
    assert losses32[1] < losses32[0] and losses32[3] > losses32[0], losses32  # some help, some do not
    return {"float32": (models, losses32), "float64": (doubles, losses64), "kind": request.param}


# ---- the peers' formulas, re-expressed -----------------------------------------------------------


@torch.no_grad()
def pfllib_step(model, received, L, received_losses):
    """PFLlib clientFomo.weight_cal, weight_scale and aggregate_parameters."""
    weight_list = []
    for received_model, loss in zip(received, received_losses):
        params_dif = []
        for param_n, param_i in zip(received_model.parameters(), model.parameters()):
            params_dif.append((param_n - param_i).view(-1))
        params_dif = torch.cat(params_dif)
        loss = torch.tensor(loss, dtype=params_dif.dtype)  # recalculate_loss returns a tensor
        weight_list.append((L - loss) / (torch.norm(params_dif) + 1e-5))
    scores = torch.tensor(weight_list)
    weights = torch.maximum(scores, torch.tensor(0))
    w_sum = torch.sum(weights)
    new = copy.deepcopy(model)
    if w_sum > 0:
        weights = torch.tensor([w / w_sum for w in weights])
        for param in new.parameters():
            param.data = torch.zeros_like(param.data)
        for w, received_model in zip(weights, received):
            for param, received_param in zip(new.parameters(), received_model.parameters()):
                param.data += received_param.data.clone() * w
    else:
        weights = torch.zeros(len(received), dtype=scores.dtype)  # PFLlib: no weights, model kept
    return scores, weights, new.state_dict()


def vectorize(state: dict) -> torch.Tensor:
    return torch.cat([p.detach().clone().flatten() for p in state.values()])


@torch.no_grad()
def flbench_step(model, received, LOSS, losses):
    """FL-bench FedFomoClient.set_parameters (the client itself among `received`). W is created in
    the model's dtype (FL-bench: torch.zeros' default float32) so that the float64 run is float64
    throughout."""
    vectorized_self_params = vectorize(model.state_dict())
    W = torch.zeros(len(received), dtype=vectorized_self_params.dtype)
    for i, (params_i, loss) in enumerate(zip(received, losses)):
        params_diff = vectorize(params_i.state_dict()) - vectorized_self_params
        W[i] = (LOSS - loss) / (torch.norm(params_diff) + 1e-5)
    scores = W.clone()
    W.clip_(min=0)
    weight_sum = W.sum()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if weight_sum > 0:
        W /= weight_sum
        for key in state:
            clients_model_params = [r.state_dict()[key] for r in received]
            state[key] = torch.sum(torch.stack(clients_model_params, dim=-1) * W, dim=-1)
    return scores, W, state


@torch.no_grad()
def authors_step(baseline, comparison_models, baseline_loss, comparison_losses):
    """NVlabs/FedFomo compute_fomo_weights (l1 parameter distance), update_client_weights
    (positive deltas normalised) and Federation.federate (theta_i + sum w (theta_n - theta_i))."""
    loss_deltas = [baseline_loss - loss for loss in comparison_losses]
    weight_deltas = np.ones(len(comparison_models))
    for ix, comparison_model in enumerate(comparison_models):
        total_diff = 0.0
        for w_a, w_b in zip(comparison_model.parameters(), baseline.parameters()):
            total_diff += (w_a - w_b).norm(1).item()
        weight_deltas[ix] = total_diff
    with np.errstate(divide="ignore", invalid="ignore"):  # the own model: 0 / 0
        scores = np.array(loss_deltas) / weight_deltas
    positive = [d for d in scores if d > 0]
    weights = np.array([d / np.sum(positive) if d > 0 else 0.0 for d in scores])
    models = [m.state_dict() for m, d in zip(comparison_models, scores) if d > 0]
    model_weights = [w for w in weights if w > 0]
    if not models:  # nothing better than the baseline: revert to it
        models, model_weights = [baseline.state_dict()], [1.0]
    client_model = baseline.state_dict()
    model_params = copy.deepcopy(client_model)
    for k in model_params.keys():
        if not model_params[k].is_floating_point():
            continue  # their in-place float update of an int64 tensor would raise
        for i in range(0, len(models)):
            model_params[k] += (models[i][k] - client_model[k]) * model_weights[i]
    return torch.from_numpy(scores), torch.from_numpy(weights), model_params


# ---- fomo_core with each preset ------------------------------------------------------------------

PEERS = {"pfllib": pfllib_step, "fl-bench": flbench_step, "paper": authors_step}


def candidates_for(preset: str, models: list) -> list:
    """Which models the peer weighs for client 0: FL-bench and the authors include the client's own
    model, PFLlib only the others (it is not in its own top-M here)."""
    return models[1:] if preset == "pfllib" else models


def fomo_core_step(preset_name: str, model, candidates, L0, losses, **override):
    preset = fc.get_preset(preset_name)
    options = dict(preset.step_options(), **override)
    buffers = override.pop("include_buffers", preset.include_buffers)
    options.pop("include_buffers", None)

    def measured(m):  # trainable parameters (as torch Parameters, requires_grad and all) or everything
        return m.state_dict() if buffers else dict(m.named_parameters())

    res = fc.fomo_step(measured(model), [measured(c) for c in candidates], L0, losses, **options)
    if preset.update_buffers and not buffers:  # the authors: weights from parameters, applied to the state_dict
        params = fc.apply_update(model.state_dict(), [c.state_dict() for c in candidates], res.weights)
    else:
        params = res.params
    return res, params


# ---- tolerances ----------------------------------------------------------------------------------


def peer_tolerances(preset: str, dtype, model, candidates, L0, losses):
    """Relative bounds on the peer's scores and weights, from the roundings it does that fomo_core
    does not (fomo_core's own float64 error, ~n * 2^-52, is far below all of these)."""
    u = U[dtype]
    n_params = sum(p.numel() for p in model.parameters())
    n_state = sum(v.numel() for v in model.state_dict().values())
    largest_layer = max(p.numel() for p in model.parameters())
    rtols = []
    for loss in losses:
        if preset == "pfllib":  # float32 norm of n_params terms; L - L_n and the division in float32
            r = n_params * u + u * (abs(L0) + abs(loss)) / max(abs(L0 - loss), 1e-300) + 4 * u
        elif preset == "fl-bench":  # norm over the whole state_dict; the quotient rounded to float32
            r = n_state * u + 4 * u
        else:  # per-layer float32 l1 norms (each <= layer size * u relative), summed in float64
            r = largest_layer * u + 4 * 2.0**-53
        rtols.append(r)
    m = len(losses)
    weight = 2 * max(rtols) + (m + 4) * u  # numerator and sum, plus the peer's normalisation
    return np.array(rtols), weight


def param_bound(dtype, model, candidates, peer_weights, core_weights, key):
    """|peer - fomo_core| per element of state_dict[key], given the weights each side used (already
    compared above): both sides are within one storage rounding of their exact value (2u|v|) after
    accumulations of (M + 4) roundings each, over S = |x| + sum w |c - x| (fomo_core, the authors)
    and T = sum w |c| (zero-then-accumulate); and their exact values differ by what the weights
    differ by: sum_n w'_n c_n - (x + sum_n w_n (c_n - x)) = sum_n (w'_n - w_n) c_n + (1 - sum_n w_n) x,
    bounded by sum_n |w'_n - w_n| (|c_n| + |c_n - x|) + (M + 4) u64 |x| (fomo_core's float64 weights
    sum to 1 within M + 4 roundings)."""
    u = U[dtype]
    x = to_f64(model.state_dict()[key])
    cs = [to_f64(c.state_dict()[key]) for c in candidates]
    m = len(cs)
    value = x + sum(w * (c - x) for w, c in zip(core_weights, cs))
    s = np.abs(x) + sum(w * np.abs(c - x) for w, c in zip(core_weights, cs))
    t = sum(w * np.abs(c) for w, c in zip(peer_weights, cs))
    weights = sum(abs(a - b) * (np.abs(c) + np.abs(c - x)) for a, b, c in zip(peer_weights, core_weights, cs))
    return 2 * u * np.abs(value) + 2 * (m + 4) * u * (s + t) + weights + (m + 4) * 2.0**-53 * np.abs(x)


# ---- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("preset", ["pfllib", "fl-bench", "paper"])
def test_preset_reproduces_peer(federation, preset, precision):
    models, losses = federation[precision]
    dtype = torch.float32 if precision == "float32" else torch.float64
    local, candidates = models[0], candidates_for(preset, models)
    L0, cand_losses = losses[0], [losses[models.index(c)] for c in candidates]

    peer_scores, peer_weights, peer_state = PEERS[preset](local, candidates, L0, cand_losses)
    res, params = fomo_core_step(preset, local, candidates, L0, cand_losses)

    score_rtol, weight_rtol = peer_tolerances(preset, dtype, local, candidates, L0, cand_losses)
    got_scores, got_weights = res.scores.numpy(), res.weights.numpy()
    want_scores, want_weights = to_f64(peer_scores), to_f64(peer_weights)
    comparable = np.isfinite(want_scores)  # the authors' own-model 0/0
    assert np.all(np.abs(got_scores - want_scores)[comparable] <= score_rtol[comparable] * np.abs(want_scores[comparable]))
    if preset == "paper":
        assert not comparable[0] and bool(res.rejected[0]) and got_weights[0] == 0.0
    assert np.all(np.abs(got_weights - want_weights) <= weight_rtol * want_weights + 1e-300)
    assert np.count_nonzero(got_weights) >= 1 and got_weights[-1] == 0.0  # digits 5-9 never helps

    updated = dict(params)
    for key, want in peer_state.items():
        if key not in updated:  # PFLlib: buffers untouched by both
            assert torch.equal(want, local.state_dict()[key])
            continue
        got = updated[key]
        assert got.dtype == local.state_dict()[key].dtype and got.shape == want.shape
        if not got.is_floating_point():
            assert torch.equal(got, local.state_dict()[key])  # fomo_core leaves counters alone
            assert float(torch.max(torch.abs(want.double() - got.double()))) <= 4 * STEPS * U[torch.float32]
            continue
        bound = param_bound(dtype, local, candidates, want_weights, got_weights, key)
        err = np.abs(to_f64(got) - to_f64(want))
        assert np.all(err <= bound), (key, float(np.max(err / bound)))
    # the models really moved
    moved = [k for k, v in updated.items() if v.is_floating_point() and not torch.equal(v, local.state_dict()[k])]
    assert moved


NEIGHBOURS = {
    "pfllib": [dict(eps=0.0), dict(norm="l1")],
    "fl-bench": [dict(eps=0.0), dict(include_buffers=False)],
    "paper": [dict(norm="l2"), dict(eps=1e-5)],
}


@pytest.mark.parametrize("preset", ["pfllib", "fl-bench", "paper"])
def test_float64_parity_tells_the_presets_apart(federation, preset):
    """In float64 the comparison is tight enough that a neighbouring option (eps 1e-5 or 0, the
    other norm, parameters instead of the state_dict) misses the peer: the parity above is not
    vacuous. (The CNN's buffers are what tells FL-bench's state_dict from the parameters; the MLP
    has none.)"""
    models, losses = federation["float64"]
    local, candidates = models[0], candidates_for(preset, models)
    L0, cand_losses = losses[0], [losses[models.index(c)] for c in candidates]
    peer_scores, _, _ = PEERS[preset](local, candidates, L0, cand_losses)
    score_rtol, _ = peer_tolerances(preset, torch.float64, local, candidates, L0, cand_losses)
    want = to_f64(peer_scores)
    comparable = np.isfinite(want) & (want != 0)

    def misses(**override):
        res, _ = fomo_core_step(preset, local, candidates, L0, cand_losses, **override)
        err = np.abs(res.scores.numpy() - want)[comparable]
        return bool(np.any(err > score_rtol[comparable] * np.abs(want[comparable])))

    assert not misses()
    for override in NEIGHBOURS[preset]:
        if federation["kind"] == "mlp" and override == dict(include_buffers=False):
            continue
        assert misses(**override), override
