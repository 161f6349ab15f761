"""fomo_core.adapters.flower: the FedFomo strategy, its protocol and the ClientApp handlers.

These tests run in one process: a LocalGrid (tests/flower_local.py) calls the ClientApp directly
with the message ids, node ids and error replies a SuperLink gives, and can tamper with replies.
The real processes (``flwr run`` on the Simulation Runtime and on a SuperLink with SuperNodes) are
in test_flower_processes.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read once when flwr is imported

import flower_local as fl
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from sklearn.neural_network import MLPClassifier
from torch import nn

import fomo_core as fc
from fomo_core.adapters.flower import (
    FedFomo,
    ModelLayout,
    RecordKeys,
    fedfomo_client_app,
    fedfomo_evaluate,
    fedfomo_train,
    model_record,
)
from fomo_core.adapters.numpy import MLPClassifierClient, initialise_mlp
from fomo_core.adapters.torch import FedFomoClient, evaluate_module
from fomo_core.model_store import ModelStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NODES = {2**64 - 5: 0, 17: 1, 2**63 + 3: 2, 40: 3}  # Flower node ids are unsigned 64-bit


@pytest.fixture(autouse=True)
def in_a_run():
    """Flower >= 1.4x stamps every new Message with the identity of the running task; the tests
    set one and put back what was."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        yield
        return
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    fl.set_task_identity()
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def clients_data():
    return fl.digits_clients()


def flat(record: ArrayRecord) -> np.ndarray:
    return ModelLayout.of(record).flat_from_record(record, "record")


def initial_flat() -> np.ndarray:
    return flat(model_record(fl.estimator(0)))


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        ({"m": 0}, ValueError, "m must be an integer >= 1"),
        ({"fraction_train": 1.5}, ValueError, "fraction_train must be a finite number in"),
        ({"min_train_nodes": -1}, ValueError, "min_train_nodes"),
        ({"candidate_dtype": "int8"}, ValueError, "candidate_dtype must be one of"),
        ({"preset": "nope"}, ValueError, "nope"),
        ({"preset": "pfllib", "epsilon": 0.1}, ValueError, "epsilon and epsilon_decay apply"),
        ({"identify_timeout": 0}, ValueError, "identify_timeout"),
        ({"train_metrics_aggr_fn": 3}, TypeError, "train_metrics_aggr_fn must be callable"),
        ({"arrayrecord_key": "candidate.x"}, ValueError, "record key arrays"),
        ({"arrayrecord_key": "same", "configrecord_key": "same"}, ValueError, "record keys must differ"),
        ({"num_clients": 0}, ValueError, "num_clients must be an integer >= 1"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"seed": True}, TypeError, "seed must be an integer"),
        ({"node_wait_timeout": -1.0}, ValueError, "node_wait_timeout must be a finite number"),
        ({"node_wait_timeout": float("inf")}, ValueError, "node_wait_timeout"),
        ({"node_wait_timeout": "60"}, TypeError, "node_wait_timeout must be a real number"),
        ({"count_cap_ratio": 0.5}, ValueError, "count_cap_ratio"),
        ({"fraction_evaluate": float("nan")}, ValueError, "fraction_evaluate"),
        ({"identify_all": "yes"}, TypeError, "identify_all must be True or False"),
        ({"affinity_history": 1}, TypeError, "affinity_history must be True or False"),
    ],
)
def test_bad_options_are_refused_with_the_argument_named(options, error, fragment):
    with pytest.raises(error, match=fragment):
        FedFomo(**options)


def test_server_side_imports_without_torch_or_the_compiled_extension():
    # the strategy, the protocol, the Server and a round of its bookkeeping, with torch and the
    # compiled extension unimportable
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['fomo_core._C'] = None\n"
        "import numpy as np\n"
        "from fomo_core.adapters.flower import FedFomo, ModelLayout\n"
        "import fomo_core as fc\n"
        "FedFomo(m=2)\n"
        "s = fc.Server(3, np.zeros(4, np.float32), m=1, seed=0)\n"
        "ids, c = s.candidates(0); s.receive(0, np.ones(4, np.float32), ids, np.zeros(len(ids))); s.end_round()\n"
        "assert s.round == 1\n"
        "try:\n    fc.fomo_step\nexcept ImportError:\n    pass\n"
        "else:\n    raise AssertionError('the kernels imported')\n"
    )
    # from outside the checkout: its fomo_core/ folder (no adapters/, no extension) would shadow
    # the installed package
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr


# --- a federation ----------------------------------------------------------------------------------


def test_a_federation_trains_and_evaluates_in_one_message_per_client_per_round():
    # Execute
    strategy, grid = fl.run_federation(None, 3, nodes=NODES)

    # Assert: one QUERY per node (its id), then one TRAIN message per client per round, nothing else
    kinds = [k for k, _ in grid.sent]
    assert kinds == ["query"] * 4 + ["train"] * 12
    assert strategy.client_ids == ["0", "1", "2", "3"]  # the partition ids, whatever the node ids
    for r in strategy.rounds:
        assert r.failed == {} and r.evaluate_failed == {}
        assert sorted(r.accuracy) == [0, 1, 2, 3] and sorted(r.scores) == [0, 1, 2, 3]
    assert strategy.rounds[0].candidates == {0: [], 1: [], 2: [], 3: []}
    assert all(len(c) == 2 for c in strategy.rounds[1].candidates.values())
    init = initial_flat()
    for cid in strategy.client_ids:
        assert not np.array_equal(strategy.model(cid), init)
    assert strategy.rounds[-1].mean_accuracy > strategy.rounds[0].mean_accuracy


def test_the_affinity_is_the_sum_of_the_scores_and_concentrates_within_groups():
    # Execute
    strategy, _ = fl.run_federation(None, 4, m=3)

    # Assert: the matrix is its initial diagonal plus every score each client returned
    expected = np.diag(np.full(4, strategy.policy.self_affinity))
    for r in strategy.rounds:
        for client, ids in r.candidates.items():
            expected[client, ids] += r.scores[client]
    np.testing.assert_allclose(strategy.affinity_matrix, expected, rtol=0, atol=1e-12)
    a = strategy.affinity_matrix
    for i in range(4):
        mate = 2 if i in (0, 1) else -2
        others = [j for j in range(4) if j not in (i, i + mate)]
        assert a[i, i + mate] > max(a[i, j] for j in others), (i, a)


def test_runs_with_the_same_seed_are_identical_whatever_the_node_ids():
    a, _ = fl.run_federation(None, 3, nodes={5: 0, 6: 1, 7: 2, 8: 3})
    b, _ = fl.run_federation(None, 3, nodes={2**64 - 1: 3, 9: 2, 2**40: 1, 12345: 0})
    np.testing.assert_array_equal(a.affinity_matrix, b.affinity_matrix)
    for cid in a.client_ids:
        np.testing.assert_array_equal(a.model(cid), b.model(cid))
    assert [r.candidates for r in a.rounds] == [r.candidates for r in b.rounds]


