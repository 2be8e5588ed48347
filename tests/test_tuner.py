"""Studies on a real local Ray with real Optuna (no mocks): each test starts and stops its own Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from raycluster import send
from studystate import tasks_checkpointed

from impress.config import Config
from impress.pareto import pareto_mask
from impress.study import Study
from impress.trainer import run
from impress.tuner import run_study

BASE = {"num_tasks": 3, "epochs": 2, "widths": [32, 32], "stream": "rotated"}
SEARCH = {
    "name": "mo",
    "base": BASE,
    "search": {"m": {"type": "int", "low": 1, "high": 2}, "granularity": ["global", "layer", "channel"]},
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
    "sampler": "tpe",
    "trials": 4,
    "concurrency": 2,
}
IMPRESS = [sys.executable, "-m", "impress.cli"]


def _direct(study: Study, row: pd.Series) -> list[list[float]]:
    """The accuracy matrix of a trial's config and seed, run directly in this process."""
    values = {k: row[k] for k in [p.name for p in study.search] + list(study.grid) if k in row}
    values = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in values.items()}
    cfg = study.config(**values, seed=int(row["seed"]), threads=1)
    return run(cfg).acc_matrix


def _results(root: Path, trial_id: str) -> dict:
    return json.loads((root / "results" / trial_id / "results.json").read_text())


def _same_matrix(stored: list, direct: list) -> None:
    """results.json writes NaN (above the diagonal) as null."""
    np.testing.assert_array_equal(np.array(stored, dtype=float), np.array(direct, dtype=float))


def test_trials_run_at_the_priority_of_the_command_that_started_them():
    """Ray starts its workers at nice 15, where any other busy process on the machine starves them
    (a study made no progress in 7 minutes beside two busy shell loops); a study's Ray does not."""
    import ray

    from impress.tuner import _init_ray

    assert _init_ray("local")
    try:

        @ray.remote
        def niceness() -> int:
            return os.nice(0)

        assert ray.get(niceness.remote()) == os.nice(0)
    finally:
        ray.shutdown()


def _front_trials(front: pd.DataFrame) -> list[str]:
    """The trial ids averaged into the front's configs."""
    return [t for ids in front["trials"] for t in ids.split(",")]


def test_multiobjective_search_runs_to_completion(tmp_path):
    study = Study.from_dict(SEARCH)
    outcome = run_study(study, storage=tmp_path)
    trials = pd.read_csv(outcome.root / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"complete"} and outcome.complete
    assert trials["trial_id"].is_unique
    front = pd.read_csv(outcome.root / "front.csv")
    on = pareto_mask(trials[["val/acc/avg", "bits/per_task"]].to_numpy(), ["max", "min"])  # chosen on validation
    assert sorted(_front_trials(front)) == sorted(trials["trial_id"][on])  # one seed: each trial its own config
    # ... and reported on test: each table holds both splits, the objective's test twin beside it
    for table in (trials, front):
        assert table[["val/acc/avg", "test/acc/avg"]].stack().between(0, 1).all()
        assert list(table.columns).index("test/acc/avg") == list(table.columns).index("val/acc/avg") + 1
    assert (outcome.root / "pareto.png").stat().st_size > 10_000
    for _, row in trials.iterrows():  # every trial's results equal a direct run of its config and seed
        _same_matrix(_results(outcome.root, row["trial_id"])["acc_matrix"], _direct(study, row))
    stored = optuna.load_study(study_name="mo", storage=f"sqlite:///{outcome.root / 'optuna.db'}")
    assert [t.state for t in stored.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.values[0] for t in stored.trials) == sorted(trials["val/acc/avg"])  # Optuna saw validation
    assert stored.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]


def _pids_with(text: str) -> list[int]:
    """This test's processes (descendants of this one: its Ray's workers) whose command line (Ray
    sets trial workers' titles) contains `text`; other Rays on the machine are left alone."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, title in titles.items() if text in title and ours(pid)]


def _kill_the_trial_worker_mid_stream(root: Path, num_tasks: int, killed: list[int]) -> None:
    """SIGKILL the trial's worker once its checkpoint holds a finished task (state, not time). The
    worker is frozen (SIGSTOP) while its checkpoint is read again, so the stream it is killed in is
    unfinished whatever the machine's load; a stream already finished is left alone (the test fails)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if tasks_checkpointed(root) and (pids := set(_pids_with("ImplicitFunc"))):
            send(pids, signal.SIGSTOP)
            unfinished = max(tasks_checkpointed(root).values(), default=num_tasks) < num_tasks
            # a real crash of the process running the trial, or the worker goes on
            send(pids, signal.SIGKILL if unfinished else signal.SIGCONT)
            killed.extend(pids if unfinished else [])
            return
        time.sleep(0.05)


