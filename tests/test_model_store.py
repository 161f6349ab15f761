"""fomo_core.model_store: a disk-backed model table for the Server, and checkpoints streamed into it."""

from __future__ import annotations

import numpy as np
import pytest

import fomo_core as fc
from fomo_core import model_store
from fomo_core.model_store import open_model_store


def _rounds(server: fc.Server, rounds: int, rng: np.random.Generator) -> None:
    """A few rounds of uploads with random models and scores (the same draws for every server)."""
    p = server.models.shape[1]
    for _ in range(rounds):
        for client in range(server.num_clients):
            ids, cands = server.candidates(client)
            assert cands.shape == (len(ids), p)
            server.receive(client, rng.standard_normal(p).astype(np.float32), ids, rng.standard_normal(len(ids)))
        server.end_round()


def test_a_server_on_a_disk_store_runs_exactly_as_one_in_memory(tmp_path):
    init = np.linspace(-1, 1, 37, dtype=np.float32)
    memory = fc.Server(6, init, m=2, seed=3)
    store = open_model_store(tmp_path / "models.npy", 6, 37)
    disk = fc.Server(6, init, m=2, seed=3, models=store)
    assert disk.models is store
    _rounds(memory, 4, np.random.default_rng(0))
    _rounds(disk, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(disk.models), memory.models)
    np.testing.assert_array_equal(disk.affinity.matrix, memory.affinity.matrix)
    store.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "models.npy"), memory.models)  # the rows are on disk


def test_a_checkpoint_streams_into_a_store_block_by_block(tmp_path, monkeypatch):
    # Prepare: a server with a history, checkpointed; blocks of 3 rows (P = 37 float32)
    monkeypatch.setattr(model_store, "BLOCK_BYTES", 3 * 37 * 4)
    server = fc.Server(8, np.zeros(37, np.float32), m=3, seed=1)
    _rounds(server, 3, np.random.default_rng(5))
    server.save(tmp_path / "ckpt.npz")

    # Execute
    store = open_model_store(tmp_path / "restored.npy", 8, 37)
    restored = fc.Server.load(tmp_path / "ckpt.npz", models=store)

    # Assert: the same state, the models in the store, and both continue identically
    assert restored.models is store and restored.round == server.round == 3
    np.testing.assert_array_equal(np.asarray(store), server.models)
    np.testing.assert_array_equal(restored.affinity.matrix, server.affinity.matrix)
    _rounds(server, 2, np.random.default_rng(9))
    _rounds(restored, 2, np.random.default_rng(9))
    np.testing.assert_array_equal(np.asarray(store), server.models)


def test_store_arguments_are_checked(tmp_path):
    path = tmp_path / "m.npy"
    store = open_model_store(path, 4, 5)
    store[2] = 7.0
    store.flush()
    del store
    assert (open_model_store(path, 4, 5)[2] == 7.0).all()  # reopened with its rows
    with pytest.raises(ValueError, match=r"holds a \(4, 5\) float32 table, expected \(4, 6\) float32"):
        open_model_store(path, 4, 6)
    with pytest.raises(ValueError, match="num_clients must be an integer >= 1"):
        open_model_store(tmp_path / "x.npy", 0, 5)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype"):
        open_model_store(tmp_path / "x.npy", 2, 5, dtype=np.int32)
    with pytest.raises(ValueError, match=r"models must be a floating \[N, P\] = \(4, 5\) array"):
        fc.Server(4, np.zeros(5, np.float32), models=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="models must be a NumPy array"):
        fc.Server(4, np.zeros(5, np.float32), models=[[0.0] * 5] * 4)
    server = fc.Server(4, np.zeros(5, np.float32), m=1)
    server.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match=r"is a \(4, 5\) float32 table, the store a \(4, 5\) float64 one"):
        fc.Server.load(tmp_path / "c.npz", models=open_model_store(tmp_path / "f64.npy", 4, 5, dtype=np.float64))
