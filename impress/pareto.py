"""Non-dominated (Pareto) fronts over any number of objectives, each maximised or minimised.

`pareto_mask` works on points; `seed_front` on a study's trials: the seeds of one config are
grouped, each objective is summarised by its mean, sample std and n, and the front is taken over
the configs' means (a config is on the front for what it does on average, not in one lucky seed).
Choose on validation, report on test: the objectives are `val/...` metrics, and `show` carries
their `test/...` twins beside them without a say in the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["pareto_mask", "over_seeds", "seed_front", "widest_gap", "SETTING_FIELDS"]

# what a config is measured on rather than what it tries: `seed_front` takes one front per
# combination of these among its `by` columns (a config on easier data dominates nothing)
SETTING_FIELDS = ("stream", "source", "num_tasks", "classes_per_task", "split_labels", "backbone", "widths")


def pareto_mask(points: np.ndarray | Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """Bool mask of the non-dominated rows of `points` (n, k); `modes[i]` is "max" or "min".

    A point is dominated when another is at least as good in every objective and strictly better
    in one. Duplicates of a front point are all on the front; rows with NaN are never on it."""
    P = np.asarray(points, dtype=float)
    if P.ndim != 2 or P.shape[1] != len(modes):
        raise ValueError(f"points must be (n, {len(modes)}) for modes {list(modes)}, got shape {P.shape}")
    if any(m not in ("max", "min") for m in modes):
        raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
    sign = np.array([1.0 if m == "max" else -1.0 for m in modes])
    G = P * sign  # larger is better in every column
    valid = ~np.isnan(G).any(axis=1)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        others = G[valid]
        dominated = np.any(np.all(others >= G[i], axis=1) & np.any(others > G[i], axis=1))
        front[i] = not dominated
    return front


def over_seeds(trials: pd.DataFrame, metrics: Sequence[str], *, by: Sequence[str]) -> pd.DataFrame:
    """One row per config (the distinct values of the `by` columns): for each metric its mean over
    the config's trials (column named as the metric), `<metric>_std` (sample std; NaN when n = 1),
    `<metric>_n`, the trials with a value, and `n`, the config's trials; `seeds` lists their seeds.
    Rows are in first-seen order."""
    missing = [c for c in [*metrics, *by] if c not in trials]
    if missing:
        raise ValueError(f"columns {missing} are not in the trials table (it has {sorted(trials.columns)})")
    if not by:  # a single config
        trials, by = trials.assign(config="all"), ["config"]
    groups = trials.groupby(list(by), dropna=False, sort=False)
    columns = {"": groups[list(metrics)].mean()}
    for m in metrics:
        columns[f"{m}_std"] = groups[m].std(ddof=1)
        columns[f"{m}_n"] = groups[m].count()  # trials with a value (a metric may be n/a for a method)
    columns["n"] = groups.size()
    if "seed" in trials:
        columns["seeds"] = groups["seed"].agg(lambda s: ",".join(map(str, sorted(s))))
    parts = [c if isinstance(c, pd.DataFrame) else c.rename(name) for name, c in columns.items()]
    return pd.concat(parts, axis=1).reset_index().copy()  # copied into few blocks: one per column is slow to extend


def seed_front(
    trials: pd.DataFrame, objectives: dict[str, str], *, by: Sequence[str], show: Sequence[str] = ()
) -> pd.DataFrame:
    """`over_seeds` of the objectives (and of the metrics in `show`, which play no part in the
    front) plus `on_front`: is the config's mean non-dominated in the objectives among the configs
    of its setting (the same values of the `SETTING_FIELDS` in `by`)?
    `objectives` maps metric -> "max" or "min", e.g. {"bits/per_task": "min", "val/acc/avg": "max"};
    a front chosen on validation shows its test twins with `show=["test/acc/avg"]`."""
    extra = [m for m in show if m not in objectives and m in trials]
    table = over_seeds(trials, [*objectives, *extra], by=by)
    modes, settings = list(objectives.values()), [c for c in by if c in SETTING_FIELDS]
    table["on_front"] = False
    for _, part in table.groupby(settings, dropna=False, sort=False) if settings else [(None, table)]:
        table.loc[part.index, "on_front"] = pareto_mask(part[list(objectives)].to_numpy(dtype=float), modes)
    return table


def widest_gap(costs: Sequence[float]) -> tuple[float, float, float] | None:
    """The widest step between neighbouring points of a front along a positive cost axis (bits per
    task), as a ratio: (hi / lo, lo, hi) for the neighbours lo < hi farthest apart; None for fewer
    than two distinct costs. A front that fills its range has no wide steps; one that jumps from
    a few hundred bits to tens of thousands has a step of 100x or more."""
    x = np.unique(np.asarray(costs, dtype=float))
    if (x <= 0).any() or not np.isfinite(x).all():
        raise ValueError(f"costs must be positive and finite, got {x.tolist()}")
    if len(x) < 2:
        return None
    i = int(np.argmax(x[1:] / x[:-1]))
    return float(x[i + 1] / x[i]), float(x[i]), float(x[i + 1])
