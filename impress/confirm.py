"""Confirm a study's front on seeds it never saw.

A search runs each config it proposes once, and its front is chosen on those runs' validation
values: the configs that lead are, in part, the ones whose one seed was lucky. `impress study
confirm NAME` takes the configs on NAME's front and runs them again as the grid study
`NAME_confirm`, over fresh seeds (by default three the study did not use), so the front chosen
there on validation means, and the test values beside it, are free of that selection.

    front_cases(study, trials)     the front's configs as grid cases, with the values they were chosen on
    confirm_study(study, cases)    the grid study that reruns them
    comparison(...)                each case: the study's value beside the fresh seeds' mean, and whether
                                   it stays on the front (`confirmed.csv`)
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from impress.config import Config
from impress.metrics import split_of, twin
from impress.study import Study, StudyError
from impress.study_outcome import config_keys, mean_text, other_split, shown, text
from impress.trials import config_front

__all__ = ["SUFFIX", "front_cases", "fresh_seeds", "confirm_study", "comparison", "comparison_text"]

SUFFIX = "_confirm"
_DEFAULTS = Config().to_dict()


def _value(field: str, v: Any) -> Any:
    """A config value as read back from trials.csv: integers as integers, a list (written as
    `[64, 64]` or `(64, 64)`) as a list; None for a blank (a field the config does not read). Other
    text stays text, as the study wrote it (`widths: '64,64'`)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    default = _DEFAULTS.get(field)
    if isinstance(v, float) and v.is_integer() and not isinstance(default, float):  # an int beside a blank
        return int(v)
    if isinstance(v, str) and not isinstance(default, str) and v[:1] in "[(" and v[-1:] in ")]":
        try:
            parsed = ast.literal_eval(v)
        except (ValueError, SyntaxError):  # not a list after all: the config's check names the field
            return v
        return list(parsed) if isinstance(parsed, tuple) else parsed
    return v


def front_cases(study: Study, trials: pd.DataFrame) -> pd.DataFrame:
    """The configs on the study's front over its complete trials (means over its seeds, chosen on
    its objectives), one row each: the `case` to rerun (its values, blanks left out), then the
    objectives' and their twins' values they were chosen with."""
    objectives = {o.metric: o.mode for o in study.objectives}
    missing = [m for m in objectives if m not in trials]
    if missing:
        raise StudyError(f"study {study.name!r}: trials.csv lacks its objective(s) {missing}; no trial completed?")
    keys = [k for k in config_keys(study) if k in trials]
    show = [m for m in shown(study) if m in trials and m not in objectives]
    configs = config_front(trials, objectives, by=keys, show=show)
    front = configs[configs["on_front"].astype(bool)].reset_index(drop=True)
    if not len(front):
        raise StudyError(f"study {study.name!r} has no complete trial, so no front to confirm")
    cases = [{k: v for k in keys if (v := _value(k, r[k])) is not None} for _, r in front.iterrows()]
    values = [m for m in shown(study) if m in front]
    return pd.concat([pd.DataFrame({"case": cases}), front[values + ["n"]]], axis=1)


def fresh_seeds(study: Study, count: int) -> list[int]:
    """`count` seeds the study did not run, the smallest first."""
    used, seeds, s = set(study.seeds), [], 0
    while len(seeds) < count:
        if s not in used:
            seeds.append(s)
        s += 1
    return seeds


def confirm_study(study: Study, cases: Sequence[dict[str, Any]], seeds: Sequence[int]) -> Study:
    """The grid study `<name>_confirm`: every case once per seed, on the study's base, objectives,
    store and resources, validated as a study file is. It runs every trial to the end (no early
    stopping: a front compares whole streams)."""
    return Study.from_dict(
        {
            "name": study.name + SUFFIX,
            "question": f"The front configs of study {study.name!r}, each run with seeds {list(seeds)}.",
            "base": dict(study.base),
            "cases": [dict(c) for c in cases],
            "seeds": list(seeds),
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in study.objectives],
            "choose_on_test": study.choose_on_test,
            "concurrency": study.concurrency,
            "max_failures": study.max_failures,
            "resources": dataclasses.asdict(study.resources),
            **({"tracking_uri": study.tracking_uri} if study.tracking_uri is not None else {}),
        }
    )


def comparison(chosen: pd.DataFrame, confirmed: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Per case of `chosen` (`front_cases`): its values in the study it came from (`<metric>@study`),
    its means, spread and n over the fresh seeds (`confirmed`: the confirm study's configs), the
    `<objective> shift` (fresh mean minus the study's value), and whether it is on the front there."""
    keys = [k for k in config_keys(study) if k in confirmed]

    def key(values: dict[str, Any]) -> tuple[str, ...]:
        return tuple(text(_value(k, values.get(k))) for k in keys)

    rows = {key(r.to_dict()): r for _, r in confirmed.iterrows()}
    metrics = [m for m in shown(study) if m in chosen]
    out = []
    for _, c in chosen.iterrows():
        row: dict[str, Any] = dict(c["case"])
        row.update({f"{m}@study": c[m] for m in metrics})
        row["n@study"] = c["n"]
        fresh = rows.get(key(c["case"]))
        for m in metrics:
            mean = fresh[m] if fresh is not None else np.nan
            row[m] = mean
            row[f"{m}_std"] = fresh.get(f"{m}_std", np.nan) if fresh is not None else np.nan
            row[f"{m}_n"] = fresh.get(f"{m}_n", 0) if fresh is not None else 0
        for o in study.objectives:
            row[f"{o.metric} shift"] = row[o.metric] - row[f"{o.metric}@study"]
        row["on_front"] = bool(fresh["on_front"]) if fresh is not None else False
        out.append(row)
    return pd.DataFrame(out)


def comparison_text(table: pd.DataFrame, study: Study, seeds: Sequence[int]) -> str:
    """The comparison as terminal lines: per case, each objective in the study and over the fresh
    seeds, and how many of the front's configs stay on it."""
    keys = [c for c in table.columns if c in config_keys(study)]
    lines = [
        f"{len(table)} configs on {study.name}'s front, rerun with seeds {', '.join(map(str, seeds))}: "
        f"{int(table['on_front'].sum())} stay on the front chosen over those seeds' means"
    ]
    cells = {k: [text(v) for v in table[k]] for k in keys}
    for o in study.objectives:
        m = o.metric
        if split_of(m) is None:  # bits: the config's, whatever the seed
            cells[m] = [text(v) for v in table[f"{m}@study"]]
            continue
        cells[f"{m} (study)"] = [text(v) for v in table[f"{m}@study"]]
        for shown_metric in (m, twin(m, other_split(m))):
            if shown_metric in table:
                cells[f"{shown_metric} (fresh seeds)"] = [mean_text(r, shown_metric) for _, r in table.iterrows()]
    cells["on front"] = ["yes" if f else "no" for f in table["on_front"]]
    lines.append(pd.DataFrame(cells).to_string(index=False))
    for o in study.objectives:
        shift = table[f"{o.metric} shift"].dropna()
        if len(shift) and split_of(o.metric) is not None:
            lines.append(
                f"{o.metric}: fresh seeds' mean minus the study's value, over the front: "
                f"{shift.mean():+.4f} on average (from {shift.min():+.4f} to {shift.max():+.4f})"
            )
    return "\n".join(lines)
