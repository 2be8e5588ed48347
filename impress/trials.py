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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from impress.config import Config
from impress.methods import METHODS, foreign_fields
from impress.metrics import is_metric
from impress.pareto import seed_front

__all__ = ["trials_table", "config_front", "blank_foreign_fields"]


def blank_foreign_fields(trials: pd.DataFrame, base: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The table with every config field its row's method, or its row's config, ignores set to None.
    A row's config is its values over `base` (a study's fixed values) over the config's defaults,
    so a method or granularity fixed by the study counts too."""
    fixed = {**Config().to_dict(), **(base or {})}
    method_of = trials["method"] if "method" in trials else pd.Series(fixed["method"], index=trials.index)
    trials = trials.copy()
    for method in method_of.dropna().unique():
        rows = method_of == method
        for field in (f for f in foreign_fields(method) if f in trials):
            trials[field] = trials[field].astype(object).where(~rows, None)
        if method not in METHODS:
            continue
        for i in trials.index[rows]:  # fields this row's own config leaves unread
            config = {**fixed, **{k: v for k, v in trials.loc[i].items() if k in fixed and not _blank(v)}}
            for field in (f for f in METHODS[method].ignores(config) if f in trials):
                trials[field] = trials[field].astype(object)
                trials.at[i, field] = None
    return trials


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def trials_table(
    rows: Sequence[dict[str, Any]], *, first: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per trial from dicts of values, bookkeeping and metrics: columns in reading order (the
    trial and its values, the metrics in `first`, then every other metric), foreign fields blank
    (`base`: the values every row shares but does not hold, a study's fixed config)."""
    table = blank_foreign_fields(pd.DataFrame(list(rows)), base)
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
