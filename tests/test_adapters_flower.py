"""fomo_core.adapters.flower: the FedFomo strategy and the ClientApp handlers.

Fast tests build Flower Messages by hand (as a ServerApp and a ClientApp would) around real torch
models and scikit-learn estimators; one real Flower simulation on Ray (4 clients in 2 latent
groups of the digits, 3 rounds) checks the whole federation end to end.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings

# read once when flwr is imported: no usage reports from test runs
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from sklearn.neural_network import MLPClassifier
from torch import nn

import fomo_core as fc
from fomo_core.adapters.flower import FedFomo, fedfomo_client_app, fedfomo_evaluate, fedfomo_train, model_record
from fomo_core.adapters.numpy import MLPClassifierClient, initialise_mlp
from fomo_core.adapters.torch import FedFomoClient, evaluate_candidates
from fomo_core.simulate.data import load_digits, split_clients
from fomo_core.simulate.partition import latent_groups

# Flower node ids are unsigned 64-bit: some do not fit a signed int64
NODES = [2**64 - 5, 17, 2**63 + 3, 40]  # dense client indices follow node-id order: 17, 40, 2^63+3, 2^64-5


@pytest.fixture
def in_a_run():
    """Flower >= 1.4x stamps every new Message with the identity of the running task, which the
    ServerApp runtime sets; outside a run the tests set one the same way and put back what was."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # earlier Flower: messages need no task identity
        yield
        return
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clients_data():
    """4 clients in 2 latent groups of the digits (the simulator's partition and splits)."""
    rng = np.random.default_rng(0)
    digits = load_digits()
    partition = latent_groups(digits.y, 4, 2, rng)
    return partition, split_clients(digits, partition, rng, val_fraction=0.2, test_fraction=0.3)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def torch_client(d, seed: int = 0) -> FedFomoClient:
    return FedFomoClient(mlp(seed), (torch.tensor(d.x_val), torch.tensor(d.y_val)),
                         (torch.tensor(d.x_train), torch.tensor(d.y_train)), epochs=1, lr=0.1, batch_size=32, seed=seed)


def record_of(value: float) -> ArrayRecord:
    """A small model whose every entry is ``value`` (to recognise it at the other end)."""
    return ArrayRecord([np.full((2, 3), value, np.float32), np.full(3, value, np.float32)])


def values(record: ArrayRecord) -> set:
    return {float(v) for a in record.to_numpy_ndarrays() for v in a.ravel()}


def reply(instruction: Message, model: ArrayRecord, scores: list, **overrides) -> Message:
    """A client's train reply as the protocol defines it, echoing the candidates it was sent."""
    ids = list(instruction.content["config"]["candidate-clients"])
    metrics = {
        "num-examples": 10, "candidate-clients": ids, "scores": [float(s) for s in scores],
        "weights": [0.0] * len(ids), "candidate-losses": [1.0] * len(ids), "baseline-loss": 2.0,
        "eval-seconds": 0.0, "step-seconds": 0.0, "train-seconds": 0.0,
    }
    metrics.update(overrides)
    return Message(RecordDict({"arrays": model, "metrics": MetricRecord(metrics)}), reply_to=instruction)


