"""`impress pareto STUDY` and `impress report STUDY`: a study's MLflow records to figures and tables.

    pareto_<y>_vs_<x>.png / .html   every trial, config means ± std over seeds, the front (log-scale bits)
    front_<y>_vs_<x>.csv / .md      every config: mean, std and n of both objectives, on the front or not
    report.md                       (report) the tables below, the figures, what was left out and why
    trials.csv                      (report) one row per trial, typed config columns, `complete` flag
    acc_vs_m_<metric>.png / .html   (report) accuracy versus m per source of impressions
    acc_matrix.*, task_curves.*     (report) accuracy matrix and per-task curves (PNG, HTML): the mean
                                    over the seeds of the best config, or one run (`--run`)
    table_*.csv / .md               (report) SupSup versus ImpressLearn, by m, task-inference rules

Incomplete trials (stopped early, failed, still running) are kept in trials.csv and drawn hollow,
but never enter a front, a mean or a table. The files are also attached to the study's parent run
in MLflow under `analysis/`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from impress.metrics import is_metric, is_task_metric
from impress.pagemap import write_html
from impress.pareto import seed_front
from impress.plots import plot_acc_matrix, plot_acc_vs_m, plot_pareto, plot_task_curves
from impress.records import CONFIG_COLUMNS, StudyRecords, acc_matrix, log_files
from impress.tables import by_m_table, config_label, fmt, inference_table, methods_table, variant, varied_columns

__all__ = ["ReportError", "prepare", "mode_of", "pareto_files", "report_files", "mean_acc_matrix"]

DEFAULT_X, DEFAULT_Y = "bits/per_task", "acc/avg"
IMPRESSLEARN_ONLY = ("m", "impressions", "granularity", "alpha_param", "alpha_lr", "alpha_epochs")


class ReportError(ValueError):
    """The study's records cannot give what was asked; the message says why."""


def mode_of(metric: str) -> str:
    """Objective direction by the metric's meaning: bits, time and forgetting down, the rest up."""
    return "min" if metric.startswith(("bits/", "time/")) or metric == "forgetting" else "max"


def _slug(metric: str) -> str:
    return metric.replace("/", "_")


def prepare(records: StudyRecords) -> tuple[pd.DataFrame, list[str]]:
    """The trials with `variant` and `config` columns, and the config columns that vary."""
    trials = records.trials
    if not len(trials):
        raise ReportError(f"study {records.name!r} in {records.uri} has no trial runs yet")
    if not trials["complete"].any():
        states = ", ".join(f"{n} {s}" for s, n in trials["state"].value_counts().items())
        raise ReportError(
            f"study {records.name!r} in {records.uri} has no complete trial ({states}); "
            f"finish it first (impress study resume {records.name})"
        )
    trials = trials.copy()
    if "method" in trials:  # NOTE: the config holds ImpressLearn's fields for every method; they mean nothing
        for field in IMPRESSLEARN_ONLY:  # for SupSup and finetune, so they do not label those configs
            if field in trials:
                trials[field] = trials[field].astype(object).where(trials["method"] == "impresslearn", None)
    by = varied_columns(trials, CONFIG_COLUMNS)
    trials = trials.assign(
        variant=[variant(r) for _, r in trials.iterrows()], config=[config_label(r, by) for _, r in trials.iterrows()]
    )
    return trials, by


def _need(trials: pd.DataFrame, metrics: list[str], name: str) -> None:
    missing = [m for m in metrics if m not in trials or not trials.loc[trials["complete"], m].notna().any()]
    if missing:
        have = sorted(c for c in trials.columns if is_metric(c) and not is_task_metric(c))
        raise ReportError(f"study {name!r}: no complete trial has {missing}; its metrics are {have}")


