"""The Flower App in examples/flower-app run as users run it, by real processes on loopback:

1. the Simulation Runtime on a two-node Ray cluster (a head node that runs nothing, and a worker
   node with the CPUs, so every ClientApp runs on the second node), 6 clients, 3 rounds;
2. a deployment (SuperLink with a database, 3 SuperNodes): one SuperNode is killed with SIGKILL
   during round 1 and every round finishes with the others; then the SuperLink is killed with
   SIGKILL and restarted on its database, the SuperNodes carry on, the lost one comes back, and
   a second ``flwr run`` on the same state folder resumes exactly;
3. processes started here die with the process that started them, even when it is killed with
   SIGKILL (no ``finally`` runs).

Every process is started through tests/flower_runtime.py: its own process group, a guard that
kills it and its descendants when the test process dies, and ``stop()`` at the end of each test,
by PID. Flower's home, Ray's temp folder and the ports are the test's own. Each test prints how
long it took.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import flower_runtime as fr
import numpy as np
import pytest

pytest.importorskip("flwr")

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-app"


@pytest.fixture
def flower_env():
    """(Flower home, Processes) of one federation; everything started is stopped afterwards."""
    with fr.flower_env() as env:
        yield env


def _flwr_run(procs, state: Path, run_config: str, extra: list, timeout: float, name: str = "flwr-run") -> str:
    out = procs.run(
        name,
        [fr.BIN / "flwr", "run", APP, *extra, "--stream", "--run-config", f"state-dir='{state}' {run_config}"],
        timeout,
    )
    assert (state / "results.json").exists(), f"the ServerApp wrote no results; flwr run said:\n{out[-4000:]}"
    return out


def _wait_for_log(procs, name: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in procs.log(name):
        tail = procs.log(name)[-3000:]
        assert time.monotonic() < deadline, f"{name} did not log {text!r} within {timeout} s:\n{tail}"
        assert procs.proc(name).poll() is None, f"{name} exited:\n{procs.log(name)[-3000:]}"
        time.sleep(0.2)


def _initial_flat() -> np.ndarray:
    sys.path.insert(0, str(APP))
    try:
        from fedfomo_app.task import make_estimator
    finally:
        sys.path.remove(str(APP))
    from fomo_core.adapters.flower import ModelLayout, model_record

    record = model_record(make_estimator(0))
    return ModelLayout.of(record).flat_from_record(record, "initial")


def _models(state: Path) -> np.ndarray:
    meta = json.loads((state / "strategy.json").read_text())
    with np.load(state / meta["server"]) as server:
        return server["models"]


@pytest.mark.slow
def test_flwr_run_on_the_simulation_runtime_over_a_two_node_ray_cluster(flower_env):
    home, procs = flower_env
    t0 = time.perf_counter()
    port, ray_port = fr.free_ports(2)
    ray = [fr.BIN / "ray", "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    head = procs.start("ray-head", [*ray, "--head", "--port", ray_port, "--num-cpus", "0", "--include-dashboard=false"])
    fr.wait_for_port(ray_port, head, 60)
    procs.start("ray-worker", [*ray, "--address", f"127.0.0.1:{ray_port}", "--num-cpus", "2"])
    procs.env["RAY_ADDRESS"] = f"127.0.0.1:{ray_port}"  # the simulation joins this cluster
    fr.connection(home, "sim", port)
    link = procs.start("superlink", fr.superlink_command(port, "--simulation"))
    fr.wait_for_port(port, link, 60)
    _wait_for_log(procs, "ray-worker", "Ray runtime started", 120)
    state = home / "state"
    _flwr_run(
        procs,
        state,
        "num-server-rounds=3 num-clients=6 num-groups=3 candidates=5",
        ["sim", "--federation-config", "num-supernodes=6 client-resources-num-cpus=1"],
        timeout=240,
    )
    seconds = time.perf_counter() - t0

    # Assert: every round trained and evaluated every client (on the worker node: the head has no
    # CPU to run a ClientApp), every model moved, and the affinity found the groups
    results = json.loads((state / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for r in results["rounds"]:
        assert r["failed"] == {} and len(r["scores"]) == 6 and len(r["accuracy"]) == 6
    models, initial = _models(state), _initial_flat()
    assert models.shape == (6, initial.size) and not any(np.allclose(m, initial) for m in models)
    from fomo_core.simulate.metrics import within_group_fraction

    fraction, counted = within_group_fraction(np.array(results["affinity"]), np.array(results["groups"]))
    # each client has 1 group mate among 5 others: 0.2 of its positive affinity by chance
    assert counted >= 4 and fraction > 0.5, (fraction, counted, np.round(results["affinity"], 2).tolist())
    accuracy = [round(r["server_accuracy"], 3) for r in results["rounds"]]
    print(f"simulation on a two-node Ray cluster: {seconds:.1f} s, accuracy per round {accuracy}")


def _json(path: Path, timeout: float) -> dict:
    """The JSON file at ``path`` once it exists (written atomically by the ServerApp)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.2)
    return json.loads(path.read_text())