def by_client(strategy: FedFomo, messages: list) -> dict:
    return {strategy.client_index(m.metadata.dst_node_id): m for m in messages}


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        (dict(m=0), ValueError, "m must be an integer >= 1, got 0"),
        (dict(m=2.0), TypeError, "m must be an integer, got float"),
        (dict(preset="fedavg"), ValueError, "unknown preset 'fedavg'"),
        (dict(preset=3), TypeError, "preset must be a preset name or a fomo_core.Preset, got int"),
        (dict(epsilon=1.5), ValueError, "epsilon must be a finite number in [0.0, 1.0], got 1.5"),
        (dict(epsilon_decay=-0.1), ValueError, "epsilon_decay must be a finite number in [0.0, inf]"),
        (dict(epsilon_decay="fast"), TypeError, "epsilon_decay must be a real number, got str"),
        (dict(preset="pfllib", epsilon=0.2), ValueError, "preset 'pfllib' selects by 'top_m'"),
        (dict(fraction_train=1.5), ValueError, "fraction_train must be a number in [0, 1], got 1.5"),
        (dict(fraction_evaluate="all"), TypeError, "fraction_evaluate must be a number in [0, 1], got str"),
        (dict(min_train_nodes=-1), ValueError, "min_train_nodes must be an integer >= 0, got -1"),
        (dict(min_available_nodes=True), TypeError, "min_available_nodes must be an integer, got bool"),
        (dict(num_clients=0), ValueError, "num_clients must be an integer >= 1, got 0"),
        (dict(seed="zero"), TypeError, "seed must be an integer or None, got str"),
        (dict(affinity_history=1), TypeError, "affinity_history must be a bool, got int"),
    ],
)
def test_bad_options_are_refused_with_the_argument_named(options, error, fragment):
    # Execute / Assert
    with pytest.raises(error) as info:
        FedFomo(**options)
    assert fragment in str(info.value)


def test_the_preset_sets_the_server_choices_and_the_clients_step_options():
    # Prepare
    strategy = FedFomo(preset="paper", m=2, seed=0, num_clients=3)

    # Execute
    strategy.register(NODES[:3])

    # Assert: the Affinity is the preset's (normalised updates, own model always first)
    assert strategy.affinity.options() == fc.Affinity.from_preset("paper", 3).options()
    assert strategy.preset.client.norm == "l1"


# --- node ids and dense client indices -----------------------------------------------------------


def test_nodes_get_dense_indices_in_node_id_order_and_the_affinity_their_number():
    # Prepare
    strategy = FedFomo(seed=0)

    # Execute
    known = strategy.register(NODES)

    # Assert
    assert strategy.node_ids == sorted(NODES)
    assert [strategy.client_index(n) for n in sorted(NODES)] == [0, 1, 2, 3]
    assert known == NODES and strategy.affinity.num_clients == 4
    with pytest.raises(ValueError, match="node_id 5 is not a client of this strategy"):
        strategy.client_index(5)


def test_nodes_beyond_num_clients_are_never_sampled():
    # Prepare
    strategy = FedFomo(seed=0, num_clients=2)
    strategy.register([40, 17])

    # Execute
    known = strategy.register([99, 17, 3])

    # Assert: indices are not reused; 99 and 3 came too late for the 2-client matrix
    assert strategy.node_ids == [17, 40] and known == [17]


def test_nodes_joining_later_grow_the_affinity_without_a_cap():
    # Prepare
    strategy = FedFomo(seed=0)
    strategy.register([40, 17])
    strategy.affinity.update(0, [1], [2.5])

    # Execute
    known = strategy.register([99, 17, 3])

    # Assert: the newcomers get the next indices, the learned entry survives, the new ones start fresh
    assert strategy.node_ids == [17, 40, 3, 99] and known == [99, 17, 3]
    assert strategy.affinity.num_clients == 4
    expected = fc.Affinity.from_preset(strategy.preset, 4).matrix
    expected[0, 1] = strategy.affinity.matrix[0, 1]
    np.testing.assert_array_equal(strategy.affinity.matrix, expected)
    assert strategy.affinity.matrix[0, 1] != fc.Affinity.from_preset(strategy.preset, 4).matrix[0, 1]


# --- train: configure and aggregate on hand-made messages -----------------------------------------


def test_first_round_sends_every_client_the_initial_model_and_no_candidates(in_a_run):
    # Prepare
    strategy = FedFomo(m=2, seed=0)
    initial = record_of(0.5)

    # Execute
    messages = strategy.train_messages(1, initial, ConfigRecord({"lr": 0.1}), NODES)

    # Assert: nobody has uploaded a model yet, so nobody has a candidate
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(NODES)
    for m in messages:
        config = m.content["config"]
        assert m.metadata.message_type == MessageType.TRAIN and m.metadata.group_id == "1"
        assert values(m.content["arrays"]) == {0.5}
        assert config["candidate-clients"] == [] and config["server-round"] == 1 and config["lr"] == 0.1
        assert config["client"] == strategy.client_index(m.metadata.dst_node_id)
        assert [k for k in m.content if k.startswith("candidate.")] == []
    assert strategy.rounds[0].candidates == {0: [], 1: [], 2: [], 3: []}


