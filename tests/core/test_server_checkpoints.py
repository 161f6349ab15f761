"""Server checkpoints and model stores from an untrusted disk: every damaged or hostile file is a
ValueError (TypeError for a wrong dtype) naming the file and the entry, never another exception,
never a load of more than the file holds; and a server always reloads the checkpoint it wrote.
The fuzz tests mutate real files' bytes (a few seconds in all)."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fomo_core as fc
from fomo_core.model_store import open_model_store

ALLOWED = (ValueError, TypeError)


def _server(n: int = 6, p: int = 4, rounds: int = 2, store=None, seed: int = 0) -> fc.Server:
    server = fc.Server(n, np.zeros(p, np.float32), m=2, seed=seed, models=store)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for client in rng.permutation(n)[: n - 1]:
            ids = server.select(int(client))
            server.receive(int(client), rng.standard_normal(p).astype(np.float32), ids, rng.standard_normal(ids.size))
        server.end_round()
    return server


def _entries(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _write(path, entries: dict, compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _meta(entries: dict) -> dict:
    return json.loads(str(np.load(io.BytesIO(entries["meta.npy"]))))


def _with_meta(entries: dict, change) -> dict:
    meta = _meta(entries)
    change(meta)
    return {**entries, "meta.npy": _npy(np.array(json.dumps(meta)))}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    _server().save(path)
    return path


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _drop(key):
    return lambda meta: meta.pop(key)


# Each line of the hardening issue: what reached the user before, and now the named error.
BAD_META = {
    "negative-round": (_set("round", -7), r"has round -7, expected an integer in \[0, "),
    "huge-m": (_set("m", 10**30), r"has m 10{30}0*, expected an integer in \[0, 2147483647\]"),
    "missing-key": (_drop("round"), "has metadata keys"),  # a KeyError before
    "text-round": (_set("round", "7"), "has round '7'"),
    "bool-m": (_set("m", True), "has m True"),
    "unknown-preset": (_set("preset", "nope"), "has preset 'nope'"),
    "bad-policy": (_set("policy", {"selection": "best"}), "holds an invalid policy"),
    "bad-dtype": (_set("dtype", "int8"), "has dtype 'int8'"),
    "bad-models": (_set("models", {"store": 3, "x": 1}), "has models"),
    "wrong-format": (_set("format", "fomo_core.Server/9"), "is not a Server checkpoint"),
    "global-dtype": (_set("global_dtype", "int8"), "has global_dtype 'int8'"),
    "global-dtype-list": (_set("global_dtype", ["float32"]), r"has global_dtype \['float32'\]"),
    "global-dtype-mismatch": (_set("global_dtype", "float64"), "entry 'global_params' is float32, expected float64"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_bad_metadata_is_named(good, case):
    change, message = BAD_META[case]
    _write(good, _with_meta(_entries(good), change))
    with pytest.raises(ALLOWED, match=message) as info:
        fc.Server.load(good)
    assert str(good) in str(info.value)


def _array_case(name: str, array: np.ndarray):
    return lambda entries: {**entries, f"{name}.npy": _npy(array)}


BAD_ARRAYS = {
    "last-round-ids": (_array_case("last_round", np.array([99, -3])), "entry 'last_round' must hold distinct client"),
    "repeated-uploader": (_array_case("uploaded", np.array([1, 1])), "entry 'uploaded' must hold distinct"),
    "nan-model": (_array_case("models", np.full((6, 4), np.nan, np.float32)), "non-finite value in client 0's model"),
    "model-shape": (_array_case("models", np.zeros((6, 5), np.float32)), r"has shape \(6, 5\), expected \(6, 4\)"),
    "model-dtype": (_array_case("models", np.zeros((6, 4), np.int32)), "dtype int32, expected a real float"),
    "affinity-ids": (_array_case("affinity_ids", np.full((6, 5), 9, np.int32)), "client ids outside"),
    "affinity-inf": (_array_case("affinity_diag", np.full(6, np.inf)), "holds NaN, infinite"),
    "affinity-own-id": (_array_case("affinity_ids", np.tile(np.arange(6, dtype=np.int32)[:, None], 5)), "own id"),
    "too-many-uploaders": (_array_case("uploaded", np.arange(7)), "expected at most 6 client ids"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_are_named(good, case):
    change, message = BAD_ARRAYS[case]
    _write(good, change(_entries(good)))
    with pytest.raises(ALLOWED, match=message) as info:
        fc.Server.load(good)
    assert str(good) in str(info.value)


def test_damaged_zips_are_value_errors(good):
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])  # truncated: a BadZipFile before
    with pytest.raises(ValueError, match="is not a readable Server checkpoint"):
        fc.Server.load(good)
    flipped = bytearray(raw)
    flipped[raw.index(b"\x93NUMPY", raw.index(b"models.npy")) + 128 + 5] ^= 0xFF  # in client 0's model
    good.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"entry 'models' is not readable: BadZipFile: Bad CRC-32"):
        fc.Server.load(good)


def _header_only(shape: tuple) -> bytes:
    """A .npy entry that declares ``shape`` float32 and holds 16 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(16)


