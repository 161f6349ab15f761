"""The Flower App in examples/flower-app run as users run it, by real processes on loopback:

1. ``flwr run`` on the Simulation Runtime (a SuperLink in simulation mode, Ray backend), 6
   clients, 3 rounds;
2. a deployment: ``flower-superlink --insecure``, 3 ``flower-supernode`` processes with partition
   ids, ``flwr run`` to it, 3 rounds.

Each reads the ServerApp's checkpoint folder and checks that every client's model changed and
that the affinity concentrates within the latent groups. The test starts every process itself (its
own session and process group), and in ``finally`` stops them and every descendant they started
(SuperExec, ServerApp, ClientApps, Ray), by PID. Flower's home, Ray's temp folder and the ports
are the test's own; runtime dependency installation is disabled (fomo-core is installed here, not
on the package index).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

APP = Path(__file__).resolve().parents[1] / "examples" / "flower-app"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _children() -> dict:
    """{pid: parent pid} of every process visible in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pids: list) -> list:
    parents = _children()
    found, frontier = [], list(pids)
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.append(child)
                frontier.append(child)
    return found


class Processes:
    """Processes the test starts, each in its own session; stop() ends them and all their
    descendants (snapshotted before the first signal), by PID and process group."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, name: str, args: list) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.logs
        )
        self.procs.append((name, proc, log))
        return proc

    def run(self, name: str, args: list, timeout: float) -> str:
        proc = self.start(name, args)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish within {timeout} s; log:\n{self.log(name)[-3000:]}")
        return self.log(name)

    def terminate(self, name: str) -> None:
        """SIGTERM to one process's group (a SuperNode shutting down), waited for."""
        proc = next(p for n, p, _ in self.procs if n == name)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        own = [p.pid for _, p, _ in self.procs]
        everyone = own + _descendants(own)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in everyone:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(p.poll() is None for _, p, _ in self.procs):
                time.sleep(0.1)
        for _, p, log in self.procs:
            p.wait(timeout=5)
            log.close()


@pytest.fixture
def flower_env():
    """Environment and folders of one federation: Flower home, a short Ray temp dir, logs."""
    home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        RAY_TMPDIR=ray_tmp,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONWARNINGS="ignore",
    )
    env.pop("RAY_ADDRESS", None)
    (home / "logs").mkdir()
    procs = Processes(env, home / "logs")
    try:
        yield home, procs
    finally:
        procs.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def _connection(home: Path, name: str, port: int) -> None:
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listened on port {port} within {timeout} s")


def _flwr_run(
    procs: Processes, state: Path, run_config: str, extra: list, timeout: float, name: str = "flwr-run"
) -> str:
    out = procs.run(
        name,
        [str(BIN / "flwr"), "run", str(APP), *extra, "--stream", "--run-config", f"state-dir='{state}' {run_config}"],
        timeout,
    )
    assert (state / "results.json").exists(), f"the ServerApp wrote no results; flwr run said:\n{out[-4000:]}"
    return out


def _check_federation(state: Path, num_clients: int, rounds: int, initial: np.ndarray) -> dict:
    results = json.loads((state / "results.json").read_text())
    meta = json.loads((state / "strategy.json").read_text())
    with np.load(state / meta["server"]) as server:
        models = server["models"]
    assert meta["round"] == rounds  # rounds completed
    assert sorted(results["client_ids"]) == [str(k) for k in range(num_clients)]
    for r in results["rounds"]:
        assert r["failed"] == {}, r["failed"]
        assert len(r["scores"]) == num_clients
        assert len(r["accuracy"]) == num_clients
    # every client's model moved away from the initial one
    assert models.shape == (num_clients, initial.size)
    for k in range(num_clients):
        assert not np.allclose(models[k], initial), f"client {k}'s model never changed"
    return results


def _superlink_command(port: int, control: int, *flags: str) -> list:
    """A loopback SuperLink on ``port`` (Fleet API) and ``control`` (Control API), insecure."""
    fixed = "--insecure --isolation subprocess --host 127.0.0.1 --port".split()
    return [str(BIN / "flower-superlink"), *flags, *fixed, str(port), "--control-api-address", f"127.0.0.1:{control}"]


def _supernode_command(port: int, node_port: int, node_config: str) -> list:
    """A loopback SuperNode of the SuperLink on ``port``, serving on ``node_port``."""
    fixed = "--insecure --host 127.0.0.1".split()
    where = ["--superlink", f"127.0.0.1:{port}", "--port", str(node_port)]
    return [str(BIN / "flower-supernode"), *fixed, *where, "--node-config", node_config]


