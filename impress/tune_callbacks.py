"""Ray Tune callbacks of a study's driver: a line per trial event on the terminal, and every trial
result forwarded to MLflow (the only writer: trials never talk to the store).

A progress line shows each objective's value, what the study chooses on (validation), with its
twin on the other split beside it: `val/acc/avg=0.9123 (test 0.9011)`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from impress.metrics import split_of, twin
from impress.study import Study
from impress.study_outcome import other_split, reason, text

__all__ = ["progress_callback", "tracking_callback", "trial_reason"]


def progress_callback(study: Study, out: TextIO = sys.stderr):
    """The terminal's view of a running study (`out`, stderr by default)."""
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial start, finished task, finish and failure, with a running count and the
        best value so far."""

        def __init__(self) -> None:
            self.started = self.finished = self.failed = 0
            self.best: float | None = None
            self.best_twin: Any = None  # the best trial's value of the first objective's twin
            self.t0 = time.monotonic()

        def _line(self, line: str) -> None:
            elapsed = time.monotonic() - self.t0
            print(f"[{elapsed:7.1f}s] {line}", file=out, flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started += 1
            values = {k: v for k, v in trial.config.items() if k != "point"} | trial.config.get("point", {})
            self._line(f"start  {trial.trial_id}  {_short(values)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            done, total = result.get("tasks_done"), result.get("num_tasks")
            if done is None or done >= total:  # the last task: the `done` line follows
                return
            # NOTE: inference objectives come only with the last task's report
            values = "  ".join(_with_twin(result, o.metric) for o in study.objectives if o.metric in result)
            self._line(f"task   {trial.trial_id}  {done}/{total}  {values}".rstrip())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            r = trial.last_result or {}
            obj = study.objectives[0]
            state = (
                "complete"
                if r.get("tasks_done", 0) >= r.get("num_tasks", 1)
                else (f"stopped early after {r.get('tasks_done')} tasks")
            )
            value = r.get(obj.metric)
            if state == "complete" and value is not None and value == value:
                if self.best is None or (value > self.best if obj.mode == "max" else value < self.best):
                    self.best = value
                    self.best_twin = r.get(twin(obj.metric, other_split(obj.metric))) if split_of(obj.metric) else None
            running = sum(t.status == "RUNNING" and t is not trial for t in trials)
            best = _value(self.best)
            if self.best is not None and split_of(obj.metric):
                best += f" ({other_split(obj.metric)} {_value(self.best_twin)})"
            summary = "  ".join(_with_twin(r, o.metric) for o in study.objectives)
            self._line(
                f"done   {trial.trial_id}  {state}  {summary}  | {self.finished} finished, "
                f"{running} running, best {obj.metric} {best}"
            )

        def on_trial_recover(self, iteration, trials, trial, **info):
            retry = trial.run_metadata.num_failures
            self._line(
                f"failed {trial.trial_id}: {trial_reason(trial)}; retrying from its last finished task "
                f"(retry {retry} of {study.max_failures})"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            attempts = trial.run_metadata.num_failures
            self._line(
                f"failed {trial.trial_id} after {attempts} attempt{'s' * (attempts > 1)}, not retried again: "
                f"{trial_reason(trial)}"
            )

    return Progress()


def tracking_callback(
    tracker, root: Path, params_of: Callable[[dict[str, Any]], tuple[dict, dict]], out: TextIO = sys.stderr
):
    """Forwards trial results to MLflow from the driver; `params_of(trial config)` gives a trial's run
    its (params, tags). A failing store never stops the study: the results stay in Tune's records
    and `results/`, and `impress study sync` writes them later."""
    from ray import tune

    from impress.tracking import TrackingError, check_reachable, redact

    class Tracking(tune.Callback):
        def __init__(self) -> None:
            self.warned = False

        def __getstate__(self) -> dict:
            # NOTE: Tune pickles its callbacks into tuner.pkl; the MLflow client is not picklable and
            # a restored study installs fresh callbacks anyway (see `impress.tuner._tuner`)
            return {"warned": self.warned}

        def _safely(self, action, *args, **kwargs) -> None:
            if tracker.missed:  # the store failed before: a quick look whether it is back, or skip
                try:
                    check_reachable(tracker.uri, timeout=1.0)
                except TrackingError:
                    return
            try:
                action(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any store failure must not end the study
                tracker.missed = True
                if not self.warned:
                    print(
                        f"warning: MLflow store {redact(tracker.uri)} failed ({type(err).__name__}: "
                        f"{str(err).replace(tracker.uri, redact(tracker.uri))}); the study "
                        f"goes on and keeps every result, and fills the store in when it is back",
                        file=out,
                        flush=True,
                    )
                    self.warned = True

        def _ensure(self, trial) -> None:
            if not tracker.has_run(trial.trial_id):  # the params are built once per trial, not per report
                params, tags = params_of(trial.config)
                tracker.trial_run(trial.trial_id, params=params, tags=tags)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._safely(self._ensure, trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            def log() -> None:
                self._ensure(trial)
                tracker.log_task(trial.trial_id, result)

            self._safely(log)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            state = "complete" if r.get("tasks_done", 0) >= r.get("num_tasks", 1) else "stopped"

            def finish() -> None:
                self._ensure(trial)
                tracker.finish_trial(
                    trial.trial_id,
                    state=state,
                    results_dir=root / "results" / trial.trial_id,
                    extra_tags={"tasks_done": str(r.get("tasks_done", 0))},
                )

            self._safely(finish)

        def on_trial_error(self, iteration, trials, trial, **info):
            def fail() -> None:
                self._ensure(trial)
                tracker.finish_trial(
                    trial.trial_id,
                    state="failed",
                    results_dir=None,
                    extra_tags={"error": trial_reason(trial)},
                )

            self._safely(fail)

    return Tracking()


def trial_reason(trial) -> str:
    """Why a Tune trial failed last. NOTE: read from the trial's local error file; the copy in the
    study's storage, which `Trial.get_error` reads, is synced later (after the final failure: too late)."""
    path = trial.error_file
    return reason(Path(path).read_text() if path and Path(path).exists() else trial.get_error())


def _short(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={text(v)}" for k, v in values.items())


def _value(v: Any) -> str:
    """A reported value as short text; n/a for one not (yet) reported, or NaN (e.g.
    acc/avg_coeff_tasks until a task is learned by coefficients)."""
    return "n/a" if v is None or v != v else text(v)


def _with_twin(result: dict[str, Any], metric: str) -> str:
    """`val/acc/avg=0.9123 (test 0.9011)`: the metric's value and, for a metric of a data split, its
    twin's on the other split; a metric of no split (`bits/per_task`) alone."""
    line = f"{metric}={_value(result.get(metric))}"
    if split_of(metric) is not None:
        other = other_split(metric)
        line += f" ({other} {_value(result.get(twin(metric, other)))})"
    return line
