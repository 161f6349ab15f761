"""Interim server state for the Flower strategy: every client's latest model, the affinity and the
round counter, with the interface of the shared round machinery (candidates / receive /
end_round / save / load). Replaced by ``fomo_core.Server`` once that lands.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import numpy as np

from ..affinity import Affinity
from ..presets import Preset

__all__ = ["ServerState"]


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ServerState:
    """models [N, P] float32 (row i: client i's latest upload, the initial model until then),
    which clients have uploaded, the Affinity and the round (1-based, the round being run)."""

    def __init__(self, num_clients: int, init_params: np.ndarray, preset: Preset, m: int, seed: Any, **affinity_options: Any):
        init = np.asarray(init_params, dtype=np.float32)
        self.num_clients = int(num_clients)
        self.m = int(m)
        self.preset = preset
        self.affinity = Affinity.from_preset(preset, self.num_clients, seed=seed, **affinity_options)
        self.models = np.empty((self.num_clients, init.size), dtype=np.float32)
        self.models[:] = init
        self.has_model = np.zeros(self.num_clients, dtype=bool)
        self.round = 1
        self._recent: list = []
        self._staged: dict = {}

    def candidates(self, client: int) -> tuple:
        """(ids int64 [K], rows [K, P]) the models client ``client`` receives this round."""
        among = self._recent if self.preset.selection == "top_m_recent" else np.flatnonzero(self.has_model)
        ids = self.affinity.select(client, self.m, round=self.round - 1, among=among)
        return ids, self.models[ids]

    def model(self, client: int) -> np.ndarray:
        return self.models[client]

    def receive(self, client: int, params: np.ndarray, ids: Any, scores: Any) -> None:
        """Stages client ``client``'s upload; the affinity row is updated now, the model is
        visible from the next round."""
        self.affinity.update(client, ids, scores)
        self._staged[client] = np.array(params, dtype=np.float32)

    def end_round(self) -> None:
        for client, params in self._staged.items():
            self.models[client] = params
            self.has_model[client] = True
        self._recent = sorted(self._staged)
        self._staged = {}
        self.round += 1

    # --- persistence ----------------------------------------------------------------------------

    def save(self, folder: str) -> None:
        """Writes the state into ``folder`` atomically file by file, the round last (a crash
        between files leaves the previous round's ``state.json`` pointing at complete files)."""
        os.makedirs(folder, exist_ok=True)
        tag = f"r{self.round:06d}"
        _atomic_write(os.path.join(folder, f"models-{tag}.npy"), lambda f: np.save(f, self.models))
        aff_path = os.path.join(folder, f"affinity-{tag}.npz")
        tmp = aff_path + ".tmp"
        self.affinity.save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, aff_path)
        meta = {
            "round": self.round,
            "m": self.m,
            "has_model": self.has_model.tolist(),
            "recent": [int(c) for c in self._recent],
            "models": f"models-{tag}.npy",
            "affinity": f"affinity-{tag}.npz",
        }
        _atomic_write(os.path.join(folder, "state.json"), lambda f: f.write(json.dumps(meta).encode()))
        for name in os.listdir(folder):  # older rounds' files
            if (name.startswith("models-r") or name.startswith("affinity-r")) and tag not in name:
                os.unlink(os.path.join(folder, name))

    @classmethod
    def load(cls, folder: str, preset: Preset) -> Optional["ServerState"]:
        path = os.path.join(folder, "state.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            meta = json.load(f)
        state = cls.__new__(cls)
        state.models = np.load(os.path.join(folder, meta["models"]), mmap_mode="r+")
        state.num_clients = state.models.shape[0]
        state.m = int(meta["m"])
        state.preset = preset
        state.affinity = Affinity.load(os.path.join(folder, meta["affinity"]))
        state.has_model = np.asarray(meta["has_model"], dtype=bool)
        state.round = int(meta["round"])
        state._recent = list(meta["recent"])
        state._staged = {}
        state.models = np.array(state.models)
        return state
