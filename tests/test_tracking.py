"""MLflow records of studies, with a real SQLite store, a real `mlflow server` and a real browser."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from browser import CHROMIUM, chromium, open_page
from conftest import free_port, wait_http
from mlflow.tracking import MlflowClient

from impress.study import Study
from impress.tuner import run_study, sync_study

IMPRESS = [sys.executable, "-m", "impress.cli"]
STUDY = {
    "name": "tracked",
    "base": {"num_tasks": 3, "epochs": 2, "widths": [32, 32]},
    "grid": {"m": [1, 2]},
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
}


def _runs(uri: str, name: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("impress.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("impress.kind") == "trial"]
    return client, parents, trials


def _check_study_records(uri: str, name: str, study: Study, num_trials: int) -> None:
    client, parents, trials = _runs(uri, name)
    assert len(parents) == 1 and len(trials) == num_trials
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"study.yaml", "trials.csv", "front.csv"}
    for run in trials:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["impress.state"] == "complete" and run.info.status == "FINISHED"
        assert tags["impress.study"] == name and tags["dataset"] == "digits" and tags["stream"] == "rotated"
        assert tags["git_commit"] and tags["version.torch"] and tags["seed"] == "0"
        cfg = study.config(m=int(params["m"]), seed=0)
        assert params == {
            k: (",".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in cfg.to_dict().items()
        } | {"threads": "1", "device": "cpu"}  # a trial without a GPU runs on the CPU
        for split in ("val", "test"):  # every metric of both splits
            history = client.get_metric_history(run.info.run_id, f"{split}/acc/avg")
            assert sorted(m.step for m in history) == [0, 1, 2]  # step = task index, each once
            assert len(client.get_metric_history(run.info.run_id, f"{split}/acc/task_000")) == 3
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"results.json", "acc_matrix.csv", "val_acc_matrix.csv"}


def test_study_is_recorded_in_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = Study.from_dict({**STUDY, "tracking_uri": uri})
    run_study(study, storage=tmp_path / "studies")
    _check_study_records(uri, "tracked", study, 2)
    # syncing again from the study's own records adds nothing (no duplicate runs or steps)
    assert sync_study("tracked", storage=tmp_path / "studies") == 2
    _check_study_records(uri, "tracked", study, 2)


def test_study_is_recorded_on_a_tracking_server_and_resynced(tmp_path, mlflow_server):
    url = mlflow_server.url
    study = Study.from_dict({**STUDY, "name": "served", "tracking_uri": url})
    run_study(study, storage=tmp_path / "studies")
    _check_study_records(url, "served", study, 2)
    # the same study's records written again to a fresh store, from the study's files alone
    other = f"sqlite:///{tmp_path / 'other.db'}"
    stored = tmp_path / "studies" / "served" / "study.yaml"
    data = yaml.safe_load(stored.read_text())
    stored.write_text(yaml.safe_dump({**data, "tracking_uri": other}, sort_keys=False))
    assert sync_study("served", storage=tmp_path / "studies") == 2
    _check_study_records(other, "served", study, 2)


def test_unreachable_tracking_server_fails_before_anything_runs(tmp_path):
    port = free_port()  # nothing listens there
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "tracking_uri": f"http://127.0.0.1:{port}"}))
    proc = subprocess.run(
        [*IMPRESS, "study", "run", str(study_file), "--storage", str(tmp_path / "studies")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in proc.stderr
    assert not (tmp_path / "studies").exists()  # nothing written (the folder comes right before Ray)
    resume = subprocess.run(
        [*IMPRESS, "study", "resume", STUDY["name"], "--storage", str(tmp_path / "studies")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resume.returncode == 2 and f"no study {STUDY['name']!r}" in resume.stderr, resume.stderr


async def _browse(port: int, url: str, expected: list[str], screenshot: Path) -> str:
    """Open `url` in the browser, expand the study's parent run, wait until every `expected` text
    shows, save a screenshot; returns the page's text."""
    async with open_page(port) as page:
        await page.call("Page.navigate", url=url)
        expander = 'button[data-component-id*="runnamecellrenderer"]'
        deadline, clicked = time.monotonic() + 300, -math.inf
        body = ""
        while time.monotonic() < deadline:
            body = await page.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(e in body for e in expected):
                break
            # NOTE: the expander toggles: clicked again only if the rows it shows have not come in 20 s
            if time.monotonic() - clicked > 20 and await page.evaluate(f"!!document.querySelector('{expander}')"):
                await page.evaluate(f"document.querySelector('{expander}').click()")
                clicked = time.monotonic()
            await asyncio.sleep(0.5)
        await page.screenshot(screenshot)
        return body


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_ui_lists_the_trial_runs_in_a_browser(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = Study.from_dict({**STUDY, "name": "browsed", "tracking_uri": uri})
    run_study(study, storage=tmp_path / "studies")
    _, _, trials = _runs(uri, "browsed")
    names = [run.info.run_name for run in trials]
    port = free_port()
    with open(tmp_path / "ui.out", "w") as out:  # NOTE: a file: the server's access log would fill a pipe
        ui = subprocess.Popen(
            [*IMPRESS, "ui", "--store", uri, "--port", str(port), "--study", "browsed"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while len((printed := (tmp_path / "ui.out").read_text()).splitlines()) < 2:
            assert ui.poll() is None and time.monotonic() < deadline, printed
            time.sleep(0.1)
        printed = "".join(printed.splitlines(keepends=True)[:2])
        assert f"http://127.0.0.1:{port}/#/experiments/" in printed  # the URL it prints ...
        url = printed.split()[-1]
        wait_http(f"http://127.0.0.1:{port}/health")  # ... is served on loopback
        shots = Path(os.environ.get("IMPRESS_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        shot = shots / "mlflow_ui_experiment.png"
        with chromium(tmp_path / "chrome") as devtools:
            body = asyncio.run(_browse(devtools, url, ["browsed", *names], shot))
        for name in names:
            assert name in body  # every trial's run is listed on the experiment page
        assert "browsed" in body and shot.stat().st_size > 20_000
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()
