"""A node leaves a two-node cluster mid-study: the trials it ran are retried on the node that is
left, each from its last finished task, and the study finishes with the results it would have had
(real `ray start` nodes with token auth, SIGKILL to the second node's processes)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from raycluster import our_processes, send
from studystate import tasks_checkpointed

from impress.study import Study
from impress.trainer import run
from impress.tuner import checkpoint_folder

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


def _mid_stream(checkpoints: dict[str, int]) -> bool:
    """Both running trials (one per node: each asks for the one CPU a node has) have finished a
    task and not their stream: only a running trial's checkpoint is unfinished."""
    running = [done for done in checkpoints.values() if done < STUDY["base"]["num_tasks"]]
    return len(running) == STUDY["concurrency"] and min(running) >= 1


def test_trials_of_a_lost_node_resume_on_the_other(cluster, tmp_path):
    root = cluster.root / "shared" / "studies"
    store = f"sqlite:///{cluster.root / 'shared' / 'mlflow.db'}"
    study_file = tmp_path / "node_loss.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "tracking_uri": store}))
    study = Study.from_dict(STUDY)
    with open(tmp_path / "driver.out", "w") as out, open(tmp_path / "driver.err", "w") as errors:
        driver = subprocess.Popen(  # NOTE: output to files: a pipe nobody reads fills up and stalls the driver
            [sys.executable, "-m", "impress.cli", "study", "run", str(study_file), "--storage", str(root)],
            env={**cluster.env, "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs}"},
            stdout=out,
            stderr=errors,
            text=True,
        )
    try:
        # wait until the trial on the second node is mid-stream, then take the node away
        deadline, at_kill = time.monotonic() + 900, {}
        while not _mid_stream(at_kill):
            assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no two trials were ever mid-stream at once"
            if _mid_stream(tasks_checkpointed(root / "node_loss")):
                worker = our_processes(cluster.worker_mark)
                send(worker, signal.SIGSTOP)  # frozen: its trial's checkpoint stays as read
                at_kill = tasks_checkpointed(root / "node_loss")
                if not _mid_stream(at_kill):  # a trial ended in between: go on, look again
                    send(worker, signal.SIGCONT)
            time.sleep(0.05)
        assert cluster.kill_worker_node() > 0
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    err = (tmp_path / "driver.err").read_text()
    assert driver.returncode == 0, err[-3000:]
    lost = re.findall(r" failed (\S+): .*; retrying from its last finished task", err)
    assert len(lost) == 1, err[-3000:]  # the trial on the lost node, and only it
    deadline = time.monotonic() + 300
    while len(cluster.alive_nodes()) != 1:  # the cluster knows the node is gone
        assert time.monotonic() < deadline, cluster.alive_nodes()
        time.sleep(1)

    trials = pd.read_csv(root / "node_loss" / "trials.csv")
    assert len(trials) == 4 and trials["trial_id"].is_unique and set(trials["state"]) == {"complete"}
    row = trials.set_index("trial_id").loc[lost[0]]
    folder = checkpoint_folder(root / "node_loss", study.config(granularity=row["granularity"], seed=int(row["seed"])))
    # the lost node's trial went on after the last task it had finished when the node went, mid-stream
    assert 1 <= row["resumed_from"] == at_kill[folder.name] < STUDY["base"]["num_tasks"], (row, at_kill)
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