def uploaded_strategy(**options) -> FedFomo:
    """A strategy after round 1 in which client c uploaded a model full of 10 + c."""
    strategy = FedFomo(**{"m": 2, "seed": 0, **options})
    messages = strategy.train_messages(1, record_of(0.5), ConfigRecord(), NODES)
    strategy.aggregate_train(1, [reply(m, record_of(10.0 + c), []) for c, m in by_client(strategy, messages).items()])
    return strategy


def test_each_client_gets_its_own_model_and_the_top_m_of_its_affinity_row(in_a_run):
    # Prepare: client 0 ranks 3 over 2 over 1; client 1 ranks 0 over 3 over 2 (epsilon 0: no exploration)
    strategy = uploaded_strategy(epsilon=0.0)
    strategy.affinity.matrix[0, [1, 2, 3]] = [0.1, 0.5, 0.9]
    strategy.affinity.matrix[1, [0, 2, 3]] = [0.8, -1.0, 0.2]

    # Execute
    sent = by_client(strategy, strategy.train_messages(2, record_of(0.5), ConfigRecord(), NODES))

    # Assert: the candidates, in rank order, are the other clients' uploaded models
    for client, expected in ((0, [3, 2]), (1, [0, 3])):
        content = sent[client].content
        assert content["config"]["candidate-clients"] == expected
        assert values(content["arrays"]) == {10.0 + client}
        assert [values(content[f"candidate.{k}"]) for k in range(2)] == [{10.0 + c} for c in expected]
        assert content["config"]["norm"] == "l2" and content["config"]["eps"] == 0.0
    # nobody is its own candidate under the default preset
    assert all(c not in ids for c, ids in strategy.rounds[1].candidates.items())


def test_scores_go_into_the_affinity_row_of_the_client_that_sent_them(in_a_run):
    # Prepare
    strategy = uploaded_strategy(epsilon=0.0)
    before = strategy.affinity_matrix
    sent = by_client(strategy, strategy.train_messages(2, record_of(0.5), ConfigRecord(), NODES))
    scores = {c: [0.25 * (c + 1), -1.0] for c in sent}

    # Execute
    arrays, metrics = strategy.aggregate_train(2, [reply(m, record_of(20.0 + c), scores[c]) for c, m in sent.items()])

    # Assert: A[i, n] += s_n for the candidates sent to i, nothing else moves
    expected = before.copy()
    for c, m in sent.items():
        expected[c, m.content["config"]["candidate-clients"]] += scores[c]
    np.testing.assert_array_equal(strategy.affinity_matrix, expected)
    np.testing.assert_array_equal(strategy.rounds[1].affinity, expected)
    assert {c: values(r) for c, r in strategy.models.items()} == {c: {20.0 + c} for c in range(4)}
    assert strategy.rounds[1].scores == scores and strategy.rounds[1].failed == {}
    assert arrays is None  # no global model
    assert metrics["num-clients"] == 4 and metrics["baseline-loss"] == 2.0 and metrics["candidates"] == 2.0


def test_without_affinity_history_the_rounds_keep_no_matrix(in_a_run):
    # Prepare / Execute
    strategy = uploaded_strategy(affinity_history=False)

    # Assert
    assert strategy.rounds[0].affinity is None and strategy.affinity_matrix.shape == (4, 4)


