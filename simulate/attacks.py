"""Attackers and diverging clients for the simulator: what a federation looks like when some of
the models it receives are not what honest training produced.

An attack is a fixed set of ``count`` clients (drawn once per run from the seed) that take part
every round like the others, train as usual, and upload a corrupted model instead of the one they
trained:

- ``scale10`` / ``scale1000``: their model times 10 or 1000;
- ``sign_flip``: minus their model;
- ``noise``: their model plus Gaussian noise of standard deviation ``sigma`` (10);
- ``nan``: every parameter NaN (a diverged client, or a malicious one);
- ``huge``: every parameter 1e30 (finite poison);
- ``lying``: the 1e30 poison, and every FedFomo client that evaluates it sees a validation loss of
  0. In fomo-core's protocol a client evaluates each candidate on its own data, so no attacker can
  report a loss; ``lying`` models the worst case of an attacker whose model scores low on the
  victim's validation data anyway (or a deployment that trusts reported losses);
- ``reparam``: their model reparametrised (:func:`reparametrise`: the first hidden layer's units
  times a, the next layer's weights from them divided by a): the same function, so the same loss,
  but layers out of balance for the victims' next local training. The attacker knows the guard
  (its own client runs the same one) and takes a as small as it lets through, measured from its
  own model (:func:`edge_scale`; 0.14 with no guard).

``free_ride`` clients attack nothing: they never train, and upload the model their federated
update gave them (FedFomo: a mix of the models they were sent; FedAvg: the global model). Their own
accuracy (``attacker_accuracy`` in the results) says whether free riding pays.

``diverging`` clients are honest clients whose training blows up once: in round ``diverge_round``
their own model becomes NaN after local training (and is uploaded that way); they go on as before
afterwards. They count as honest: the results show whether they recover.

Only honest clients (not the attackers) enter the accuracy reported for an attacked run. The attack
applies to FedFomo, FedAvg and Local (the other baselines run without it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._validate import choice, count, real

__all__ = [
    "ATTACKS",
    "AttackSettings",
    "attacker_ids",
    "corrupt",
    "lying_evaluation",
    "diverge",
    "reparametrise",
    "edge_scale",
]

ATTACKS = ("none", "scale10", "scale1000", "sign_flip", "noise", "nan", "huge", "lying", "reparam", "free_ride")
POISON = 1e30


@dataclass(frozen=True)
class AttackSettings:
    """kind: one of ATTACKS. attackers: how many clients attack (every round). sigma: the noise
    attack's standard deviation. diverging: honest clients whose models turn NaN in round
    ``diverge_round`` (once)."""

    kind: str = "none"
    attackers: int = 0
    sigma: float = 10.0
    diverging: int = 0
    diverge_round: int = 2

    def __post_init__(self) -> None:
        choice(self.kind, "kind", ATTACKS)
        count(self.attackers, "attackers")
        real(self.sigma, "sigma", low=0.0)
        count(self.diverging, "diverging")
        count(self.diverge_round, "diverge_round")
        if self.kind == "none" and self.attackers:
            raise ValueError(f"attackers must be 0 with kind='none', got {self.attackers}")

    @property
    def active(self) -> bool:
        return (self.kind != "none" and self.attackers > 0) or self.diverging > 0

    def as_dict(self) -> dict:
        return asdict(self)


def attacker_ids(num_clients: int, settings: AttackSettings, seed: int) -> tuple:
    """(attackers, diverging): disjoint sorted client indices, drawn once from ``seed``."""
    if settings.attackers + settings.diverging > num_clients:
        raise ValueError(
            f"attackers + diverging ({settings.attackers} + {settings.diverging}) exceed the {num_clients} clients"
        )
    order = np.random.default_rng([seed, 4099]).permutation(num_clients)
    attackers = np.sort(order[: settings.attackers]) if settings.kind != "none" else np.zeros(0, np.int64)
    diverging = np.sort(order[len(attackers) : len(attackers) + settings.diverging])
    return attackers.astype(np.int64), diverging.astype(np.int64)


def corrupt(
    params: Any, settings: AttackSettings, rng: np.random.Generator, *, spec: Any = None, client: Any = None
) -> Any:
    """The model an attacker uploads instead of ``params`` (a new array of the same type).
    ``reparam`` needs the model's ``spec`` (a :class:`fomo_core.DenseSpec`: a dense network) and
    the attacker's own ``client`` (the guard of its ``policy`` over its ``guard_layout``)."""
    kind = settings.kind
    if kind == "reparam":
        if spec is None:
            raise ValueError("the reparam attack needs a dense network (an MLP), got a model without a DenseSpec")
        layout = getattr(client, "guard_layout", None)
        scale = edge_scale(params, params, spec, client.policy, layout, -np.ones(spec.sizes[1]))
        return reparametrise(params, spec, scale)
    if kind == "scale10":
        return params * 10
    if kind == "scale1000":
        return params * 1000
    if kind == "sign_flip":
        return -params
    if kind in ("huge", "lying"):
        return params * 0 + POISON
    if kind == "nan":
        return params * 0 + float("nan")
    if kind == "noise":
        noise = rng.standard_normal(tuple(params.shape)) * settings.sigma
        if hasattr(params, "detach"):
            import torch

            return params + torch.from_numpy(noise).to(params.dtype)
        return params + noise.astype(params.dtype)
    raise ValueError(f"kind {kind!r} does not corrupt models")