@pytest.mark.slow
def test_a_deployment_survives_a_lost_supernode_and_a_superlink_crash(flower_env):
    home, procs = flower_env
    t0 = time.perf_counter()
    port, *node_ports = fr.free_ports(4)
    fr.connection(home, "deploy", port)
    superlink = fr.superlink_command(port, "--disable-runtime-dependency-installation", "--database", home / "link.db")
    link = procs.start("superlink", superlink)
    fr.wait_for_port(port, link, 60)
    for k in range(3):
        procs.start(f"supernode-{k}", fr.supernode_command(port, node_ports[k], f"partition-id={k}"))
    state = home / "state"
    settings = "num-server-rounds=3 num-clients=3 num-groups=2 candidates=1 min-available-nodes=3"
    command = [fr.BIN / "flwr", "run", APP, "deploy", "--stream", "--run-config"]

    # Execute: round 1 starts with every node; SuperNode 1 is lost (SIGKILL) while it trains;
    # once round 2's checkpoint is written, the SuperLink crashes (SIGKILL to it, its ServerApp
    # and everything they started)
    procs.start("flwr-run", [*command, f"state-dir='{state}' {settings} node-wait-timeout=2"])
    _wait_for_log(procs, "flwr-run", "configure_train: 3 of 3 nodes train", 180)
    procs.kill("supernode-1")
    deadline = time.monotonic() + 240  # the SuperLink declares a node lost within 2 heartbeats (60 s)
    while (checkpoint := _json(state / "strategy.json", 240))["round"] < 2:
        assert time.monotonic() < deadline, f"round 2 did not finish:\n{procs.log('flwr-run')[-3000:]}"
        time.sleep(0.1)
    procs.kill("superlink")
    procs.kill("flwr-run")
    fr.wait_for_port_closed(port, 30)  # else the new SuperLink would share the port with a leftover
    lost_at = time.perf_counter() - t0

    # Assert: round 1 finished without the lost node (Flower's reason recorded), round 2 went
    # ahead with the two others after waiting 2 s for a third
    r1, r2 = checkpoint["rounds"][:2]
    assert sorted(r1["scores"]) == ["0", "2"] and list(r1["failed"]) == ["1"], r1["failed"]
    assert "Node Unavailable" in r1["failed"]["1"]
    assert sorted(r2["scores"]) == ["0", "2"] and r2["failed"] == {}

    # Execute: the SuperLink restarts on its database; the lost SuperNode comes back (a new
    # Flower node id, the same partition); flwr run again on the same state folder
    link = procs.start("superlink-2", superlink)
    fr.wait_for_port(port, link, 60)
    procs.start("supernode-1b", fr.supernode_command(port, node_ports[1], "partition-id=1"))
    _flwr_run(procs, state, f"{settings} node-wait-timeout=120", ["deploy"], 240, name="flwr-run-2")

    # Assert: the SuperNodes lived through the restart (their registrations are in the database:
    # no 401), and the run resumed at round 3 from the checkpoint, with all 3 clients
    for k in (0, 2):
        assert procs.proc(f"supernode-{k}").poll() is None, procs.log(f"supernode-{k}")[-2000:]
    resumed = json.loads((state / "results.json").read_text())
    for before, after in zip(checkpoint["rounds"], resumed["rounds"][:2]):
        assert after | before == after  # the checkpoint's record of rounds 1-2, unchanged
    r3 = resumed["rounds"][2]
    assert r3["round"] == 3 and r3["failed"] == {} and sorted(r3["scores"]) == ["0", "1", "2"]
    assert resumed["client_ids"] == ["0", "1", "2"]
    print(
        f"deployment: {lost_at:.1f} s to the SuperLink's crash (a SuperNode lost in round 1), "
        f"{time.perf_counter() - t0:.1f} s in all; accuracy per round "
        f"{[round(r['server_accuracy'], 3) for r in resumed['rounds']]}"
    )


KILLED_PARENT = """
import sys, time
sys.path.insert(0, {tests!r})
import flower_runtime as fr

with fr.flower_env() as (home, procs):
    (port,) = fr.free_ports(1)
    link = procs.start("superlink", fr.superlink_command(port, "--simulation"))
    procs.start("sleepers", ["bash", "-c", "setsid sleep 300 & sleep 300"])  # one leaves the group
    fr.wait_for_port(port, link, 60)
    time.sleep(1)
    print(*procs.pids(), *fr.descendants(procs.pids()), flush=True)
    time.sleep(300)
"""


def test_processes_die_with_a_parent_killed_by_sigkill(tmp_path):
    # Prepare: a process that starts a SuperLink (with its own children) and a process tree
    # with a member in another session, the way the fixtures do, then waits
    t0 = time.perf_counter()
    script = tmp_path / "parent.py"
    script.write_text(KILLED_PARENT.format(tests=str(Path(__file__).resolve().parents[1])))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            started = [int(p) for p in parent.stdout.readline().split()]
        finally:
            parent.kill()  # SIGKILL: no finally, no atexit in the parent
            parent.wait(timeout=30)

    # Assert: every process it started, and every descendant of them, is gone
    assert len(started) >= 5, started  # 2 guards, the SuperLink and what it started, the sleepers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(fr.alive(p) for p in started):
        time.sleep(0.1)
    assert [p for p in started if fr.alive(p)] == []
    print(f"{len(started)} processes gone after their parent's SIGKILL, in {time.perf_counter() - t0:.1f} s")


def _with_argument(marker: str) -> list:
    """PIDs of the living processes whose command line holds ``marker``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace") and fr.alive(int(entry)):
                found.append(int(entry))
    return found


def test_a_killed_process_leaves_no_child_it_was_starting(flower_env):
    # Prepare: a process that starts children in sessions of their own as fast as it can (as a SuperLink
    # starts its SuperExec), so that one is always being started while the kill walks the tree
    _, procs = flower_env
    marker = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # sleep's argument: unique to this test run
    procs.start("spawner", ["bash", "-c", f"while :; do setsid sleep {marker} & done"])
    deadline = time.monotonic() + 30
    while len(_with_argument(marker)) < 50:
        assert time.monotonic() < deadline, "the spawner did not start its children"
        time.sleep(0.05)

    # Execute
    procs.kill("spawner")

    # Assert: no child outlived it, not even one started during the kill
    time.sleep(0.5)
    assert _with_argument(marker) == []