def test_sizes_are_checked_before_any_read_or_allocation(good):
    entries = _with_meta(_entries(good), _set("num_params", 2**39))
    _write(good, {**entries, "models.npy": _header_only((6, 2**39))})  # 12 TiB declared: a MemoryError before
    with pytest.raises(
        ValueError, match=r"entry 'models' is truncated or damaged: it declares shape \(6, 549755813888\)"
    ):
        fc.Server.load(good)
    # a small file whose models inflate far beyond it (a zip bomb)
    bomb = _with_meta(entries, _set("num_params", 2**22))
    bomb["models.npy"] = _npy(np.zeros((6, 2**22), np.float32))  # 96 MiB of zeros, deflated to ~100 KiB
    _write(good, bomb, compress=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(good) < 1 << 20
    with pytest.raises(ValueError, match="entry 'models' expands to .* bytes, more than the file's"):
        fc.Server.load(good)


def test_an_earlier_versions_checkpoint_still_loads(tmp_path):
    server = _server(rounds=3)
    path = tmp_path / "v1.npz"
    meta = {
        "format": "fomo_core.Server/1",
        "preset": "fomo-core",
        "policy": {k: v for k, v in server.policy.as_dict().items() if k != "affinity_k"},
        "m": server.m,
        "round": server.round,
        "rng": server.affinity.rng.bit_generator.state,
        "torch": False,
    }
    np.savez(
        path,
        meta=np.array(json.dumps(meta)),
        models=server.models,
        affinity=server.affinity.matrix,
        uploaded=server.uploaded,
        last_round=np.sort(server.last_round),
    )
    back = fc.Server.load(path)
    assert back.policy.affinity_k is None and back.round == 3  # the old format kept every entry
    np.testing.assert_array_equal(back.affinity.matrix, server.affinity.matrix)
    np.testing.assert_array_equal(back.models, server.models)
    assert [back.select(i).size for i in range(6)] == [server.select(i).size for i in range(6)]


def test_numeric_arguments_are_validated():
    init = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="m must be an integer in"):
        fc.Server(4, init, m=10**30)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        fc.Server(4, init, seed=-1)
    with pytest.raises(ValueError, match="num_clients must be an integer in"):
        fc.Affinity(10**30)
    with pytest.raises(ValueError, match="num_clients must be an integer in"):
        fc.Affinity(3).grow(10**30)
    with pytest.raises(ValueError, match="init_params must be finite"):
        fc.Server(4, np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="params must be finite"):
        fc.Server(4, init).receive(0, np.array([0.0, np.inf, 1.0], np.float32), [], [])


# --- fuzzing ----------------------------------------------------------------------------------------


mutations = st.tuples(
    st.sampled_from(["flip", "truncate", "splice", "header"]),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    st.binary(max_size=48),
)


def _mutated(raw: bytes, mutation: tuple) -> bytes:
    """raw with bytes changed (at relative positions), cut, spliced, or digits of a .npy header
    (shapes and sizes) changed."""
    kind, changes, inserted = mutation
    raw = bytearray(raw)
    if kind == "flip":
        for where, value in changes:
            raw[int(where * len(raw))] = value
    elif kind == "truncate":
        raw = raw[: int(changes[0][0] * len(raw))]
    elif kind == "splice":
        at = int(changes[0][0] * len(raw))
        raw = raw[:at] + inserted + raw[at:]
    else:
        headers = [i for i in range(len(raw) - 6) if raw[i : i + 6] == b"\x93NUMPY"]
        for where, value in changes:
            at = headers[int(where * len(headers))] + 10 + value % 80
            raw[at] = b"0123456789(),- "[value % 15]
    return bytes(raw)


