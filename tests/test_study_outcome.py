"""What a study leaves (trials.csv, front.csv, its summary, the trials' MLflow runs) holds every
metric a study may optimise (validation, what it chooses on) and each one's test twin beside it.

Real studies on one real local Ray, logged to the test session's SQLite MLflow store."""

from __future__ import annotations

import math
import os
import re

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from impress.config import INFERENCE_RULES, Config
from impress.metrics import split_of, twin
from impress.report import mode_of
from impress.study import FINAL_METRICS, METRICS, Study, _not_produced
from impress.study_outcome import front_summary
from impress.tuner import run_study

# every objective the study validator accepts (`impress.study._objective`)
ACCEPTED = {*METRICS, *FINAL_METRICS, *(f"{m}/{r}" for m in FINAL_METRICS for r in INFERENCE_RULES)}
BOOKKEEPING = {"step", "task", "tasks_done", "num_tasks", "resumed_from"}
TINY = {"num_tasks": 3, "epochs": 1, "widths": [16, 16]}
# m=1 heterogeneous: the first task keeps its mask, the other two are learned by coefficients (so
# val/acc/avg_coeff_tasks is reported); superfluous neurons let the G rules run; a task's test set is one batch
INFERRING = {
    **TINY,
    "m": 1,
    "superfluous": 1,
    "infer_rules": list(INFERENCE_RULES),
    "infer_batch_size": 1024,
    "infer_fit_steps": 2,
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's studies (a start costs 5-7 s): `run_study` uses a running Ray
    and leaves it running."""
    import ray

    from impress.tuner import _init_ray

    started = _init_ray("local")
    yield
    if started:
        ray.shutdown()


def _tune_keys() -> set[str]:
    """What Ray Tune adds to every result (`timestamp`, `training_iteration`, `pid`, ...)."""
    from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS

    return set(AUTO_RESULT_KEYS) | set(DEBUG_METRICS) | {"done"}


def _trial_runs(name: str) -> dict[str, object]:
    """The study's trial runs in the session's store, by trial id."""
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags["impress.trial_id"]: r for r in runs if r.data.tags.get("impress.kind") == "trial"}


def _history_steps(run_id: str, metric: str) -> list[int]:
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _objectives(scenario: str) -> list[str]:
    """Every objective the validator accepts and says a trial of INFERRING in `scenario` reports."""
    cfg = Config.from_dict({**INFERRING, "scenario": scenario})
    return sorted(m for m in ACCEPTED if _not_produced(m, cfg) is None)


def test_two_studies_cover_every_accepted_objective():
    assert set(_objectives("GNs")) | set(_objectives("GNu")) == ACCEPTED


@pytest.mark.parametrize("scenario", ["GNs", "GNu"])
def test_every_objective_reaches_trials_csv_mlflow_and_the_front(tmp_path, local_ray, scenario):
    objectives = _objectives(scenario)
    name = f"every_objective_{scenario}"
    study = Study.from_dict(
        {
            "name": name,
            "base": {**INFERRING, "scenario": scenario},
            "grid": {"granularity": ["global", "layer"]},
            "objectives": [{"metric": m, "mode": mode_of(m)} for m in objectives],
            "concurrency": 2,
        }
    )
    outcome = run_study(study, storage=tmp_path)

    trials = pd.read_csv(outcome.root / "trials.csv")
    assert outcome.complete and len(trials) == 2 and set(trials["state"]) == {"complete"}
    shown = [*objectives, *(twin(m, "test") for m in objectives if split_of(m))]  # chosen on, reported
    assert {split_of(m) for m in objectives} == {"val", None}  # a study chooses on validation
    for m in shown:
        assert m in trials, f"trials.csv has no column {m}"
        assert trials[m].map(math.isfinite).all(), f"trials.csv: {m} = {list(trials[m])}"
    own = {"trial_id", "tasks_done", "resumed_from"}  # trials.csv's columns by design
    assert not set(trials) & ((_tune_keys() | BOOKKEEPING) - own)

    runs = _trial_runs(name)
    assert set(runs) == set(trials["trial_id"])
    for _, row in trials.iterrows():
        run = runs[row["trial_id"]]
        logged = run.data.metrics  # the value at the last step: the final task's
        assert not [m for m in objectives if m not in logged], f"MLflow run {row['trial_id']} lacks objectives"
        assert all(logged[m] == pytest.approx(row[m], rel=1e-12) for m in objectives)
        assert not set(logged) & (_tune_keys() | BOOKKEEPING)
        assert all(logged[m] == pytest.approx(row[m], rel=1e-12) for m in shown)
        for split in ("val", "test"):
            assert _history_steps(run.info.run_id, f"{split}/forgetting") == [0, 1, 2]  # every task boundary
            assert _history_steps(run.info.run_id, f"{split}/task_infer/acc") == [2]  # after the last task only

    front = pd.read_csv(outcome.root / "front.csv")
    assert len(front) and {t for ids in front["trials"] for t in ids.split(",")} <= set(trials["trial_id"])
    for m in objectives:  # each validation objective with its test twin beside it
        if split_of(m):
            assert list(front.columns).index(twin(m, "test")) == list(front.columns).index(m) + 1, m
    summary = front_summary(outcome, study)
    assert "2 trials: 2 complete" in summary and "(no complete trials)" not in summary
    assert "test/acc/avg" in summary


def test_early_stopping_on_forgetting_stops_the_forgetful_trial(tmp_path, local_ray):
    """ASHA on validation forgetting: finetuning forgets at task 2 (permuted pixels), ImpressLearn
    cannot (its stored masks and coefficients never change), so the finetuning trial, run second,
    falls below ImpressLearn's forgetting at the rung and stops there."""
    study = Study.from_dict(
        {
            "name": "forgetting_asha",
            "base": {**TINY, "stream": "permuted", "m": 1},
            "cases": [{"method": "impresslearn"}, {"method": "finetune"}],
            "objectives": [{"metric": "val/forgetting", "mode": "min"}, {"metric": "val/bwt", "mode": "max"}],
            "concurrency": 1,  # NOTE: in order, so ImpressLearn sets the rung's cutoff
            "early_stopping": {"metric": "val/forgetting", "mode": "min", "grace_tasks": 1, "reduction_factor": 2},
        }
    )
    outcome = run_study(study, storage=tmp_path)

    trials = pd.read_csv(outcome.root / "trials.csv").set_index("method")
    assert trials.loc["impresslearn", "state"] == "complete"
    assert trials.loc["finetune", "state"] == "stopped" and trials.loc["finetune", "tasks_done"] == 2
    for split in ("val", "test"):  # both splits tell the same story
        assert trials.loc["impresslearn", f"{split}/forgetting"] == 0.0
        assert trials.loc["finetune", f"{split}/forgetting"] > 0 and trials.loc["finetune", f"{split}/bwt"] < 0

    runs = _trial_runs("forgetting_asha")
    stopped = runs[trials.loc["finetune", "trial_id"]]
    assert stopped.data.tags["impress.state"] == "stopped"
    assert _history_steps(stopped.info.run_id, "val/forgetting") == [0, 1]
    front = pd.read_csv(outcome.root / "front.csv")
    assert list(front["method"]) == ["impresslearn"]  # a stopped trial never enters the front
    assert (outcome.root / "pareto.png").stat().st_size > 10_000
    assert "val/forgetting min, val/bwt max), with test/forgetting, test/bwt beside:" in front_summary(outcome, study)
    # the progress lines (the study's log holds what the terminal showed): what ASHA and the front
    # chose on, validation, each with its test value beside it
    lines = (outcome.root / "study.log").read_text().splitlines()
    tasks = [line for line in lines if "] task   " in line]
    assert tasks, lines
    assert all(re.search(r"val/forgetting=\S+ \(test \S+\)  val/bwt=\S+ \(test \S+\)$", t) for t in tasks), tasks
    done = [line for line in lines if "] done   " in line]
    assert done[-1].endswith("best val/forgetting 0 (test 0)"), done
