"""`impress pareto STUDY` and `impress report STUDY`: a study's MLflow records to figures and tables.

    pareto_<y>_vs_<x>.png / .html   every trial, config means ± std over seeds, the front (log-scale bits)
    front_<y>_vs_<x>.csv / .md      every config: mean, std and n of each objective on validation and on
                                    test, on the front or not
    report.md                       (report) the tables below, the figures, what was left out and why
    trials.csv                      (report) one row per trial, typed config columns, `complete` flag
    acc_vs_m_<metric>.png / .html   (report) accuracy versus m per source of impressions
    acc_matrix.*, task_curves.*     (report) test accuracy matrix and per-task curves (PNG, HTML): the
                                    mean over the seeds of the best config, or one run (`--run`)
    table_*.csv / .md               (report) methods side by side, by m, task-inference rules
    per_task.png / .html / .csv     (report) every task's final test accuracy in each complete run of
                                    the best config (mean val/acc/avg) of each variant, dedicated tasks
                                    filled, versus its angular distance to the nearest impression on
                                    rotated streams (else its learned position; a study mixing rotated
                                    and other streams shows the rotated ones); the CSV: the plotted data

Choose on validation, report on test: a front, the best config and the best inference rule are
chosen on `val/...` metrics, and what was chosen is shown with its `test/...` values (beside the
validation ones it was chosen on). `--y acc/avg`, `val/acc/avg` and `test/acc/avg` are one objective.

Incomplete trials (stopped early, failed, still running) are kept in trials.csv and drawn hollow,
but never enter a front, a mean or a table. The files are also attached to the study's parent run
in MLflow under `analysis/`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from impress.config import Config, method_class
from impress.metrics import is_metric, is_task_metric, split_of, twin
from impress.pagemap import write_html
from impress.pareto import seed_front
from impress.plots import plot_acc_matrix, plot_acc_vs_m, plot_pareto, plot_per_task, plot_task_curves
from impress.records import CONFIG_COLUMNS, StudyRecords, acc_matrix, log_files
from impress.streams import learning_order
from impress.tables import by_m_table, config_label, fmt, inference_table, methods_table, variant, varied_columns

__all__ = [
    "ReportError",
    "prepare",
    "mode_of",
    "chosen_and_shown",
    "pareto_files",
    "report_files",
    "mean_acc_matrix",
    "per_task_runs",
    "per_task_accuracies",
    "circular_distance",
    "PER_TASK_COLUMNS",
    "DEFAULT_X",
    "DEFAULT_Y",
]

# NOTE: the CLI's defaults for `impress pareto --x / --y`; DEFAULT_Y names no split: it is chosen on
# its validation twin and shown on its test twin (`chosen_and_shown`)
DEFAULT_X, DEFAULT_Y = "bits/per_task", "acc/avg"
UNSPLIT = ("bits/", "time/")  # metric groups that measure no data, so have no val/test twins


class ReportError(ValueError):
    """The study's records cannot give what was asked; the message says why."""


def _unsplit(metric: str) -> str:
    """The metric's name without its split: `val/acc/avg` -> `acc/avg`."""
    return metric.split("/", 1)[1] if split_of(metric) else metric


def mode_of(metric: str) -> str:
    """Objective direction by the metric's meaning, whatever its split: bits, time and forgetting
    down, the rest up."""
    name = _unsplit(metric)
    return "min" if name.startswith(UNSPLIT) or name == "forgetting" else "max"


def chosen_and_shown(metric: str) -> tuple[str, str]:
    """(what a choice is made on, what is reported): the metric's validation and test twins, given
    with either split or none (`acc/avg`, `val/acc/avg` and `test/acc/avg` all give
    ("val/acc/avg", "test/acc/avg")); a metric of no data split (bits, time) is both."""
    if split_of(metric):
        return twin(metric, "val"), twin(metric, "test")
    if metric.startswith(UNSPLIT):
        return metric, metric
    return f"val/{metric}", f"test/{metric}"


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
    trials = trials.copy()  # NOTE: a field the row's method ignores is blank (`impress.trials`): it labels nothing
    by = varied_columns(trials, CONFIG_COLUMNS)
    trials = trials.assign(
        variant=[variant(r) for _, r in trials.iterrows()], config=[config_label(r, by) for _, r in trials.iterrows()]
    )
    return trials, by


