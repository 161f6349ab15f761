"""Named option sets that reproduce the published FedFomo implementations.

Each preset records the choices in which the paper's code (NVlabs/FedFomo), PFLlib and FL-bench
differ (docs/design.md, "How the implementations differ"), so that a user can run any of them exactly:

>>> p = get_preset("pfllib")
>>> res = fomo_step(local, candidates, l0, losses, **p.step_options())

The client-side fields (``norm``, ``eps``, ``include_buffers``, ``update_buffers``) go to the ops;
the server-side ones (selection, affinity) to :class:`fomo_core.Affinity`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One implementation's FedFomo choices.

    norm:             "l1" or "l2", the distance between parameter vectors
    eps:              added to the distance in the score's denominator
    include_buffers:  measure the distance over the whole state_dict (running statistics included),
                      not only the trainable parameters
    update_buffers:   apply the weights to the whole state_dict, not only the trainable parameters
                      (the weights come from the distance above either way)
    include_self:     "always" (the client's own model is among its candidates), "if_selected" (only
                      when the selection picks it), "zero_weight" (present, never weighted) or
                      "never" (the client itself is excluded)
    selection:        "epsilon_greedy" (top-M with probability 1 - epsilon, random otherwise),
                      "top_m" (the M highest affinities) or "top_m_recent" (top-M among the clients
                      that took part in the previous round)
    epsilon:          initial exploration probability (epsilon_greedy)
    epsilon_decay:    subtracted from epsilon each round (linear decay)
    affinity_init:    "zeros_self" (0, and self_affinity on the diagonal) or "identity"
    self_affinity:    the diagonal value for affinity_init="zeros_self"
    affinity_update:  "raw" (A[i, n] += s_n) or "normalised" (A[i, n] += s_n / |sum_m s_m|)
    none_positive:    what the client keeps when no score is positive: "baseline" (its model before
                      the round) or "current" (its model as it stands); the update leaves the
                      local parameters unchanged either way
    """

    name: str
    norm: str
    eps: float
    include_buffers: bool
    update_buffers: bool
    include_self: str
    selection: str
    epsilon: float
    epsilon_decay: float
    affinity_init: str
    self_affinity: float
    affinity_update: str
    none_positive: str

    def step_options(self) -> dict:
        """Keyword options for compute_weights / first_order_scores / fomo_step."""
        return {"norm": self.norm, "eps": self.eps}

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # The authors' code: l1 distance over the parameters by default, the weights applied to the whole
    # state_dict, their own model among the candidates, epsilon-greedy
    # selection with epsilon 0.3 decaying by 0.05 a round, affinity starting at 0 with 0.1 on the
    # diagonal and normalised updates, reverting to the baseline when nothing helps.
    "paper": Preset(
        name="paper",
        norm="l1",
        eps=0.0,
        include_buffers=False,
        update_buffers=True,
        include_self="always",
        selection="epsilon_greedy",
        epsilon=0.3,
        epsilon_decay=0.05,
        affinity_init="zeros_self",
        self_affinity=0.1,
        affinity_update="normalised",
        none_positive="baseline",
    ),
    # PFLlib (clientfomo/serverfomo): l2 over the parameters + 1e-5, top-M of the affinity row
    # (the client itself only if it ranks), identity start, raw updates, keep the current model.
    "pfllib": Preset(
        name="pfllib",
        norm="l2",
        eps=1e-5,
        include_buffers=False,
        update_buffers=False,
        include_self="if_selected",
        selection="top_m",
        epsilon=0.0,
        epsilon_decay=0.0,
        affinity_init="identity",
        self_affinity=1.0,
        affinity_update="raw",
        none_positive="current",
    ),
    # FL-bench: l2 over the whole state_dict + 1e-5, the client's own model present with weight 0,
    # top-M among the previous round's clients, identity start, raw updates, keep its own model.
    "fl-bench": Preset(
        name="fl-bench",
        norm="l2",
        eps=1e-5,
        include_buffers=True,
        update_buffers=True,
        include_self="zero_weight",
        selection="top_m_recent",
        epsilon=0.0,
        epsilon_decay=0.0,
        affinity_init="identity",
        self_affinity=1.0,
        affinity_update="raw",
        none_positive="current",
    ),
}
# the default of this library: the paper's formula with the l2 distance, no eps; the client itself
# is never a candidate (its own model is at distance 0: it could only ever be rejected)
PRESETS["fomo-core"] = Preset(
    name="fomo-core",
    norm="l2",
    eps=0.0,
    include_buffers=False,
    update_buffers=True,
    include_self="never",
    selection="epsilon_greedy",
    epsilon=0.3,
    epsilon_decay=0.05,
    affinity_init="zeros_self",
    self_affinity=0.1,
    affinity_update="raw",
    none_positive="baseline",
)


def get_preset(name: str) -> Preset:
    """The preset called `name` (one of PRESETS)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
