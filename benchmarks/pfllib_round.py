"""A PFLlib-style FedFomo client round, re-stated from PFLlib's code path for the round benchmark.

Read from TsingZ0/PFLlib at commit d832e76, system/flcore/clients/clientfomo.py ("cf"),
clientbase.py ("cb") and servers/serverfomo.py ("sf"); file:line cited beside each step. Our own
code, the same operations in the same order:

- the server keeps one module per client, a copy.deepcopy of the client's model made when it
  uploads (sf:110), and hands the selected ones to a client by reference: send_models collects
  self.client_models[i] (sf:82-84) and the client's receive_models stores the list as it is
  (sf:86, cf:98-100). So the client round starts from the server's modules, copying nothing;
- the round is clientFomo.train (cf:24-59): aggregate_parameters first (cf:28), then
  clone_model(model, old_model) (cf:29, cb:71-73: a clone of every parameter), then one local epoch
  of SGD in train mode over the training loader (cf:38-51; loader without shuffling, drop_last,
  cf:70; batch size 10, lr 0.005 are PFLlib's defaults, main.py:399-400);
- aggregate_parameters (cf:157-165): weight_scale(weight_cal(val_loader)); if any weight, every
  parameter's data zeroed, then add_parameters (cf:153-155) per candidate: param.data +=
  received_param.data.clone() * w;
- weight_cal (cf:102-125): L = recalculate_loss(old_model) (cf:104); per received model the
  parameter differences flattened and concatenated, (L - recalculate_loss(model)) /
  (torch.norm(diff) + 1e-5) (cf:105-111); weight_vector_update (cf:129-137: a NumPy vector of
  num_clients, += w.item() per received id, then a tensor);
- recalculate_loss (cf:139-151): every validation batch through the model as it is -- never
  eval() (so train mode: BatchNorm uses batch statistics and updates the running statistics of
  the server's module) and not under no_grad (autograd records every forward) -- loss.item()
  summed, divided by the number of batches;
- weight_scale (cf:167-174): max(w, 0); if the sum is positive, w / sum, else an empty tensor.

PFLlib re-reads the client's data files every round (load_train_data, cf:25, 62-73); the benchmark
leaves that out and hands both implementations the same loaders. Every phase is timed by the
calling thread's CPU time.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

CLOCK = time.thread_time  # CPU time of the calling thread: time given to other processes does not count


@dataclass
class Phases:
    """CPU seconds spent in each part of one round."""

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

    def receive_models(self, ids: list, models: list) -> None:  # cf:98-100: the server's modules, by reference
        self.received_ids = ids
        self.received_models = models

    def recalculate_loss(self, new_model: nn.Module) -> float:  # cf:139-151
        L = 0
        for x, y in self.val_batches:
            output = new_model(x)
            loss = self.loss(output, y)
            L += loss.item()
        return L / len(self.val_batches)

    def weight_cal(self, phases: Phases, losses_given: Optional[list] = None) -> torch.Tensor:  # cf:102-125
        """losses_given: [L0, L_1..L_M] to use instead of evaluating (the agreement check gives
        both implementations the same losses, so that the weights compare to float32 rounding)."""
        weight_list = []
        t0 = CLOCK()
        L = self.recalculate_loss(self.old_model) if losses_given is None else losses_given[0]
        phases.eval += CLOCK() - t0
        phases.losses = [L]
        for n, received_model in enumerate(self.received_models):
            t0 = CLOCK()
            params_dif = []
            for param_n, param_i in zip(received_model.parameters(), self.old_model.parameters()):
                params_dif.append((param_n - param_i).view(-1))
            params_dif = torch.cat(params_dif)
            t1 = CLOCK()
            L_n = self.recalculate_loss(received_model) if losses_given is None else losses_given[n + 1]
            t2 = CLOCK()
            phases.losses.append(L_n)
            weight_list.append((L - L_n) / (torch.norm(params_dif) + 1e-5))
            phases.eval += t2 - t1
            phases.weights += (t1 - t0) + (CLOCK() - t2)
        t0 = CLOCK()
        self.weight_vector_update(weight_list)
        with warnings.catch_warnings():  # torch.tensor of a list of tensors (PFLlib's code) warns so
            warnings.simplefilter("ignore", UserWarning)
            out = torch.tensor(weight_list)
        phases.weights += CLOCK() - t0
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

    def aggregate_parameters(self, phases: Phases, losses_given: Optional[list] = None) -> None:  # cf:157-165
        raw = self.weight_cal(phases, losses_given)
        t0 = CLOCK()
        weights = self.weight_scale(raw)
        t1 = CLOCK()
        if len(weights) > 0:
            for param in self.model.parameters():
                param.data.zero_()
            for w, received_model in zip(weights, self.received_models):
                for param, received_param in zip(self.model.parameters(), received_model.parameters()):  # cf:153-155
                    param.data += received_param.data.clone() * w
        t2 = CLOCK()
        phases.weights += t1 - t0
        phases.update += t2 - t1
        phases.weights_used = weights

    def clone_model(self, phases: Phases) -> None:  # cf:29 -> cb:71-73
        t0 = CLOCK()
        for param, target_param in zip(self.model.parameters(), self.old_model.parameters()):
            target_param.data = param.data.clone()
        phases.copies += CLOCK() - t0

    def train_epoch(self, phases: Phases) -> None:  # cf:38-51
        t0 = CLOCK()
        self.model.train()
        for x, y in self.train_batches:
            output = self.model(x)
            loss = self.loss(output, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        phases.train += CLOCK() - t0

    def round(self, ids: list, models: list) -> Phases:
        """The server hands over its modules (sf:82-86), then clientFomo.train: aggregate, clone to
        old_model, train (cf:28-51)."""
        phases = Phases()
        self.receive_models(ids, models)
        self.aggregate_parameters(phases)
        self.clone_model(phases)
        self.train_epoch(phases)
        return phases
