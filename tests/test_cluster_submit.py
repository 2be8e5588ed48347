"""`impress submit | status | stop` against a real two-node Ray cluster on this machine.

Two `ray start` nodes (head plus one joined with `--address`), token authentication on, the real
Jobs API and a real SQLite MLflow store; no mocks. Ports are picked free (no default Ray port), the
dashboard listens on 127.0.0.1, and the cluster is always torn down, also when the test fails.
The cluster harness is `tests/raycluster.py`.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from raycluster import Cluster
from studystate import tasks_checkpointed

from impress.config import Config
from impress.tuner import checkpoint_folder

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
STUDY = {
    "name": "cluster_smoke",
    "question": "does a study spread over both nodes, survive a stop, and land in MLflow?",
    # about 2.5 s a task on one idle core (20 s a trial): a stop lands mid-stream even on an idle machine
    "base": {"stream": "permuted", "num_tasks": 8, "epochs": 60, "widths": [256, 256], "m": 2},
    "grid": {"granularity": ["global", "layer"]},
    "seeds": [0, 1],
    "concurrency": 2,
    "resources": {"cpu": 1},
}


def _project(root: Path) -> Path:
    """A project folder to upload: the package and the study file (what `impress submit` sends)."""
    project = root / "project"
    shutil.copytree(PROJECT / "impress", project / "impress", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", project)
    (project / "studies").mkdir()
    (project / "studies" / "smoke.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return project


class ActorWatcher(threading.Thread):
    """Records which node each trial worker (pid) runs on, every couple of seconds."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.stop, self.node_of = cluster, threading.Event(), {}

    def run(self) -> None:
        while not self.stop.wait(2.0):
            for actor in self.cluster.ray_list("actors", "class_name=ImplicitFunc"):
                self.node_of[actor["pid"]] = actor["node_id"]


def test_study_runs_on_two_nodes_survives_a_stop_and_lands_in_mlflow(cluster):
    _project(cluster.root)
    watcher = ActorWatcher(cluster)
    watcher.start()
    storage, store = cluster.root / "shared" / "studies", f"sqlite:///{cluster.root / 'shared' / 'mlflow.db'}"
    submit = ["submit", "studies/smoke.yaml", "--storage", str(storage), "--tracking-uri", store]
    name, results = STUDY["name"], storage / STUDY["name"] / "results"

    # token authentication is on: a wrong token is refused, with a message that says what to do
    wrong = cluster.impress("status", name, env={**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode == 2 and "auth_token" in wrong.stderr, wrong.stderr

    first = cluster.impress(*submit, "--no-wait")
    assert first.returncode == 0 and f"{name}-1" in first.stderr, first.stderr
    again = cluster.impress(*submit, "--no-wait")  # no double submission while an attempt is live
    assert again.returncode == 2 and "already running" in again.stderr, again.stderr

    # interrupt the study once a trial has a finished task on disk (its checkpoint): state, not time
    root = storage / name
    deadline = time.monotonic() + 900
    while not tasks_checkpointed(root):
        assert time.monotonic() < deadline, cluster.impress("status", name).stdout
        time.sleep(0.2)
    t0 = time.monotonic()
    stopped = cluster.impress("stop", name, "--wait", "600")
    stop_s = time.monotonic() - t0
    assert stopped.returncode == 0 and "STOPPED" in stopped.stderr, stopped.stderr
    at_stop = tasks_checkpointed(root)  # what every trial had finished when the study stopped
    finished_before = {p.name for p in results.iterdir()}
    assert len(finished_before) < 4, "the study finished before it could be interrupted"

    second = cluster.impress(*submit)  # the next attempt resumes the study and streams its log
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"{name}-2" in second.stderr and "Pareto front" in second.stdout

    status = cluster.impress("status", name)
    assert status.returncode == 0
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        [f"{name}-1", "STOPPED"],
        [f"{name}-2", "SUCCEEDED"],
    ]

    trials = pd.read_csv(storage / name / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"complete"} and trials["trial_id"].is_unique
    assert sorted(p.name for p in results.iterdir()) == sorted(trials["trial_id"])
    # no trial repeated a task it had finished before the stop: each continued after its checkpoint
    interrupted = 0
    for _, trial in trials[~trials["trial_id"].isin(finished_before)].iterrows():
        config = json.loads((results / trial["trial_id"] / "results.json").read_text())["config"]
        done = at_stop.get(checkpoint_folder(root, Config.from_dict(config)).name, 0)
        assert trial["resumed_from"] >= done, (trial["trial_id"], done, trial["resumed_from"])
        interrupted += 0 < done < STUDY["base"]["num_tasks"]
    assert interrupted >= 1, f"no trial was stopped mid-stream ({at_stop}): the test would prove nothing"

    # the trials ran on both nodes: each trial's worker pid (Tune's record) -> its actor's node, as
    # seen while the actors lived (Ray forgets a stopped job's actors)
    watcher.stop.set()
    watcher.join()
    pids = {
        json.loads(line)["pid"]
        for record in (storage / name / "tune").glob("*/result.json")
        for line in record.read_text().splitlines()
        if line
    }
    nodes = {watcher.node_of[pid] for pid in pids if pid in watcher.node_of}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s) ({len(pids)} worker pids, {watcher.node_of})"
    print(f"\n{len(finished_before)} of 4 trials finished before the stop; trial workers on {len(nodes)} nodes;")
    print(f"tasks done at the stop {at_stop}; resumed from {sorted(trials['resumed_from'])}; stop took {stop_s:.1f} s")

    # every trial is in MLflow exactly once, complete, under the study's parent run
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    assert {r.data.tags["impress.state"] for r in children} == {"complete"}
    assert sorted(r.data.tags["impress.trial_id"] for r in children) == sorted(trials["trial_id"])
    assert all("token" not in k.lower() for r in runs for k in [*r.data.params, *r.data.tags])
