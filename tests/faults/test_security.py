"""What the servers a user starts listen on, and what reaches the records: real processes, their
listening sockets read from /proc, real HTTP probes, a real MLflow server.

Measured here (Ray 2.60): by default a Ray node replaces a loopback node address with the machine's
routable one, and its GCS, raylets, workers and metrics exporters then listen on every interface
(the metrics exporters answering without Ray's token). A local study runs Ray in its single-machine
mode with metrics off, and everything it starts listens on loopback only."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port, wait_http
from mlflow.tracking import MlflowClient

IMPRESS = [sys.executable, "-m", "impress.cli"]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # the last: IPv4 loopback on an IPv6 socket


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket of this machine."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words, host order
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def _process_tree(root: int) -> set[int]:
    """`root`, its descendants, and every process of its session (daemons started with setsid)."""
    links = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            links[int(d.name)] = (int(fields[1]), int(fields[3]))  # parent, session
    pids, grew = {root}, True
    while grew:
        new = {pid for pid, (parent, session) in links.items() if parent in pids or session == root} - pids
        pids |= new
        grew = bool(new)
    return pids


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:  # the process has ended
        return ""


def listening(root: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every socket that `root`'s processes listen on."""
    sockets, found = _listening_sockets(), set()
    for pid in _process_tree(root):
        name = _command(pid)[:120]
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the process has ended
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed since the listing: a busy process opens and closes files all along
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in sockets:
                found.add((*sockets[int(target[8:-1])], name))
    return found


def test_the_mlflow_ui_listens_on_loopback_only(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=store).search_experiments()  # a store to show (`impress ui` creates none)
    port = free_port()
    ui = subprocess.Popen(
        [*IMPRESS, "ui", "--store", store, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        deadline = time.monotonic() + 60
        sockets = listening(ui.pid)
        while not any(p == port for _, p, _ in sockets) and time.monotonic() < deadline:
            time.sleep(0.2)  # a server under load may be between processes; wait for its socket
            sockets = listening(ui.pid)
        commands = [_command(pid) for pid in _process_tree(ui.pid)]
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()
    assert any(p == port for _, p, _ in sockets), sockets
    assert {address for address, _, _ in sockets} <= set(LOOPBACK), sockets
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands  # MLflow's job runner is off


def _probe(address: str, port: int) -> int | None:
    """HTTP status of GET / (None: not an HTTP server, or closed)."""
    host = "127.0.0.1" if address in ("0.0.0.0", "::") else address  # a wildcard socket answers on loopback too
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError, http.client.HTTPException):  # gRPC ports answer in binary
        return None


def test_a_local_study_listens_on_loopback_only(tmp_path):
    study = {
        "name": "exposure",
        "base": {"method": "supsup", "num_tasks": 4, "epochs": 10, "widths": [64, 64]},  # trials long enough to see
        "grid": {"sparsity": [0.3, 0.5]},
        "concurrency": 1,
    }
    (tmp_path / "exposure.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for key in ("RAY_enable_metrics_collection", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
        env.pop(key, None)  # what the study sets for itself
    with open(tmp_path / "driver.err", "w") as stderr:  # NOTE: a file: a pipe nobody reads would stall it
        driver = subprocess.Popen(
            [*IMPRESS, "study", "run", "exposure.yaml", "--storage", "studies"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    seen: set[tuple[str, int, str]] = set()
    try:
        deadline = time.monotonic() + 900
        while driver.poll() is None and time.monotonic() < deadline:  # Ray's agents start after the GCS
            seen |= listening(driver.pid)
            time.sleep(0.2)
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    err = (tmp_path / "driver.err").read_text()
    assert driver.returncode == 0, err[-3000:]
    names = " ".join(name for _, _, name in seen)
    assert "gcs_server" in names and "raylet" in names and "ImplicitFunc" in names, seen  # Ray was watched
    assert all(port != 8265 for _, port, _ in seen), "the Ray dashboard is started"
    exposed = {(a, p, n): _probe(a, p) for a, p, n in seen if a not in LOOPBACK}
    assert not exposed, f"listening outside loopback (HTTP status, None: not HTTP): {exposed}"


PASSWORD = "pw-9f3k-never-logged"


@pytest.mark.slow  # two studies and a tracking server: about a minute
def test_no_credential_reaches_params_tags_artifacts_or_the_terminal(tmp_path, mlflow_server):
    host = mlflow_server.url.removeprefix("http://")
    uri = f"http://alice:{PASSWORD}@{host}"  # the server has no auth: it ignores the credentials
    study = {"name": "secrets", "base": {"num_tasks": 2, "epochs": 1, "widths": [32], "m": 2}}
    (tmp_path / "secrets.yaml").write_text(yaml.safe_dump(study))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
    }
    proc = subprocess.run(
        [*IMPRESS, "study", "run", "secrets.yaml", "--storage", "studies"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PASSWORD not in proc.stdout + proc.stderr

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the study's parent run and its one trial
    for run in runs:
        recorded = [*run.data.params.items(), *run.data.tags.items()]
        assert not [kv for kv in recorded if PASSWORD in kv[0] + kv[1] or "MLFLOW_TRACKING" in kv[0]], recorded
        for artifact in client.list_artifacts(run.info.run_id):
            text = Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))).read_bytes()
            assert PASSWORD.encode() not in text, artifact.path

    # a server that is away: the message names it, without the password
    mlflow_server.stop()
    proc = subprocess.run(
        [*IMPRESS, "study", "run", "secrets.yaml", "--storage", "elsewhere"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"MLflow tracking server http://alice:***@{host} is unreachable" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_a_study_file_with_a_password_in_its_tracking_uri_is_refused():
    from impress.study import Study, StudyError

    with pytest.raises(StudyError, match="tracking_uri: holds a password.*MLFLOW_TRACKING_PASSWORD") as info:
        Study.from_dict({"name": "s", "base": {"m": 2}, "tracking_uri": f"https://bob:{PASSWORD}@mlflow.example"})
    assert PASSWORD not in str(info.value)
