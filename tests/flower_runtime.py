"""Real Flower processes on loopback for the process tests and the Flower benchmark, and what makes
sure none of them outlives whoever started it.

Every command runs under a guard (this file run as a script, ``guard -- command ...``): the guard
leads its own process group, starts the command in it, forwards SIGTERM / SIGINT to it and returns
its exit code. The guard asks the kernel for a signal when its parent dies (``prctl
PR_SET_PDEATHSIG``); on that signal it kills the command, every descendant it can find (by PID,
walking /proc: some escape the group) and its own group. So the processes a test starts die with
the test even when pytest is killed with SIGKILL and no ``finally`` runs. (The kernel sends the
signal when the *thread* that started the guard exits: start processes from the main thread.)

:class:`Processes` starts guarded commands and in ``stop()`` ends them and every descendant, by
PID and process group; :func:`flower_env` gives a run its own Flower home, Ray temp folder and
environment. Nothing here is ever found or killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1
PARENT_DIED = signal.SIGUSR1  # the guard's parent-death signal (SIGTERM is forwarded to the command)


# --- processes ----------------------------------------------------------------------------------------


def parents() -> dict:
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


def descendants(pids: list) -> list:
    """Every living descendant of ``pids`` (children first, then theirs)."""
    children: dict = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    found, frontier = [], list(pids)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.append(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cpu_by_process(pids: list) -> dict:
    """{(pid, start time): user + system CPU seconds} of ``pids`` and their living descendants,
    with the children each has already reaped (a finished ClientApp process counts for the
    SuperNode that waited for it)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in set(pids) | set(descendants(pids)):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[(pid, fields[19])] = sum(int(v) for v in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return out


def frozen_tree(pids: list) -> list:
    """``pids`` and every descendant, all stopped (SIGSTOP) so that none can start another: a
    snapshot taken while they run misses a child started just after it, which then outlives the
    kill and can keep a listening socket it inherited."""
    frozen: set = set()
    while True:
        tree = [*pids, *descendants(pids)]
        new = [p for p in tree if p not in frozen]
        if not new:
            return tree
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        frozen.update(new)


def _kill(pids: list, sig: int) -> None:
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _die_with_parent(parent: int) -> None:
    """preexec_fn of a guard: the parent-death signal, and an exit if the parent is already gone."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED))
    if os.getppid() != parent:
        os._exit(1)


def guard_main(command: list) -> int:
    """The guard: runs ``command`` in this process's group and ends it all when the parent dies."""
    child = subprocess.Popen(command)

    def forward(sig: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)

    def orphaned(_sig: int, _frame) -> None:
        everyone = frozen_tree([child.pid])
        _kill(everyone, signal.SIGKILL)
        os.killpg(0, signal.SIGKILL)  # the group, this guard included

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(PARENT_DIED, orphaned)
    while True:
        try:
            return child.wait()
        except InterruptedError:
            continue


class Processes:
    """Guarded processes, each leading its own process group (its own session); ``stop()`` ends
    them and all their descendants (snapshotted before the first signal), by PID and group."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, Path(logs), []

    def start(self, name: str, args: list) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        parent = os.getpid()
        proc = subprocess.Popen(
            [sys.executable, __file__, "guard", "--", *[str(a) for a in args]],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
            cwd=self.logs,
        )
        self.procs.append((name, proc, log))
        return proc

    def run(self, name: str, args: list, timeout: float) -> str:
        """Runs a command to its end; TimeoutError (with its log's tail) if it takes longer."""
        proc = self.start(name, args)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} did not finish within {timeout} s; log:\n{self.log(name)[-3000:]}") from None
        return self.log(name)

    def proc(self, name: str) -> subprocess.Popen:
        return next(p for n, p, _ in self.procs if n == name)

    def terminate(self, name: str) -> None:
        """SIGTERM to one command (a SuperNode shutting down), waited for."""
        proc = self.proc(name)
        proc.terminate()  # the guard forwards it
        proc.wait(timeout=30)

    def kill(self, name: str) -> None:
        """SIGKILL to one process's whole tree and group (a machine lost), waited for."""
        proc = self.proc(name)
        tree = frozen_tree([proc.pid])
        _kill(tree, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in tree):
            assert time.monotonic() < deadline, f"{name}: processes outlived SIGKILL: {[p for p in tree if alive(p)]}"
            time.sleep(0.1)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def pids(self) -> list:
        return [p.pid for _, p, _ in self.procs]

    def stop(self) -> None:
        own = self.pids()
        everyone = own + descendants(own)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _kill(everyone, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(p) for p in everyone):
                time.sleep(0.1)
        _kill(frozen_tree(own), signal.SIGKILL)  # any started after the snapshot
        for _, p, log in self.procs:
            p.wait(timeout=5)
            log.close()


# --- a local Flower ---------------------------------------------------------------------------------


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def flower_env(logs: Optional[Path] = None) -> Iterator[tuple]:
    """(Flower home, Processes) of one federation: its own Flower home, a short Ray temp folder
    (Ray's socket paths must stay short), telemetry and runtime dependency installation off
    (fomo-core is installed here, not on the package index). Everything started through the
    Processes is stopped on exit, and the folders removed (``logs``: keep the logs there)."""
    home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        RAY_TMPDIR=ray_tmp,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONWARNINGS="ignore",
    )
    env.pop("RAY_ADDRESS", None)
    log_dir = Path(logs) if logs is not None else home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(env, log_dir)
    try:
        yield home, procs
    finally:
        procs.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def connection(home: Path, name: str, port: int) -> None:
    """A SuperLink connection ``name`` for ``flwr run`` in the Flower home's config.toml."""
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listened on port {port} within {timeout} s")


def wait_for_port_closed(port: int, timeout: float) -> None:
    """Until nothing accepts connections on ``port`` (a killed server's socket is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        assert time.monotonic() < deadline, f"port {port} still accepts connections after {timeout} s"
        time.sleep(0.2)


def superlink_command(port: int, *flags: str) -> list:
    """A loopback SuperLink serving its HTTP API (Fleet, Control, ServerAppIo) on ``port``, insecure."""
    fixed = "--insecure --isolation subprocess --host 127.0.0.1 --port".split()
    return [str(BIN / "flower-superlink"), *flags, *fixed, str(port)]


def supernode_command(port: int, node_port: int, node_config: str) -> list:
    """A loopback SuperNode of the SuperLink on ``port``, serving on ``node_port``."""
    fixed = "--insecure --host 127.0.0.1".split()
    where = ["--superlink", f"127.0.0.1:{port}", "--port", str(node_port)]
    return [str(BIN / "flower-supernode"), *fixed, *where, "--node-config", node_config]


if __name__ == "__main__":
    if sys.argv[1:3] != ["guard", "--"] or len(sys.argv) < 4:
        raise SystemExit("usage: flower_runtime.py guard -- command [args ...]")
    raise SystemExit(guard_main(sys.argv[3:]))
