"""The MLflow tracking server goes away mid-study and comes back: the study goes on, and MLflow ends
up with every trial exactly once, every task's step once (real `mlflow server`, real Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

IMPRESS = [sys.executable, "-m", "impress.cli"]
pytestmark = pytest.mark.slow  # a study across a server's stop and restart: over a minute


def _finished(root: Path) -> int:
    return len(list((root / "results").glob("*/results.json")))


def _check_records(url: str, name: str, trials: int, tasks: int) -> None:
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`impress.kind` = 'trial'")
    assert len(runs) == trials, [r.data.tags.get("impress.trial_id") for r in runs]
    assert len({r.data.tags["impress.trial_id"] for r in runs}) == trials
    for run in runs:
        assert run.data.tags["impress.state"] == "complete" and run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test/acc/avg"))
        assert steps == list(range(tasks)), (run.data.tags["impress.trial_id"], steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"results.json", "acc_matrix.csv", "val_acc_matrix.csv"}


def test_server_away_mid_study_loses_and_duplicates_nothing(tmp_path, mlflow_server):
    tasks, trials = 4, 4
    study = {
        "name": "outage",
        "base": {"num_tasks": tasks, "epochs": 3, "widths": [32, 32]},
        "grid": {"m": [1, 2]},
        "seeds": [0, 1],
        "concurrency": 1,
        "tracking_uri": mlflow_server.url,
    }
    study_file = tmp_path / "outage.yaml"
    study_file.write_text(yaml.safe_dump(study))
    root = tmp_path / "studies" / "outage"
    errors = tmp_path / "driver.err"  # NOTE: a file: a pipe nobody reads fills up and stalls the driver
    with open(errors, "w") as stderr:
        driver = subprocess.Popen(
            [*IMPRESS, "study", "run", str(study_file), "--storage", str(tmp_path / "studies")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 900
        while _finished(root) < 1 and time.monotonic() < deadline:
            assert driver.poll() is None, errors.read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGSTOP)  # frozen while the server goes: mid-study, whatever the load
        before = _finished(root)
        mlflow_server.stop()  # gone mid-study, without a word
        os.killpg(driver.pid, signal.SIGCONT)
        assert before < trials, "the study finished before the server could go"
        while _finished(root) <= before and time.monotonic() < deadline:  # a whole trial runs without a store
            assert driver.poll() is None, errors.read_text()[-3000:]
            time.sleep(0.1)
        assert _finished(root) > before
        mlflow_server.start()  # the same store comes back on the same address
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    err = errors.read_text()
    assert driver.returncode == 0, err[-3000:]
    assert f"MLflow store {mlflow_server.url} failed" in err
    if "run `impress study sync outage` later" not in err:  # the server was back before the end:
        _check_records(mlflow_server.url, "outage", trials, tasks)  # the study filled the gap itself
    synced = subprocess.run(
        [*IMPRESS, "study", "sync", "outage", "--storage", str(tmp_path / "studies")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synced.returncode == 0, synced.stderr[-3000:]
    _check_records(mlflow_server.url, "outage", trials, tasks)  # idempotent: still once each
