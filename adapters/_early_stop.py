"""Early stopping of candidate evaluation, framework-free: which candidates are confidently worse
than the baseline after the batches seen so far.

A candidate whose validation loss is not below the baseline's gets weight 0 in FedFomo, however
much worse it is. So once the batches seen put a candidate's mean loss well above the baseline's
loss, the rest of its evaluation cannot change the weights (unless the estimate is wrong), and it
can stop. The test: after k >= ``min_batches`` batches holding n of the N samples, with batch mean
losses x_1..x_k (mean x̄ over samples, sample spread s of the batch means),

    x̄ - z · s / sqrt(k) · sqrt(1 - n / N)  >  baseline_loss

(a one-sided z-test on the mean of batch means; the last factor is the finite-population
correction: the validation set is finite, so after all N samples the estimate is exact).

The risk: a candidate that would have improved on the baseline is stopped (its weight becomes 0,
its score is computed from a partial loss). The test assumes the batches are a random sample of
the validation set, so the evaluation visits it in a seeded random order; a spread estimated from
few batches is itself noisy, hence ``min_batches`` and a conservative ``z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .._validate import count, real

__all__ = ["EarlyStop", "StopTracker"]


@dataclass(frozen=True)
class EarlyStop:
    """Opt-in early stopping of candidate evaluation.

    baseline_loss: L0, the validation loss of the client's own model (evaluated fully); a
                   candidate confidently above it is stopped
    z:             standard errors of margin (one-sided; 3.0 wrongly stops about 0.13% of the
                   candidates whose true loss equals L0, if the batch means were normal)
    batch_size:    samples per batch (the unit of the test)
    min_batches:   never stop a candidate before this many batches
    seed:          seeds the random order in which a tensor pair is visited
    """

    baseline_loss: float
    z: float = 3.0
    batch_size: int = 32
    min_batches: int = 4
    seed: int = 0

    def __post_init__(self):
        # NaN or +inf (a diverged baseline) stops nothing; -inf would stop every candidate
        loss = real(self.baseline_loss, "early_stop.baseline_loss", finite=False)
        if loss == -math.inf:
            raise ValueError("early_stop.baseline_loss must not be -inf (every candidate would be stopped)")
        object.__setattr__(self, "baseline_loss", loss)
        object.__setattr__(self, "z", real(self.z, "early_stop.z", low=0.0, low_open=True))
        count(self.batch_size, "early_stop.batch_size", low=1)
        count(self.min_batches, "early_stop.min_batches", low=2)
        count(self.seed, "early_stop.seed", high=2**64 - 1)  # what torch.Generator.manual_seed takes


class StopTracker:
    """Running batch statistics of M candidates and the set still being evaluated.

    total: N, the samples of the whole validation set (None when unknown: no finite-population
    correction, which only makes the test more conservative)
    """

    def __init__(self, rule: EarlyStop, count: int, total: Optional[int]):
        self.rule = rule
        self.total = total
        self.sum = np.zeros(count)  # sum of batch mean losses
        self.sum_sq = np.zeros(count)
        self.batches = np.zeros(count, dtype=np.int64)
        self.samples = np.zeros(count, dtype=np.int64)
        self.active = np.ones(count, dtype=bool)

    def add(self, indices: np.ndarray, batch_means: np.ndarray, size: int) -> None:
        """Records one batch of ``size`` samples for the candidates ``indices``, then stops those
        confidently worse than the baseline."""
        self.sum[indices] += batch_means
        self.sum_sq[indices] += batch_means * batch_means
        self.batches[indices] += 1
        self.samples[indices] += size
        k = self.batches[indices]
        ready = k >= self.rule.min_batches
        if not ready.any():
            return
        mean = self.sum[indices] / k
        var = np.maximum(self.sum_sq[indices] / k - mean * mean, 0.0) * k / np.maximum(k - 1, 1)
        fpc = 1.0
        if self.total:
            fpc = np.sqrt(np.clip(1.0 - self.samples[indices] / self.total, 0.0, 1.0))
        lower = mean - self.rule.z * np.sqrt(var / k) * fpc
        # NaN means (a diverged candidate) are never stopped here: they are rejected downstream
        stop = ready & (lower > self.rule.baseline_loss)
        self.active[indices[stop]] = False

    @property
    def stopped(self) -> np.ndarray:
        return ~self.active