def _need(trials: pd.DataFrame, metrics: list[str], name: str) -> None:
    missing = [m for m in metrics if m not in trials or not trials.loc[trials["complete"], m].notna().any()]
    if missing:
        have = sorted(c for c in trials.columns if is_metric(c) and not is_task_metric(c))
        old = any(split_of(m) and _unsplit(m) in trials for m in missing)
        raise ReportError(
            f"study {name!r}: no complete trial has {missing}; its metrics are {have}"
            + (" (metrics without a split predate the validation split: nothing to choose on)" if old else "")
        )


def pareto_files(
    records: StudyRecords, out: Path, *, x: str = DEFAULT_X, y: str = DEFAULT_Y, trials: pd.DataFrame | None = None
) -> tuple[list[Path], pd.DataFrame]:
    """The front of `y` versus `x` over configs' means, chosen on their validation twins and drawn
    and tabled with their test twins: figure (PNG, HTML) and table (CSV, Markdown). Returns the
    files and the per-config table (`on_front` marks the front; mean, `_std` and `_n` per metric)."""
    if trials is None:
        trials, by = prepare(records)
    else:
        by = varied_columns(trials, CONFIG_COLUMNS)
    (cx, sx), (cy, sy) = chosen_and_shown(x), chosen_and_shown(y)
    metrics = list(dict.fromkeys([cy, sy, cx, sx]))  # y before x, validation before test
    _need(trials, metrics, records.name)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(_unsplit(y))}_vs_{_slug(_unsplit(x))}"
    complete = trials[trials["complete"]]
    n_other = len(trials) - len(complete)
    title = f"{records.name}: {len(complete)} complete trials" + (f", {n_other} incomplete" if n_other else "")
    rule = _rule(cx, cy, sx, sy)
    drawn = plot_pareto(
        trials,
        x=cx,
        y=cy,
        x_mode=mode_of(x),
        y_mode=mode_of(y),
        by=by,
        title=title + (f"\n{rule}" if rule else ""),
        path=out / f"pareto_{stem}.png",
        colour="variant",
        marker="method" if "method" in trials else None,
        draw="test",
    )
    configs = seed_front(complete, {cx: mode_of(x), cy: mode_of(y)}, by=[*by, "variant"], show=[sy, sx])
    configs.insert(0, "config", [config_label(r, by) for _, r in configs.iterrows()])
    configs = configs.sort_values(["on_front", cx], ascending=[False, True], kind="stable").reset_index(drop=True)
    configs.to_csv(out / f"front_{stem}.csv", index=False)
    shown = pd.DataFrame(
        {
            "on front": configs["on_front"].map({True: "yes", False: ""}),
            "variant": configs["variant"],
            "config": configs["config"],
            **{m: [fmt(r[m], r[f"{m}_std"], r[f"{m}_n"], m) for _, r in configs.iterrows()] for m in metrics},
        }
    )
    md = out / f"front_{stem}.md"
    heading = f"### Pareto front: {_unsplit(y)} ({mode_of(y)}) versus {_unsplit(x)} ({mode_of(x)})"
    md.write_text(heading + (f"\n\n{rule}." if rule else "") + f"\n\n{_markdown(shown)}\n")
    page_title = f"{records.name}: {_unsplit(y)} versus {_unsplit(x)}" + (f" ({rule})" if rule else "")
    page = write_html(drawn, out / f"pareto_{stem}.html", title=page_title, table=shown)
    return [drawn.path, page, out / f"front_{stem}.csv", md], configs


def _rule(cx: str, cy: str, sx: str, sy: str) -> str:
    """How a front over these objectives was chosen and is shown ("" when they measure no data)."""
    if (cx, cy) == (sx, sy):
        return ""
    chosen = " and ".join(m for m in (cy, cx) if split_of(m))
    shown = " and ".join(m for m in (sy, sx) if split_of(m))
    return f"front chosen on validation ({chosen}), shown with test values ({shown})"


def _markdown(df: pd.DataFrame) -> str:
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def mean_acc_matrix(
    records: StudyRecords, trials: pd.DataFrame, run: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, int, str]:
    """(R, std, n, label): the test accuracy matrix (T, T) averaged over `_matrix_runs` (by default
    the seeds of the config best on validation), its sample std (None for one run), the number of
    runs and what they are. `trials` as `prepare` returns them."""
    runs, label = _matrix_runs(trials, run, records.name)
    Rs = np.stack([acc_matrix(records.uri, run_id, split="test") for run_id in runs["run_id"]])  # (n, T, T)
    with warnings.catch_warnings():  # cells above the diagonal are NaN in every run, and stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        R = np.nanmean(Rs, axis=0)
        std = np.nanstd(Rs, axis=0, ddof=1) if len(Rs) > 1 else None
    return R, std, len(Rs), label


