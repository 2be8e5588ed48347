"""A study's MLflow records as pandas tables: the adapter between the tracking store and analysis.

`impress.tracking` writes a study as an experiment with one parent run (tag `impress.kind` =
"study") and a child run per trial (`impress.kind` = "trial"). This module reads them back:

    trials(study)          one row per trial: run ids, state, seed, the config as typed columns
                           (a field the trial's method ignores blank), the final value (last task)
                           of every metric, and `complete` (`impress.trials.trials_table`, as the
                           study's own trials.csv)
    acc_matrix(run_id)     R[t, j], accuracy on task j after learning task t, from the metric
                           histories `test/acc/task_NNN` (or `val/...`; stopped trials have one too)
    log_files(...)         figures and tables as artifacts of the study's parent run

Everything downstream (`impress.pareto`, `impress.tables`, `impress.plots`) takes DataFrames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from impress.config import Config, ConfigError
from impress.metrics import SPLIT_PREFIXES
from impress.tracking import KIND_TAG, TRIAL_TAG, TrackingError, _client, check_reachable, default_tracking_uri
from impress.trials import trials_table

__all__ = ["StudyRecords", "existing_store", "load_study", "known_studies", "acc_matrix", "log_files", "CONFIG_COLUMNS"]

CONFIG_COLUMNS = tuple(f.name for f in dataclasses.fields(Config))
# NOTE: how a trial ran, not what it learned: seeds of one config are grouped across these
RUN_ONLY = ("seed", "device", "threads")


@dataclasses.dataclass(frozen=True)
class StudyRecords:
    """One study read from a tracking store."""

    name: str
    uri: str
    parent_run_id: str | None
    trials: pd.DataFrame  # one row per trial run (complete or not; see the `complete` column)

    @property
    def complete(self) -> pd.DataFrame:
        return self.trials[self.trials["complete"]]


def known_studies(uri: str) -> list[str]:
    """Names of the experiments in the store that hold a study (a parent run tagged by `impress`)."""
    client = _client(uri)
    names = []
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'study'")
        if runs:
            names.append(experiment.name)
    return sorted(names)


def existing_store(uri: str | None = None) -> str:
    """The tracking store a command that only reads opens (default: `default_tracking_uri()`).

    NOTE: MLflow creates a SQLite store that is not there (an empty 1 MB file), so a mistyped path or
    the wrong working directory would leave a new `mlflow.db` behind and report no studies. A
    missing file is a `TrackingError` instead, naming it and how to choose another store."""
    uri = default_tracking_uri(uri)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).absolute()
        if not path.is_file():
            raise TrackingError(
                f"no MLflow store at {path} (tracking URI {uri}), so nothing was tracked there (a study "
                f"creates its store when it runs); point at a study's store with --store URI or MLFLOW_TRACKING_URI"
            )
    return uri


def load_study(name: str, *, uri: str | None = None) -> StudyRecords:
    """Read study `name` from the store (default: `default_tracking_uri()`), which must exist.

    Raises `TrackingError` naming the store and the studies it holds when there is no such study."""
    uri = existing_store(uri)
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = known_studies(uri)
        raise TrackingError(
            f"no study {name!r} in the MLflow store {uri}; "
            + (f"it holds: {', '.join(known)}" if known else "it holds no studies")
            + " (choose the store with --store or MLFLOW_TRACKING_URI)"
        )
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "study"]
    rows = [_row(r) for r in runs if r.data.tags.get(KIND_TAG) == "trial"]
    trials = trials_table(rows)
    if len(trials):
        trials = trials.sort_values(["run_name", "seed"], kind="stable").reset_index(drop=True)
    return StudyRecords(name, uri, parents[0].info.run_id if parents else None, trials)


def _row(run) -> dict[str, Any]:
    tags, data = run.data.tags, run.data
    state = tags.get("impress.state", "unknown")
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial_id": tags.get(TRIAL_TAG, run.info.run_id),
        "run_name": run.info.run_name,
        "state": state,
        # NOTE: complete = the trial learned its whole stream; a stopped (ASHA) or failed trial's
        # final metrics cover fewer tasks and would flatter it on any front
        "complete": state == "complete" and run.info.status == "FINISHED",
        "git_commit": tags.get("git_commit"),
    }
    row.update(typed_params(data.params))
    if "seed" not in row and "seed" in tags:
        row["seed"] = int(tags["seed"])
    row.update({k: float(v) for k, v in data.metrics.items()})  # the last logged step: the final task
    return row


def typed_params(params: dict[str, str]) -> dict[str, Any]:
    """MLflow params (strings) cast to the config's field types; keys a config no longer has are
    cast to int, float or bool where they parse, else kept as strings."""
    known = {k: v for k, v in params.items() if k in CONFIG_COLUMNS}
    out: dict[str, Any] = {k: _guess(v) for k, v in params.items() if k not in CONFIG_COLUMNS}
    try:
        cfg = Config.from_dict(known).to_dict()
        out.update({k: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k in known})
    except ConfigError:  # a config another version of `impress` accepted: cast each value alone
        out.update({k: _guess(v) for k, v in known.items()})
    return out


def _guess(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return None if value == "None" else value


def acc_matrix(uri: str, run_id: str, split: str = "test") -> np.ndarray:
    """(T, T) accuracy matrix of one trial on `split` ("test": what results report; "val": what
    studies choose on) from its `<split>/acc/task_NNN` histories; NaN above the diagonal and for
    tasks a stopped trial never reached."""
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"split must be one of {list(SPLIT_PREFIXES)}, got {split!r}")
    client = _client(uri)
    run = client.get_run(run_id)
    prefix = f"{split}/acc/task_"
    keys = sorted(k for k in run.data.metrics if k.startswith(prefix))
    if not keys:
        raise TrackingError(f"run {run_id} in {uri} has no per-task {split} accuracies ({prefix}NNN)")
    T = int(run.data.params.get("num_tasks", len(keys)))
    R = np.full((T, T), np.nan)  # (T, T): row t = after learning task t
    for key in keys:
        j = int(key.removeprefix(prefix))
        for m in client.get_metric_history(run_id, key):
            R[m.step, j] = m.value
    return R


def log_files(records: StudyRecords, files: list[Path], *, artifact_path: str = "analysis") -> None:
    """Attach figures and tables to the study's parent run (under `artifact_path/`)."""
    if records.parent_run_id is None:
        raise TrackingError(f"study {records.name!r} in {records.uri} has no parent run to attach files to")
    client = _client(records.uri)
    for path in files:
        client.log_artifact(records.parent_run_id, str(path), artifact_path=artifact_path)
