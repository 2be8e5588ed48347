from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # NOTE: the end-to-end tests compare runs bit for bit; keep torch's thread count fixed.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _tracking_store_outside_the_checkout(tmp_path_factory):
    """Studies in tests log to a throwaway SQLite store, never to mlflow.db in the working directory."""
    import os

    if "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield


class Stop(Exception):
    """What a `stop_at` report raises: a run killed after its checkpoint, in its report."""


def stop_at(step: int):
    """A report callback that kills the run in the report of task `step`."""

    def report(metrics: dict) -> None:
        if metrics["step"] == step:
            raise Stop

    return report


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports between Ray's worker ports (10002-19999) and the kernel's
    ephemeral range, where no outgoing connection takes one while a test's server is away (a server
    restarted by a test keeps its port)."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    high = max(int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768, 21000)
    ports: list[int] = []
    for port in random.sample(range(20000, high), k=min(2000, high - 20000)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free loopback ports between 20000 and {high}")


def free_port() -> int:
    return free_ports(1)[0]


def wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class MlflowServer:
    """A real `mlflow server` on loopback over a SQLite store in `root`; stop and start it at will
    (the store and the port stay the same)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}"]
        command += ["--artifacts-destination", str(self.root / "server-artifacts")]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as `impress ui` runs it
        )
        wait_http(f"{self.url}/health")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster():
    """A real two-node Ray cluster with token auth on this machine (tests/raycluster.py)."""
    from raycluster import two_node_cluster

    with two_node_cluster() as c:
        yield c
