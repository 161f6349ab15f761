"""The FedFomo server, once for every entry point: the simulator, the Flower strategy and users' loops.

It holds each client's latest model, the affinity, the round counter and the random generator,
and follows a preset's :class:`ServerPolicy`: which clients a client may receive (the pool), how
they are chosen, how the affinity starts and grows. Uploads made during a round become visible at
:meth:`Server.end_round`, so every client of a round sees the same models.

>>> server = Server(num_clients=10, init_params=flat0, preset="fomo-core", m=5, seed=0)
>>> for r in range(rounds):
...     for i in participants:
...         ids, cands = server.candidates(i)                 # [K] ids, [K, P] models
...         res = clients[i].round(cands, server.global_params())   # evaluate, weigh, update, train
...         server.receive(i, clients[i].get_flat(), ids, res.scores, self_score=res.self_score,
...                        global_update=res.global_update, num_examples=n_train[i])
...     server.end_round()

Memory: the affinity is O(N k) (``ServerPolicy.affinity_k``), the pools O(N); the models are an
[N, P] array, or with a disk store (:mod:`fomo_core.model_store`) only the rows of the call at
hand: O(M P) per round besides the store, whose checkpoints are incremental.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Generic, Optional, TypeVar, Union

import numpy as np

from ._atomic import atomic_write
from ._checkpoint import Checkpoint
from ._models import is_floating, is_torch
from ._pool import ClientPool
from ._validate import count, real, real_vector
from .affinity import VALUE_LIMIT, Affinity, _options
from .free_riding import is_free_ride
from .global_model import STORED_DTYPE, GlobalModel
from .model_store import MemoryTable, ModelStore, open_model_store
from .policy import ServerPolicy
from .presets import PRESETS, Preset, as_preset

__all__ = ["Server"]

_FORMAT = "fomo_core.Server/2"
_FORMAT_V1 = "fomo_core.Server/1"  # every model and the dense affinity in the file; still read
MAX_M = 2**31 - 1
MAX_ROUND = 2**62
_DTYPES = ("float16", "float32", "float64")
_META = {"format", "preset", "policy", "m", "round", "torch", "num_clients", "num_params", "dtype", "models"}
_META |= {"affinity"}
# written since the global model is stored in its own dtype (before: float64, then cast to the models')
_META_GLOBAL_DTYPE = _META | {"global_dtype"}

#: The array type of the server's models: ``init_params``' (np.ndarray or torch.Tensor).
RowsT = TypeVar("RowsT")


def _flat(x: Any, name: str) -> Any:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")) or len(x.shape) != 1:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name} must be a flat model, a 1-D array or tensor [P], got {shape}")
    if not is_floating(x):
        raise TypeError(f"{name} must hold real floating-point values, got dtype {x.dtype}")
    return x


class Server(Generic[RowsT]):
    """FedFomo's server state and round logic.

    num_clients:  N
    init_params:  the common initial model, flat [P] (NumPy or torch, finite); every client's row
                  starts as it (PFLlib's pool sends never-uploaded clients' initial models). A model
                  of layers becomes one with ``fomo_core.layout.flatten(dict(model.named_parameters()))``;
                  the server's models, its candidates included, are of this array type
    preset:       a preset or its name: its ``server`` policy is followed (``policy`` overrides it)
    m:            M, the number of candidates each client receives
    seed:         seeds the generator used for exploration and ties
    policy:       a :class:`ServerPolicy` to use instead of the preset's
    models:       where the models live instead of a new [N, P] array in memory: a store from
                  :func:`fomo_core.model_store.open_model_store` when N x P outgrows RAM (rows on
                  disk, read and written one at a time), or an [N, P] NumPy array (filled with
                  ``init_params`` here)
    """

    def __init__(
        self,
        num_clients: int,
        init_params: RowsT,
        *,
        preset: Union[str, Preset] = "fomo-core",
        m: int = 5,
        seed: Optional[int] = None,
        policy: Optional[ServerPolicy] = None,
        models: Any = None,
    ):
        self.preset = as_preset(preset)
        self.policy = self.preset.server if policy is None else policy
        if not isinstance(self.policy, ServerPolicy):
            raise TypeError(f"policy must be a fomo_core.ServerPolicy, got {type(self.policy).__name__}")
        self.m = count(m, "m", high=MAX_M, type_error=ValueError)
        self.affinity = Affinity.from_policy(self.policy, num_clients, seed=seed)
        n = self.affinity.num_clients
        init = _flat(init_params, "init_params")
        if isinstance(models, ModelStore):
            if is_torch(init) or models.shape != (n, init.shape[0]):
                raise ValueError(
                    f"models is a store of {models.shape} ({models.dtype}), expected ({n}, {init.shape[0]}) "
                    "with NumPy init_params"
                )
            models.start(init)
            self._table: Any = models
        elif models is not None:
            if not isinstance(models, np.ndarray) or is_torch(init):
                raise TypeError(f"models must be a NumPy array (with NumPy init_params), got {type(models).__name__}")
            if models.shape != (n, init.shape[0]) or models.dtype.kind != "f":
                expected, found = f"({n}, {init.shape[0]})", f"{models.dtype} {models.shape}"
                raise ValueError(f"models must be a floating [N, P] = {expected} array, got {found}")
            models[...] = MemoryTable(models[:1]).prepare(init, "init_params")
            self._table = MemoryTable(models)
        elif is_torch(init):
            row = MemoryTable(init[None]).prepare(init, "init_params")
            self._table = MemoryTable(row.unsqueeze(0).repeat(n, 1))
        else:
            row = MemoryTable(np.asarray(init)[None]).prepare(init, "init_params")
            self._table = MemoryTable(np.repeat(row[None, :], n, axis=0))
        self._start_rounds(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0)
        self.global_model = self._global_model(init)

    def _global_model(self, init: Any) -> Optional[GlobalModel]:
        """The global model the fomo-core round moves toward, starting at ``init`` [P] (None
        unless the policy keeps one)."""
        if self.policy.global_model != "average":
            return None
        return GlobalModel(init, guard=self.policy.global_guard)

    def _start_rounds(self, uploaded: np.ndarray, last_round: np.ndarray, round: int) -> None:
        """The round state: who has uploaded (in order), last round's uploaders (in arrival
        order), the round counter, and the pools kept from them."""
        n = self.num_clients
        self.uploaded = np.zeros(n, dtype=bool)
        self.uploaded[uploaded] = True
        self._uploaded_pool = ClientPool(n, uploaded)
        self.last_round = last_round
        self._last_pool = ClientPool(n, last_round)
        self._everyone = ClientPool(n, everyone=True)
        self.round = round
        # whose latest upload was a free ride (policy.free_riders); not in checkpoints: a restored
        # server judges every client again at its next upload
        self.free_riding = np.zeros(n, dtype=bool)
        self._pending: dict = {}

    @property
    def num_clients(self) -> int:
        return self.affinity.num_clients

    @property
    def models(self) -> Any:
        """The models: the [N, P] array (or tensor) in memory, or the :class:`ModelStore`."""
        return self._table if isinstance(self._table, ModelStore) else self._table.models

    @property
    def num_params(self) -> int:
        return int(self.models.shape[1])

    # --- selection ----------------------------------------------------------------------------

    def _pool(self) -> tuple:
        """(clients a client may receive, how many at most)."""
        if self.policy.pool == "uploaded":
            return self._uploaded_pool, self.m
        if self.policy.pool == "last_round":
            return self._last_pool, self.m
        return self._everyone, min(self.m, self.last_round.size)

    def select(self, client: int) -> np.ndarray:
        """The ids of the models ``client`` receives this round, int64 [K] (K <= M, +1 with
        include_self="always"); none for a free rider under free_riders="exclude"."""
        pool, m = self._pool()
        if self._excluded(client):
            return np.zeros(0, dtype=np.int64)
        return self.affinity.select(client, m, round=self.round, among=self._without_free_riders(pool))

    def select_many(self, clients: Sequence[int]) -> list:
        """:meth:`select` for many clients in one vectorised call (see
        :meth:`Affinity.select_many`): a list of int64 arrays."""
        pool, m = self._pool()
        picks = self.affinity.select_many(clients, m, round=self.round, among=self._without_free_riders(pool))
        return [np.zeros(0, dtype=np.int64) if self._excluded(c) else p for c, p in zip(clients, picks)]

    def _excluded(self, client: int) -> bool:
        return self.policy.free_riders == "exclude" and bool(self.free_riding[self.affinity._client(client)])

    def _without_free_riders(self, pool: ClientPool) -> ClientPool:
        """The pool without the clients whose latest upload was a free ride (free_riders="exclude")."""
        if self.policy.free_riders != "exclude" or not self.free_riding.any():
            return pool
        members = pool.members
        return ClientPool(self.num_clients, members[~self.free_riding[members]])

    def candidates(self, client: int) -> tuple[np.ndarray, RowsT]:
        """(ids, models): the selection, int64 [K], and a copy of those clients' latest models,
        [K, P] of ``init_params``' array type. For a model of layers,
        ``fomo_core.layout.unflatten(models, like=params)`` gives K models of views into the rows."""
        ids = self.select(client)
        return ids, self._table.rows(ids)

    def model(self, client: int) -> RowsT:
        """Client ``client``'s latest model on the server, [P] (in memory a view: copy it to keep
        it; from a store a fresh array)."""
        return self._table.row(self.affinity._client(client))

    # --- uploads ------------------------------------------------------------------------------

    def receive(
        self,
        client: int,
        params: RowsT,
        ids: Sequence[int],
        scores: Any,
        *,
        self_score: Optional[float] = None,
        global_update: Any = None,
        num_examples: float = 1.0,
    ) -> None:
        """Takes client ``client``'s upload: its model [P] (visible to others after
        :meth:`end_round`, or at once with uploads="immediately"; finite in the table's dtype;
        ``fomo_core.layout.flatten`` makes it from a model of layers) and its scores [K] of the
        candidates ``ids`` it received (``fomo_step(...).scores``, or those of
        ``compute_weights(..., return_scores=True)``: measured before the update), plus the score of
        its own trained model when its policy makes that a candidate (``self_score``). With a global
        model (ServerPolicy ``global_model="average"``): the client's contribution to it,
        ``global_update`` [P] (``ClientRound.global_update``), weighted by ``num_examples`` (its
        training samples, 0: no weight); a non-finite or over-long one is dropped, the rest of the
        upload taken. Everything is checked before anything changes: a refused upload leaves the
        server as it was. With free_riders="exclude", an upload that is a mix of what the client
        was sent and its own last upload marks it a free rider (:attr:`free_riding`) until its
        next upload."""
        client = self.affinity._client(client)
        params = _flat(params, "params")
        if tuple(params.shape) != (self.num_params,):
            raise ValueError(f"params has shape {tuple(params.shape)}, expected ({self.num_params},)")
        weight = real(num_examples, "num_examples", low=0.0)
        if global_update is not None:
            global_update = _flat(global_update, "global_update")
            if tuple(global_update.shape) != (self.num_params,):
                got = tuple(global_update.shape)
                raise ValueError(f"global_update has shape {got}, expected ({self.num_params},)")
        ids = list(self.affinity._ids(ids, "ids")) if len(ids) else []
        scores = list(real_vector(scores, "scores")) if len(ids) or len(scores) else []
        if self_score is not None:
            ids, scores = [client, *ids], [real(self_score, "self_score", finite=False), *scores]
        free_ride = self._free_ride(client, params, ids) if self.policy.free_riders == "exclude" else False
        ids, increments = self.affinity._prepare_update(client, np.asarray(ids, dtype=np.int64), np.asarray(scores))
        immediately = self.policy.uploads == "immediately"
        self._table.stage(client, self._table.prepare(params), immediately)  # a disk error changes nothing
        self.affinity._apply_update(client, ids, increments)
        self.free_riding[client] = free_ride
        if global_update is not None and self.global_model is not None and weight > 0:
            self.global_model.receive(global_update, weight)
        if immediately:
            self._uploaded(client)
        self._pending[client] = True

    def _free_ride(self, client: int, params: Any, ids: list) -> bool:
        """Whether an upload is a mix of the models the server holds for the clients it was sent
        and for its uploader (its last upload): :mod:`fomo_core.free_riding`."""
        sent = np.asarray(list(dict.fromkeys([client, *ids])), dtype=np.int64)
        return is_free_ride(params, self._table.rows(sent))

    def _uploaded(self, client: int) -> None:
        if not self.uploaded[client]:
            self.uploaded[client] = True
            self._uploaded_pool.add(client)

    def end_round(self) -> None:
        """Makes this round's uploads visible and starts the next round; ``last_round`` lists
        this round's uploaders in the order they arrived."""
        self._table.commit()
        for client in self._pending:
            self._uploaded(client)
        self.last_round = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        self._last_pool.reset(self.last_round)
        self._pending = {}
        if self.global_model is not None:
            self.global_model.end_round()
        self.round += 1

    def global_params(self, client: Optional[int] = None) -> Any:
        """The global model [P] clients receive with their candidates (a view: copy it to keep
        it), or None when the policy keeps none, and for ``client`` when it is a free rider under
        free_riders="exclude" (it gets nothing to ride on)."""
        if self.global_model is None or (client is not None and self._excluded(client)):
            return None
        return self.global_model.params

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the state atomically to a ``.npz`` file (a crash mid-save leaves the previous
        checkpoint; the folder is created when missing): the affinity, round, generator, policy
        and the models. With a disk store only which row holds which client's model (and each
        row's CRC-32) is written: the rows stay in the store, which keeps them until the next
        save; otherwise every model is."""
        if self._pending:
            raise ValueError("save() between rounds: this round has uploads not yet committed by end_round()")
        store = self._table if isinstance(self._table, ModelStore) else None
        meta = {
            "format": _FORMAT,
            "preset": self.preset.name,
            "policy": self.policy.as_dict(),
            "m": self.m,
            "round": self.round,
            "torch": is_torch(self.models),
            "num_clients": self.num_clients,
            "num_params": self.num_params,
            "dtype": str(self.models.dtype).removeprefix("torch."),
            "models": "inline" if store is None else {"store": os.path.abspath(store.path)},
            "affinity": self.affinity._meta(),
            "global_dtype": None if self.global_model is None else self.global_model.dtype_name,
        }
        arrays = {f"affinity_{k}": v for k, v in self.affinity._arrays().items()}
        arrays.update(uploaded=self._uploaded_pool.members, last_round=self.last_round)
        if self.global_model is not None:
            arrays.update(self.global_model.state())
        if store is None:
            arrays["models"] = self.models.detach().cpu().numpy() if meta["torch"] else self.models
        else:
            arrays["store_rows"], arrays["store_crc"] = store.slots()
            store.flush()
        text = np.array(json.dumps(meta))
        atomic_write(path, lambda f: np.savez(f, meta=text, **arrays))
        if store is not None:
            store.pin()

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, models: Any = None) -> Server[Any]:
        """A Server restored from :meth:`save`'s file (or an earlier version's); it continues
        exactly where it stopped.

        ``models``: where the models go, as the constructor's: a store (one written with this
        checkpoint, or for a checkpoint that holds the models themselves any empty one) or an
        [N, P] array (a store's rows are then copied into it). By default a checkpoint of a disk
        store reopens the store it names, and the models of any other go to a new array in
        memory. They are streamed, never whole in memory twice.

        Everything is checked before it is used, sizes before any read or allocation: the
        metadata (keys, types, round >= 0, m, the policy and preset, the generator state), client
        ids in [0, N) and not repeated, the affinity (see :meth:`Affinity.load`), every model
        finite and of the declared shape, a store's rows against their CRC-32. A file that fails
        gets a ValueError (TypeError for a wrong dtype) naming the file and the entry.
        """
        with Checkpoint(path, "Server checkpoint") as ckpt:
            ckpt.require("meta")
            meta = ckpt.meta()
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            if found == _FORMAT_V1:
                return cls._load_v1(ckpt, meta, models)
            if found != _FORMAT:
                raise ckpt.fail(f"is not a Server checkpoint (format {found!r}, expected {_FORMAT!r})")
            if set(meta) not in (_META, _META_GLOBAL_DTYPE):
                raise ckpt.fail(f"has metadata keys {sorted(meta)}, expected {sorted(_META_GLOBAL_DTYPE)}")
            server = cls._shell(ckpt, meta, _policy(ckpt, meta["policy"]))
            server.affinity = Affinity._read(ckpt, meta["affinity"], prefix="affinity_")
            n, p = _integer(ckpt, meta, "num_clients", 1, 2**31 - 1), _integer(ckpt, meta, "num_params", 1, 2**40)
            if server.affinity.num_clients != n or server.affinity.options() != _options(server.policy):
                raise ckpt.fail("holds an affinity of other clients or options than its policy says")
            if meta["dtype"] not in _DTYPES or not isinstance(meta["torch"], bool):
                raise ckpt.fail(f"has dtype {meta['dtype']!r} / torch {meta['torch']!r}, expected one of {_DTYPES}")
            dtype = np.dtype(meta["dtype"])
            if meta["models"] == "inline":
                server._table = _inline_models(ckpt, (n, p), dtype, meta["torch"], models)
            elif isinstance(meta["models"], dict) and set(meta["models"]) == {"store"} and not meta["torch"]:
                server._table = _stored_models(ckpt, meta["models"]["store"], (n, p), dtype, models)
            else:
                raise ckpt.fail(f"has models {meta['models']!r}, expected 'inline' or {{'store': path}}")
            server._start_rounds(_clients(ckpt, "uploaded", n), _clients(ckpt, "last_round", n), server.round)
            server.global_model = _global_model(ckpt, server, p, meta["torch"], meta.get("global_dtype"))
        return server

    @classmethod
    def _shell(cls, ckpt: Checkpoint, meta: dict, policy: ServerPolicy) -> Server:
        """A server with the checkpoint's preset, policy, m and round, and nothing else yet."""
        server = cls.__new__(cls)
        if not isinstance(meta.get("preset"), str) or meta["preset"] not in PRESETS:
            raise ckpt.fail(f"has preset {meta.get('preset')!r}, expected one of {sorted(PRESETS)}")
        server.preset, server.policy = as_preset(meta["preset"]), policy
        server.m = _integer(ckpt, meta, "m", 0, MAX_M)
        server.round = _integer(ckpt, meta, "round", 0, MAX_ROUND)
        server.global_model = None
        return server

    @classmethod
    def _load_v1(cls, ckpt: Checkpoint, meta: dict, models: Any) -> Server:
        """An earlier version's checkpoint: the dense affinity and every model in the file."""
        keys = {"format", "preset", "policy", "m", "round", "rng", "torch"}
        if set(meta) != keys:
            raise ckpt.fail(f"has metadata keys {sorted(meta)}, expected {sorted(keys)}")
        policy_dict = meta["policy"]
        if isinstance(policy_dict, dict) and "affinity_k" not in policy_dict:
            policy_dict = {**policy_dict, "affinity_k": None}  # it kept every entry
        server = cls._shell(ckpt, meta, _policy(ckpt, policy_dict))
        ckpt.require("uploaded", "last_round", "affinity", "models")
        shape, dtype = ckpt.header("models", "f")
        if len(shape) != 2 or not 1 <= shape[0] <= 2**31 - 1 or shape[1] < 1 or dtype.name not in _DTYPES:
            raise ckpt.fail(f"entry 'models' is a {shape} {dtype} table, expected (N, P) of one of {_DTYPES}")
        n = shape[0]
        matrix = ckpt.array("affinity", "f", shape=(n, n))
        if not np.isfinite(matrix).all() or np.abs(matrix).max() > VALUE_LIMIT:
            raise ckpt.fail(f"entry 'affinity' holds NaN, infinite or values beyond +-{VALUE_LIMIT:g}")
        server.affinity = Affinity.from_policy(server.policy, n)
        try:
            server.affinity.rng.bit_generator.state = meta["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ckpt.fail(f"holds an invalid generator state: {e}") from None
        server.affinity.matrix = matrix
        uploaded = ckpt.array("uploaded", "b", shape=(n,))
        if not isinstance(meta["torch"], bool):
            raise ckpt.fail(f"has torch {meta['torch']!r}, expected true or false")
        server._table = _inline_models(ckpt, shape, dtype, meta["torch"], models)
        server._start_rounds(np.flatnonzero(uploaded), _clients(ckpt, "last_round", n), server.round)
        return server

    def __repr__(self) -> str:
        return (
            f"Server({self.num_clients} clients, preset={self.preset.name!r}, m={self.m}, round={self.round}, "
            f"{int(self.uploaded.sum())} with a model)"
        )


# --- reading a checkpoint's parts -------------------------------------------------------------------


def _integer(ckpt: Checkpoint, meta: dict, key: str, low: int, high: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ckpt.fail(f"has {key} {value!r}, expected an integer in [{low}, {high}]")
    return value


def _policy(ckpt: Checkpoint, data: Any) -> ServerPolicy:
    if isinstance(data, dict):  # written before the global model existed: it kept none
        data = {"global_model": "off", "global_guard": None, **data}
    try:
        return ServerPolicy.from_dict(data)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{ckpt.where} holds an invalid policy: {e}") from None


def _global_model(
    ckpt: Checkpoint, server: Server, p: int, is_torch: bool, dtype_name: Optional[str]
) -> Optional[GlobalModel]:
    """The checkpoint's global model when its policy keeps one: [P], finite, in the dtype it was
    saved from (``dtype_name``; None: a checkpoint from before that was recorded, whose float64
    copy goes to the models' dtype as it did then)."""
    if server.policy.global_model != "average":
        return None
    ckpt.require("global_params")
    if dtype_name is not None:
        if (
            not isinstance(dtype_name, str)
            or dtype_name not in STORED_DTYPE
            or (dtype_name == "bfloat16" and not is_torch)
        ):
            raise ckpt.fail(f"has global_dtype {dtype_name!r}, expected one of {sorted(STORED_DTYPE)}")
        _, found = ckpt.header("global_params", "f")
        if found != np.dtype(STORED_DTYPE[dtype_name]):
            raise ckpt.fail(f"entry 'global_params' is {found}, expected {STORED_DTYPE[dtype_name]} for {dtype_name}")
    values = ckpt.array("global_params", "f", shape=(p,))
    if not np.isfinite(values).all():
        raise ckpt.fail("entry 'global_params' holds a non-finite value")
    if is_torch:
        import torch

        dtype = server.models.dtype if dtype_name is None else getattr(torch, dtype_name)
        init = torch.from_numpy(values).to(dtype)
    else:
        init = values.astype(server.models.dtype if dtype_name is None else dtype_name, copy=False)
    return server._global_model(init)


def _clients(ckpt: Checkpoint, entry: str, n: int) -> np.ndarray:
    """A list of distinct client ids in [0, n) (its length at most n)."""
    shape, _ = ckpt.header(entry, "iu")
    if len(shape) != 1 or shape[0] > n:
        raise ckpt.fail(f"entry {entry!r} has shape {shape}, expected at most {n} client ids")
    ids = ckpt.array(entry, "iu", shape=shape).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n or np.unique(ids).size != ids.size):
        raise ckpt.fail(f"entry {entry!r} must hold distinct client ids in [0, {n})")
    return ids


def _inline_models(ckpt: Checkpoint, shape: tuple, dtype: np.dtype, is_torch: bool, models: Any) -> Any:
    """The table for a checkpoint that holds every model: its size checked before anything is
    allocated, then filled block by block, each block checked finite."""
    ckpt.header("models", "f", shape=shape)
    if isinstance(models, ModelStore):
        _same_table(shape, dtype, models)
        for start, block in ckpt.blocks("models", shape, dtype):
            _check_finite(ckpt, block, start)
            models.fill(start, block)
        return models
    if models is not None:
        if not isinstance(models, np.ndarray) or models.shape != shape or models.dtype != dtype:
            found = f"{models.dtype} {models.shape}" if isinstance(models, np.ndarray) else type(models).__name__
            raise ValueError(f"the checkpoint's models are a {shape} {dtype} table, models= is {found}")
        table = view = models
    elif is_torch:
        import torch

        table = torch.empty(shape, dtype=getattr(torch, dtype.name))
        view = table.numpy()
    else:
        table = view = np.empty(shape, dtype=dtype)
    for start, block in ckpt.blocks("models", shape, dtype):
        _check_finite(ckpt, block, start)
        view[start : start + len(block)] = block
    return MemoryTable(table)


def _same_table(shape: tuple, dtype: np.dtype, store: ModelStore) -> None:
    if store.shape != shape or store.dtype != dtype:
        found = f"{store.shape} {store.dtype}"
        raise ValueError(f"the checkpoint's models are a {shape} {dtype} table, the store a {found} one")


def _check_finite(ckpt: Checkpoint, block: np.ndarray, start: int) -> None:
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        raise ckpt.fail(f"entry 'models' holds a non-finite value in client {start + int(np.argmax(bad))}'s model")


def _stored_models(ckpt: Checkpoint, path: Any, shape: tuple, dtype: np.dtype, models: Any) -> Any:
    """The store a checkpoint names (or ``models``), its rows checked against the checkpoint; with
    an [N, P] array for ``models``, the rows copied into it."""
    rows = ckpt.array("store_rows", "iu", shape=(shape[0],)).astype(np.int64)
    crc = ckpt.array("store_crc", "u", shape=(shape[0],)).astype(np.uint32)
    if rows.size and rows.min() < 0:
        raise ckpt.fail("entry 'store_rows' holds a negative row")
    if isinstance(models, ModelStore):
        _same_table(shape, dtype, models)
        models.restore(rows, crc, ckpt.where)
        return models
    if models is not None and (not isinstance(models, np.ndarray) or models.shape != shape or models.dtype != dtype):
        found = f"{models.dtype} {models.shape}" if isinstance(models, np.ndarray) else type(models).__name__
        raise ValueError(f"{ckpt.where} keeps {shape} {dtype} models in a store: models= is {found}")
    if not isinstance(path, str) or not os.path.isfile(path):
        raise ckpt.fail(f"keeps its models in the store {path!r}, which is missing")
    store = open_model_store(path, shape[0], shape[1], dtype=dtype)
    _same_table(shape, dtype, store)
    store.restore(rows, crc, ckpt.where)
    if models is None:
        return store
    with store:
        for client in range(shape[0]):
            models[client] = store.row(client)
    return MemoryTable(models)
