"""What a study leaves when Tune is done: the trials table, the front, the Optuna export, a summary.

trials.csv      one row per trial: its values, state (complete / stopped / failed), and every metric
                of its last report, validation and test (each objective and its twin first)
front.csv       the configs whose means over seeds (complete trials) are non-dominated in the
                objectives: each metric's mean, `_std` and `_n`, the seeds and trial ids averaged;
                pareto.png draws every trial and the configs' means with their front
optuna.db       (searches) the searcher's Optuna study, exported to SQLite

Choose on validation, report on test: the front is taken over the objectives (validation metrics,
unless the study has `choose_on_test`), and front.csv and the terminal's summary show each
objective's test twin beside it (`val/acc/avg`, `test/acc/avg`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from impress.metrics import is_metric, is_task_metric, split_of, twin
from impress.study import Study
from impress.trials import config_front, trials_table

__all__ = [
    "StudyOutcome", "finish", "front_summary", "mean_text", "reason", "text", "tune_trials", "shown", "other_split",
]  # fmt: skip

TUNE_DIR = "tune"  # Tune's experiment folder inside a study's folder


class StudyOutcome:
    """What a finished (or interrupted) study produced."""

    def __init__(
        self, root: Path, trials: pd.DataFrame, configs: pd.DataFrame, keys: list[str], complete: bool
    ) -> None:
        self.root, self.trials, self.configs, self.keys, self.complete = root, trials, configs, keys, complete

    @property
    def front(self) -> pd.DataFrame:
        """The configs on the front (means over seeds)."""
        return self.configs[self.configs["on_front"].astype(bool)] if len(self.configs) else self.configs


def other_split(metric: str) -> str | None:
    """The split of a metric's twin: test for a validation metric, validation for a test one, None
    for a metric of no data split (`bits/per_task`)."""
    return {"val": "test", "test": "val"}.get(split_of(metric) or "")


def shown(study: Study) -> list[str]:
    """The metrics that show a study's objectives: each objective, then its twin on the other split
    (`val/acc/avg`, `test/acc/avg`, `bits/per_task`)."""
    out: list[str] = []
    for o in study.objectives:
        for m in (o.metric, *((twin(o.metric, s),) if (s := other_split(o.metric)) else ())):
            if m not in out:
                out.append(m)
    return out


def config_keys(study: Study) -> list[str]:
    """The values that tell a study's configs apart: its searched, grid and case keys, not the seed."""
    keys = [p.name for p in study.search] + list(study.grid) + [k for c in study.cases for k in c]
    return [k for k in dict.fromkeys(keys) if k != "seed"]


def tune_trials(study: Study, result_grid) -> pd.DataFrame:
    """One row per trial of Tune's results: its values, state and final metrics (both splits), each
    objective beside its twin."""
    rows = []
    keys = [*config_keys(study), "seed"]
    for r in result_grid:
        config = dict(r.config or {})
        values = {**config.pop("point", {}), **config}
        values = {**{k: values.get(k) for k in keys}, **values}  # one column order, however Tune restored them
        metrics = r.metrics or {}
        done, total = metrics.get("tasks_done", 0), metrics.get("num_tasks", study.example_config().num_tasks)
        state = "failed" if r.error is not None else ("complete" if done >= total else "stopped")
        row = {
            "trial_id": metrics.get("trial_id", Path(r.path).name),
            "state": state,
            "tasks_done": done,
            "resumed_from": metrics.get("resumed_from", 0),
        }
        row.update(values)
        row.update({k: v for k, v in metrics.items() if is_metric(k) and not is_task_metric(k)})
        if r.error is not None:
            row["error"] = reason(r.error)
        rows.append(row)
    return trials_table(rows, first=shown(study), base=study.base)


def finish(study: Study, root: Path, result_grid) -> StudyOutcome:
    trials = tune_trials(study, result_grid).sort_values("trial_id").reset_index(drop=True)
    trials.to_csv(root / "trials.csv", index=False)
    objectives = {o.metric: o.mode for o in study.objectives if o.metric in trials}
    keys = [k for k in config_keys(study) if k in trials]
    if objectives and len(trials):
        show = [m for m in shown(study) if m in trials and m not in objectives]
        configs = config_front(trials, objectives, by=keys, show=show)
        order = [*keys, *(m for m in shown(study) if m in configs)]
        configs = configs[order + [c for c in configs.columns if c not in order]]
    else:
        configs = pd.DataFrame(columns=[*keys, "on_front"])
    outcome = StudyOutcome(root, trials, configs, keys, complete=False)
    outcome.front.to_csv(root / "front.csv", index=False)
    complete = trials[trials["state"] == "complete"] if len(trials) else trials
    if len(objectives) == 2 and len(trials):
        from impress.plots import plot_front

        x, y = sorted(study.objectives, key=lambda o: not o.metric.startswith("bits"))  # bits on the x axis
        try:
            plot_front(
                trials,
                x=x.metric,
                y=y.metric,
                x_mode=x.mode,
                y_mode=y.mode,
                by=keys,
                path=root / "pareto.png",
                title=f"{study.name}: {len(complete)} complete of {len(trials)} trials, front over seed means",
                group="granularity" if "granularity" in trials else None,
            )
        except Exception as err:  # noqa: BLE001 - a figure is a convenience: the study's records come first
            print(f"warning: could not draw {root / 'pareto.png'} ({type(err).__name__}: {err})", file=sys.stderr)
    if study.kind == "search":
        _export_optuna(result_grid, study, root)
    finished = len(trials) and not any(r.metrics is None for r in result_grid)
    expected = study.trials if study.kind == "search" else len(study.grid_points())
    outcome.complete = bool(finished) and len(trials) >= expected
    return outcome