def _matrix_runs(trials: pd.DataFrame, run: str | None, name: str = "") -> tuple[pd.DataFrame, str]:
    """The runs whose accuracy matrices the report averages, and how to name them: by default every
    complete seed of the config with the best mean `DEFAULT_Y` on validation (not one lucky seed,
    nor the test split); or one `run`."""
    if run is None:
        chosen, shown = chosen_and_shown(DEFAULT_Y)
        _need(trials, [chosen, shown], name)
        complete = trials[trials["complete"]]
        means = complete.groupby("config", sort=False)[[chosen, shown]].mean()
        best = means[chosen].idxmax() if mode_of(chosen) == "max" else means[chosen].idxmin()
        runs = complete[complete["config"] == best]
        seeds = ", ".join(str(s) for s in sorted(runs["seed"])) if "seed" in runs else "?"
        value = f"best mean {chosen} {means.loc[best, chosen]:.3f}; its {shown} {means.loc[best, shown]:.3f}"
        return runs, f"config {best} ({value}): test accuracies, mean of n = {len(runs)} runs (seeds {seeds})"
    hit = trials[(trials["run_name"] == run) | (trials["run_id"] == run) | (trials["trial_id"] == run)]
    if not len(hit):
        raise ReportError(f"no run {run!r} in study; its runs are: {', '.join(trials['run_name'])}")
    chosen = hit.iloc[:1]
    return chosen, f"run {chosen['run_name'].iloc[0]} ({chosen['state'].iloc[0]}): test accuracies"


