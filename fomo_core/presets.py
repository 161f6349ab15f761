"""Presets: a whole FedFomo round (a client policy and a server policy) under one name.

``"fomo-core"`` is this library's own round; ``"paper"``, ``"pfllib"`` and ``"fl-bench"`` reproduce
the round of the authors' code (NVlabs/FedFomo), PFLlib (clientfomo/serverfomo) and FL-bench
(fedfomo) from the same inputs, departing only where the peer would corrupt its state or crash
(each departure is listed in the preset's ``departures``).

>>> p = get_preset("pfllib")
>>> client = FedFomoClient(model, val_data, train_data, preset=p)      # the client's half
>>> server = Server(num_clients, init_params, preset=p)                  # the server's half
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .policy import GUARD, ClientPolicy, ServerPolicy

__all__ = ["Preset", "PRESETS", "get_preset", "as_preset", "client_policy"]


@dataclass(frozen=True)
class Preset:
    """One implementation's FedFomo round.

    name:        the preset's name
    client:      what each client does (:class:`ClientPolicy`)
    server:      how the server selects candidates and keeps the affinity (:class:`ServerPolicy`)
    departures:  where the preset departs from its peer's code, and why
    """

    name: str
    client: ClientPolicy
    server: ServerPolicy
    departures: tuple = field(default=())

    def step_options(self) -> dict:
        """The ``norm`` and ``eps`` of the client policy, for the ops (fomo_step, ...)."""
        return self.client.step_options()

    def as_dict(self) -> dict:
        return {"name": self.name, "client": self.client.as_dict(), "server": self.server.as_dict()}


_NAN_AFFINITY = "a non-finite score adds 0 to the affinity (the peer adds NaN, after which its selection is undefined)"

# What PFLlib's and FL-bench's rounds share: the client skips aggregation when a loss is NaN and
# scores with L2 + 1e-5; the server picks the top M (ties as torch.topk) from an identity affinity,
# without exploration.
_PEER_CLIENT = dict(nonfinite="skip_round", norm="l2", eps=1e-5)
_PEER_SERVER = dict(
    selection="top_m", tie="torch_topk", epsilon=0.0, epsilon_decay=0.0, affinity_init="identity", affinity_k=None
)

PRESETS: dict[str, Preset] = {
    "fomo-core": Preset(name="fomo-core", client=ClientPolicy(guard=GUARD), server=ServerPolicy()),
    "paper": Preset(
        name="paper",
        client=ClientPolicy(
            baseline="last_update",
            self_candidate="trained",
            buffers="moved",
            nothing_helps="revert",
            loss="batch_mean",
            nonfinite="reject",
            norm="l1",
            eps=0.0,
        ),
        server=ServerPolicy(
            selection="epsilon_greedy_per_slot",
            pool="last_round",
            epsilon=0.3,
            epsilon_decay=0.05,
            affinity_init="self",
            self_affinity=0.1,
            affinity_update="normalised",
            affinity_k=None,
        ),
        departures=(
            _NAN_AFFINITY,
            "a candidate at distance 0 is rejected (the peer divides 0 by 0)",
            "integer buffers (num_batches_tracked) keep the current value (the peer's update crashes on them)",
            "no sub-federation or global average models are added to the candidates (the peer's "
            "optional hierarchical extension)",
            "random draws (tie-breaking, exploration) come from the server's own generator, which goes on from "
            "round to round: the peer reseeds NumPy's global generator with the same seed at the start of every "
            "round's weight computation (federation.py:270), so its exploration and tie-breaking draws repeat "
            "each round",
        ),
    ),
    "pfllib": Preset(
        name="pfllib",
        client=ClientPolicy(
            baseline="last_update", evaluation="train", loss="batch_mean", drop_last="if_batchnorm", **_PEER_CLIENT
        ),
        server=ServerPolicy(pool="all_capped", include_self="compete", **_PEER_SERVER),
        departures=(
            _NAN_AFFINITY,
            "train-mode evaluation leaves every model's BatchNorm running statistics as they were "
            "(the peer's evaluation updates those of the server's stored models)",
        ),
    ),
    "fl-bench": Preset(
        name="fl-bench",
        client=ClientPolicy(buffers="scaled", loss="batch_sum_per_sample", **_PEER_CLIENT),
        server=ServerPolicy(pool="last_round", include_self="always", uploads="immediately", **_PEER_SERVER),
        departures=(
            _NAN_AFFINITY,
            "integer buffers (num_batches_tracked) keep their dtype and value (the peer turns them into floats)",
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one of PRESETS)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def as_preset(preset: Union[str, Preset, Any], name: str = "preset") -> Preset:
    """A Preset from a preset or its name."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str):
        return get_preset(preset)
    raise TypeError(f"{name} must be a preset name or a fomo_core.Preset, got {type(preset).__name__}")


def client_policy(preset: Union[str, Preset], policy: Any = None) -> ClientPolicy:
    """The client policy a client runs: ``policy`` when given, else the preset's."""
    if policy is None:
        return as_preset(preset).client
    if not isinstance(policy, ClientPolicy):
        raise TypeError(f"policy must be a fomo_core.ClientPolicy, got {type(policy).__name__}")
    return policy
