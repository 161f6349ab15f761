"""fomo_core.model_store: the disk store of the Server's models, its incremental checkpoints, and
checkpoints streamed into it."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

import fomo_core as fc
from fomo_core import _checkpoint
from fomo_core.model_store import open_model_store


def _rounds(server: fc.Server, rounds: int, rng: np.random.Generator, share: float = 1.0) -> list:
    """Rounds of uploads with random models and scores (the same draws for every server), the
    participants in a random (unsorted) order; returns every selection made."""
    p = server.num_params
    picks = []
    for _ in range(rounds):
        for client in rng.permutation(server.num_clients)[: max(1, int(share * server.num_clients))]:
            ids, cands = server.candidates(int(client))
            assert cands.shape == (len(ids), p)
            picks.append(ids.tolist())
            server.receive(int(client), rng.standard_normal(p).astype(np.float32), ids, rng.standard_normal(len(ids)))
        server.end_round()
    return picks


def _same(a: fc.Server, b: fc.Server) -> None:
    np.testing.assert_array_equal(np.asarray(a.models), np.asarray(b.models))
    np.testing.assert_array_equal(a.affinity.matrix, b.affinity.matrix)
    assert a.round == b.round and a.last_round.tolist() == b.last_round.tolist()


@pytest.mark.parametrize("preset", ["fomo-core", "fl-bench", "paper"])
def test_a_server_on_a_disk_store_runs_exactly_as_one_in_memory(tmp_path, preset):
    # Prepare: the same federation in memory and on disk (fl-bench: uploads visible at once)
    init = np.linspace(-1, 1, 37, dtype=np.float32)
    memory = fc.Server(6, init, preset=preset, m=2, seed=3)
    store = open_model_store(tmp_path / "models.npy", 6, 37)
    disk = fc.Server(6, init, preset=preset, m=2, seed=3, models=store)
    assert disk.models is store

    # Execute
    picks = [_rounds(s, 4, np.random.default_rng(0), share=0.7) for s in (memory, disk)]

    # Assert: same selections, affinity and models; every model is a row of the .npy file
    assert picks[0] == picks[1]
    _same(memory, disk)
    store.flush()
    rows, _ = store.slots()
    np.testing.assert_array_equal(np.load(tmp_path / "models.npy")[rows], memory.models)


def test_uploads_go_to_disk_not_to_memory(tmp_path):
    p = 1_000_000  # 4 MB per upload
    server = fc.Server(4, np.zeros(p, np.float32), m=2, seed=0, models=open_model_store(tmp_path / "m.npy", 4, p))
    upload = np.ones(p, np.float32)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for client in range(4):
        server.receive(client, upload, [], [])
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 100_000  # four uploads of 4 MB each: none kept in memory until end_round
    assert server.model(0).sum() == 0  # not visible before end_round
    server.end_round()
    assert server.model(3).sum() == p


def test_a_checkpoint_of_a_store_is_small_and_survives_the_rounds_after_it(tmp_path):
    # Prepare: a store server with a history, checkpointed, then two more rounds (the "crash")
    n, p = 8, 5000
    server = fc.Server(n, np.zeros(p, np.float32), m=3, seed=1, models=open_model_store(tmp_path / "m.npy", n, p))
    _rounds(server, 3, np.random.default_rng(5))
    server.save(tmp_path / "ckpt.npz")
    twin = fc.Server.load(tmp_path / "ckpt.npz", models=fc.Server(n, np.zeros(p, np.float32)).models.copy())
    _rounds(server, 2, np.random.default_rng(6))
    server.models.close()

    # Execute: load the checkpoint (it reopens the store it names)
    restored = fc.Server.load(tmp_path / "ckpt.npz")

    # Assert: the checkpoint holds the small state and the global model only (one model, not in
    # the store; the rows stay there); the state is the one saved (the rounds after it wrote to
    # other rows) and both continue identically
    assert os.path.getsize(tmp_path / "ckpt.npz") < p * 8 + p * 4 / 2  # the global model is kept as float64
    _same(restored, twin)
    assert _rounds(restored, 2, np.random.default_rng(9)) == _rounds(twin, 2, np.random.default_rng(9))
    _same(restored, twin)


def test_the_store_keeps_few_rows(tmp_path):
    n, p = 20, 10
    server = fc.Server(n, np.zeros(p, np.float32), m=3, seed=1, models=open_model_store(tmp_path / "m.npy", n, p))
    for r in range(10):
        _rounds(server, 1, np.random.default_rng(r), share=0.25)
        server.save(tmp_path / "ckpt.npz")
    # one row per client that uploaded, the shared initial row, one per upload of a round
    assert server.models.rows_on_disk <= n + 1 + 5 + 16  # +16: the file grows in steps


def test_a_superseded_or_tampered_store_is_refused(tmp_path):
    n, p = 6, 50
    server = fc.Server(n, np.zeros(p, np.float32), m=2, seed=1, models=open_model_store(tmp_path / "m.npy", n, p))
    _rounds(server, 2, np.random.default_rng(0))
    server.save(tmp_path / "old.npz")
    _rounds(server, 1, np.random.default_rng(1))
    server.save(tmp_path / "new.npz")
    _rounds(server, 1, np.random.default_rng(2))  # reuses rows only old.npz referred to
    server.save(tmp_path / "new.npz")
    server.models.close()
    with pytest.raises(ValueError, match=r"old.npz.*changed since the checkpoint was written"):
        fc.Server.load(tmp_path / "old.npz")
    assert fc.Server.load(tmp_path / "new.npz").round == 4

    rows, _ = fc.Server.load(tmp_path / "new.npz").models.slots()
    with open(tmp_path / "m.npy", "r+b") as f:  # one flipped byte in client 2's row
        f.seek(128 + int(rows[2]) * p * 4 + 7)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="client 2's model"):
        fc.Server.load(tmp_path / "new.npz")
    os.unlink(tmp_path / "m.npy")
    with pytest.raises(ValueError, match="which is missing"):
        fc.Server.load(tmp_path / "new.npz")


def test_a_checkpoint_streams_into_a_store_block_by_block(tmp_path, monkeypatch):
    # Prepare: an in-memory server with a history, checkpointed; blocks of 3 rows (P = 37 float32)
    monkeypatch.setattr(_checkpoint, "BLOCK_BYTES", 3 * 37 * 4)
    server = fc.Server(8, np.zeros(37, np.float32), m=3, seed=1)
    _rounds(server, 3, np.random.default_rng(5))
    server.save(tmp_path / "ckpt.npz")

    # Execute
    store = open_model_store(tmp_path / "restored.npy", 8, 37)
    restored = fc.Server.load(tmp_path / "ckpt.npz", models=store)

    # Assert: the same state, the models in the store, and both continue identically
    assert restored.models is store and restored.round == server.round == 3
    _same(restored, server)
    _rounds(server, 2, np.random.default_rng(9))
    _rounds(restored, 2, np.random.default_rng(9))
    _same(restored, server)


def test_store_arguments_are_checked(tmp_path):
    path = tmp_path / "m.npy"
    open_model_store(path, 4, 5).close()
    with pytest.raises(ValueError, match=r"holds a \(5, 5\) float32 table, expected rows of 6 float32 values"):
        open_model_store(path, 4, 6)
    with pytest.raises(ValueError, match="num_clients must be an integer >= 1"):
        open_model_store(tmp_path / "x.npy", 0, 5)
    with pytest.raises(ValueError, match=r"num_params must be an integer in \[1, "):
        open_model_store(tmp_path / "x.npy", 2, 10**30)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype"):
        open_model_store(tmp_path / "x.npy", 2, 5, dtype=np.int32)
    with pytest.raises(ValueError, match=r"models must be a floating \[N, P\] = \(4, 5\) array"):
        fc.Server(4, np.zeros(5, np.float32), models=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="models must be a NumPy array"):
        fc.Server(4, np.zeros(5, np.float32), models=[[0.0] * 5] * 4)
    with pytest.raises(ValueError, match=r"models is a store of \(4, 5\)"):
        fc.Server(3, np.zeros(5, np.float32), models=open_model_store(path, 4, 5))
    server = fc.Server(4, np.zeros(5, np.float32), m=1)
    server.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match=r"are a \(4, 5\) float32 table, the store a \(4, 5\) float64 one"):
        fc.Server.load(tmp_path / "c.npz", models=open_model_store(tmp_path / "f64.npy", 4, 5, dtype=np.float64))


def test_a_truncated_or_padded_store_is_refused_before_it_is_opened(tmp_path):
    path = tmp_path / "m.npy"
    open_model_store(path, 4, 5).close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 2 * 5 * 4)  # two rows short
    with pytest.raises(ValueError, match="is truncated: its header declares"):
        open_model_store(path, 4, 5)
    assert os.path.getsize(path) == size - 40  # not extended
    with open(path, "r+b") as f:
        f.truncate(size + 1)
    with pytest.raises(ValueError, match="is longer than its header says"):
        open_model_store(path, 4, 5)
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}")
    with pytest.raises(ValueError, match="is not a model store"):
        open_model_store(path, 4, 5)


def test_a_store_server_refuses_uploads_it_could_not_store(tmp_path):
    store = open_model_store(tmp_path / "h.npy", 3, 4, dtype=np.float16)
    server = fc.Server(3, np.zeros(4, np.float32), m=1, models=store)
    before = server.affinity.matrix.copy()
    with pytest.raises(ValueError, match="params must be finite in the model table's dtype float16"):
        server.receive(0, np.full(4, 1e6, np.float32), [1], [0.5])  # beyond float16's range
    with pytest.raises(ValueError, match="params must be finite"):
        server.receive(0, np.full(4, np.nan, np.float32), [1], [0.5])
    np.testing.assert_array_equal(server.affinity.matrix, before)
    assert not server._pending


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    store = open_model_store(tmp_path / "m.npy", 3, 4)
    server = fc.Server(3, np.zeros(4, np.float32), m=1, seed=0, models=store)
    before = server.affinity.matrix.copy()

    def disk_full(row, data):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_write", disk_full)
        with pytest.raises(OSError, match="No space left"):
            server.receive(0, np.ones(4, np.float32), [1], [0.5])
    np.testing.assert_array_equal(server.affinity.matrix, before)
    assert not server._pending and not store.pending
    server.receive(0, np.ones(4, np.float32), [1], [0.5])  # the same upload, once the disk has room
    server.end_round()
    assert server.model(0).tolist() == [1.0] * 4 and server.affinity.row(0)[1] == 0.5
