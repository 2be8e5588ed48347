"""A study in which one trial's loss really becomes NaN (coefficients trained by SGD at alpha_lr 10
on digits: deterministic in the seed) and the other trains normally (real Ray, real MLflow store).
The diverging trial is retried `max_failures` times, then marked failed with its reason in
trials.csv, in the summary and in its MLflow run; the other completes; the study finishes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

REASON = (
    "impress.methods.base.DivergedError: task 1 (rotated_120.0deg): training loss became nan in coefficients epoch 1"
)


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    study = {
        "name": "diverging",
        "base": {
            "method": "impresslearn",
            "m": 1,
            "num_tasks": 3,
            "epochs": 2,
            "widths": [32, 32],
            "optimizer": "sgd",
            "granularity": "global",
        },
        "grid": {"alpha_lr": [0.05, 10.0]},
        "max_failures": 1,
        "concurrency": 2,
    }
    (tmp_path / "diverging.yaml").write_text(yaml.safe_dump(study))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "impress.cli", "study", "run", "diverging.yaml", "--storage", "studies"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "studies" / "diverging"

    trials = pd.read_csv(root / "trials.csv").set_index("alpha_lr")
    assert trials.loc[0.05, "state"] == "complete" and trials.loc[0.05, "tasks_done"] == 3
    assert trials.loc[10.0, "state"] == "failed" and trials.loc[10.0, "tasks_done"] == 1
    assert trials.loc[10.0, "error"].startswith(REASON)
    assert len(list((root / "results").glob("*/results.json"))) == 1  # only the complete trial has results

    assert "2 trials: 1 complete, 1 failed" in proc.stdout
    assert f"{trials.loc[10.0, 'trial_id']} (alpha_lr=10, seed=0): {REASON}" in proc.stdout
    # one retry from its last finished task, then given up on: not retried forever
    assert proc.stderr.count("retrying from its last finished task (retry 1 of 1)") == 1
    assert proc.stderr.count("after 2 attempts, not retried again: " + REASON) == 1
    (error_file,) = root.glob("tune/*alpha_lr_10*/error.txt")
    assert error_file.read_text().count("Failure # ") == 2

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("diverging")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`impress.kind` = 'trial'")
    by_lr = {r.data.params["alpha_lr"]: r for r in runs}
    assert len(runs) == 2 and set(by_lr) == {"0.05", "10.0"}
    failed, complete = by_lr["10.0"], by_lr["0.05"]
    assert failed.info.status == "FAILED" and failed.data.tags["impress.state"] == "failed"
    assert failed.data.tags["error"].startswith(REASON)
    assert complete.info.status == "FINISHED" and complete.data.tags["impress.state"] == "complete"
    steps = [m.step for m in client.get_metric_history(failed.info.run_id, "test/acc/avg")]
    assert steps == [0]  # the task learned before the divergence, logged once across both attempts
