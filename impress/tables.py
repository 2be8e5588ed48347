"""The paper's comparisons as tables of a study's trials: tidy CSV and Markdown, mean ± std (n).

Every table is built twice: long (`config columns..., metric, mean, std, n`; the CSV) and wide with
formatted cells (the Markdown). Only complete trials enter; the seeds of a config are grouped.
Values are on test (`test/...`); where a table chooses (each config's best inference rule), it
chooses on validation and shows the validation value it chose on beside the test values.

    methods_table     every method side by side: accuracy, bits per task, total bits
    by_m_table        accuracy by m for heterogeneous / homogeneous / random impressions
    inference_table   task-identity inference rules: identification and GNs / GNu accuracy
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from impress.methods import METHODS
from impress.pareto import over_seeds

__all__ = [
    "config_parts",
    "Table",
    "varied_columns",
    "variant",
    "cell_text",
    "config_label",
    "summarise",
    "methods_table",
    "by_m_table",
    "inference_table",
    "fmt",
]

METHOD_METRICS = ("test/acc/avg", "test/acc/avg_coeff_tasks", "bits/per_task", "bits/total")
INFERENCE_METRICS = ("task_infer/acc", "acc/gns", "acc/gnu")  # per rule, `<split>/<metric>/<rule>`
RULE_CHOSEN_ON = "val/task_infer/acc"  # a config's best rule: the one that identifies most tasks on validation


class Table:
    """A long frame (one row per config and metric) and its wide, formatted rendering."""

    def __init__(self, title: str, long: pd.DataFrame, index: list[str], columns: str) -> None:
        self.title, self.long, self.index, self.columns = title, long, index, columns

    def wide(self) -> pd.DataFrame:
        cells = self.long.assign(cell=[fmt(r["mean"], r["std"], r["n"], r["metric"]) for _, r in self.long.iterrows()])
        for c in self.index:  # NOTE: as text, so that a field a method ignores (None) keeps its row
            cells[c] = cells[c].map(cell_text)
        order = list(dict.fromkeys(cells[self.columns]))
        table = cells.pivot_table(index=self.index, columns=self.columns, values="cell", aggfunc="first", sort=False)
        return table.reindex(columns=order).fillna("").reset_index()

    def markdown(self) -> str:
        wide = self.wide()
        header = [str(c) for c in wide.columns]
        lines = [f"### {self.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell_text(v) for v in row) + " |" for row in wide.itertuples(index=False)]
        return "\n".join(lines)

    def write(self, stem: Path) -> list[Path]:
        """`<stem>.csv` (long) and `<stem>.md`; returns the paths."""
        csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
        self.long.to_csv(csv, index=False)
        md.write_text(self.markdown() + "\n")
        return [csv, md]


def cell_text(value) -> str:
    """A config value as table text: tuples joined, searched floats to 4 digits, missing as ""."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):  # a searched float: 4 significant digits name it well enough
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def fmt(mean: float, std: float, n: int, metric: str = "") -> str:
    """`0.812 ± 0.004 (n=3)`; bits as integers with separators; no ± for a single trial."""
    if n == 0 or mean is None or math.isnan(mean):
        return "n/a"
    bits = metric.startswith("bits/")
    value = f"{mean:,.0f}" if bits else f"{mean:.3f}"
    if n > 1 and not math.isnan(std) and not (bits and std == 0):
        value += f" ± {std:,.0f}" if bits else f" ± {std:.3f}"
    return f"{value} (n={n})"