def test_bad_replies_are_recorded_and_change_nothing(in_a_run):
    # Prepare
    strategy = uploaded_strategy(epsilon=0.0)
    before = strategy.affinity_matrix
    sent = by_client(strategy, strategy.train_messages(2, record_of(0.5), ConfigRecord(), NODES))
    replies = [
        Message(Error(code=0, reason="client crashed"), reply_to=sent[0]),
        reply(sent[1], record_of(21.0), [1.0, 1.0], **{"candidate-clients": [3, 2, 0]}),  # not what it was sent
        reply(sent[2], record_of(22.0), [1.0]),  # one score for two candidates
        reply(sent[3], ArrayRecord([np.zeros((3, 2), np.float32), np.zeros(3, np.float32)]), [1.0, 1.0]),
    ]

    # Execute
    arrays, metrics = strategy.aggregate_train(2, replies)

    # Assert
    failed = strategy.rounds[1].failed
    assert failed[0] == "error reply: client crashed"
    assert "candidate-clients" in failed[1] and "as sent" in failed[1]
    assert "reply metrics['scores'] has 1 values, expected 2" in failed[2]
    assert "reply model has arrays" in failed[3]
    np.testing.assert_array_equal(strategy.affinity_matrix, before)
    assert {c: values(r) for c, r in strategy.models.items()} == {c: {10.0 + c} for c in range(4)}
    assert (arrays, metrics) == (None, None)


def test_a_client_that_does_not_answer_is_recorded_and_its_model_is_no_candidate_yet(in_a_run):
    # Prepare
    strategy = FedFomo(m=3, seed=0)
    sent = by_client(strategy, strategy.train_messages(1, record_of(0.5), ConfigRecord(), NODES))

    # Execute: round 1 without client 2's reply, then round 2
    strategy.aggregate_train(1, [reply(m, record_of(10.0 + c), []) for c, m in sent.items() if c != 2])
    round2 = by_client(strategy, strategy.train_messages(2, record_of(0.5), ConfigRecord(), NODES))

    # Assert: only uploaded models are candidates; client 2 still starts from the initial model
    assert strategy.rounds[0].failed == {2: "no reply"}
    for c, m in round2.items():
        assert sorted(m.content["config"]["candidate-clients"]) == sorted({0, 1, 3} - {c})
    assert values(round2[2].content["arrays"]) == {0.5}


def test_a_reply_from_a_node_that_was_sent_nothing_is_ignored(in_a_run):
    # Prepare: an instruction to node 17 in round 1, its reply arriving after round 2 was configured without it
    strategy = FedFomo(m=2, seed=0)
    stale = strategy.train_messages(1, record_of(0.5), ConfigRecord(), [17, 40])[0]
    strategy.aggregate_train(1, [])
    strategy.train_messages(2, record_of(0.5), ConfigRecord(), [40])

    # Execute
    strategy.aggregate_train(2, [reply(stale, record_of(3.0), [])])

    # Assert
    assert strategy.models == {} and strategy.rounds[1].scores == {}


# --- evaluate -------------------------------------------------------------------------------------


def test_evaluation_sends_each_client_its_own_model_and_averages_over_clients(in_a_run):
    # Prepare
    strategy = uploaded_strategy()
    sent = by_client(strategy, strategy.evaluate_messages(1, record_of(0.5), ConfigRecord(), NODES))
    answers = {0: (0.5, 0.9, 100), 1: (1.5, 0.5, 10), 3: (1.0, 0.7, 50)}
    replies = [Message(RecordDict({"metrics": MetricRecord({"loss": l, "accuracy": a, "num-examples": n})}),
                       reply_to=sent[c]) for c, (l, a, n) in answers.items()]
    replies.append(Message(Error(code=0, reason="out of memory"), reply_to=sent[2]))

    # Execute
    metrics = strategy.aggregate_evaluate(1, replies)

    # Assert: every client's personalised model counts once, whatever its data size
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in sent.values())
    assert {c: values(m.content["arrays"]) for c, m in sent.items()} == {c: {10.0 + c} for c in range(4)}
    assert metrics["accuracy"] == pytest.approx(np.mean([0.9, 0.5, 0.7]), rel=1e-15)  # float rounding only
    assert metrics["loss"] == pytest.approx(1.0, rel=1e-15) and metrics["num-clients"] == 3
    assert strategy.rounds[0].evaluate_failed == {2: "error reply: out of memory"}
    assert strategy.rounds[0].mean_accuracy == metrics["accuracy"]


# --- client side: the handlers run the adapters' own client round ---------------------------------