class Saved(dict):
    """The bytes of a saved inline checkpoint, a store checkpoint and its store (short repr)."""

    def __repr__(self) -> str:
        return "Saved(inline, store, store-rows)"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    _server().save(folder / "inline.npz")
    store_server = _server(store=open_model_store(folder / "store.npy", 6, 4))
    store_server.save(folder / "store.npz")
    store_server.models.close()
    files = {"inline": "inline.npz", "store": "store.npz", "store-rows": "store.npy"}
    return Saved({key: (folder / name).read_bytes() for key, name in files.items()})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["inline", "store"]), mutation=mutations)
def test_server_load_survives_mutated_checkpoints(saved, tmp_path_factory, kind, mutation):
    folder = tmp_path_factory.mktemp("load")
    path = folder / "ckpt.npz"
    path.write_bytes(_mutated(saved[kind], mutation))
    store = None
    if kind == "store":
        (folder / "store.npy").write_bytes(saved["store-rows"])
        store = open_model_store(folder / "store.npy", 6, 4)
    try:
        loaded = fc.Server.load(path, models=store)
    except ALLOWED as e:
        assert str(path) in str(e) or "the checkpoint's models" in str(e)
        return
    # What loads is a whole, valid server: it serves, and reloads what it writes.
    assert np.isfinite(np.asarray(loaded.models)).all() and np.isfinite(loaded.affinity.matrix).all()
    for client in range(loaded.num_clients):
        loaded.select(client)
    loaded.save(folder / "again.npz")
    fc.Server.load(folder / "again.npz", models=None if store is None else loaded.models)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), min_size=1, max_size=4), cut=st.floats(0, 2)
)
def test_open_model_store_survives_mutated_files(saved, tmp_path_factory, changes, cut):
    mutated = bytearray(saved["store-rows"])
    for where, value in changes:  # the header, and the file's length
        mutated[where] = value
    if cut < 1:
        mutated = mutated[: int(cut * len(mutated))]
    path = tmp_path_factory.mktemp("store") / "m.npy"
    path.write_bytes(bytes(mutated))
    try:
        store = open_model_store(path, 6, 4)
    except ALLOWED as e:
        assert str(path) in str(e)
        assert os.path.getsize(path) == len(mutated)  # never extended or zero-filled
        return
    with store:
        declared = 128 + store.rows_on_disk * store.num_params * store.dtype.itemsize
        assert declared == os.path.getsize(path)  # it opened only a file that holds what it declares


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 8),
    rounds=st.integers(0, 4),
    preset=st.sampled_from(sorted(fc.PRESETS)),
    k=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 1000),
)
def test_a_server_always_reloads_its_own_checkpoint(tmp_path_factory, n, rounds, preset, k, seed):
    policy = fc.get_preset(preset).server.replace(affinity_k=k)
    server = fc.Server(n, np.zeros(3, np.float32), preset=preset, policy=policy, m=2, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for client in rng.permutation(n)[: rng.integers(1, n + 1)]:
            ids = server.select(int(client))
            scores = rng.choice([1e308, -1e308, 0.0, np.nan, 1e-300, 3.0], ids.size)
            self_score = (
                float(rng.choice([1e308, -2.0])) if fc.get_preset(preset).client.self_candidate != "none" else None
            )
            server.receive(int(client), rng.standard_normal(3).astype(np.float32), ids, scores, self_score=self_score)
        server.end_round()
    path = tmp_path_factory.mktemp("own") / "s.npz"
    server.save(path)
    back = fc.Server.load(path)
    np.testing.assert_array_equal(back.affinity.matrix, server.affinity.matrix)
    assert [back.select(i).tolist() for i in range(n)] == [server.select(i).tolist() for i in range(n)]


def test_save_creates_the_folder(tmp_path):
    # docs/how-to/checkpointing.md saves to "ckpt/...": a FileNotFoundError on the temporary file before
    server = _server()
    server.save(tmp_path / "ckpt" / "deeper" / "server.npz")
    server.affinity.save(tmp_path / "other" / "affinity.npz")
    assert fc.Server.load(tmp_path / "ckpt" / "deeper" / "server.npz").round == server.round
    assert fc.Affinity.load(tmp_path / "other" / "affinity.npz").num_clients == 6
    assert sorted(os.listdir(tmp_path / "ckpt" / "deeper")) == ["server.npz"]  # no temporary left
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):  # a folder that cannot be made: the usual error, nothing written
        server.save(tmp_path / "file" / "server.npz")
