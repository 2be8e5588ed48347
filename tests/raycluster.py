"""A real two-node Ray cluster on this machine for tests: `ray start --head` plus a second node
joined with `--address`, token authentication on, free ports (no default Ray port), the dashboard on
127.0.0.1, and a teardown that ends exactly this cluster's processes.

NOTE: teardown kills the processes carrying the cluster's marker in their environment or command
line, and their descendants, rather than `ray stop --force`, which would also end any other Ray
running on the machine. Ray maps `--node-ip-address 127.0.0.1` to the host's routable address
(ray._private.services.resolve_ip_for_localhost); only the dashboard binds loopback. The second
node's processes carry a marker of their own (`Cluster.worker_mark`), so a test can take that node
away alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import free_ports

VENV_BIN = Path(sys.executable).parent


def our_processes(mark: str) -> set[int]:
    """Processes with `mark` in their environment or command line, and all their descendants."""
    parents, marked = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if mark.encode() in (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes():
                marked.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    while grown := {pid for pid, parent in parents.items() if parent in marked} - marked:
        marked |= grown
    return marked - {os.getpid()}


def send(pids: set[int], sig: int) -> None:
    """Signal each of `pids` (one already gone is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill(mark: str) -> None:
    """SIGTERM, then SIGKILL until none is left (a process may start another while it is signalled)."""
    send(our_processes(mark), signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    while (left := our_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while left and time.monotonic() < deadline:
        send(left, signal.SIGKILL)
        time.sleep(0.2)
        left = our_processes(mark)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # `python` in the job's entrypoint
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "IMPRESS_TEST_CLUSTER": str(root),  # the teardown's marker
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_worker_niceness": "0",  # as the cluster configs in cluster/: trials are the nodes' work
        }
        for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_enable_metrics_collection"):
            self.env.pop(key, None)  # what a local study in this process set for its own single-machine Ray
        (self.gcs, self.dashboard, self.client_port, *self.node_ports) = free_ports(3 + 2 * 6)
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.worker_mark = f"{root}-worker"  # in the environment of the second node's processes only

    def kill_worker_node(self) -> int:
        """Take the second node away at once (SIGKILL to its raylet and everything it started)."""
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while (pids := our_processes(self.worker_mark)) and time.monotonic() < deadline:
            send(pids, signal.SIGKILL)  # again, for any started while it was being killed
            killed |= pids
            time.sleep(0.1)
        return len(killed)

    def _node(self, ports: list[int], head: bool) -> list[str]:
        command = [str(VENV_BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        command += ["--num-gpus", "0", "--temp-dir", str(self.root / "ray"), "--disable-usage-stats"]
        if head:
            command += ["--head", "--port", str(self.gcs), "--dashboard-host", "127.0.0.1"]
            command += ["--dashboard-port", str(self.dashboard), "--ray-client-server-port", str(self.client_port)]
        else:
            command += ["--address", f"127.0.0.1:{self.gcs}"]
        names = ["node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export"]
        names += ["runtime-env-agent"]
        return command + [arg for name, port in zip(names, ports) for arg in (f"--{name}-port", str(port))]

    def start(self) -> None:
        for ports, head in ((self.node_ports[:6], True), (self.node_ports[6:], False)):
            env = self.env if head else {**self.env, "IMPRESS_TEST_NODE": self.worker_mark}
            done = subprocess.run(self._node(ports, head), env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (  # Ray says why a node did not start only in its own output
                f"`ray start` of the {'head' if head else 'second node'} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        deadline = time.monotonic() + 300
        while len(self.alive_nodes()) < 2:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)

    def ray_list(self, kind: str, *filters: str) -> list[dict]:
        command = [str(VENV_BIN / "ray"), "list", kind, "--address", self.address, "--format", "json"]
        command += ["--detail", "--limit", "1000"] + [a for f in filters for a in ("--filter", f)]
        try:
            out = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:  # a cluster too busy to answer: ask again later
            return []
        try:
            return json.loads(out.stdout[out.stdout.find("[") :]) if out.returncode == 0 else []
        except json.JSONDecodeError:  # a partial answer while the cluster is busy: ask again later
            return []

    def alive_nodes(self) -> list[dict]:
        return self.ray_list("nodes", "state=ALIVE")

    def impress(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [str(VENV_BIN / "impress"), *args, "--address", self.address]
        return subprocess.run(
            command, env=env or self.env, cwd=self.root / "project", capture_output=True, text=True, timeout=timeout
        )


@contextlib.contextmanager
def two_node_cluster() -> Iterator[Cluster]:
    """A started two-node cluster, torn down on leaving (the `cluster` fixture of tests/conftest.py)."""
    root = Path(tempfile.mkdtemp(prefix="ic", dir="/tmp"))  # short: Ray's socket paths live under it
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        _kill(str(root))
        shutil.rmtree(root, ignore_errors=True)