def test_killed_trial_is_retried_from_its_checkpoint(tmp_path):
    """SIGKILL to a trial's worker mid-stream, under `impress study run` as a user runs it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {
        "name": "retry",
        "base": {**BASE, "num_tasks": 6, "epochs": 10},
        "grid": {"m": [2]},
        "concurrency": 1,
        "max_failures": 2,
        "tracking_uri": uri,
    }
    study = Study.from_dict(data)
    root = tmp_path / "retry"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_the_trial_worker_mid_stream, args=(root, 6, killed))
    watcher.start()
    proc = subprocess.run(
        [*IMPRESS, "study", "run", str(_write_study(tmp_path / "retry.yaml", data)), "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    watcher.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed, "the trial finished before it could be killed"
    trials = pd.read_csv(root / "trials.csv")
    assert len(trials) == 1 and trials["state"][0] == "complete"
    assert trials["resumed_from"][0] >= 1  # continued after its last finished task, not from scratch
    _same_matrix(_results(root, trials["trial_id"][0])["acc_matrix"], _direct(study, trials.iloc[0]))
    # MLflow: the retried trial is still one run, and every task's step is logged exactly once
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("retry")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`impress.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].data.tags["impress.state"] == "complete"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "test/acc/avg")) == list(range(6))
    # the terminal: our one line for the failure, whole sentences; Ray's traceback only in the study's log
    terminal = proc.stderr
    failed = [line for line in terminal.splitlines() if " failed " in line]
    # Ray names the dead worker when it learns the cause in time, else only the actor's death
    assert len(failed) == 1 and ("worker process has died." in failed[0] or "actor died" in failed[0]), terminal
    assert failed[0].endswith("; retrying from its last finished task (retry 1 of 2)"), failed[0]
    assert "Traceback" not in terminal and "Token authentication" not in terminal, terminal
    log = (root / "study.log").read_text()
    assert "Traceback" in log and failed[0].split("] ", 1)[1] in log


def _write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


RESUMABLE = {**SEARCH, "name": "resumable", "trials": 4, "concurrency": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    """The trials of the resumable study run start to finish without interruption."""
    tmp = tmp_path_factory.mktemp("whole")
    study_file = _write_study(tmp / "resumable.yaml", RESUMABLE)
    whole = subprocess.run(
        [*IMPRESS, "study", "run", str(study_file), "--storage", str(tmp)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=600,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    return pd.read_csv(tmp / "resumable" / "trials.csv")


@pytest.mark.parametrize(
    "sig",
    [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT],  # the kill: a minute more, in CI
    ids=["driver_killed", "ctrl_c"],
)
def test_interrupted_study_resumes_to_the_same_results(tmp_path, uninterrupted, sig):
    """The driver killed mid-study (SIGKILL to it and its Ray), or Ctrl-C (SIGINT to the terminal's
    process group), then `impress study resume`: with concurrency 1 and a seeded sampler the study
    equals an uninterrupted one; no trial is lost or duplicated."""
    study_file = _write_study(tmp_path / "resumable.yaml", RESUMABLE)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cut_root = tmp_path / "cut" / "resumable"
    driver = subprocess.Popen(
        [*IMPRESS, "study", "run", str(study_file), "--storage", str(tmp_path / "cut")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and len(list((cut_root / "results").glob("*/results.json"))) < 2:
            assert driver.poll() is None, "the study finished before it could be interrupted"
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGSTOP)  # frozen while its state is read: cut mid-study, whatever the load
        finished = len(list((cut_root / "results").glob("*/results.json")))
        os.killpg(driver.pid, sig)
        os.killpg(driver.pid, signal.SIGCONT)
        assert finished < 4, "the study finished before it could be interrupted"
        _, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    if sig == signal.SIGKILL:
        assert not (cut_root / "trials.csv").exists()
    else:  # Ctrl-C: the driver stops cleanly, says how to go on (our advice, not Tune's) and exits non-zero
        assert driver.returncode != 0 and "impress study resume resumable" in err, err[-3000:]
        assert "Tuner.restore" not in err and "Tuner.restore" in (cut_root / "study.log").read_text(), err[-3000:]
        assert len(pd.read_csv(cut_root / "trials.csv")) < 4

    resumed = subprocess.run(
        [*IMPRESS, "study", "resume", "resumable", "--storage", str(tmp_path / "cut")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = pd.read_csv(cut_root / "trials.csv")
    assert len(b) == 4 and b["trial_id"].is_unique and set(b["state"]) == {"complete"}
    cols = ["m", "granularity", "val/acc/avg", "test/acc/avg", "bits/per_task"]
    key = ["m", "granularity", "val/acc/avg"]
    pd.testing.assert_frame_equal(
        uninterrupted[cols].sort_values(key).reset_index(drop=True), b[cols].sort_values(key).reset_index(drop=True)
    )


def test_stopped_trials_are_pruned_in_optuna_and_kept_off_the_front(tmp_path):
    data = {
        **SEARCH,
        "name": "asha",
        "base": {**BASE, "num_tasks": 4},
        "trials": 6,
        "concurrency": 1,
        "sampler": "random",
        "early_stopping": {"metric": "val/acc/avg", "grace_tasks": 1, "reduction_factor": 2},
    }
    study = Study.from_dict(data)
    outcome = run_study(study, storage=tmp_path)
    trials = pd.read_csv(outcome.root / "trials.csv")
    stopped = trials[trials["state"] == "stopped"]
    assert len(stopped) >= 1, "ASHA stopped no trial: the test would prove nothing"
    assert (stopped["tasks_done"] < 4).all()
    front = pd.read_csv(outcome.root / "front.csv")
    assert not set(_front_trials(front)) & set(stopped["trial_id"])
    stored = optuna.load_study(study_name="asha", storage=f"sqlite:///{outcome.root / 'optuna.db'}")
    states = [t.state for t in stored.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    assert states.count(optuna.trial.TrialState.COMPLETE) == (trials["state"] == "complete").sum()


def test_search_on_an_inference_metric_reported_only_after_the_last_task(tmp_path):
    """Task-identity inference runs once, after the stream: the searcher must wait for it."""
    data = {
        "name": "gn_search",
        "base": {**BASE, "scenario": "GNu", "superfluous": 4, "infer_rules": ["oneshot_g", "oneshot_h"]},
        "search": {"method": ["supsup", "impresslearn"], "m": {"type": "int", "low": 1, "high": 2}},
        "objectives": [{"metric": "val/task_infer/acc/oneshot_h", "mode": "max"}],
        "sampler": "random",
        "trials": 2,
        "concurrency": 2,
    }
    outcome = run_study(Study.from_dict(data), storage=tmp_path)
    trials = pd.read_csv(outcome.root / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"complete"}
    for split in ("val", "test"):
        for col in ("task_infer/acc", "acc/gnu", "task_infer/acc/oneshot_g", "acc/gnu/oneshot_h"):
            assert trials[f"{split}/{col}"].between(0, 1).all(), f"{split}/{col}"
        # the first rule is the headline
        assert (trials[f"{split}/task_infer/acc"] == trials[f"{split}/task_infer/acc/oneshot_g"]).all()
    stored = optuna.load_study(study_name="gn_search", storage=f"sqlite:///{outcome.root / 'optuna.db'}")
    assert sorted(t.value for t in stored.trials) == sorted(trials["val/task_infer/acc/oneshot_h"])


def test_malformed_study_fails_before_ray_starts(tmp_path):
    search = {**SEARCH["search"], "sparsity": {"type": "float", "low": 0.5, "high": 1.0}}
    bad = _write_study(tmp_path / "bad.yaml", {**SEARCH, "search": search})
    proc = _refused_before_ray(bad, tmp_path / "out")
    assert "search.sparsity: 1.0 would make an invalid config" in proc.stderr


def _refused_before_ray(study_file: Path, storage: Path) -> subprocess.CompletedProcess:
    """`impress study run` that must exit 2 before Ray starts or anything is written: a study's
    folder (and its log) is created only after every check passed, right before Ray starts."""
    proc = subprocess.run(
        [*IMPRESS, "study", "run", str(study_file), "--storage", str(storage)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not storage.exists(), proc.stderr[-3000:]
    return proc


def test_missing_dataset_fails_before_ray_starts(tmp_path):
    data = {"name": "no_data", "base": {**BASE, "source": "mnist", "data_root": str(tmp_path / "data")}}
    study_file = _write_study(tmp_path / "no_data.yaml", {**data, "grid": {"m": [1, 2]}})
    proc = _refused_before_ray(study_file, tmp_path / "out")
    assert f"MNIST not found under {tmp_path / 'data'}" in proc.stderr


def test_a_checkpoint_folder_is_named_by_the_fields_off_their_defaults(tmp_path):
    """So a field added to `Config` later leaves every existing folder's name as it was."""
    from impress.tuner import checkpoint_folder, config_identity

    assert config_identity(Config(m=3, seed=2, threads=1, device="cpu")) == {"m": 3, "seed": 2}
    assert config_identity(Config()) == {}
    assert checkpoint_folder(tmp_path, Config(m=3)) != checkpoint_folder(tmp_path, Config(m=4))
    assert checkpoint_folder(tmp_path, Config(m=3, threads=2)) == checkpoint_folder(tmp_path, Config(m=3))