PER_TASK_COLUMNS = (
    "config",
    "variant",
    "run_id",
    "run_name",
    "seed",
    "stream",
    "task_order",
    "learned_position",  # i: the i-th task the run learned (column i of its accuracy matrix)
    "stream_position",  # k: the task's place in the stream's own order (rotated: k * 360 / T degrees)
    "angle_deg",  # the task's rotation; NaN off a rotated stream
    "distance_deg",  # to the nearest impression of the run, in [0, 180]; NaN where there is no angle
    "final_test_acc",  # after the last task: the last row of the run's test accuracy matrix
    "dedicated",  # solved by its own stored mask (not by coefficients)
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _field(row: pd.Series, name: str):
    """A run's config value; the config's default where its records lack one (older runs, or a field
    its method ignores, which `prepare` blanks)."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return _DEFAULTS[name]
    return value


def _dedicated(row: pd.Series, T: int) -> int:
    """How many of the run's first tasks keep full state of their own, as its method counts them."""
    method = method_class(_field(row, "method"))

    def plain(v):  # a table cell as the config takes it: 10.0 -> 10, numpy scalars -> Python
        v = v.item() if isinstance(v, np.generic) else v
        return int(v) if isinstance(v, float) and v.is_integer() else v

    known = {f: plain(_field(row, f)) for f in method.uses}
    cfg = Config.from_dict({"method": _field(row, "method"), "num_tasks": T, **known})
    return method.dedicated_tasks(cfg, T)


def circular_distance(a, b) -> np.ndarray:
    """Angular distance in degrees around the circle, in [0, 180]."""
    d = np.abs(np.subtract(a, b, dtype=float)) % 360.0
    return np.minimum(d, 360.0 - d)


def per_task_runs(trials: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs of the per-task figure: every complete run of the config best on validation (mean
    `val/acc/avg`, as `_matrix_runs` chooses) of each variant; and what was left out, and why, as
    sentences for report.md. When the study mixes rotated and other streams only its rotated
    configs compete and are drawn (the others have no angle to measure a distance by). `trials` as
    `prepare` returns them."""
    chosen, _ = chosen_and_shown(DEFAULT_Y)
    complete = trials[trials["complete"]]
    first = "test/acc/task_000"
    if first not in complete or not complete[first].notna().any():
        return complete.iloc[:0], [f"no complete run recorded per-task test accuracies (`{first[:-3]}NNN`)"]
    notes = []
    runs = complete[complete[first].notna()]
    if len(runs) < len(complete):
        notes.append(f"{len(complete) - len(runs)} complete runs without per-task test accuracies are left out")
    streams = runs.apply(lambda r: _field(r, "stream"), axis=1) if len(runs) else pd.Series(dtype=object)
    rotated = streams == "rotated"
    if rotated.any() and not rotated.all():
        other = runs[~rotated]
        kinds = ", ".join(sorted(set(streams[~rotated])))
        configs = ", ".join(f"`{c}`" for c in dict.fromkeys(other["config"]))
        notes.append(
            f"the study mixes rotated and other streams: the figure draws the rotated ones, by angular "
            f"distance, and leaves out {len(other)} complete runs on {kinds} streams (configs {configs}); "
            f"each variant's best config is the best of its rotated ones"
        )
        runs = runs[rotated]
    if chosen not in runs or not runs[chosen].notna().any():
        return runs.iloc[:0], [*notes, f"no complete run has `{chosen}` to choose each variant's best config on"]
    best = []
    for name, part in runs.groupby("variant", sort=True):
        means = part.groupby("config", sort=False)[chosen].mean().dropna()
        if not len(means):
            notes.append(f"{name}: no complete run has `{chosen}` to choose its best config on")
            continue
        top = means.idxmax() if mode_of(chosen) == "max" else means.idxmin()
        best.append(part[part["config"] == top])
    return (pd.concat(best) if best else runs.iloc[:0]), notes


def per_task_accuracies(records: StudyRecords, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per task of each run `per_task_runs` picks (columns `PER_TASK_COLUMNS`): its learned
    and stream positions, its angle and its angular distance to the nearest impression of its run on
    a rotated stream (0 for a dedicated task; NaN off a rotated stream, and for tasks of a bank
    without angles: random impressions, finetune), its final test accuracy and whether it is
    dedicated. `trials` as `prepare` returns them."""
    runs, _ = per_task_runs(trials)
    rows = []
    for _, r in runs.iterrows():
        final = acc_matrix(records.uri, r["run_id"], split="test")[-1]  # (T,): after the last task
        T = len(final)
        stream, task_order, seed = _field(r, "stream"), _field(r, "task_order"), int(_field(r, "seed"))
        order = learning_order(T, task_order, seed)  # learned position i -> stream position k
        angles = np.array(order, dtype=float) * 360.0 / T if stream == "rotated" else np.full(T, np.nan)
        d = _dedicated(r, T)
        for i in range(T):
            distance = circular_distance(angles[i], angles[:d]).min() if stream == "rotated" and d else np.nan
            rows.append(
                {
                    "config": r["config"],
                    "variant": r["variant"],
                    "run_id": r["run_id"],
                    "run_name": r.get("run_name", r["run_id"]),
                    "seed": seed,
                    "stream": stream,
                    "task_order": task_order,
                    "learned_position": i,
                    "stream_position": order[i],
                    "angle_deg": angles[i],
                    "distance_deg": distance,
                    "final_test_acc": final[i],
                    "dedicated": i < d,
                }
            )
    return pd.DataFrame(rows, columns=list(PER_TASK_COLUMNS))


def _per_task_section(records: StudyRecords, trials: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """per_task.png, .html and .csv, and report.md's lines about them (or why there is no figure)."""
    _, notes = per_task_runs(trials)
    table = per_task_accuracies(records, trials)
    lines = ["", "### Final test accuracy of each task"]
    if not len(table):
        return [], [*lines, "", "No per-task figure: " + "; ".join(notes or ["no run to draw"]) + "."]
    title = f"{records.name}: each task's final test accuracy"
    drawn = plot_per_task(
        table,
        title=f"{title}\nthe best config (mean {chosen_and_shown(DEFAULT_Y)[0]}) of each variant",
        path=out / "per_task.png",
    )
    page = write_html(drawn, out / "per_task.html", title=title, table=table)
    table.to_csv(out / "per_task.csv", index=False)
    configs = "; ".join(
        f"{v}: `{c}` ({part['run_id'].nunique()} runs)"
        for (v, c), part in table.groupby(["variant", "config"], sort=True)
    )
    lines += [
        "",
        f"![per-task accuracy]({drawn.path.name}) ([interactive]({page.name}), data: per_task.csv)",
        "",
        f"Every complete run of the best config (best mean `{chosen_and_shown(DEFAULT_Y)[0]}`) of each variant "
        f"({configs}): each task's test accuracy after the last task (the last row of the run's test accuracy "
        f"matrix). Filled markers: tasks solved by a dedicated mask; hollow: tasks learned by coefficients. "
        f"x: {_per_task_x(table)}.",
    ]
    if notes:
        lines += ["", "Left out: " + "; ".join(notes) + "."]
    return [drawn.path, page, out / "per_task.csv"], lines


def _per_task_x(table: pd.DataFrame) -> str:
    """What the per-task figure's x axis measures, and for which variants."""
    angled = table["distance_deg"].notna()
    distance = (
        "the task's angular distance (degrees, 0-180 around the circle) to the nearest impression of its run "
        "(0: its own dedicated mask)"
    )
    if angled.all():
        return distance
    why = []
    for name, part in table[~angled].groupby("variant", sort=True):
        reason = "not a rotated stream" if (part["stream"] != "rotated").all() else "no impression with an angle"
        why.append(f"{name} ({reason})")
    position = "the task's learned position (0: learned first)"
    if not angled.any():
        return f"{position}; there is no angle to measure a distance by: {', '.join(why)}"
    return f"{distance}; {', '.join(why)}: {position}, as there is no angle to measure by"


def report_files(records: StudyRecords, out: Path, *, run: str | None = None, log: bool = True) -> list[Path]:
    """Everything: both fronts, accuracy versus m, one run's matrix and curves, the tables, each task's
    final accuracy (per_task.*), report.md."""
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
        f"Choose on validation, report on test: fronts, the best config and the best inference rule are chosen "
        f"on `val/...` metrics; every other value is on test (`test/...`). "
        f"Commits: {', '.join(sorted(set(map(str, trials['git_commit'].dropna())))) or 'n/a'}.",
    ]
    for x in ("bits/per_task", "bits/total"):
        if x in complete and complete[x].notna().any():
            made, _ = pareto_files(records, out, x=x, y=DEFAULT_Y, trials=trials)
            files += made
            sections += ["", f"![front]({made[0].name}) ([interactive]({made[1].name}))", "", made[3].read_text()]
    if "m" in by and "impressions" in trials:
        il = trials[trials["m"].notna()]  # the methods that read m
        lines = [c for c in varied_columns(il, CONFIG_COLUMNS) if c in ("impressions", "granularity", "stream")]
        for metric in ("test/acc/avg", "test/acc/avg_coeff_tasks"):
            if metric in il and il.loc[il["complete"], metric].notna().any():
                name = f"acc_vs_m_{_slug(_unsplit(metric))}"
                drawn = plot_acc_vs_m(
                    il, metric=metric, lines=lines, title=f"{records.name}: {metric} versus m", path=out / f"{name}.png"
                )
                page = write_html(drawn, out / f"{name}.html", title=f"{records.name}: {metric} versus m")
                files += [drawn.path, page]
                sections += ["", f"![{metric} versus m]({drawn.path.name}) ([interactive]({page.name}))"]
    tables = [("table_methods", methods_table(complete, by=by))]
    for metric in ("test/acc/avg", "test/acc/avg_coeff_tasks"):
        tables.append((f"table_by_m_{_slug(_unsplit(metric))}", by_m_table(complete, by=by, metric=metric)))
    tables.append(("table_inference", inference_table(complete, by=by)))
    for stem, table in tables:
        if table is not None and len(table.long):
            files += table.write(out / stem)
            sections += ["", table.markdown()]
    if "test/acc/task_000" in trials:
        R, std, n, label = mean_acc_matrix(records, trials, run)
        for name, plot in (("acc_matrix", plot_acc_matrix), ("task_curves", plot_task_curves)):
            drawn = plot(R, title=f"{records.name}\n{label}", path=out / f"{name}.png", std=std, n=n)
            page = write_html(drawn, out / f"{name}.html", title=f"{records.name}: {name.replace('_', ' ')}, {label}")
            files += [drawn.path, page]
            sections += ["", f"![{name}]({drawn.path.name}) ([interactive]({page.name}))"]
        sections.insert(3, f"Accuracy matrix and curves: {label} (choose one run with --run).")
    made, lines = _per_task_section(records, trials, out)
    files += made
    sections += lines
    (out / "report.md").write_text("\n".join(sections) + "\n")
    files.append(out / "report.md")
    if log:
        log_files(records, files)
    return files


def _states(trials: pd.DataFrame) -> str:
    other = trials[~trials["complete"]]
    return ", ".join(f"{n} {s}" for s, n in other["state"].value_counts().items()) or "none"
