"""A study's trials as one table, and its front over configs, whoever read them: the study's end
(from Tune's results, `impress.study_outcome`) and the MLflow reader (`impress.records`) build the
same table here.

    trials_table(rows)       one row per trial: its values and state, then the metrics, `first` ones
                             leading; a config field the row's method ignores is blank (None), so
                             it neither tells configs apart nor reads as NaN
    config_front(...)        the configs' means over seeds (n, sample std, the seeds and trial ids),
                             and which are non-dominated in the objectives: a config is on the front
                             for what it does on average, not for one lucky seed; configs on
                             different data or backbones are never compared (`impress.pareto.SETTING_FIELDS`)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from impress.methods import foreign_fields
from impress.metrics import is_metric
from impress.pareto import seed_front

__all__ = ["trials_table", "config_front", "blank_foreign_fields"]


def blank_foreign_fields(trials: pd.DataFrame) -> pd.DataFrame:
    """The table with every config field its row's method ignores set to None."""
    if "method" not in trials:
        return trials
    trials = trials.copy()
    for method in trials["method"].dropna().unique():
        rows = trials["method"] == method
        for field in (f for f in foreign_fields(method) if f in trials):
            trials[field] = trials[field].astype(object).where(~rows, None)
    return trials


def trials_table(rows: Sequence[dict[str, Any]], *, first: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial from dicts of values, bookkeeping and metrics: columns in reading order (the
    trial and its values, the metrics in `first`, then every other metric), foreign fields blank."""
    table = blank_foreign_fields(pd.DataFrame(list(rows)))
    lead = [m for m in first if m in table]
    head = [c for c in table.columns if not is_metric(c) and c != "error"]
    rest = [c for c in table.columns if c not in head and c not in lead]
    return table[head + lead + rest]


def config_front(
    trials: pd.DataFrame, objectives: dict[str, str], *, by: Sequence[str], show: Sequence[str] = ()
) -> pd.DataFrame:
    """Per config (the `by` columns) of the complete trials: the objectives' and `show` metrics'
    means, `_std` and `_n`, `n`, `seeds`, the `trials` averaged, and `on_front`. Front configs first."""
    complete = trials[trials["state"] == "complete"] if "state" in trials else trials
    by = [c for c in by if c in complete]
    if not len(complete):
        return pd.DataFrame(columns=[*by, *objectives, "n", "on_front"])
    table = seed_front(complete, objectives, by=by, show=show).copy()  # NOTE: one block: cheap to add to
    if "trial_id" in complete:
        ids = complete.groupby(by, dropna=False, sort=False)["trial_id"] if by else [(None, complete["trial_id"])]
        table["trials"] = [",".join(map(str, part)) for _, part in ids]
    last = list(objectives)[-1]
    return table.sort_values(["on_front", last], ascending=[False, True], kind="stable").reset_index(drop=True)