def train_message(model: ArrayRecord, candidates: list, ids: list, **config) -> Message:
    content = RecordDict({"arrays": model})
    for k, c in enumerate(candidates):
        content[f"candidate.{k}"] = c
    content["config"] = ConfigRecord({"server-round": 2, "client": 0, "candidate-clients": ids,
                                      "norm": "l2", "eps": 0.0, **config})
    return Message(content, dst_node_id=17, message_type=MessageType.TRAIN)


def test_torch_train_handler_is_the_fedfomo_client_round(in_a_run, clients_data):
    # Prepare: the same client twice; peers' models from clients of both groups
    _, data = clients_data
    peers = [torch_client(data[s], seed=s) for s in (1, 2)]  # client 1 shares client 0's group, 2 does not
    for peer in peers:
        peer.train()
    peers = [p.module for p in peers]
    own = mlp(0)
    via_flower, direct = torch_client(data[0]), torch_client(data[0])
    direct.module.load_state_dict(own.state_dict())
    message = train_message(model_record(own), [model_record(p) for p in peers], [5, 9])

    # Execute
    answer = fedfomo_train(message, via_flower, partition_id=3)
    expected = direct.round([p.state_dict() for p in peers])

    # Assert: the same round, bit for bit, and the reply carries it
    metrics = answer.content["metrics"]
    assert metrics["candidate-clients"] == [5, 9] and metrics["partition-id"] == 3
    assert metrics["scores"] == expected.scores.tolist() and metrics["weights"] == expected.weights.tolist()
    assert metrics["num-examples"] == len(data[0].y_train)
    returned = answer.content["arrays"].to_torch_state_dict()
    for name, t in direct.module.state_dict().items():
        assert torch.equal(returned[name], t)
    assert answer.metadata.dst_node_id == message.metadata.src_node_id


def test_sklearn_train_handler_is_the_mlp_client_round(in_a_run, clients_data):
    # Prepare
    _, data = clients_data

    def client(seed: int) -> MLPClassifierClient:
        d = data[seed % 4]
        est = initialise_mlp(MLPClassifier(hidden_layer_sizes=(12,), solver="sgd", batch_size=32, random_state=seed),
                             d.x_train, d.y_train, np.arange(10))
        return MLPClassifierClient(est, (d.x_val, d.y_val), (d.x_train, d.y_train))

    peers = [client(s) for s in (1, 2)]
    for p in peers:
        p.train()
    via_flower, direct = client(0), client(0)
    message = train_message(model_record(direct), [model_record(p) for p in peers], [1, 2], norm="l1", eps=1e-5)

    # Execute
    answer = fedfomo_train(message, via_flower)
    direct.policy = direct.policy.replace(norm="l1", eps=1e-5)  # the server's step options reach the client
    expected = direct.round(np.stack([p.get_flat() for p in peers]))

    # Assert
    metrics = answer.content["metrics"]
    assert metrics["scores"] == expected.scores.tolist() and "partition-id" not in metrics
    flat = np.concatenate([a.ravel() for a in answer.content["arrays"].to_numpy_ndarrays()])
    np.testing.assert_array_equal(flat, direct.get_flat())


