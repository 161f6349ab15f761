"""A PFLlib-style FedFomo client round, re-stated from PFLlib's code path for the round benchmark.

Read from TsingZ0/PFLlib at commit d832e76, system/flcore/clients/clientfomo.py ("cf") and
clientbase.py ("cb"), serverfomo.py ("sf"); file:line cited beside each step. Our own code, the
same operations in the same order:

- the round is clientFomo.train (cf:24-59): aggregate_parameters first (cf:28), then
  clone_model(model, old_model) (cf:29, cb:71-73: a clone of every parameter), then one local epoch
  of SGD in train mode over the training loader (cf:32-51; loader without shuffling, drop_last,
  cf:70; batch size 10, lr 0.005 are PFLlib's defaults, main.py:399-400);
- aggregate_parameters (cf:157-165): weight_scale(weight_cal(val_loader)); if any weight, every
  parameter's data zeroed, then add_parameters (cf:153-155) per candidate: param.data +=
  received_param.data.clone() * w;
- weight_cal (cf:102-125): L = recalculate_loss(old_model) (cf:104); per received model the
  parameter differences flattened and concatenated, (L - recalculate_loss(model)) /
  (torch.norm(diff) + 1e-5) (cf:105-111); weight_vector_update (cf:129-137: a NumPy vector of
  num_clients, += w.item() per received id, then a tensor);
- recalculate_loss (cf:139-151): every validation batch through the model as it is -- never
  eval() (so train mode: BatchNorm uses batch statistics and updates its running statistics) and
  not under no_grad (autograd records every forward) -- loss.item() summed, divided by the number
  of batches;
- weight_scale (cf:167-174): max(w, 0); if the sum is positive, w / sum, else an empty tensor.

The received models: PFLlib's server holds them as modules, one copy.deepcopy(client.model) per
upload (sf:110), and hands references to the clients (sf:84-86, cf:98-100). A client that receives
its candidates over a network as state_dicts (the form the benchmark gives both implementations)
must first make modules of them: copy.deepcopy of its model and load_state_dict, per candidate;
the benchmark times that as the round's copies.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class Phases:
    """Seconds spent in each part of one round."""

    copies: float = 0.0
    eval: float = 0.0
    weights: float = 0.0
    update: float = 0.0
    train: float = 0.0
    losses: list = field(default_factory=list)  # [L0, L_1..L_M] as computed
    weights_used: object = None  # the weights the update applied (empty when none was positive)


class PFLlibStyleClient:
    """One client: its model, old_model (the baseline), the loaders as lists of batches."""

    def __init__(self, model: nn.Module, train_batches: list, val_batches: list, num_clients: int, lr: float = 0.005):
        self.model = model
        self.old_model = copy.deepcopy(model)  # cf:15
        self.train_batches, self.val_batches = train_batches, val_batches
        self.num_clients = num_clients
        self.loss = nn.CrossEntropyLoss()  # cb:46
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)  # cb:47
        self.received_ids: list = []
        self.received_models: list = []

    def receive_state_dicts(self, ids: list, state_dicts: list, phases: Phases) -> None:
        """The client's side of receive_models (cf:98-100) for state_dicts off the wire: one module
        per candidate, as the server's deepcopy (sf:110) would have made it."""
        t0 = time.perf_counter()
        models = []
        for sd in state_dicts:
            m = copy.deepcopy(self.model)
            m.load_state_dict(sd)
            models.append(m)
        self.received_ids, self.received_models = ids, models
        phases.copies += time.perf_counter() - t0

    def recalculate_loss(self, new_model: nn.Module) -> float:  # cf:139-151
        L = 0
        for x, y in self.val_batches:
            output = new_model(x)
            loss = self.loss(output, y)
            L += loss.item()
        return L / len(self.val_batches)

    def weight_cal(self, phases: Phases, losses_given: list | None = None) -> torch.Tensor:  # cf:102-125
        """losses_given: [L0, L_1..L_M] to use instead of evaluating (the agreement check feeds
        both implementations the same losses on models whose train-mode loss is not the eval one)."""
        weight_list = []
        t0 = time.perf_counter()
        L = self.recalculate_loss(self.old_model) if losses_given is None else losses_given[0]
        phases.eval += time.perf_counter() - t0
        phases.losses = [L]
        for n, received_model in enumerate(self.received_models):
            t0 = time.perf_counter()
            params_dif = []
            for param_n, param_i in zip(received_model.parameters(), self.old_model.parameters()):
                params_dif.append((param_n - param_i).view(-1))
            params_dif = torch.cat(params_dif)
            t1 = time.perf_counter()
            L_n = self.recalculate_loss(received_model) if losses_given is None else losses_given[n + 1]
            t2 = time.perf_counter()
            phases.losses.append(L_n)
            weight_list.append((L - L_n) / (torch.norm(params_dif) + 1e-5))
            phases.eval += t2 - t1
            phases.weights += (t1 - t0) + (time.perf_counter() - t2)
        t0 = time.perf_counter()
        self.weight_vector_update(weight_list)
        with warnings.catch_warnings():  # torch.tensor of a list of tensors (PFLlib's code) warns so
            warnings.simplefilter("ignore", UserWarning)
            out = torch.tensor(weight_list)
        phases.weights += time.perf_counter() - t0
        return out

    def weight_vector_update(self, weight_list: list) -> None:  # cf:129-137
        self.weight_vector = np.zeros(self.num_clients)
        for w, i in zip(weight_list, self.received_ids):
            self.weight_vector[i] += w.item()
        self.weight_vector = torch.tensor(self.weight_vector)

    @staticmethod
    def weight_scale(weights: torch.Tensor) -> torch.Tensor:  # cf:167-174
        weights = torch.maximum(weights, torch.tensor(0))
        w_sum = torch.sum(weights)
        if w_sum > 0:
            with warnings.catch_warnings():  # as in weight_cal
                warnings.simplefilter("ignore", UserWarning)
                return torch.tensor([w / w_sum for w in weights])
        return torch.tensor([])

    def aggregate_parameters(self, phases: Phases, losses_given: list | None = None) -> None:  # cf:157-165
        raw = self.weight_cal(phases, losses_given)
        t0 = time.perf_counter()
        weights = self.weight_scale(raw)
        t1 = time.perf_counter()
        if len(weights) > 0:
            for param in self.model.parameters():
                param.data.zero_()
            for w, received_model in zip(weights, self.received_models):
                for param, received_param in zip(self.model.parameters(), received_model.parameters()):  # cf:153-155
                    param.data += received_param.data.clone() * w
        t2 = time.perf_counter()
        phases.weights += t1 - t0
        phases.update += t2 - t1
        phases.weights_used = weights

    def clone_model(self, phases: Phases) -> None:  # cf:29 -> cb:71-73
        t0 = time.perf_counter()
        for param, target_param in zip(self.model.parameters(), self.old_model.parameters()):
            target_param.data = param.data.clone()
        phases.copies += time.perf_counter() - t0

    def train_epoch(self, phases: Phases) -> None:  # cf:32-51
        t0 = time.perf_counter()
        self.model.train()
        for x, y in self.train_batches:
            output = self.model(x)
            loss = self.loss(output, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        phases.train += time.perf_counter() - t0

    def round(self, ids: list, state_dicts: list) -> Phases:
        """receive, aggregate, clone to old_model, train: one whole client round."""
        phases = Phases()
        self.receive_state_dicts(ids, state_dicts, phases)
        self.aggregate_parameters(phases)
        self.clone_model(phases)
        self.train_epoch(phases)
        return phases
