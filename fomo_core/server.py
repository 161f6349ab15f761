"""The FedFomo server, once for every entry point: the simulator, the Flower strategy and users' loops.

It holds each client's latest model, the affinity matrix, the round counter and the random
generator, and follows a preset's :class:`ServerPolicy`: which clients a client may receive
(the pool), how they are chosen, how the affinity starts and grows. Uploads made during a round
become visible at :meth:`Server.end_round`, so every client of a round sees the same models.

>>> server = Server(num_clients=10, init_params=flat0, preset="fomo-core", m=5, seed=0)
>>> for r in range(rounds):
...     for i in participants:
...         ids, cands = server.candidates(i)                 # [K] ids, [K, P] models
...         res = clients[i].round(cands, server.global_params())   # evaluate, weigh, update, train
...         server.receive(i, clients[i].get_flat(), ids, res.scores, self_score=res.self_score,
...                        global_update=res.global_update, num_examples=n_train[i])
...     server.end_round()
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from ._atomic import atomic_write
from ._models import is_floating
from ._validate import count, real, real_vector
from .affinity import Affinity
from .global_model import GlobalModel
from .model_store import read_npz_rows
from .policy import ServerPolicy
from .presets import Preset, as_preset

__all__ = ["Server"]

_FORMAT = "fomo_core.Server/1"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _flat(x: Any, name: str) -> Any:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")) or len(x.shape) != 1:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name} must be a flat model, a 1-D array or tensor [P], got {shape}")
    if not is_floating(x):
        raise TypeError(f"{name} must hold real floating-point values, got dtype {x.dtype}")
    return x


class Server:
    """FedFomo's server state and round logic.

    num_clients:  N
    init_params:  the common initial model, flat [P] (NumPy or torch); every client's row starts
                  as it (PFLlib's pool sends never-uploaded clients' initial models)
    preset:       a preset or its name: its ``server`` policy is followed (``policy`` overrides it)
    m:            M, the number of candidates each client receives
    seed:         seeds the generator used for exploration and ties
    policy:       a :class:`ServerPolicy` to use instead of the preset's
    models:       an [N, P] NumPy array to hold the models instead of one in memory, e.g. a
                  disk-backed table from :func:`fomo_core.model_store.open_model_store` when
                  N x P outgrows RAM (filled with ``init_params`` here)
    """

    def __init__(
        self,
        num_clients: int,
        init_params: Any,
        *,
        preset: Union[str, Preset] = "fomo-core",
        m: int = 5,
        seed: Optional[int] = None,
        policy: Optional[ServerPolicy] = None,
        models: Optional[np.ndarray] = None,
    ):
        self.preset = as_preset(preset)
        self.policy = self.preset.server if policy is None else policy
        if not isinstance(self.policy, ServerPolicy):
            raise TypeError(f"policy must be a fomo_core.ServerPolicy, got {type(self.policy).__name__}")
        self.m = count(m, "m", type_error=ValueError)
        self.affinity = Affinity.from_policy(self.policy, num_clients, seed=seed)
        init = _flat(init_params, "init_params")
        if models is not None:
            if not isinstance(models, np.ndarray) or _is_torch(init):
                raise TypeError(f"models must be a NumPy array (with NumPy init_params), got {type(models).__name__}")
            if models.shape != (num_clients, init.shape[0]) or models.dtype.kind != "f":
                raise ValueError(
                    f"models must be a floating [N, P] = ({num_clients}, {init.shape[0]}) array, "
                    f"got {models.dtype} {models.shape}"
                )
            models[...] = np.asarray(init)
            self.models = models
        elif _is_torch(init):
            self.models = init.detach().unsqueeze(0).repeat(num_clients, 1)
        else:
            self.models = np.repeat(np.asarray(init)[None, :], num_clients, axis=0)
        self.uploaded = np.zeros(num_clients, dtype=bool)
        # the global model the fomo-core round moves toward (None unless the policy keeps one)
        self.global_model = (
            GlobalModel(init, guard=self.policy.global_guard) if self.policy.global_model == "average" else None
        )
        self.last_round = np.zeros(0, dtype=np.int64)
        self.round = 0
        self._pending: dict = {}

    @property
    def num_clients(self) -> int:
        return self.affinity.num_clients

    # --- selection ----------------------------------------------------------------------------

    def _pool(self) -> tuple:
        """(clients a client may receive, how many at most)."""
        if self.policy.pool == "uploaded":
            return np.flatnonzero(self.uploaded), self.m
        if self.policy.pool == "last_round":
            return self.last_round, self.m
        return np.arange(self.num_clients), min(self.m, self.last_round.size)

    def select(self, client: int) -> np.ndarray:
        """The ids of the models ``client`` receives this round, int64 [K] (K <= M, +1 with
        include_self="always")."""
        pool, m = self._pool()
        return self.affinity.select(client, m, round=self.round, among=pool)

    def candidates(self, client: int) -> tuple:
        """(ids [K], models [K, P]): the selection and a copy of those clients' latest models."""
        ids = self.select(client)
        return ids, self.models[ids.tolist()] if _is_torch(self.models) else self.models[ids]

    def model(self, client: int) -> Any:
        """Client ``client``'s latest model on the server, [P] (a view: copy it to keep it)."""
        return self.models[self.affinity._client(client)]

    # --- uploads ------------------------------------------------------------------------------

    def receive(
        self,
        client: int,
        params: Any,
        ids: Sequence[int],
        scores: Any,
        *,
        self_score: Optional[float] = None,
        global_update: Any = None,
        num_examples: float = 1.0,
    ) -> None:
        """Takes client ``client``'s upload: its model [P] (visible to others after
        :meth:`end_round`, or at once with uploads="immediately") and its scores [K] of the
        candidates ``ids`` it received, plus the score of its own trained model when its policy
        makes that a candidate (``self_score``). With a global model (ServerPolicy
        ``global_model="average"``): the client's contribution to it, ``global_update`` [P]
        (``ClientRound.global_update``), weighted by ``num_examples`` (its training samples, 0:
        no weight); a non-finite or over-long one is dropped, the rest of the upload taken."""
        client = self.affinity._client(client)
        params = _flat(params, "params")
        if tuple(params.shape) != tuple(self.models.shape[1:]):
            raise ValueError(f"params has shape {tuple(params.shape)}, expected ({self.models.shape[1]},)")
        weight = real(num_examples, "num_examples", low=0.0)
        if global_update is not None:
            global_update = _flat(global_update, "global_update")
            if tuple(global_update.shape) != tuple(params.shape):
                raise ValueError(
                    f"global_update has shape {tuple(global_update.shape)}, expected {tuple(params.shape)}"
                )
        ids = list(self.affinity._ids(ids, "ids")) if len(ids) else []
        scores = list(real_vector(scores, "scores")) if len(ids) or len(scores) else []
        if self_score is not None:
            ids, scores = [client, *ids], [real(self_score, "self_score", finite=False), *scores]
        self.affinity.update(client, np.asarray(ids, dtype=np.int64), np.asarray(scores))
        params = params.detach().clone() if _is_torch(params) else np.array(params)
        if global_update is not None and self.global_model is not None and weight > 0:
            self.global_model.receive(global_update, weight)
        if self.policy.uploads == "immediately":
            self.models[client] = params
            self.uploaded[client] = True
        self._pending[client] = params

    def end_round(self) -> None:
        """Makes this round's uploads visible and starts the next round."""
        for client, params in self._pending.items():
            self.models[client] = params
            self.uploaded[client] = True
        self.last_round = np.asarray(sorted(self._pending), dtype=np.int64)
        self._pending = {}
        if self.global_model is not None:
            self.global_model.end_round()
        self.round += 1

    def global_params(self) -> Any:
        """The global model [P] clients receive with their candidates (a view: copy it to keep
        it), or None when the policy keeps none."""
        return None if self.global_model is None else self.global_model.params

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the whole state (models, affinity, round, generator, policy) atomically to a
        ``.npz`` file: a crash mid-save leaves the previous checkpoint."""
        if self._pending:
            raise ValueError("save() between rounds: this round has uploads not yet committed by end_round()")
        meta = {
            "format": _FORMAT,
            "preset": self.preset.name,
            "policy": self.policy.as_dict(),
            "m": self.m,
            "round": self.round,
            "rng": self.affinity.rng.bit_generator.state,
            "torch": _is_torch(self.models),
        }
        models = self.models.detach().cpu().numpy() if _is_torch(self.models) else self.models

        def write(f: Any) -> None:
            np.savez(
                f,
                meta=np.array(json.dumps(meta)),
                models=models,
                affinity=self.affinity.matrix,
                uploaded=self.uploaded,
                last_round=self.last_round,
                **({} if self.global_model is None else self.global_model.state()),
            )

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, models: Optional[np.ndarray] = None) -> Server:
        """A Server restored from :meth:`save`'s file; it continues exactly where it stopped.
        ``models``: a table to hold the models, as the constructor's (they are streamed into it,
        never whole in memory)."""
        where = f"path {os.fspath(path)!r}"
        keys = ("meta", "affinity", "uploaded", "last_round") + (("models",) if models is None else ())
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.array(data[k]) for k in keys}
            meta = json.loads(str(arrays["meta"]))
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ValueError(f"{where} is not a readable Server checkpoint: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{where} is not a Server checkpoint (format {_FORMAT!r})")
        table, matrix = (arrays["models"] if models is None else models), arrays["affinity"]
        n = matrix.shape[0] if matrix.ndim == 2 else -1
        if (
            table.ndim != 2
            or table.shape[0] != n
            or matrix.shape != (n, n)
            or arrays["uploaded"].shape != (n,)
            or not np.isfinite(matrix).all()
        ):
            raise ValueError(f"{where} holds inconsistent arrays (models {table.shape}, affinity {matrix.shape})")
        if meta["torch"]:
            import torch

            init = torch.from_numpy(table[0])
        else:
            init = np.array(table[0])
        server = cls(
            n, init, preset=meta["preset"], m=meta["m"], policy=ServerPolicy.from_dict(meta["policy"]), models=models
        )
        if models is None:
            server.models[...] = torch.from_numpy(table) if meta["torch"] else table
        else:
            with np.load(path, allow_pickle=False) as data:
                read_npz_rows(data, "models", models)
        server.affinity.matrix = matrix.astype(np.float64)
        server.affinity.rng.bit_generator.state = meta["rng"]
        server.uploaded = arrays["uploaded"].astype(bool)
        server.last_round = arrays["last_round"].astype(np.int64)
        server.round = int(meta["round"])
        if server.global_model is not None:
            try:
                with np.load(path, allow_pickle=False) as data:
                    server.global_model.load_state({"global_params": np.array(data["global_params"])})
            except (KeyError, ValueError) as e:
                raise ValueError(f"{where} holds no usable global model: {e}") from None
        return server

    def __repr__(self) -> str:
        return (
            f"Server({self.num_clients} clients, preset={self.preset.name!r}, m={self.m}, round={self.round}, "
            f"{int(self.uploaded.sum())} with a model)"
        )