def test_personalised_models_are_returned_in_the_result(clients_data):
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    strategy = FedFomo(m=2, seed=0)
    result = strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=2)
    assert sorted(result.arrays.keys()) == ["0", "1", "2", "3"]
    for cid in strategy.client_ids:
        np.testing.assert_array_equal(result.arrays[cid].numpy(), strategy.model(cid))
        record = strategy.model_record(cid)
        assert [tuple(a.shape) for a in record.values()] == [(64, 16), (16,), (16, 10), (10,)]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert result.train_metrics_clientapp[2]["num-clients"] == 4
    with pytest.raises(ValueError, match="evaluate_fn is not supported"):
        strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), evaluate_fn=lambda r, a: None)


# --- many clients: who is asked, who is evaluated, who is waited for ---------------------------------


@pytest.fixture(scope="module")
def twenty_clients():
    return fl.digits_clients(20, 4)[1]


def _kinds(grid) -> list:
    return [kind for kind, _ in grid.sent]


def test_a_round_asks_only_its_new_participants_for_their_client_id(twenty_clients):
    # Prepare: 20 nodes, 20% train per round
    grid = fl.LocalGrid(fl.sklearn_app(twenty_clients), {1000 + 7 * k: k for k in range(20)})
    strategy = FedFomo(m=2, seed=0, num_clients=20, fraction_train=0.2)

    # Execute
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=3)

    # Assert: the start costs the round's 4 participants, not the 20 nodes; every node is asked
    # once, and only the nodes that take part are asked at all
    assert _kinds(grid)[:5] == ["query"] * 4 + ["train"]
    queried = [node for kind, node in grid.sent if kind == "query"]
    trained = [node for kind, node in grid.sent if kind == "train"]
    assert len(queried) == len(set(queried)) and set(queried) == set(trained) and len(trained) == 12
    assert "evaluate" not in _kinds(grid)  # the clients that train evaluate in their train reply
    for r in strategy.rounds:
        assert len(r.scores) == 4 and sorted(r.accuracy) == sorted(r.scores) and r.failed == {}
    # after the first, no exchange of queries alone: a round's queries go with the round before
    assert grid.exchanges[0] == ["query"] * 4 and len(grid.exchanges) == 1 + 3
    assert all(kinds[:4] == ["train"] * 4 for kinds in grid.exchanges[1:])
    assert "query" not in grid.exchanges[-1]  # nothing drawn beyond the last round


def test_a_resumed_run_draws_the_nodes_the_uninterrupted_one_draws(twenty_clients, tmp_path):
    def run(state_dir, rounds, grid=None):
        grid = grid or fl.LocalGrid(fl.sklearn_app(twenty_clients), {1000 + 7 * k: k for k in range(20)})
        strategy = FedFomo(m=2, seed=0, num_clients=20, fraction_train=0.2, state_dir=state_dir)
        strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=rounds)
        return strategy, grid

    straight, _ = run(None, 4)
    _, grid = run(tmp_path, 2)
    resumed, _ = run(tmp_path, 4, grid)  # a new ServerApp, the same nodes (a SuperLink with a database)
    assert [r.candidates for r in resumed.rounds] == [r.candidates for r in straight.rounds]
    np.testing.assert_array_equal(resumed.affinity_matrix, straight.affinity_matrix)


def test_identify_all_makes_the_sampled_clients_independent_of_the_node_ids(twenty_clients):
    def run(offset: int) -> FedFomo:
        grid = fl.LocalGrid(fl.sklearn_app(twenty_clients), {offset - 3 * k: k for k in range(20)})
        strategy = FedFomo(m=2, seed=0, num_clients=20, fraction_train=0.2, identify_all=True)
        strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=2)
        assert _kinds(grid)[:21] == ["query"] * 20 + ["train"]  # every node, before round 1
        return strategy

    a, b = run(10**6), run(2**63)
    assert [r.candidates for r in a.rounds] == [r.candidates for r in b.rounds]
    np.testing.assert_array_equal(a.affinity_matrix, b.affinity_matrix)


@pytest.mark.parametrize("fraction_evaluate, folded, separate", [(0.1, 2, 0), (0.5, 4, 6)])
def test_evaluations_are_drawn_from_the_training_clients_first(twenty_clients, fraction_evaluate, folded, separate):
    grid = fl.LocalGrid(fl.sklearn_app(twenty_clients), {1000 + k: k for k in range(20)})
    strategy = FedFomo(m=2, seed=0, fraction_train=0.2, fraction_evaluate=fraction_evaluate)
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=2)
    for r in strategy.rounds:
        trained_and_evaluated = set(r.scores) & set(r.accuracy)
        assert len(r.scores) == 4 and len(trained_and_evaluated) == folded
        assert len(r.accuracy) == folded + separate and r.evaluate_failed == {}
    assert _kinds(grid).count("evaluate") == 2 * separate


def _start_in_a_thread(strategy, grid, rounds: int, deadline: float = 120.0) -> None:
    """Runs the strategy to ``rounds`` and fails if it has not returned within ``deadline``
    seconds (a stalled run, not a speed limit: a round takes well under a second here)."""
    import threading

    errors = []

    def run() -> None:
        try:
            strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=rounds)
        except Exception as e:  # reported in the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"the run stalled (rounds done: {[r.round for r in strategy.rounds]})"
    assert not errors, errors


def _one_round_then_lose_node_17(data, **options) -> tuple:
    """(strategy, grid) after round 1 of 4 clients, with client 1's node (17) gone."""
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    strategy = FedFomo(m=2, seed=0, num_clients=4, **options)
    _start_in_a_thread(strategy, grid, 1)
    del grid.nodes[17]
    return strategy, grid


def test_a_lost_node_stalls_no_round(clients_data):
    # Prepare: a round waits for all 4 nodes, for at most 0.3 s; client 1's node is lost for good
    strategy, grid = _one_round_then_lose_node_17(clients_data[1], min_available_nodes=4, node_wait_timeout=0.3)

    # Execute
    _start_in_a_thread(strategy, grid, 3)

    # Assert: rounds 2 and 3 went ahead with the 3 others
    for r in strategy.rounds[1:]:
        assert sorted(r.scores) == [0, 2, 3] and r.failed == {}


def test_a_round_below_its_minimum_waits_for_a_node_to_come_back(clients_data):
    # Prepare: 4 clients must train; client 1's node is gone and comes back after a second
    import threading

    strategy, grid = _one_round_then_lose_node_17(clients_data[1], min_train_nodes=4, node_wait_timeout=0.1)
    threading.Timer(1.0, grid.nodes.__setitem__, (99, 1)).start()

    # Execute
    _start_in_a_thread(strategy, grid, 2)

    # Assert: the round waited for it (the timeout does not go below the minimum)
    assert sorted(strategy.rounds[1].scores) == [0, 1, 2, 3]


