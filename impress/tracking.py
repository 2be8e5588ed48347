"""MLflow records of studies: the study is an experiment with a parent run, each trial a child run.

Only the study's driver writes to MLflow (trials report to Tune; a Tune callback forwards), so a
local SQLite store is safe under any number of concurrent trials. Runs are found again by their
`impress.trial_id` tag, so a restored study or a retried trial never creates a second run, and a
step (the task index) is logged once, with every metric of its report (`val/...` and `test/...`).
`sync` re-logs a study from its own files, so nothing a finished trial produced is lost while the
tracking server is away.
"""

from __future__ import annotations

import json
import math
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from impress.metrics import is_metric

__all__ = ["TrackingError", "StudyTracker", "default_tracking_uri", "check_reachable", "sync_from_tune", "redact"]

# NOTE: a metric every report holds, whatever the method, scenario or split (and always finite, so
# logged): its history tells which steps a trial's run already has
STEP_METRIC = "time/task_s"
TRIAL_TAG = "impress.trial_id"
KIND_TAG = "impress.kind"  # "study" for the parent run, "trial" for a trial's run


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message says which and what to do."""


def default_tracking_uri(explicit: str | None = None) -> str:
    """The study file's URI, else `MLFLOW_TRACKING_URI`, else `mlflow.db` in the working directory
    (an absolute path: trials and tools run in other folders)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def redact(uri: str) -> str:
    """The URI as it may be printed: a password in it (`http://user:PASSWORD@host`) becomes `***`."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{parsed.username}:***@{host}"))


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail early and clearly when a tracking server cannot be reached (a SQLite file always can)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        if parsed.scheme == "" or parsed.scheme == "file":
            raise TrackingError(
                f"tracking store {uri!r}: MLflow 3 needs a database (sqlite:///ABSOLUTE/PATH.db) "
                f"or a tracking server URL, not a folder"
            )
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({err}); start it, or point the study's "
            f"`tracking_uri` / MLFLOW_TRACKING_URI elsewhere. Nothing has run yet."
        ) from None


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    if redact(uri) != uri:  # NOTE: MLflow prints "View run at <uri>" links, password and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class StudyTracker:
    """Writes one study to MLflow: get-or-create experiment, parent run and trial runs."""

    def __init__(self, uri: str, *, study_name: str, question: str = "", tags: dict[str, str] | None = None) -> None:
        check_reachable(uri)
        self.uri, self.client = uri, _client(uri)
        try:
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                location = None  # a tracking server chooses; a SQLite store keeps them beside its file
                if uri.startswith("sqlite:///"):
                    location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / study_name).as_uri()
                # NOTE: the experiment kind makes the MLflow UI open on the runs table (its default for
                # an untyped experiment is the GenAI traces overview)
                exp_id = self.client.create_experiment(
                    study_name,
                    artifact_location=location,
                    tags={"impress.question": question[:5000], "mlflow.experimentKind": "custom_model_development"},
                )
            else:
                exp_id = experiment.experiment_id
        except Exception as err:
            raise TrackingError(f"MLflow store {redact(uri)}: cannot open experiment {study_name!r}: {err}") from None
        self.experiment_id = exp_id
        self.study_name = study_name
        parent = self._find(f"tags.`{KIND_TAG}` = 'study'")
        if parent is None:
            parent = self.client.create_run(
                exp_id, run_name=study_name, tags={KIND_TAG: "study", "impress.study": study_name, **(tags or {})}
            )
        self.parent_id = parent.info.run_id
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[int]] = {}  # per trial: the steps MLflow has
        self.missed = False  # some write failed or was skipped: the store lacks part of the study

    def _find(self, filter_string: str):
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=2)
        return runs[0] if runs else None

    def has_run(self, trial_id: str) -> bool:
        """Whether this tracker already holds the trial's run (found or created)."""
        return trial_id in self._runs

    def trial_run(self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The trial's run id: found by its tag (restored study, retried trial), else created."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        run = self._find(f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        if run is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=tags.get("impress.run_name", trial_id),
                tags={
                    KIND_TAG: "trial",
                    TRIAL_TAG: trial_id,
                    "mlflow.parentRunId": self.parent_id,
                    "impress.study": self.study_name,
                    "impress.state": "running",
                    **tags,
                },
            )
            from mlflow.entities import Param

            self.client.log_batch(
                run.info.run_id, params=[Param(k, _param_value(v)[:6000]) for k, v in sorted(params.items())]
            )
            self._logged[trial_id] = set()
        else:  # a gap left while the store was away is filled by the next sync
            self._logged[trial_id] = {m.step for m in self.client.get_metric_history(run.info.run_id, STEP_METRIC)}
        self._runs[trial_id] = run.info.run_id
        return run.info.run_id

    def log_task(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """One task boundary's metrics at step = task index (a step already logged is skipped)."""
        step = int(metrics["step"])
        if step in self._logged.setdefault(trial_id, set()):
            return
        from mlflow.entities import Metric

        run_id = self._runs[trial_id]
        ts = int(1000 * float(metrics.get("timestamp", 0))) or None
        batch = [
            Metric(k, float(v), ts or 0, step)
            for k, v in metrics.items()
            if is_metric(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        self.client.log_batch(run_id, metrics=batch)
        self._logged[trial_id].add(step)

    def finish_trial(self, trial_id: str, *, state: str, results_dir: Path | None, extra_tags: dict[str, str]) -> None:
        """Artifacts (results.json, acc_matrix.csv and val_acc_matrix.csv), provenance tags, state,
        and the run's end."""
        run_id = self._runs[trial_id]
        if results_dir is not None and (results_dir / "results.json").exists():
            results = json.loads((results_dir / "results.json").read_text())
            prov = results.get("provenance", {})
            tags = {
                "git_commit": str(prov.get("git_commit")),
                "git_dirty": str(prov.get("git_dirty")),
                "seed": str(results["config"]["seed"]),
                "device": str(prov.get("device")),
                "dataset": results["stream"]["source"],
                "stream": results["stream"]["stream"],
                "stream.tasks": str(results["stream"]["tasks"]),
                "stream.seed": str(results["stream"]["seed"]),
                **{f"version.{k}": str(v) for k, v in prov.get("versions", {}).items()},
            }
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
            for name in ("results.json", "acc_matrix.csv", "val_acc_matrix.csv"):
                if (results_dir / name).exists():
                    self.client.log_artifact(run_id, str(results_dir / name))
        for k, v in {**extra_tags, "impress.state": state}.items():
            self.client.set_tag(run_id, k, v)
        status = {"complete": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[state]
        self.client.set_terminated(run_id, status=status)

    def finish_study(self, *, files: list[Path], complete: bool) -> None:
        for path in files:
            if path.exists():
                self.client.log_artifact(self.parent_id, str(path))
        if complete:
            self.client.set_terminated(self.parent_id, status="FINISHED")


def sync_from_tune(tracker: StudyTracker, tune_dir: Path, results_dir: Path, params_of, states: dict[str, str]) -> int:
    """Log every trial Tune recorded under `tune_dir` (its per-report `result.json` lines), skipping
    what MLflow already has. `params_of(trial_config) -> (params, tags)`; `states` (trial id ->
    complete / stopped / failed, from trials.csv) ends the runs of finished trials. Returns trials synced."""
    count = 0
    for trial_dir in sorted(p for p in Path(tune_dir).glob("*") if (p / "result.json").exists()):
        lines = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        if not lines:
            continue
        trial_id = lines[-1]["trial_id"]
        params, tags = params_of(lines[-1].get("config", {}))
        tracker.trial_run(trial_id, params=params, tags=tags)
        for line in lines:
            tracker.log_task(trial_id, line)
        if trial_id in states:
            tracker.finish_trial(trial_id, state=states[trial_id], results_dir=results_dir / trial_id, extra_tags={})
        count += 1
    return count