def pareto_files(
    records: StudyRecords, out: Path, *, x: str = DEFAULT_X, y: str = DEFAULT_Y, trials: pd.DataFrame | None = None
) -> tuple[list[Path], pd.DataFrame]:
    """The front of `y` versus `x` over configs' means: figure (PNG, HTML) and table (CSV, Markdown).
    Returns the files and the per-config table (`on_front` marks the front)."""
    if trials is None:
        trials, by = prepare(records)
    else:
        by = varied_columns(trials, CONFIG_COLUMNS)
    _need(trials, [x, y], records.name)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(y)}_vs_{_slug(x)}"
    complete = trials[trials["complete"]]
    n_other = len(trials) - len(complete)
    title = f"{records.name}: {len(complete)} complete trials" + (f", {n_other} incomplete" if n_other else "")
    drawn = plot_pareto(
        trials,
        x=x,
        y=y,
        x_mode=mode_of(x),
        y_mode=mode_of(y),
        by=by,
        title=title,
        path=out / f"pareto_{stem}.png",
        colour="variant",
        marker="method" if "method" in trials else None,
    )
    configs = seed_front(complete, {x: mode_of(x), y: mode_of(y)}, by=[*by, "variant"])
    configs.insert(0, "config", [config_label(r, by) for _, r in configs.iterrows()])
    configs = configs.sort_values(["on_front", x], ascending=[False, True], kind="stable").reset_index(drop=True)
    configs.to_csv(out / f"front_{stem}.csv", index=False)
    shown = pd.DataFrame(
        {
            "on front": configs["on_front"].map({True: "yes", False: ""}),
            "variant": configs["variant"],
            "config": configs["config"],
            y: [fmt(r[y], r[f"{y}_std"], r[f"{y}_n"], y) for _, r in configs.iterrows()],
            x: [fmt(r[x], r[f"{x}_std"], r[f"{x}_n"], x) for _, r in configs.iterrows()],
        }
    )
    md = out / f"front_{stem}.md"
    md.write_text(f"### Pareto front: {y} ({mode_of(y)}) versus {x} ({mode_of(x)})\n\n{_markdown(shown)}\n")
    page = write_html(drawn, out / f"pareto_{stem}.html", title=f"{records.name}: {y} versus {x}", table=shown)
    return [drawn.path, page, out / f"front_{stem}.csv", md], configs


def _markdown(df: pd.DataFrame) -> str:
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def mean_acc_matrix(
    records: StudyRecords, trials: pd.DataFrame, run: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, int, str]:
    """(R, std, n, label): the accuracy matrix (T, T) averaged over `_matrix_runs`, its sample std
    (None for one run), the number of runs and what they are. `trials` as `prepare` returns them."""
    runs, label = _matrix_runs(trials, run)
    Rs = np.stack([acc_matrix(records.uri, run_id) for run_id in runs["run_id"]])  # (n, T, T)
    with warnings.catch_warnings():  # cells above the diagonal are NaN in every run, and stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        R = np.nanmean(Rs, axis=0)
        std = np.nanstd(Rs, axis=0, ddof=1) if len(Rs) > 1 else None
    return R, std, len(Rs), label


def _matrix_runs(trials: pd.DataFrame, run: str | None) -> tuple[pd.DataFrame, str]:
    """The runs whose accuracy matrices the report averages, and how to name them: by default every
    complete seed of the config with the best mean `DEFAULT_Y` (not one lucky seed); or one `run`."""
    if run is None:
        complete = trials[trials["complete"]]
        means = complete.groupby("config", sort=False)[DEFAULT_Y].mean()
        best = means.idxmax()
        runs = complete[complete["config"] == best]
        seeds = ", ".join(str(s) for s in sorted(runs["seed"])) if "seed" in runs else "?"
        return runs, f"config {best} (best mean {DEFAULT_Y}), mean of n = {len(runs)} runs (seeds {seeds})"
    hit = trials[(trials["run_name"] == run) | (trials["run_id"] == run) | (trials["trial_id"] == run)]
    if not len(hit):
        raise ReportError(f"no run {run!r} in study; its runs are: {', '.join(trials['run_name'])}")
    chosen = hit.iloc[:1]
    return chosen, f"run {chosen['run_name'].iloc[0]} ({chosen['state'].iloc[0]})"