def _measured_on_the_test_splits(data):
    """The server's own evaluation of a personalised model: here the server holds every
    client's test split (as a simulation does)."""
    from fomo_core.adapters.flower import load_model_record

    def measure(server_round: int, client_id: str, arrays: ArrayRecord) -> MetricRecord:
        d = data[int(client_id)]
        client = MLPClassifierClient(fl.estimator(0), (d.x_val, d.y_val), (d.x_train, d.y_train))
        load_model_record(client, arrays)
        _, accuracy = client.evaluate(client.get_flat()[None], (d.x_test, d.y_test))
        return MetricRecord({"accuracy": float(accuracy[0])})

    return measure


def test_one_lying_client_moves_the_measured_accuracy_by_at_most_a_point():
    # Prepare: 8 clients in 4 groups; client 3 trains honestly and then claims accuracy 1.0 and
    # 10**9 training examples. The aggregation function records the counts it is given.
    _, data = fl.digits_clients(8, 4)
    counts = []

    def run(app) -> tuple:
        strategy = FedFomo(
            m=2,
            seed=0,
            num_clients=8,
            train_metrics_aggr_fn=lambda contents, key: (
                counts.append([c["metrics"][key] for c in contents]) or MetricRecord({})
            ),
        )
        grid = fl.LocalGrid(app, {500 + k: k for k in range(8)})
        result = strategy.start(
            grid=grid,
            initial_arrays=model_record(fl.estimator(0)),
            num_rounds=2,
            evaluate_client_fn=_measured_on_the_test_splits(data),
        )
        return strategy, result

    # Execute
    honest, honest_result = run(fl.sklearn_app(data))
    lied, lied_result = run(fl.lying_app(data, liar=3))

    # Assert
    for h, x in zip(honest.rounds, lied.rounds):
        print(
            f"round {h.round}: mean of the reports {100 * h.mean_accuracy:.1f}% -> {100 * x.mean_accuracy:.1f}%, "
            f"median {100 * h.median_accuracy:.1f}% -> {100 * x.median_accuracy:.1f}%, measured by the server "
            f"{100 * h.server_accuracy:.1f}% -> {100 * x.server_accuracy:.1f}%"
        )
        assert x.accuracy[3] == 1.0 and x.mean_accuracy - h.mean_accuracy > 0.01  # the lie is real and shows
        others = sorted(v for k, v in x.accuracy.items() if k != 3)  # the honest reports of the run
        assert (others[2] + others[3]) / 2 <= x.median_accuracy <= (others[3] + others[4]) / 2  # one rank at most
        # The server's own measurement moves by at most a point: the liar's model is honest, and
        # its claimed count, capped at 10x the others' median, only reweighs its (honest)
        # contribution to the fomo-core preset's global model. Before the cap, the claim of 10**9
        # made that model the liar's alone.
        assert abs(x.server_accuracy - h.server_accuracy) <= 0.01
        assert x.server_metrics.keys() == h.server_metrics.keys()
    # the aggregation function saw the liar's count lowered to 10x the median of the others'
    honest_counts, lied_counts = counts[0], counts[2]
    others = sorted(c for k, c in enumerate(honest_counts) if k != 3)
    assert lied_counts[3] == int(10 * np.median(others)) < 10**9
    assert [c for k, c in enumerate(lied_counts) if k != 3] == [c for k, c in enumerate(honest_counts) if k != 3]


# --- stable client ids ------------------------------------------------------------------------------


def test_a_restarted_node_resumes_its_client_and_a_usurper_is_refused(clients_data):
    # Prepare: 2 rounds with client "1" on node 17
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    strategy = FedFomo(m=2, seed=0, num_clients=4)
    init = model_record(fl.estimator(0))
    strategy.start(grid=grid, initial_arrays=init, num_rounds=2)
    before = strategy.model("1")

    # Execute: node 17 restarts as node 99 (same partition), and node 555 claims partition 2 while
    # client 2's node is still connected
    del grid.nodes[17]
    grid.nodes[99] = 1
    grid.nodes[555] = 2
    sent = []
    grid.tamper = lambda node, message, reply: sent.append((node, message)) or reply
    strategy.start(grid=grid, initial_arrays=init, num_rounds=3)

    # Assert: node 99 got client 1's stored model (not the initial one); node 555 got nothing
    trained = {node: m for node, m in sent if m.metadata.message_type == MessageType.TRAIN}
    assert 555 not in trained and "already bound" in strategy.refused_nodes[555]
    np.testing.assert_array_equal(flat(trained[99].content["arrays"]), before)
    assert strategy.rounds[-1].failed == {} and sorted(strategy.rounds[-1].scores) == [0, 1, 2, 3]


def test_client_chosen_ids_are_bound_on_first_contact(clients_data):
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), {11: "alice", 12: "bob"})
    strategy = FedFomo(m=1, seed=0, num_clients=3)
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=2)
    assert strategy.client_ids == [None, "bob", "alice"]  # named ids fill from the top
    assert strategy.client_index("alice") == 2 and strategy.rounds[-1].failed == {}
    with pytest.raises(ValueError, match="not a client of this strategy"):
        strategy.client_index("carol")


# --- replies no client can break ----------------------------------------------------------------------


def _honest_train(node, message, reply, attacker) -> bool:
    """True for the attacker's (not yet failed) reply to a train message."""
    return node == attacker and message.metadata.message_type == MessageType.TRAIN and not reply.has_error()


def _set_metric(key, value):
    def tamper(content):
        content["metrics"][key] = value

    return tamper


def _npy(array: np.ndarray) -> bytes:
    buf = BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _set_array(build):
    def tamper(content):
        record = content["arrays"]
        key = next(iter(record.keys()))
        record[key] = build(record[key])

    return tamper


def _disguised(data: bytes, like: Array) -> Array:
    return Array(dtype=like.dtype, shape=tuple(like.shape), stype=like.stype, data=data)


def _nan_model(like: Array) -> Array:
    values = like.numpy().copy()
    values.flat[3] = np.nan
    return Array(values)


def _inf_model(like: Array) -> Array:
    values = like.numpy().copy()
    values.flat[0] = np.inf
    return Array(values)


def _extra_record(content):
    content["smuggled"] = ArrayRecord([np.zeros(1000, np.float32)])


def _another_client(content):
    content["config"]["client-id"] = "2"