def varied_columns(trials: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """The config columns (of `candidates`) that take more than one value (None aside) among the
    trials: what distinguishes one config of the study from another (seed and device never do)."""
    out = []
    for c in candidates:
        if c in trials and c not in ("seed", "device", "threads"):
            if trials[c].dropna().astype(str).nunique() > 1:  # None: a field the config's method ignores
                out.append(c)
    return out


def variant(row: pd.Series) -> str:
    """The method's own name for the row's variant (`ImpressLearn heterogeneous`, `BatchE random`)."""
    method = row.get("method")
    return METHODS[method].variant(row) if method in METHODS else str(method)


def config_parts(row: pd.Series, by: Sequence[str]) -> list[str]:
    """`key=value` of each distinguishing column the row has a value in (a field its method does not
    use is left out)."""
    texts = ((k, cell_text(row[k])) for k in by if k in row.index)
    return [f"{k}={text}" for k, text in texts if text]


def config_label(row: pd.Series, by: Sequence[str]) -> str:
    """`key=value~key=value` of the distinguishing columns (the run-name convention)."""
    return "~".join(config_parts(row, by)) or "all trials"


def summarise(trials: pd.DataFrame, metrics: Sequence[str], *, by: Sequence[str]) -> pd.DataFrame:
    """Long form: the `by` columns, then metric, mean, std, n (only metrics the trials have)."""
    metrics = [m for m in metrics if m in trials and trials[m].notna().any()]
    if not metrics or not len(trials):
        return pd.DataFrame(columns=[*by, "metric", "mean", "std", "n"])
    agg = over_seeds(trials, metrics, by=by)
    keys = list(by) or ["config"]
    parts = [agg[keys].assign(metric=m, mean=agg[m], std=agg[f"{m}_std"], n=agg[f"{m}_n"]) for m in metrics]
    return pd.concat(parts, ignore_index=True)


def methods_table(trials: pd.DataFrame, *, by: Sequence[str]) -> Table:
    """Every method side by side: test accuracy, bits per task, total bits after the stream, per config."""
    keys = ["method", *[c for c in by if c != "method"]] if "method" in trials else list(by)
    long = summarise(trials, METHOD_METRICS, by=keys)
    if "method" in long:
        order = {m: i for i, m in enumerate(METHODS)}  # the registry's order
        long = long.sort_values("method", key=lambda s: s.map(order), kind="stable")
        long["method"] = long["method"].map(lambda m: METHODS[m].label if m in METHODS else m)
    return Table("Methods: test accuracy and stored bits", long, keys or ["config"], "metric")


def by_m_table(trials: pd.DataFrame, *, by: Sequence[str], metric: str = "test/acc/avg") -> Table | None:
    """`metric` by m (rows) and source of impressions (columns) over the rows that have both (the
    methods that read them: ImpressLearn); None without such rows."""
    if "m" not in trials or "impressions" not in trials:
        return None
    il = trials[trials["m"].notna() & trials["impressions"].notna()]
    if not len(il):
        return None
    others = [c for c in by if c not in ("m", "impressions", "method")]
    long = summarise(il, [metric], by=[*others, "m", "impressions"])
    long = long.sort_values([*others, "m"], kind="stable")
    return Table(f"{metric} by m and source of impressions", long, [*others, "m"], "impressions")


def inference_table(trials: pd.DataFrame, *, by: Sequence[str]) -> Table | None:
    """Per config and inference rule: task identified, GNs and GNu accuracy on test, and the
    identified fraction on validation (`RULE_CHOSEN_ON`), on which `best on val` marks each config's
    best rule (keys `<split>/<metric>/<rule>`); None when no trial inferred task identities (GG)."""
    prefix = "test/task_infer/acc/"
    rules = sorted({c.removeprefix(prefix) for c in trials if c.startswith(prefix)})
    rules = [r for r in rules if not r.endswith("_single")]
    if not rules:
        return None
    metrics = [RULE_CHOSEN_ON, *(f"test/{m}" for m in INFERENCE_METRICS)]
    parts = []
    for rule in rules:
        renamed = trials.rename(columns={f"{m}/{rule}": f"{m} ({rule})" for m in metrics})
        long = summarise(renamed, [f"{m} ({rule})" for m in metrics], by=by)
        long["rule"] = rule
        long["metric"] = long["metric"].str.replace(f" ({rule})", "", regex=False)
        parts.append(long)
    long = pd.concat(parts, ignore_index=True)
    keys = list(by) or ["config"]
    long["best on val"] = _best_rule(long, keys)
    return Table(
        "Task-identity inference rules on test (identified fraction; accuracy with inferred tasks); "
        f"each config's best rule chosen on {RULE_CHOSEN_ON}",
        long,
        [*keys, "rule", "best on val"],
        "metric",
    )


def _best_rule(long: pd.DataFrame, keys: list[str]) -> list[str]:
    """Per row of `long`: "yes" on the rows of each config's rule with the highest mean `RULE_CHOSEN_ON`."""
    config = long[keys].apply(lambda r: "~".join(cell_text(v) for v in r), axis=1)  # None-safe group keys
    chosen = long[(long["metric"] == RULE_CHOSEN_ON) & long["mean"].notna()]
    best = {config[i]: chosen.loc[i, "rule"] for i in chosen.groupby(config[chosen.index], sort=False)["mean"].idxmax()}
    return ["yes" if best.get(c) == rule else "" for c, rule in zip(config, long["rule"])]
