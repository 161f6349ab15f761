"""The three peers' FedFomo rounds, re-stated from their own code paths for the parity tests.

Each function follows its peer's files line by line (cited as file:line at the commits the
presets were read from: NVlabs/FedFomo@fe04f66, TsingZ0/PFLlib@d832e76, KarhouTam/FL-bench@06e658b)
on deep copies of the models, so that the peers' side effects (train-mode running statistics,
dtype changes) stay inside the re-statement. Where a peer would crash or poison its state the
function says so; the tests compare only what the peer defines.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def batches(x: torch.Tensor, y: torch.Tensor, size: int, drop_last: bool = False) -> list:
    """A DataLoader(TensorDataset(x, y), size, shuffle=False, drop_last=...) as a list."""
    out = [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
    if drop_last and len(out) > 1 and len(out[-1][1]) < size:
        out = out[:-1]
    return out


def has_batchnorm(model: nn.Module) -> bool:
    # PFLlib clientbase.py:35-38: has_BatchNorm when any child is a BatchNorm layer
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- PFLlib: system/flcore/clients/clientfomo.py, system/flcore/servers/serverfomo.py ------------


def pfllib_recalculate_loss(model: nn.Module, val_loader: list) -> float:
    # clientfomo.py:139-151: the model's own mode (train: PFLlib never calls eval() here), the mean
    # of the per-batch mean cross-entropies (clientbase.py:46 nn.CrossEntropyLoss())
    loss_fn = nn.CrossEntropyLoss()
    L = 0
    for x, y in val_loader:
        L += loss_fn(model(x), y).item()
    return L / len(val_loader)


def pfllib_client_round(
    model: nn.Module,
    old_model: nn.Module,
    received_ids: list,
    received_models: list,
    val_loader: list,
    num_clients: int,
) -> tuple:
    """clientfomo.py:24-29 (aggregate_parameters, then clone_model into old_model); returns
    (model, old_model, weight_vector [N])."""
    model, old_model = copy.deepcopy(model), copy.deepcopy(old_model)
    received_models = [copy.deepcopy(m) for m in received_models]
    for m in [model, old_model, *received_models]:
        m.train()  # clientfomo.py:32 leaves every model in train mode; evaluation never switches it
    with torch.no_grad():
        # weight_cal, clientfomo.py:102-111
        weight_list = []
        L = pfllib_recalculate_loss(old_model, val_loader)
        for received_model in received_models:
            params_dif = []
            for param_n, param_i in zip(received_model.parameters(), old_model.parameters()):
                params_dif.append((param_n - param_i).view(-1))
            params_dif = torch.cat(params_dif)
            weight_list.append(
                (L - pfllib_recalculate_loss(received_model, val_loader)) / (torch.norm(params_dif) + 1e-5)
            )
        # weight_vector_update, clientfomo.py:134-137
        weight_vector = np.zeros(num_clients)
        for w, cid in zip(weight_list, received_ids):
            weight_vector[cid] += w.item()
        weights = torch.tensor(weight_list)  # clientfomo.py:125
        # weight_scale, clientfomo.py:167-174
        weights = torch.maximum(weights, torch.tensor(0))
        w_sum = torch.sum(weights)
        weights = torch.tensor([w / w_sum for w in weights]) if w_sum > 0 else torch.tensor([])
        # aggregate_parameters, clientfomo.py:157-165: parameters only; buffers stay the model's
        if len(weights) > 0:
            for param in model.parameters():
                param.data.zero_()
            for w, received_model in zip(weights, received_models):
                for param, received_param in zip(model.parameters(), received_model.parameters()):
                    param.data += received_param.data.clone() * w
        # clone_model(self.model, self.old_model), clientfomo.py:29 with clientbase.py:71-73
        for param, target_param in zip(model.parameters(), old_model.parameters()):
            target_param.data = param.data.clone()
    return model, old_model, weight_vector


def pfllib_send_ids(P: torch.Tensor, client: int, M: int, uploaded_ids: list) -> list:
    # serverfomo.py:77-78: top-M_ of the whole row, M_ = min(M, number of last round's uploaders)
    M_ = min(M, len(uploaded_ids))
    return torch.topk(P[client], M_).indices.tolist()


# --- FL-bench: src/client/fedfomo.py, src/server/fedfomo.py ----------------------------------------


def flbench_vectorize(model: nn.Module) -> torch.Tensor:
    # src/utils/functional.py:81-82: the whole state_dict, integer buffers promoted by torch.cat
    return torch.cat([p.detach().clone().flatten() for p in model.state_dict().values()])


def flbench_evaluate_loss(model: nn.Module, val_loader: list) -> float:
    # functional.py:88-121 in eval mode with the client's criterion (fedavg.py:72, mean), summed
    # over batches, divided by the number of samples (metrics.py:33-35)
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for x, y in val_loader:
        total += loss_fn(model(x), y).item()
        count += len(y)
    return total / count


def flbench_client_round(
    own_state: dict, selected: dict, client_id: int, model_template: nn.Module, val_loader: list
) -> tuple:
    """fedfomo.py:33-94 (set_parameters). ``selected`` maps client id -> the params the server
    sends (parameters only; the client's own entry is its full state). Returns (state_dict after
    the update, {client id: score})."""
    model = copy.deepcopy(model_template)
    eval_model = copy.deepcopy(model_template)
    with torch.no_grad():
        model.load_state_dict(own_state)  # fedfomo.py:43-45
        eval_model.load_state_dict(own_state)  # fedfomo.py:46-48
        vectorized_self_params = flbench_vectorize(eval_model)  # :49
        LOSS = flbench_evaluate_loss(eval_model, val_loader)  # :51-56
        W = torch.zeros(len(selected))  # :57-59
        client_weights = {}
        for i, (cid, params_i) in enumerate(selected.items()):  # :61-74
            eval_model.load_state_dict(params_i, strict=False)
            loss = flbench_evaluate_loss(eval_model, val_loader)
            params_diff = flbench_vectorize(eval_model) - vectorized_self_params
            w = (LOSS - loss) / (torch.norm(params_diff) + 1e-5)
            W[i] = w
            client_weights[cid] = w
        W.clip_(min=0)  # :77-80
        weight_sum = W.sum()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if weight_sum > 0:
            W /= weight_sum
            for key in state:  # :81-94
                clients_model_params = [mp[key] for mp in selected.values() if key in mp.keys()]
                if clients_model_params:
                    state[key] = torch.sum(torch.stack(clients_model_params, dim=-1) * W, dim=-1)
    return state, {k: float(v) for k, v in client_weights.items()}


def flbench_selected_ids(P: torch.Tensor, client: int, M: int, prev_round_clients: list, epoch: int) -> list:
    # server/fedfomo.py:33-49: top-M of the row restricted to last round's clients, then itself
    ids = []
    if epoch > 0:
        ids = [prev_round_clients[i] for i in torch.topk(P[client][prev_round_clients], M).indices.tolist()]
    if client not in ids:
        ids.append(client)  # :49 (a dict: an existing key keeps its place)
    return ids


# --- the authors: federation.py, client.py, federated/utils.py, federated/train.py ----------------


def paper_class_eval_loss(model: nn.Module, val_loader: list) -> float:
    # federation.py:163-167 eval(); federated/train.py:222-258: mean of the per-batch mean losses
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    all_batch_loss = [loss_fn(model(x), y).item() for x, y in val_loader]
    return sum(all_batch_loss) / len(all_batch_loss)


def paper_l1_distance(model_a: nn.Module, model_b: nn.Module) -> float:
    # federated/utils.py:147-155: per-parameter L1 norms summed in Python floats
    total = 0.0
    for w_a, w_b in zip(model_a.parameters(), model_b.parameters()):
        total += (w_a - w_b).norm(1).item()
    return total


def paper_client_round(
    first_model: nn.Module, models: list, model_ids: list, val_loader: list, client_weights: np.ndarray
) -> tuple:
    """One client of Federation.compute_client_weights + federate with baseline 'first_model'
    (federation.py:286-377 with compute_fomo_weights :152-184, update_client_weights :379-459,
    federate :523-554). ``models`` are the client's own current model first (client.py:320), then
    the others. Returns (state_dict after the update with the floating entries, new client_weights
    row, model_deltas). Integer buffers are left out: federation.py:545 crashes on them."""
    first_model = copy.deepcopy(first_model)
    comparison_models = [copy.deepcopy(m) for m in models]
    with torch.no_grad():
        baseline_loss = paper_class_eval_loss(first_model, val_loader)  # :163-164
        loss_deltas = [baseline_loss - paper_class_eval_loss(m, val_loader) for m in comparison_models]  # :165-175
        distances = np.array([paper_l1_distance(m, first_model) for m in comparison_models])  # :177-182
        with np.errstate(divide="ignore", invalid="ignore"):
            model_deltas = list(np.array(loss_deltas) / distances)  # :184
        # update_client_weights, federation.py:396-418
        client_weights = client_weights.copy()
        normalization_factor = np.abs(np.sum(model_deltas))
        if normalization_factor < 1e-9:
            normalization_factor += 1e-9
        for ix, delta in enumerate(np.array(model_deltas) / normalization_factor):
            client_weights[model_ids[ix]] += delta * 1
        # positive models only, federation.py:421-459
        positive = [(d, comparison_models[ix]) for ix, d in enumerate(model_deltas) if d > 0]
        if positive:
            weights = np.array([d for d, _ in positive]) / np.sum([d for d, _ in positive])
            chosen = [m for _, m in positive]
        else:
            weights, chosen = [1.0], [first_model]
        # federate, federation.py:541-545 (floating entries: the integer ones crash there)
        client_model = first_model.state_dict()
        model_params = {k: v.clone() for k, v in client_model.items() if v.is_floating_point()}
        states = [m.state_dict() for m in chosen]
        for k in model_params:
            for i in range(len(states)):
                model_params[k] += (states[i][k] - client_model[k]) * weights[i]
    return model_params, client_weights, model_deltas


def paper_federating_ids(client_weights: np.ndarray, client: int, possible: list, num_clients: int) -> list:
    """client.py:328-361 with epsilon 0 (no exploration) and no ties: the best of ``possible``
    (the last round's uploaders) other than the client, in order."""
    possible = [c for c in possible if c != client]
    weights = [client_weights[c] for c in possible]
    top = list(np.lexsort((np.zeros(len(weights)), weights))[::-1])
    return [possible[ix] for ix in top[:num_clients]]
