"""Per-round records of a simulated federation and the summary numbers computed from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["RoundRecord", "MethodRun", "within_group_fraction"]


@dataclass
class RoundRecord:
    """One round of one method.

    accuracy:         mean test accuracy over all clients of the model each client ends the round
                      with, *after local training* (FedFomo, Local, FedAvg+FT: its own model on its
                      own test data; FedAvg and the group oracle, which train before they average:
                      the averaged model, the same as after the update)
    client_accuracy:  [N] per client
    participants:     the clients that trained this round
    update_accuracy:  the mean accuracy right *after the federated update*, before local training
                      (FedFomo: after its weighted step; FedAvg, FedAvg+FT, oracle: the averaged
                      model; Local, which has no update: its model before this round's training).
                      Clients not taking part are counted as they stand.
    affinity:         FedFomo only: the server's affinity matrix [N, N] at the end of the round
    eval_seconds:     spent evaluating candidates on validation data (FedFomo)
    step_seconds:     spent computing weights and updating (fomo_step; FedAvg: averaging)
    train_seconds:    spent in local training
    no_positive_weight: FedFomo only: how many participants gave no received candidate a
                      positive weight this round
    moved_to_global:  FedFomo only: how many participants moved toward the global model
    """

    round: int
    accuracy: float
    client_accuracy: list
    participants: list
    update_accuracy: Optional[float] = None
    affinity: Optional[list] = None
    eval_seconds: float = 0.0
    step_seconds: float = 0.0
    train_seconds: float = 0.0
    no_positive_weight: Optional[int] = None
    moved_to_global: Optional[int] = None


@dataclass
class MethodRun:
    """All rounds of one method; ``affinity`` [N, N] for FedFomo."""

    name: str
    rounds: list = field(default_factory=list)
    affinity: Optional[np.ndarray] = None

    @property
    def accuracy_per_round(self) -> list:
        return [r.accuracy for r in self.rounds]

    @property
    def final_accuracy(self) -> float:
        """After local training, last round."""
        return self.rounds[-1].accuracy if self.rounds else float("nan")

    @property
    def final_accuracy_after_update(self) -> Optional[float]:
        """Right after the federated update, last round (None when the method does not record it)."""
        return self.rounds[-1].update_accuracy if self.rounds else None

    def seconds(self, kind: str) -> float:
        return float(sum(getattr(r, f"{kind}_seconds") for r in self.rounds))

    def to_dict(self) -> dict:
        return {
            "final_accuracy": self.final_accuracy,
            "accuracy_per_round": self.accuracy_per_round,
            **(
                {
                    "final_accuracy_after_update": self.final_accuracy_after_update,
                    "accuracy_after_update_per_round": [r.update_accuracy for r in self.rounds],
                }
                if self.rounds and self.rounds[0].update_accuracy is not None
                else {}
            ),
            "final_client_accuracy": self.rounds[-1].client_accuracy if self.rounds else [],
            "client_accuracy_per_round": [r.client_accuracy for r in self.rounds],
            **(
                {"affinity_per_round": [r.affinity for r in self.rounds]}
                if self.rounds and self.rounds[0].affinity is not None
                else {}
            ),
            **(
                {
                    "participants_per_round": [len(r.participants) for r in self.rounds],
                    "no_positive_weight_per_round": [r.no_positive_weight for r in self.rounds],
                    "moved_to_global_per_round": [r.moved_to_global for r in self.rounds],
                }
                if self.rounds and self.rounds[0].no_positive_weight is not None
                else {}
            ),
            "eval_seconds_per_round": [r.eval_seconds for r in self.rounds],
            "step_seconds_per_round": [r.step_seconds for r in self.rounds],
            "train_seconds_per_round": [r.train_seconds for r in self.rounds],
            "seconds": {k: self.seconds(k) for k in ("eval", "step", "train")},
        }


def within_group_fraction(matrix: np.ndarray, groups: np.ndarray, reference: Optional[np.ndarray] = None):
    """The share of each client's positive affinity that lands on clients of a given group,
    averaged over the clients that have any positive affinity.

    matrix:    [N, N] affinity; the diagonal (a client's affinity to itself) is left out
    groups:    [N] the group of every client
    reference: [N] the group each client's row is compared with (its own group by default; its
               target's group for shifted targets)
    Returns (fraction or None when no client has positive affinity, number of clients counted).
    """
    a = np.clip(np.asarray(matrix, dtype=np.float64), 0.0, None)
    np.fill_diagonal(a, 0.0)
    groups = np.asarray(groups)
    reference = groups if reference is None else np.asarray(reference)
    fractions = []
    for i in range(a.shape[0]):
        total = a[i].sum()
        if total > 0:
            fractions.append(a[i, groups == reference[i]].sum() / total)
    if not fractions:
        return None, 0
    return float(np.mean(fractions)), len(fractions)