def test_evaluate_handler_measures_the_model_it_was_sent(in_a_run, clients_data):
    # Prepare
    _, data = clients_data
    d = data[1]
    client, sent = torch_client(d), mlp(4)
    test = (torch.tensor(d.x_test), torch.tensor(d.y_test))
    message = Message(RecordDict({"arrays": model_record(sent), "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=17, message_type=MessageType.EVALUATE)

    # Execute
    metrics = fedfomo_evaluate(message, client, test).content["metrics"]

    # Assert
    ev = evaluate_candidates(sent, [sent.state_dict()], test)
    assert metrics["accuracy"] == float(ev.accuracy[0]) and metrics["loss"] == float(ev.loss[0])
    assert metrics["num-examples"] == len(d.y_test)


def test_handlers_refuse_models_that_do_not_fit_the_client(in_a_run, clients_data):
    # Prepare
    _, data = clients_data
    client = torch_client(data[0])
    wide = nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    good = model_record(mlp(1))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"candidate 1\['0.weight'\] has shape \(20, 64\), expected \(16, 64\)"):
        fedfomo_train(train_message(good, [good, model_record(wide)], [1, 2]), client)
    with pytest.raises(ValueError, match="must hold 2 candidate ArrayRecords"):
        fedfomo_train(train_message(good, [good], [1, 2]), client)
    with pytest.raises(ValueError, match=r"the message's 'arrays' \(the client's model\) has keys"):
        fedfomo_train(train_message(record_of(1.0), [], []), client)
    with pytest.raises(TypeError, match="client must be a fomo_core.adapters.torch.FedFomoClient or"):
        fedfomo_train(train_message(good, [], []), object())


def test_model_record_and_client_app_arguments():
    # Execute / Assert
    est = initialise_mlp(MLPClassifier(hidden_layer_sizes=(5,)), np.zeros((1, 4)), np.zeros(1, int), [0, 1, 2])
    assert [tuple(a.shape) for a in model_record(est).values()] == [(4, 5), (5,), (5, 3), (3,)]
    assert list(model_record(mlp()).keys()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(TypeError, match="with parameters"):
        model_record(MLPClassifier())
    with pytest.raises(TypeError, match="client_fn must be callable"):
        fedfomo_client_app(None)
    with pytest.raises(TypeError, match="test_data_fn must be callable"):
        fedfomo_client_app(lambda ctx: None, test_data_fn=3)


# --- a real federation on Flower's Ray simulation engine ------------------------------------------

ROUNDS, M = 3, 2


@pytest.fixture(scope="module")
def simulation(tmp_path_factory, clients_data):
    """4 clients, 2 latent groups, 3 rounds, M=2 of 3 possible candidates, no exploration (so the
    choice is the affinity's top-M). Runs once for the tests below."""
    import ray
    from flwr.simulation import run_simulation
    from ray import cloudpickle

    partition, data = clients_data
    env = {
        "FLWR_HOME": str(tmp_path_factory.mktemp("flwr")),
        "RAY_TMPDIR": str(tmp_path_factory.mktemp("ray")),  # short: Ray's socket paths must fit 107 bytes
        # opt in to Ray's coming default (it leaves CUDA_VISIBLE_DEVICES alone for CPU actors)
        # rather than let it warn about the change
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }

    def client_fn(context: Context) -> FedFomoClient:
        torch.set_num_threads(1)
        return torch_client(data[int(context.node_config["partition-id"])])

    def test_data_fn(context: Context):
        d = data[int(context.node_config["partition-id"])]
        return torch.tensor(d.x_test), torch.tensor(d.y_test)

    strategy = FedFomo(m=M, epsilon=0.0, seed=0, min_available_nodes=4, min_train_nodes=4, min_evaluate_nodes=4)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        # a crashed backend leaves the messages unanswered: fail after 2 minutes, not Flower's hour
        strategy.start(grid=grid, initial_arrays=model_record(mlp(0)), num_rounds=ROUNDS, timeout=120)

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        # Ray puts the driver's current directory first on its workers' import path: from the
        # repository root that is the source fomo_core/, which has no compiled _C
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        # the ClientApp's functions come from this test module, which Ray's workers cannot import
        # (pytest's importlib mode): ship them by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            with warnings.catch_warnings():
                # Ray's own leaks, dropped while its daemons start and stop: the /dev/null files it
                # opens for their output, the Popen objects of the daemons it has just killed
                warnings.simplefilter("ignore", ResourceWarning)
                run_simulation(server_app=server, client_app=fedfomo_client_app(client_fn, test_data_fn=test_data_fn),
                               num_supernodes=4, backend_config={"client_resources": {"num_cpus": 1}})
                gc.collect()
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray_left_running = ray.is_initialized()
    return strategy, partition, data, ray_left_running


def test_simulation_runs_every_round_with_every_client_and_stops_ray(simulation):
    strategy, partition, _, ray_left_running = simulation
    assert not ray_left_running
    assert [r.round for r in strategy.rounds] == [1, 2, 3]
    for r in strategy.rounds:
        assert r.failed == {} and r.evaluate_failed == {}
        assert sorted(r.scores) == sorted(r.accuracy) == [0, 1, 2, 3]
    assert sorted(strategy.partition_ids.values()) == [0, 1, 2, 3]


def test_each_client_received_its_own_candidates(simulation):
    strategy = simulation[0]
    assert all(ids == [] for ids in strategy.rounds[0].candidates.values())  # nobody had uploaded yet
    for r in strategy.rounds[1:]:
        sets = [frozenset(r.candidates[c]) for c in range(4)]
        for c in range(4):
            # the reply echoed the candidates this client was sent, with one score each
            assert len(r.candidates[c]) == M and c not in r.candidates[c]
            assert len(r.scores[c]) == M
        assert len(set(sets)) > 1  # personalised: not one list for everybody


def test_the_affinity_is_the_sum_of_the_scores_each_client_returned(simulation):
    strategy = simulation[0]
    expected = fc.Affinity.from_preset("fomo-core", 4).matrix
    for r in strategy.rounds:
        for c, ids in r.candidates.items():
            expected[c, ids] += r.scores[c]
        np.testing.assert_array_equal(r.affinity, expected)
    assert np.count_nonzero(strategy.affinity_matrix - np.diag(np.diag(strategy.affinity_matrix))) > 0


def test_with_no_exploration_the_candidates_are_the_top_m_of_last_rounds_row(simulation):
    strategy = simulation[0]
    previous, current = strategy.rounds[1], strategy.rounds[2]
    for c, ids in current.candidates.items():
        row = previous.affinity[c]
        others = [j for j in range(4) if j != c and j not in ids]
        assert min(row[ids]) >= max(row[others])


def test_within_group_affinity_dominates(simulation):
    # after rounds 2 and 3 every client has scored each of the 3 others at least once (a client
    # not yet scored keeps affinity 0 and ranks above a scored one with a negative sum)
    strategy, partition, _, _ = simulation
    groups = np.array([partition.groups[strategy.partition_ids[c]] for c in range(4)])
    a = strategy.affinity_matrix
    for c in range(4):
        peer = [j for j in range(4) if j != c and groups[j] == groups[c]]
        strangers = [j for j in range(4) if groups[j] != groups[c]]
        assert len(peer) == 1 and a[c, peer[0]] > max(a[c, strangers])


def test_evaluation_measured_each_clients_own_final_model_on_its_own_test_data(simulation):
    strategy, _, data, _ = simulation
    last = strategy.rounds[-1]
    for c, record in strategy.models.items():
        d = data[strategy.partition_ids[c]]
        ev = evaluate_candidates(mlp(), [record.to_torch_state_dict()], (torch.tensor(d.x_test), torch.tensor(d.y_test)))
        assert last.accuracy[c] == float(ev.accuracy[0])
        # the same float32 model on the same data, evaluated by the client in another process
        assert last.loss[c] == pytest.approx(float(ev.loss[0]), rel=1e-6)


# --- the example is documentation: it must keep running and showing what it claims -----------------


def test_flower_example_runs_a_personalising_federation(tmp_path_factory):
    # Prepare: its own process (it starts its own Ray). Ray's sockets live under RAY_TMPDIR and a
    # Unix socket path has at most 107 bytes: a short directory name, not this test's long one.
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "flower_app.py"
    env = {**os.environ, "FLWR_HOME": str(tmp_path_factory.mktemp("flwr")),
           "RAY_TMPDIR": str(tmp_path_factory.mktemp("ray"))}

    # Execute
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path_factory.mktemp("cwd"), env=env,
                          capture_output=True, text=True, timeout=300)

    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    accs = [float(a) for a in re.findall(r"round \d: mean personalised test accuracy ([0-9.]+)%", done.stdout)]
    share = re.search(r"share of positive affinity within the client's own group: ([0-9.]+)", done.stdout)
    assert len(accs) == 5 and share is not None, done.stdout[-3000:]
    assert accs[-1] > accs[0]  # four more rounds of FedFomo and training helped
    # 1 of each client's 5 peers shares its group: by chance a fifth of the positive affinity would land there
    assert float(share.group(1)) > 0.5