ATTACKS = {
    "num-examples inf": (_set_metric("num-examples", float("inf")), "num-examples"),
    "num-examples negative": (_set_metric("num-examples", -5), "num-examples"),
    "num-examples huge": (_set_metric("num-examples", 2**62), "num-examples"),
    "candidate-clients not a list": (_set_metric("candidate-clients", 3), "candidate-clients"),
    "candidate-clients floats": (_set_metric("candidate-clients", [0.0, 2.7]), "candidate-clients"),
    "candidate-clients reordered": (
        lambda c: c["metrics"].__setitem__("candidate-clients", c["metrics"]["candidate-clients"][::-1]),
        "as sent",
    ),
    "eval-seconds a list": (_set_metric("eval-seconds", [1.0, 2.0]), "eval-seconds"),
    "train-seconds negative": (_set_metric("train-seconds", -1.0), "train-seconds"),
    "scores inf": (
        lambda c: c["metrics"].__setitem__("scores", [float("inf")] * len(c["metrics"]["scores"])),
        "scores",
    ),
    "scores too few": (_set_metric("scores", [0.5]), "scores"),
    "weights negative": (
        lambda c: c["metrics"].__setitem__("weights", [-0.5] * len(c["metrics"]["weights"])),
        "weights",
    ),
    "weights above one": (
        lambda c: c["metrics"].__setitem__("weights", [0.9] * len(c["metrics"]["weights"])),
        "weights",
    ),
    "accuracy NaN": (_set_metric("accuracy", float("nan")), "accuracy"),
    "accuracy 1e9": (_set_metric("accuracy", 1e9), "accuracy"),
    "loss NaN": (_set_metric("loss", float("nan")), "'loss'"),
    "loss negative": (_set_metric("loss", -1.0), "'loss'"),
    "self-score inf": (_set_metric("self-score", float("inf")), "self-score"),
    "another client's id": (_another_client, "sent to client '1'"),
    "no client id": (lambda c: c.__delitem__("config"), "client id"),
    "no metrics": (lambda c: c.__delitem__("metrics"), "MetricRecord"),
    "extra record": (_extra_record, "unexpected records"),
    "(7, 7) bytes labelled (64, 16)": (
        _set_array(lambda a: _disguised(_npy(np.ones((7, 7), np.float32)), a)),
        "holds a (7, 7)",
    ),
    "20 MB labelled (64, 16)": (_set_array(lambda a: _disguised(_npy(np.ones(5_000_000, np.float32)), a)), "bytes"),
    "truncated payload": (_set_array(lambda a: _disguised(a.data[:-8], a)), "payload bytes"),
    "trailing bytes": (_set_array(lambda a: _disguised(a.data + b"\0" * 8, a)), "payload bytes"),
    "big-endian float32": (_set_array(lambda a: _disguised(_npy(a.numpy().astype(">f4")), a)), "expected (64, 16)"),
    "object (pickled) array": (
        _set_array(lambda a: _disguised(_npy(np.array([None, 1], dtype=object)), a)),
        "object dtype",
    ),
    "not an npy file": (_set_array(lambda a: _disguised(b"garbage" * 100, a)), "bad magic"),
    "unknown stype": (
        _set_array(lambda a: Array(dtype=a.dtype, shape=tuple(a.shape), stype="torch.Tensor", data=a.data)),
        "stype",
    ),
    "float64 model": (_set_array(lambda a: Array(a.numpy().astype(np.float64))), "expected (64, 16) float32"),
    "NaN model": (_set_array(_nan_model), "NaN or infinite"),
    "inf model": (_set_array(_inf_model), "NaN or infinite"),
    "missing layer": (lambda c: c["arrays"].__delitem__("3"), "missing"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attacking_reply_is_recorded_and_changes_nothing(attack, clients_data):
    # Prepare: client "1" (node 17) attacks in round 2
    tamper, fragment = ATTACKS[attack]
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    strategy = FedFomo(m=2, seed=0)
    init = model_record(fl.estimator(0))
    strategy.start(grid=grid, initial_arrays=init, num_rounds=1)
    before_model, before_affinity = strategy.model("1"), strategy.affinity_matrix

    def attacker(node, message, reply):
        if _honest_train(node, message, reply, 17):
            tamper(reply.content)
        return reply

    grid.tamper = attacker

    # Execute: round 2 (must not raise)
    strategy.start(grid=grid, initial_arrays=init, num_rounds=2)

    # Assert: the reply was refused with its reason; the attacker's model and affinity row are as
    # before; everyone else's round went through; no aggregate became NaN
    r2 = strategy.rounds[1]
    assert list(r2.failed) == [1] and fragment in r2.failed[1], r2.failed
    assert sorted(r2.scores) == [0, 2, 3] and 1 not in r2.accuracy and np.isfinite(r2.mean_accuracy)
    # the refused reply's bytes are counted: received, though not used
    assert 0 < r2.bytes_rejected < r2.bytes_up
    if attack == "20 MB labelled (64, 16)":
        assert r2.bytes_rejected > 20e6
    np.testing.assert_array_equal(strategy.affinity_matrix[1], before_affinity[1])
    np.testing.assert_array_equal(strategy.model("1"), before_model)
    assert np.isfinite(strategy.affinity_matrix).all()

    # and the next honest round is whole again
    grid.tamper = None
    strategy.start(grid=grid, initial_arrays=init, num_rounds=3)
    assert strategy.rounds[2].failed == {} and not np.array_equal(strategy.model("1"), before_model)


def test_the_server_never_forwards_a_model_it_could_not_validate(clients_data):
    # Prepare: every reply of client 1 carries a NaN model
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    grid.tamper = lambda node, m, r: (_set_array(_nan_model)(r.content) or r) if _honest_train(node, m, r, 17) else r
    strategy = FedFomo(m=3, seed=0, epsilon=1.0)  # explore: every model gets sent around
    sent = []

    def spy(node, message, reply):
        sent.append(message)
        return grid_tamper(node, message, reply)

    grid_tamper, grid.tamper = grid.tamper, spy
    init = model_record(fl.estimator(0))

    # Execute
    strategy.start(grid=grid, initial_arrays=init, num_rounds=4)

    # Assert: client 1's slot still holds the initial model; every array sent was finite
    np.testing.assert_array_equal(strategy.model("1"), flat(init))
    for message in sent:
        for record in message.content.array_records.values():
            assert np.isfinite(flat(record)).all()
    assert all("NaN" in r.failed.get(1, "") for r in strategy.rounds)


def test_error_replies_from_the_superlink_and_silence_are_recorded_with_their_reason(clients_data):
    _, data = clients_data
    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    strategy = FedFomo(m=2, seed=0)
    init = model_record(fl.estimator(0))
    strategy.start(grid=grid, initial_arrays=init, num_rounds=1)
    grid.unavailable, grid.silent = {17}, {40}
    strategy.start(grid=grid, initial_arrays=init, num_rounds=2)
    failed = strategy.rounds[1].failed
    assert "Node Unavailable" in failed[1] and failed[3] == "no reply"
    assert sorted(strategy.rounds[1].scores) == [0, 2]


def test_a_client_app_that_raises_becomes_a_failed_reply(clients_data):
    _, data = clients_data

    def broken(context):
        raise RuntimeError("disk full")

    grid = fl.LocalGrid(fedfomo_client_app(broken), NODES)
    strategy = FedFomo(m=2, seed=0)
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=1)
    assert all("disk full" in reason for reason in strategy.rounds[0].failed.values())
    assert len(strategy.rounds[0].failed) == 4


def test_metric_aggregation_functions_see_only_validated_replies(clients_data):
    _, data = clients_data
    seen = {}

    def train_fn(contents, key):
        seen["train"] = (len(contents), key)
        return MetricRecord({"n": len(contents)})

    def evaluate_fn(contents, key):
        seen["evaluate"] = [c["metrics"]["accuracy"] for c in contents]
        return MetricRecord({"acc": float(np.mean(seen["evaluate"]))})

    grid = fl.LocalGrid(fl.sklearn_app(data), NODES)
    grid.tamper = lambda node, m, r: (
        (_set_metric("accuracy", float("nan"))(r.content) or r) if _honest_train(node, m, r, 40) else r
    )
    strategy = FedFomo(
        m=2,
        seed=0,
        train_metrics_aggr_fn=train_fn,
        evaluate_metrics_aggr_fn=evaluate_fn,
        weighted_by_key="num-eval-examples",
    )
    result = strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=1)
    assert seen["train"] == (3, "num-eval-examples") and len(seen["evaluate"]) == 3
    assert all(np.isfinite(seen["evaluate"]))
    assert result.train_metrics_clientapp[1]["n"] == 3