def diverge(client: Any) -> None:
    """Turns a client's own model NaN (its training diverged)."""
    client.set_flat(client.get_flat() * float("nan"))


def _is_lying_poison(model: Any) -> bool:
    """Whether a flat model is the lying attackers' upload (every element the same 1e30)."""
    values = np.asarray(model.detach().cpu() if hasattr(model, "detach") else model, dtype=np.float64)
    return values.size > 0 and values.min() == values.max() and values.max() > POISON / 2


@contextlib.contextmanager
def lying_evaluation(client: Any, fooled: bool = True) -> Iterator[None]:
    """While open (and ``fooled``), ``client.evaluate`` reports a validation loss of 0 for the lying
    attackers' models among those it evaluates; everything else is evaluated honestly."""
    if not fooled:
        yield
        return
    honest = client.evaluate

    def evaluate(models: Any, *args: Any, **kwargs: Any) -> tuple:
        losses, accuracies = honest(models, *args, **kwargs)
        liars = [k for k, model in enumerate(models) if _is_lying_poison(model)]
        if liars:
            losses = np.array(losses, dtype=np.float64)
            losses[liars] = 0.0
        return losses, accuracies

    client.evaluate = evaluate
    try:
        yield
    finally:
        del client.evaluate  # back to the class's method


def reparametrise(params: Any, spec: Any, scale: Any, *, layer: int = 0) -> Any:
    """A copy of a dense network's flat model [P] (``spec``: its :class:`fomo_core.DenseSpec`)
    that computes the same function: the units of hidden layer ``layer`` (their incoming weights
    and biases) times ``scale`` (a number, or [units] numbers, all > 0), the next layer's weights
    from them divided by it. Exact for ReLU and identity activations (relu(a z) = a relu(z));
    the loss cannot see it, but the layers are out of balance for the next local training."""
    if spec.activations[layer] not in ("relu", "identity"):
        raise ValueError(
            f"layer {layer} has activation {spec.activations[layer]!r}: only relu/identity keep the function"
        )
    units = spec.sizes[layer + 1]
    s = np.array(np.broadcast_to(np.asarray(scale, dtype=np.float64), (units,)))
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("scale must be finite and > 0")
    out = params.clone() if hasattr(params, "clone") else np.array(params)
    if hasattr(out, "clone"):
        import torch

        s = torch.as_tensor(s, dtype=out.dtype)
    (w_in, b_in), (w_out, _) = spec.offsets()[layer], spec.offsets()[layer + 1]
    shape_in, shape_out = spec.weight_shape(layer), spec.weight_shape(layer + 1)
    weight_in = out[w_in : w_in + math.prod(shape_in)].reshape(shape_in)
    weight_out = out[w_out : w_out + math.prod(shape_out)].reshape(shape_out)
    rows = spec.weight_layout == "out_in"  # torch.nn.Linear: [out, in]; scikit-learn, Keras: [in, out]
    weight_in *= s[:, None] if rows else s[None, :]
    out[b_in : b_in + units] *= s
    weight_out /= s[None, :] if rows else s[:, None]
    return out


def edge_scale(
    reference: Any, model: Any, spec: Any, policy: Any, layout: Any, direction: np.ndarray, *, reach: float = 0.99
) -> np.ndarray:
    """The per-unit scale ``exp(t * direction)`` [units] with the largest t (a within [1e-3, 1e3])
    for which the distance bound of ``policy`` (a :class:`fomo_core.ClientPolicy`, over a
    :class:`fomo_core.guard.GuardLayout`; after its rebalancing when it rebalances) still lets
    :func:`reparametrise` of ``model`` through, measured from ``reference``: at ``reach`` of its
    bound. With no bound, a = 0.14 (as far as fomo-core's whole-model bound of 3 x the norm, used
    before its guard went layer by layer, let such a copy through)."""
    from ..guard import layer_distances, rebalance

    if policy.guard is None or math.isinf(policy.guard):
        return np.exp(-math.log(0.14) * direction)

    def closeness(t: float) -> float:
        candidate = reparametrise(model, spec, np.exp(t * direction))
        if policy.rebalance and layout is not None:
            candidate = rebalance(candidate, reference, layout)
        return float(layer_distances(reference, candidate[None], layout)[0]) / policy.guard

    low, high = 0.0, math.log(1e3)  # bisection on t
    if closeness(high) <= reach:
        return np.exp(high * direction)
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (low, middle) if closeness(middle) > reach else (middle, high)
    return np.exp(low * direction)