def _initial_flat() -> np.ndarray:
    sys.path.insert(0, str(APP))
    try:
        from fedfomo_app.task import make_estimator
    finally:
        sys.path.remove(str(APP))
    from fomo_core.adapters.flower import ModelLayout, model_record

    record = model_record(make_estimator(0))
    return ModelLayout.of(record).flat_from_record(record, "initial")


def test_flwr_run_on_the_simulation_runtime(flower_env):
    home, procs = flower_env
    port, control = _free_ports(2)
    _connection(home, "sim", port)
    link = procs.start("superlink", _superlink_command(port, control, "--simulation"))
    _wait_for_port(port, link, 30)
    state = home / "state"
    t0 = time.perf_counter()
    _flwr_run(
        procs,
        state,
        "num-server-rounds=3 num-clients=6 num-groups=3 candidates=5",
        ["sim", "--federation-config", "num-supernodes=6 client-resources-num-cpus=1"],
        timeout=150,
    )
    seconds = time.perf_counter() - t0
    results = _check_federation(state, 6, 3, _initial_flat())
    from fomo_core.simulate.metrics import within_group_fraction

    groups = np.array(results["groups"])
    fraction, counted = within_group_fraction(np.array(results["affinity"]), groups)
    # each client has 1 group mate among 5 others: 0.2 of its positive affinity by chance
    assert counted >= 4 and fraction > 0.5, (
        fraction,
        counted,
        np.round(results["affinity"], 2).tolist(),
        results["groups"],
    )
    accuracy = [r["mean_accuracy"] for r in results["rounds"]]
    print(
        f"simulation: {seconds:.1f} s, accuracy per round {accuracy}, within-group {fraction:.2f}, "
        f"bytes down/up per round {[(r['bytes_down'], r['bytes_up']) for r in results['rounds']]}"
    )


def test_flwr_run_on_a_superlink_with_three_supernodes(flower_env):
    home, procs = flower_env
    port, control, *node_ports = _free_ports(5)
    _connection(home, "deploy", port)
    link = procs.start("superlink", _superlink_command(port, control, "--disable-runtime-dependency-installation"))
    _wait_for_port(port, link, 30)
    for k in range(3):
        procs.start(f"supernode-{k}", _supernode_command(port, node_ports[k], f"partition-id={k} num-partitions=3"))
    state = home / "state"
    t0 = time.perf_counter()
    _flwr_run(procs, state, "num-server-rounds=3 num-clients=3 num-groups=2 candidates=2", ["deploy"], timeout=150)
    seconds = time.perf_counter() - t0
    results = _check_federation(state, 3, 3, _initial_flat())
    # clients 0 and 2 share a group (client k is in group k % 2), client 1 is alone; with M = 2 of
    # 3 clients every client measures both others every round
    a = np.array(results["affinity"])
    assert results["groups"] == [0, 1, 0]
    assert a[0, 2] > a[0, 1] and a[2, 0] > a[2, 1], a
    accuracy = [r["mean_accuracy"] for r in results["rounds"]]
    print(
        f"deployment: {seconds:.1f} s, accuracy per round {accuracy}, "
        f"bytes down/up per round {[(r['bytes_down'], r['bytes_up']) for r in results['rounds']]}"
    )

    # A restarted SuperNode (a new Flower node id, the same partition) and a new ServerApp on the
    # same state folder: the run resumes at round 4 with client 1 on its new node
    procs.terminate("supernode-1")
    procs.start("supernode-1b", _supernode_command(port, node_ports[1], "partition-id=1 num-partitions=3"))
    before = json.loads((state / "strategy.json").read_text())
    (state / "results.json").unlink()
    _flwr_run(
        procs,
        state,
        "num-server-rounds=4 num-clients=3 num-groups=2 candidates=2",
        ["deploy"],
        timeout=120,
        name="flwr-run-2",
    )
    resumed = json.loads((state / "results.json").read_text())
    assert json.loads((state / "strategy.json").read_text())["round"] == 4
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert resumed["rounds"][:3] == results["rounds"] and resumed["client_ids"] == before["client_ids"]
    assert resumed["rounds"][3]["failed"] == {} and sorted(resumed["rounds"][3]["scores"]) == ["0", "1", "2"]
