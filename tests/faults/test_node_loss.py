"""A node leaves a two-node cluster mid-study: the trials it ran are retried on the node that is
left, each from its last finished task, and the study finishes with the results it would have had
(real `ray start` nodes with token auth, SIGKILL to the second node's processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from raycluster import our_processes

from impress.study import Study
from impress.trainer import run

pytestmark = pytest.mark.slow

STUDY = {
    "name": "node_loss",
    "base": {"stream": "permuted", "num_tasks": 10, "epochs": 30, "widths": [32, 32], "m": 2},
    "grid": {"granularity": ["global", "layer"]},
    "seeds": [0, 1],
    "concurrency": 2,
    "resources": {"cpu": 1},
    "max_failures": 3,
}


def _reports(tune_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for record in tune_dir.glob("*/result.json")
        for line in record.read_text().splitlines()
        if line.strip()
    ]


def _early_trial_on(pids: set[int], reports: list[dict]) -> str | None:
    """A trial that reported from one of `pids` and has done at most half its tasks, or None.

    Actors are reused, so a process that is still alive may have reported a trial it already
    finished; a trial with half its stream to go is still running when the node is taken away."""
    done: dict[str, int] = {}
    for r in reports:
        if r["pid"] in pids:
            done[r["trial_id"]] = max(done.get(r["trial_id"], 0), r["tasks_done"])
    early = [trial for trial, n in done.items() if n <= STUDY["base"]["num_tasks"] // 2]
    return min(early) if early else None


def test_trials_of_a_lost_node_resume_on_the_other(cluster, tmp_path):
    root = cluster.root / "shared" / "studies"
    store = f"sqlite:///{cluster.root / 'shared' / 'mlflow.db'}"
    study_file = tmp_path / "node_loss.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "tracking_uri": store}))
    driver = subprocess.Popen(
        [sys.executable, "-m", "impress.cli", "study", "run", str(study_file), "--storage", str(root)],
        env={**cluster.env, "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # wait until a trial on the second node is early in its stream, then take the node away
        deadline, lost = time.monotonic() + 900, None
        while lost is None:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no trial reported early in its stream from the second node"
            lost = _early_trial_on(our_processes(cluster.worker_mark), _reports(root / "node_loss" / "tune"))
            time.sleep(0.2)
        assert cluster.kill_worker_node() > 0
        done = max(r["tasks_done"] for r in _reports(root / "node_loss" / "tune") if r["trial_id"] == lost)
        assert done < STUDY["base"]["num_tasks"], "the trial finished before its node could be taken away"
        _, err = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert "retrying from its last finished task" in err, err[-3000:]
    deadline = time.monotonic() + 300
    while len(cluster.alive_nodes()) != 1:  # the cluster knows the node is gone
        assert time.monotonic() < deadline, cluster.alive_nodes()
        time.sleep(1)

    trials = pd.read_csv(root / "node_loss" / "trials.csv")
    assert len(trials) == 4 and trials["trial_id"].is_unique and set(trials["state"]) == {"complete"}
    row = trials.set_index("trial_id").loc[lost]
    assert row["resumed_from"] >= 1  # the lost node's trial went on after its last finished task
    study = Study.from_dict(STUDY)
    for _, t in trials.iterrows():  # every trial's results equal a direct run of its config and seed
        stored = json.loads((root / "node_loss" / "results" / t["trial_id"] / "results.json").read_text())
        direct = run(study.config(granularity=t["granularity"], seed=int(t["seed"]), threads=1)).acc_matrix
        np.testing.assert_array_equal(np.array(stored["acc_matrix"], dtype=float), np.array(direct, dtype=float))

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("node_loss")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`impress.kind` = 'trial'")
    assert sorted(r.data.tags["impress.trial_id"] for r in runs) == sorted(trials["trial_id"])
    for r in runs:  # one run per trial, every task's step once
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "test/acc/avg"))
        assert steps == list(range(STUDY["base"]["num_tasks"])), (r.data.tags["impress.trial_id"], steps)