def test_custom_record_keys_work_end_to_end(clients_data):
    _, data = clients_data
    keys = dict(arrayrecord_key="weights", configrecord_key="cfg", metricrecord_key="stats")
    grid = fl.LocalGrid(fl.sklearn_app(data, **keys), NODES)
    strategy = FedFomo(m=2, seed=0, **keys)
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=2)
    assert strategy.rounds[-1].failed == {} and len(strategy.rounds[-1].accuracy) == 4


# --- fewer bytes ------------------------------------------------------------------------------------


def test_bfloat16_bits_round_to_nearest_even():
    from fomo_core.adapters._flower_layout import _from_bfloat16_bits, _to_bfloat16_bits

    x = np.array([1.0, -2.5, 3.14159, 1e-30, 65504.0, 1 + 2**-8, 1 + 3 * 2**-9, np.nan], dtype=np.float32)
    back = _from_bfloat16_bits(_to_bfloat16_bits(x))
    # reference: round the float64 value to 8 significant bits, ties to even
    for v, b in zip(x[:-1], back[:-1]):
        m, e = np.frexp(np.float64(v))
        assert b == np.float32(np.ldexp(np.round(m * 256) / 256, e)), (v, b)
    assert np.isnan(back[-1])


@pytest.mark.parametrize("transport, tolerance", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_16_bit_candidates_halve_the_candidate_bytes(transport, tolerance):
    full, _ = fl.run_federation(None, 3)
    half, _ = fl.run_federation(None, 3, candidate_dtype=transport)
    # round 2 sends each client its own model (float32), 2 candidates and the global model of the
    # fomo-core round (those 3 in the candidate dtype)
    p_bytes = 4 * initial_flat().size
    assert full.rounds[1].bytes_down >= 4 * 4 * p_bytes
    saved = full.rounds[1].bytes_down - half.rounds[1].bytes_down
    assert abs(saved - 4 * 3 * p_bytes / 2) < 4 * 3 * 400  # npy headers differ by a few bytes
    assert half.rounds[-1].failed == {}
    # the models stay close to the float32 run's (rounding only moves them by a few ulps of 16 bits)
    for cid in full.client_ids:
        diff = np.abs(full.model(cid) - half.model(cid)).max()
        assert diff < 50 * tolerance, (cid, diff)


def test_layout_round_trips_and_reads_each_transport():
    record = ArrayRecord(
        {"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "n": Array(np.array(7, dtype=np.int64))}
    )
    layout = ModelLayout.of(record)
    assert layout.size == 7 and layout.nbytes() == 6 * 4 + 8 and layout.nbytes("float16") == 14
    values = layout.flat_from_record(record, "r")
    np.testing.assert_array_equal(values, [0, 1, 2, 3, 4, 5, 7])
    for transport in ("float32", "float16", "bfloat16"):
        sent = layout.record(values, transport)
        assert sent["n"].dtype == "int64"  # integer buffers keep their dtype
        np.testing.assert_array_equal(layout.flat_from_record(sent, "r", transport=transport), values)
    with pytest.raises(ValueError, match=r"holds a \(2, 3\) float32 array, expected \(2, 3\) float16"):
        layout.flat_from_record(record, "r", transport="float16")


# --- checkpoint and resume ---------------------------------------------------------------------------


def _state(strategy):
    return strategy.affinity_matrix, {cid: strategy.model(cid) for cid in strategy.client_ids}


def test_a_resumed_strategy_continues_exactly_where_it_stopped(tmp_path):
    # Prepare: an uninterrupted run of 4 rounds
    straight, _ = fl.run_federation(None, 4)

    # Execute: 2 rounds, then a new strategy on the same folder runs rounds 3 and 4 (new node ids)
    first, _ = fl.run_federation(str(tmp_path), 2)
    second, grid = fl.run_federation(str(tmp_path), 4, nodes={71: 0, 72: 1, 73: 2, 74: 3})

    # Assert: identical state, the round count continued, only rounds 3 and 4 were run
    assert [r.round for r in second.rounds] == [1, 2, 3, 4]
    assert [k for k, _ in grid.sent].count("train") == 8
    a, models = _state(straight)
    b, resumed = _state(second)
    np.testing.assert_array_equal(a, b)
    for cid in models:
        np.testing.assert_array_equal(models[cid], resumed[cid])
    assert [r.candidates for r in straight.rounds] == [r.candidates for r in second.rounds]
    meta = json.loads((tmp_path / "strategy.json").read_text())
    assert meta["round"] == 4 and sorted(os.listdir(tmp_path)) == ["server-r000004.npz", "strategy.json"]


def test_a_disk_model_store_gives_the_same_federation_and_resumes(tmp_path):
    straight, _ = fl.run_federation(None, 4)
    fl.run_federation(str(tmp_path / "state"), 2, model_store=tmp_path / "models.npy")
    resumed, _ = fl.run_federation(str(tmp_path / "state"), 4, model_store=tmp_path / "models.npy")
    assert isinstance(resumed.state.models, ModelStore) and len(resumed.models_record()) == 0
    np.testing.assert_array_equal(resumed.affinity_matrix, straight.affinity_matrix)
    for cid in straight.client_ids:
        np.testing.assert_array_equal(resumed.model(cid), straight.model(cid))


def test_a_checkpoint_of_another_model_or_strategy_is_refused(tmp_path):
    fl.run_federation(str(tmp_path), 1)
    wide = fl.estimator(0)
    wide.coefs_[0] = np.zeros((64, 17))
    with pytest.raises(ValueError, match="another layout"):
        FedFomo(m=2, state_dir=tmp_path).initialise(
            ArrayRecord([np.zeros((64, 17), np.float32), np.zeros(17, np.float32)])
        )
    with pytest.raises(ValueError, match="was written with m=2"):
        FedFomo(m=3, state_dir=tmp_path).initialise(model_record(fl.estimator(0)))


def _rewrite(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


CORRUPT_CHECKPOINTS = {
    "truncated": (lambda p: p.write_text(p.read_text()[:-40]), "not a readable"),
    "a list": (lambda p: p.write_text("[1, 2]"), "format"),
    "server outside the folder": (lambda p: _rewrite(p, lambda m: m.update(server="../../x.npz")), "'server'"),
    "round negative": (lambda p: _rewrite(p, lambda m: m.update(round=-7)), "'round'"),
    "round of another state": (lambda p: _rewrite(p, lambda m: m.update(round=5)), "at round 5"),
    "a client twice": (lambda p: _rewrite(p, lambda m: m.update(client_ids=["0", "0", "2", "3"])), "twice"),
    "a client id not text": (lambda p: _rewrite(p, lambda m: m.update(client_ids=[[0], "1", "2", "3"])), "client_ids"),
    "fewer clients": (lambda p: _rewrite(p, lambda m: m.update(client_ids=["0", "1"], nodes={})), "names 2 clients"),
    "a node of no client": (lambda p: _rewrite(p, lambda m: m["nodes"].update({"17": 9})), "'nodes'"),
    "an unknown round field": (lambda p: _rewrite(p, lambda m: m["rounds"][0].update(evil=1)), "'rounds'"),
}


@pytest.mark.parametrize("corruption", list(CORRUPT_CHECKPOINTS))
def test_a_corrupt_checkpoint_is_refused_with_the_file_and_entry_named(tmp_path, corruption):
    fl.run_federation(str(tmp_path), 1)
    damage, fragment = CORRUPT_CHECKPOINTS[corruption]
    damage(tmp_path / "strategy.json")
    with pytest.raises(ValueError, match="strategy.json") as error:
        FedFomo(m=2, state_dir=tmp_path).initialise(model_record(fl.estimator(0)))
    assert fragment in str(error.value)


def test_a_resumed_server_knows_the_nodes_it_had_bound(tmp_path):
    # Prepare: 2 rounds; the ServerApp restarts on the same folder, the SuperNodes stay
    strategy, grid = fl.run_federation(str(tmp_path), 2)
    grid.sent.clear()

    # Execute: a new strategy on the same grid runs round 3
    resumed = FedFomo(m=2, seed=0, num_clients=4, state_dir=tmp_path)
    resumed.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=3)

    # Assert: no node was asked for its client id again
    assert _kinds(grid) == ["train"] * 4 and resumed.rounds[-1].failed == {}


def test_a_killed_server_resumes_from_its_last_checkpoint(tmp_path):
    # Prepare: the reference, uninterrupted
    straight, _ = fl.run_federation(None, 4)
    script = Path(__file__).resolve().parents[1] / "flower_local.py"

    # Execute: a server process killed (SIGKILL) once round 2's checkpoint exists, then resumed here
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((tmp_path / "strategy.json").read_text())["round"] >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stopped_at = json.loads((tmp_path / "strategy.json").read_text())["round"]
    resumed, grid = fl.run_federation(str(tmp_path), 4)

    # Assert: it had not finished, and the resumed run ends in the uninterrupted run's state
    assert 2 <= stopped_at < 4  # rounds completed
    assert [k for k, _ in grid.sent].count("train") == 4 * (4 - stopped_at)
    a, models = _state(straight)
    b, got = _state(resumed)
    np.testing.assert_array_equal(a, b)
    for cid in models:
        np.testing.assert_array_equal(models[cid], got[cid])


# --- the ClientApp handlers ---------------------------------------------------------------------------


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def torch_client(d, seed: int = 0) -> FedFomoClient:
    return FedFomoClient(
        mlp(seed),
        (torch.tensor(d.x_val), torch.tensor(d.y_val)),
        (torch.tensor(d.x_train), torch.tensor(d.y_train)),
        epochs=1,
        lr=0.1,
        batch_size=32,
        seed=seed,
    )


def train_message(model: ArrayRecord, candidates: list, ids: list, **config) -> Message:
    content = RecordDict({"arrays": model})
    for k, c in enumerate(candidates):
        content[f"candidate.{k}"] = c
    content["config"] = ConfigRecord(
        {"server-round": 2, "client-id": "0", "candidate-clients": ids, "norm": "l2", "eps": 0.0, **config}
    )
    message = Message(content, dst_node_id=17, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def test_torch_train_handler_is_the_fedfomo_client_round(clients_data):
    # Prepare: peers' models from clients of both groups
    _, data = clients_data
    peers = [torch_client(data[s], seed=s) for s in (1, 2)]
    for peer in peers:
        peer.train()
    peers = [p.module for p in peers]
    own = mlp(0)
    via_flower, direct = torch_client(data[0]), torch_client(data[0])
    direct.module.load_state_dict(own.state_dict())
    test = (torch.tensor(data[0].x_test), torch.tensor(data[0].y_test))
    message = train_message(model_record(own), [model_record(p) for p in peers], [5, 9], evaluate=True)

    # Execute
    answer = fedfomo_train(message, via_flower, client_id="0", test_data=test)
    expected = direct.round([p.state_dict() for p in peers])
    ev = evaluate_module(direct.module, [direct.module.state_dict()], test)

    # Assert: the same round, bit for bit, and the reply carries it and the new model's evaluation
    metrics = answer.content["metrics"]
    assert metrics["candidate-clients"] == [5, 9] and answer.content["config"]["client-id"] == "0"
    assert metrics["scores"] == expected.scores.tolist() and metrics["weights"] == expected.weights.tolist()
    assert metrics["num-examples"] == len(data[0].y_train)
    assert metrics["accuracy"] == float(ev.accuracy[0]) and metrics["loss"] == float(ev.loss[0])
    assert metrics["num-eval-examples"] == len(data[0].y_test)
    returned = answer.content["arrays"].to_torch_state_dict()
    for name, t in direct.module.state_dict().items():
        assert torch.equal(returned[name], t)


def test_dict_batches_as_flwr_datasets_gives_them(clients_data):
    from torch.utils.data import DataLoader

    from fomo_core.adapters.flower import DictBatches

    # Prepare: the same client on (X, y) tensors and on a DataLoader of {"img", "label"} dicts
    _, data = clients_data
    d = data[0]

    def rows(x, y):
        return [{"img": torch.tensor(a), "label": torch.tensor(b)} for a, b in zip(x, y)]

    val = DictBatches(DataLoader(rows(d.x_val, d.y_val), batch_size=len(d.y_val)))
    train = DictBatches(DataLoader(rows(d.x_train, d.y_train), batch_size=32))
    peer = torch_client(data[1], seed=1)
    peer.train()
    pairs = FedFomoClient(mlp(0), (torch.tensor(d.x_val), torch.tensor(d.y_val)), train_fn=lambda m: None)
    dicts = FedFomoClient(mlp(0), val, train, epochs=1, lr=0.1)
    message = train_message(model_record(mlp(0)), [model_record(peer.module)], [1], evaluate=True)

    # Execute
    reply = fedfomo_train(message, dicts, client_id="0", test_data=val)
    expected = pairs.update([peer.module.state_dict()])

    # Assert: the same scores, the training ran on dict batches, the sizes are the datasets'
    metrics = reply.content["metrics"]
    np.testing.assert_allclose(metrics["scores"], expected.scores.tolist(), rtol=1e-6)
    assert metrics["num-examples"] == len(d.y_train) and metrics["num-eval-examples"] == len(d.y_val)
    assert not np.array_equal(flat(reply.content["arrays"]), flat(model_record(mlp(0))))
    with pytest.raises(ValueError, match="batch 0 has no 'x' and 'label' entries"):
        list(DictBatches([{"img": 1, "label": 2}], "x"))


def test_pfllib_baseline_lives_in_the_node_state_between_messages(clients_data):
    # Prepare: PFLlib measures from the model after the last federated update, before training; a
    # deterministic "training" (shrink the weights) makes the difference visible
    _, data = clients_data
    d = data[0]

    def shrink(module):
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(0.9)

    def client():
        return FedFomoClient(mlp(0), (torch.tensor(d.x_val), torch.tensor(d.y_val)), train_fn=shrink, preset="pfllib")

    peers = []
    for s in (1, 2, 3):  # trained models: they help, so the baseline decides how far each moves
        peer = torch_client(data[2], seed=s)
        peer.train()
        peers.append(model_record(peer.module))
    direct, state = client(), RecordDict()

    # Execute: two rounds directly, and two train messages to freshly built clients sharing a state
    direct.round([peers[0].to_torch_state_dict(), peers[1].to_torch_state_dict()])
    direct.round([peers[1].to_torch_state_dict(), peers[2].to_torch_state_dict()])
    first = fedfomo_train(train_message(model_record(mlp(0)), peers[:2], [1, 2]), client(), client_id="0", state=state)
    second = fedfomo_train(
        train_message(first.content["arrays"], peers[1:], [2, 3]), client(), client_id="0", state=state
    )
    stateless = fedfomo_train(train_message(first.content["arrays"], peers[1:], [2, 3]), client(), client_id="0")

    # Assert: the direct rounds, to 1e-6 (1.2e-7, one float32 ulp at these magnitudes, was measured:
    # the arrays' round trip through the messages is exact, the last-ulp difference is not traced
    # yet); without the state the baseline, and so the model, differs far more
    assert max(second.content["metrics"]["weights"]) > 0
    got, want = flat(second.content["arrays"]), flat(model_record(direct.module))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(flat(stateless.content["arrays"]) - got).max() > 1e-3


def test_sklearn_train_handler_reads_16_bit_candidates(clients_data):
    _, data = clients_data

    def client(seed: int) -> MLPClassifierClient:
        d = data[seed % 4]
        return MLPClassifierClient(fl.estimator(seed), (d.x_val, d.y_val), (d.x_train, d.y_train))

    peers = [client(s) for s in (1, 2)]
    for p in peers:
        p.train()
    via_flower, direct = client(0), client(0)
    layout = ModelLayout.of(model_record(direct))
    sent = [layout.record(p.get_flat(), "float16") for p in peers]
    message = train_message(model_record(direct), sent, [1, 2], norm="l1", eps=1e-5, **{"candidate-dtype": "float16"})

    answer = fedfomo_train(message, via_flower, client_id="0")
    direct.policy = direct.policy.replace(norm="l1", eps=1e-5)
    expected = direct.round(np.stack([p.get_flat().astype(np.float16).astype(np.float32) for p in peers]))

    metrics = answer.content["metrics"]
    assert metrics["scores"] == expected.scores.tolist() and "loss" not in metrics
    np.testing.assert_array_equal(flat(answer.content["arrays"]), direct.get_flat())


def test_evaluate_handler_measures_the_model_it_was_sent(clients_data):
    _, data = clients_data
    d = data[1]
    client, sent = torch_client(d), mlp(4)
    test = (torch.tensor(d.x_test), torch.tensor(d.y_test))
    message = Message(
        RecordDict({"arrays": model_record(sent), "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=17,
        message_type=MessageType.EVALUATE,
    )
    message.metadata.__dict__["_message_id"] = "m2"

    reply = fedfomo_evaluate(message, client, client_id="1", data=test)

    ev = evaluate_module(sent, [sent.state_dict()], test)
    metrics = reply.content["metrics"]
    assert metrics["accuracy"] == float(ev.accuracy[0]) and metrics["loss"] == float(ev.loss[0])
    assert metrics["num-eval-examples"] == len(d.y_test) and reply.content["config"]["client-id"] == "1"


def test_handlers_refuse_models_that_do_not_fit_the_client(clients_data):
    _, data = clients_data
    client = torch_client(data[0])
    wide = nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    good = model_record(mlp(1))
    with pytest.raises(
        ValueError, match=r"candidate 1\['0.weight'\] holds a \(20, 64\) float32 array, expected \(16, 64\)"
    ):
        fedfomo_train(train_message(good, [good, model_record(wide)], [1, 2]), client, client_id="0")
    with pytest.raises(ValueError, match="must hold 2 candidate ArrayRecords"):
        fedfomo_train(train_message(good, [good], [1, 2]), client, client_id="0")
    with pytest.raises(TypeError, match="client must be a fomo_core.adapters.torch.FedFomoClient, a"):
        fedfomo_train(train_message(good, [], []), object(), client_id="0")


def test_model_record_and_client_app_arguments():
    est = initialise_mlp(MLPClassifier(hidden_layer_sizes=(5,)), np.zeros((1, 4)), np.zeros(1, int), [0, 1, 2])
    assert [tuple(a.shape) for a in model_record(est).values()] == [(4, 5), (5,), (5, 3), (3,)]
    assert list(model_record(mlp()).keys()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(TypeError, match="with parameters"):
        model_record(MLPClassifier())
    with pytest.raises(TypeError, match="client_fn must be callable"):
        fedfomo_client_app(None)
    with pytest.raises(TypeError, match="test_data_fn must be callable"):
        fedfomo_client_app(lambda ctx: None, test_data_fn=3)
    with pytest.raises(TypeError, match="client_id_fn must be callable"):
        fedfomo_client_app(lambda ctx: None, client_id_fn="x")
    assert RecordKeys().arrays == "arrays"


def test_a_node_without_a_stable_id_is_never_bound(clients_data):
    _, data = clients_data
    app = fl.sklearn_app(data)
    grid = fl.LocalGrid(app, NODES)
    grid.context = lambda node: Context(run_id=7, node_id=node, node_config={}, state=RecordDict(), run_config={})
    strategy = FedFomo(m=2, seed=0, min_available_nodes=0, min_train_nodes=0, min_evaluate_nodes=0)
    strategy.start(grid=grid, initial_arrays=model_record(fl.estimator(0)), num_rounds=1)
    assert strategy.rounds == [] or strategy.rounds[0].scores == {}
    assert [k for k, _ in grid.sent] == ["query"] * 4


class SoftmaxClient:
    """A client of the user's own making: softmax regression in NumPy, its own loss and training,
    FedFomo's weighing and update from fomo_core.round.federate. What the Flower adapter needs is
    the interface (get_flat, set_flat, round, evaluate, train_data, val_data)."""

    def __init__(self, d):
        from fomo_core.presets import get_preset

        self.policy = get_preset("fomo-core").client
        self.params = np.zeros(65 * 10, np.float32)
        self.train_data, self.val_data = (d.x_train, d.y_train), (d.x_val, d.y_val)

    def get_flat(self):
        return self.params.copy()

    def set_flat(self, flat):
        self.params[...] = flat

    def evaluate(self, models, data=None):
        x, y = self.val_data if data is None else data
        losses, accs = [], []
        for flat in np.asarray(models, dtype=np.float64):
            logits = x @ flat[:640].reshape(64, 10) + flat[640:]
            logits -= logits.max(1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
            losses.append(-logp[np.arange(len(y)), y].mean())
            accs.append((logits.argmax(1) == y).mean())
        return np.array(losses), np.array(accs)

    def round(self, candidates):
        from fomo_core.round import federate

        result = federate(self.policy, self.params, candidates, lambda ms: self.evaluate(np.stack(ms)), copy=np.copyto)
        x, y = self.train_data
        for _ in range(20):  # plain gradient descent on the cross-entropy
            w = self.params[:640].reshape(64, 10)
            logits = x @ w + self.params[640:]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            self.params[:640] -= 0.5 * (x.T @ p / len(y)).ravel()
            self.params[640:] -= 0.5 * p.mean(0)
        return result


def test_a_client_of_the_users_own_making_federates(clients_data):
    _, data = clients_data

    def client_fn(context):
        return SoftmaxClient(data[int(context.node_config["partition-id"])])

    def test_data_fn(context):
        d = data[int(context.node_config["partition-id"])]
        return d.x_test, d.y_test

    grid = fl.LocalGrid(fedfomo_client_app(client_fn, test_data_fn=test_data_fn), NODES)
    strategy = FedFomo(m=2, seed=0)
    initial = model_record(SoftmaxClient(data[0]))
    assert list(initial.keys()) == ["flat"]
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=3)
    assert all(r.failed == {} and len(r.accuracy) == 4 for r in strategy.rounds)
    assert strategy.rounds[-1].mean_accuracy > 0.8
    assert any(max(w) > 0 for w in strategy.rounds[-1].weights.values())  # candidates were weighed


# --- the Flower App in examples/flower-app, in this process ----------------------------------------


@pytest.mark.parametrize("framework, strategy", [("sklearn", "fedfomo"), ("torch", "fedfomo"), ("sklearn", "fedavg")])
def test_the_example_app_runs_in_process(framework, strategy, tmp_path, monkeypatch):
    import tomllib

    app_dir = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
    monkeypatch.syspath_prepend(str(app_dir))
    from fedfomo_app import client_app, server_app

    config = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config.update(
        {
            "num-server-rounds": 2,
            "num-clients": 4,
            "num-groups": 2,
            "strategy": strategy,
            "framework": framework,
            "state-dir": str(tmp_path),
            "candidate-dtype": "bfloat16",
        }
    )
    grid = fl.LocalGrid(client_app.app, {101: 0, 102: 1, 103: 2, 104: 3}, run_config=config)
    server_app.main(grid, Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=config))
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(0 < r["mean_accuracy"] <= 1 and r["seconds"] > 0 for r in results["rounds"])
    if strategy == "fedfomo":
        assert [r["failed"] for r in results["rounds"]] == [{}, {}]
        assert all(len(r["accuracy"]) == 4 for r in results["rounds"]) and results["groups"] == [0, 1, 0, 1]
        # the server measured every updated model itself, on the same test splits the clients use
        for r in results["rounds"]:
            measured = {k: m["accuracy"] for k, m in r["server_metrics"].items()}
            assert measured == pytest.approx(r["accuracy"], abs=1e-6)
    else:  # FedAvg's messages: train and evaluate, one each per client per round
        assert [k for k, _ in grid.sent] == (["train"] * 4 + ["evaluate"] * 4) * 2


def test_the_example_partition_gives_every_client_data_at_any_size(monkeypatch):
    app_dir = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
    monkeypatch.syspath_prepend(str(app_dir))
    from fedfomo_app.task import partition

    with pytest.raises(ValueError, match="set samples-per-client"):
        partition(500, 3, 0)  # the digits dealt once: 3.6 samples per client
    groups, data = partition(1000, 3, 0, 60)
    assert groups.tolist() == [k % 3 for k in range(1000)]
    for d in data[:50]:
        assert d.y_train.size + d.y_val.size + d.y_test.size == 60
        assert min(d.y_train.size, d.y_val.size, d.y_test.size) > 0
    # clients of a group hold that group's classes only, and two groups share none
    classes = [set(np.concatenate([d.y_train, d.y_val, d.y_test]).tolist()) for d in data[:3]]
    assert not (classes[0] & classes[1]) and not (classes[1] & classes[2]) and not (classes[0] & classes[2])
    assert all(set(np.concatenate([d.y_train, d.y_test]).tolist()) <= classes[k % 3] for k, d in enumerate(data[:30]))


def test_the_strategy_equals_a_hand_driven_loop_of_the_shared_server_and_client_round(clients_data):
    # Execute: Flower's path (messages, validation, the ClientApp) ...
    strategy, _ = fl.run_federation(None, 3)

    # ... and the same federation driven by hand with fomo_core.Server and the client round. A
    # ClientApp is rebuilt for every message, from the model the server sends: so are these.
    _, data = clients_data
    init = initial_flat()

    def client(k: int, flat: np.ndarray) -> MLPClassifierClient:
        d = data[k]
        c = MLPClassifierClient(fl.estimator(k), (d.x_val, d.y_val), (d.x_train, d.y_train), epochs=1)
        c.set_flat(flat)
        return c

    server = fc.Server(4, init, preset="fomo-core", m=2, seed=0)
    for record in strategy.rounds:
        for i in record.candidates:  # the strategy's visiting order: the same random draws
            ids, cands = server.candidates(i)
            assert ids.tolist() == record.candidates[i]
            c = client(i, np.array(server.model(i)))
            res = c.round(cands, global_params=server.global_params())
            server.receive(
                i,
                c.get_flat(),
                ids,
                res.scores,
                self_score=res.self_score,
                global_update=res.global_update,
                num_examples=len(data[i].y_train),
            )
        server.end_round()

    # Assert
    np.testing.assert_array_equal(strategy.affinity_matrix, server.affinity.matrix)
    for k, cid in enumerate(strategy.client_ids):
        np.testing.assert_array_equal(strategy.model(cid), server.model(k))
    # the fomo-core round's global model travelled both ways and moved alike
    np.testing.assert_array_equal(strategy.state.global_params(), server.global_params())
    assert not np.array_equal(server.global_params(), init)


def test_a_claimed_count_is_capped_at_ratio_times_the_median_of_the_others():
    from fomo_core.adapters._flower_records import capped

    assert capped([10, 12, 11, 10**9], 10.0) == [10, 12, 11, 110.0]  # others' median 11
    assert capped([5, 10**9], 2.0) == [5, 10.0] and capped([10**9], 2.0) == [10**9]  # alone: nothing to compare