def _export_optuna(result_grid, study: Study, root: Path) -> None:
    """Copy the searcher's Optuna study into `optuna.db` (replaced each time the study ends)."""
    import optuna

    searcher_files = sorted((root / TUNE_DIR).glob("searcher-state-*.pkl"))
    if not searcher_files:
        return
    import pickle

    with open(searcher_files[-1], "rb") as f:
        state = pickle.load(f)
    source = state.get("_ot_study") if isinstance(state, dict) else None
    if source is None:
        return
    db = root / "optuna.db"
    db.unlink(missing_ok=True)
    target = optuna.create_study(
        storage=f"sqlite:///{db}", study_name=study.name, directions=[d.name.lower() for d in source.directions]
    )
    for t in source.get_trials(deepcopy=False):
        target.add_trial(t)


def front_summary(outcome: StudyOutcome, study: Study) -> str:
    """The front over configs (means over seeds, ± sample std and n where a config ran more than
    once), each objective beside its twin on the other split (chosen on validation, shown on test
    too); then every config, for grid studies with several seeds."""
    keys = outcome.keys
    metrics = [m for m in shown(study) if m in outcome.configs]
    twins = [m for m in metrics if m not in {o.metric for o in study.objectives}]
    lines = [
        f"{len(outcome.trials)} trials: "
        + ", ".join(f"{n} {s}" for s, n in outcome.trials["state"].value_counts().items())
    ]
    lines.append(
        f"Pareto front over seed means ({', '.join(f'{o.metric} {o.mode}' for o in study.objectives)})"
        + (f", with {', '.join(twins)} beside:" if twins else ":")
    )
    lines.append(_configs_text(outcome.front, keys, metrics) if len(outcome.front) else "  (no complete trials)")
    failed = outcome.trials[outcome.trials["state"] == "failed"] if len(outcome.trials) else outcome.trials
    if len(failed):
        lines += ["", "failed trials (their reasons are in trials.csv and in their MLflow runs' `error` tag):"]
        for _, t in failed.iterrows():
            values = ", ".join(f"{c}={text(t[c])}" for c in [*keys, "seed"] if c in t and text(t[c]))
            lines.append(f"  {t['trial_id']} ({values}): {t.get('error', 'unknown error')}")
    if study.kind == "grid" and len(study.seeds) > 1 and len(outcome.configs) > len(outcome.front):
        lines += ["", "every config, mean ± std (n) over seeds:", _configs_text(outcome.configs, keys, metrics)]
    return "\n".join(lines)


def mean_text(row: pd.Series | dict, metric: str) -> str:
    """A config's mean of `metric` over seeds as text: `mean ± std (n)`, the spread left out where
    there is none (a value every seed shares, as bits), `(n)` where n > 1."""
    n, std = row.get(f"{metric}_n", 1), row.get(f"{metric}_std")
    spread = f" ± {text(float(std))}" if n > 1 and std == std and std != 0 else ""  # NaN, 0: none
    return f"{text(row[metric])}{spread} ({int(n)})" if n > 1 else text(row[metric])


def _configs_text(configs: pd.DataFrame, keys: list[str], metrics: list[str]) -> str:
    table = pd.DataFrame(
        {
            **{k: [text(v) for v in configs[k]] for k in keys},
            **{m: [mean_text(r, m) for _, r in configs.iterrows()] for m in metrics},
        }
    )
    return table.to_string(index=False)


def reason(error: Any, *, limit: int = 300) -> str:
    """The last line of an error or of its trace (`module.ErrorType: message`) in whole sentences, as
    many as fit in `limit` characters (at least the first), what a table or one terminal line can hold."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    first, *rest = re.split(r"(?<=[.!?])\s+", lines[-1])
    kept = [first]
    for sentence in rest:
        if sum(len(s) + 1 for s in kept) + len(sentence) > limit:
            break
        kept.append(sentence)
    return " ".join(kept)


def text(v: Any) -> str:
    """A trial's value as short text, for names and summaries: nothing for a missing value (a field
    its method ignores), integers as integers (266200, not 2.662e+05), other floats to 4 significant
    digits."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)