def report_files(records: StudyRecords, out: Path, *, run: str | None = None, log: bool = True) -> list[Path]:
    """Everything: both fronts, accuracy versus m, one run's matrix and curves, the tables, report.md."""
    trials, by = prepare(records)
    out.mkdir(parents=True, exist_ok=True)
    complete = trials[trials["complete"]]
    files: list[Path] = []
    trials.to_csv(out / "trials.csv", index=False)
    files.append(out / "trials.csv")
    sections = [
        f"# Study `{records.name}`",
        "",
        f"Store: `{records.uri}`. {len(trials)} trials, {len(complete)} complete; "
        f"{len(trials) - len(complete)} incomplete ones ({_states(trials)}) are drawn hollow and enter no "
        f"front, mean or table. Cells are mean ± sample std over seeds (n = trials averaged). "
        f"Commits: {', '.join(sorted(set(map(str, trials['git_commit'].dropna())))) or 'n/a'}.",
    ]
    for x in ("bits/per_task", "bits/total"):
        if x in complete and complete[x].notna().any():
            made, _ = pareto_files(records, out, x=x, y=DEFAULT_Y, trials=trials)
            files += made
            sections += ["", f"![front]({made[0].name}) ([interactive]({made[1].name}))", "", made[3].read_text()]
    if "m" in by and "impressions" in trials:
        il = trials[trials["method"] == "impresslearn"] if "method" in trials else trials
        lines = [c for c in varied_columns(il, CONFIG_COLUMNS) if c in ("impressions", "granularity", "stream")]
        for metric in ("acc/avg", "acc/avg_coeff_tasks"):
            if metric in il and il.loc[il["complete"], metric].notna().any():
                name = f"acc_vs_m_{_slug(metric)}"
                drawn = plot_acc_vs_m(
                    il, metric=metric, lines=lines, title=f"{records.name}: {metric} versus m", path=out / f"{name}.png"
                )
                page = write_html(drawn, out / f"{name}.html", title=f"{records.name}: {metric} versus m")
                files += [drawn.path, page]
                sections += ["", f"![{metric} versus m]({drawn.path.name}) ([interactive]({page.name}))"]
    tables = [("table_methods", methods_table(complete, by=by))]
    for metric in ("acc/avg", "acc/avg_coeff_tasks"):
        tables.append((f"table_by_m_{_slug(metric)}", by_m_table(complete, by=by, metric=metric)))
    tables.append(("table_inference", inference_table(complete, by=by)))
    for stem, table in tables:
        if table is not None and len(table.long):
            files += table.write(out / stem)
            sections += ["", table.markdown()]
    if "acc/task_000" in trials:
        R, std, n, label = mean_acc_matrix(records, trials, run)
        for name, plot in (("acc_matrix", plot_acc_matrix), ("task_curves", plot_task_curves)):
            drawn = plot(R, title=f"{records.name}\n{label}", path=out / f"{name}.png", std=std, n=n)
            page = write_html(drawn, out / f"{name}.html", title=f"{records.name}: {name.replace('_', ' ')}, {label}")
            files += [drawn.path, page]
            sections += ["", f"![{name}]({drawn.path.name}) ([interactive]({page.name}))"]
        sections.insert(3, f"Accuracy matrix and curves: {label} (choose one run with --run).")
    (out / "report.md").write_text("\n".join(sections) + "\n")
    files.append(out / "report.md")
    if log:
        log_files(records, files)
    return files


def _states(trials: pd.DataFrame) -> str:
    other = trials[~trials["complete"]]
    return ", ".join(f"{n} {s}" for s, n in other["state"].value_counts().items()) or "none"
