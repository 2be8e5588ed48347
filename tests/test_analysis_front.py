"""Fronts over seeds and the comparison tables, on hand-made trials (pure pandas; no store)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from impress.pareto import over_seeds, pareto_mask, seed_front
from impress.tables import by_m_table, config_label, fmt, inference_table, methods_table, varied_columns


def _trials(points: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """One row per (config, seed): `points[config][seed] = (bits, acc)`."""
    rows = [
        {"config": name, "seed": seed, "bits/per_task": b, "acc/avg": a}
        for name, values in points.items()
        for seed, (b, a) in enumerate(values)
    ]
    return pd.DataFrame(rows)


def _front(points, modes=("min", "max")) -> set[str]:
    table = seed_front(_trials(points), {"bits/per_task": modes[0], "acc/avg": modes[1]}, by=["config"])
    return set(table.loc[table["on_front"], "config"])


def test_front_of_means_not_of_lucky_seeds():
    # "lucky" has one seed above everything, but its mean is below "steady" at the same bits
    points = {"steady": [(100, 0.8), (100, 0.8)], "lucky": [(100, 0.99), (100, 0.5)], "cheap": [(10, 0.3), (10, 0.3)]}
    assert _front(points) == {"steady", "cheap"}
    per_trial = pareto_mask(_trials(points)[["bits/per_task", "acc/avg"]].to_numpy(), ["min", "max"])
    assert per_trial.sum() == 3  # per trial, the lucky seed would be on it (with both cheap seeds)


def test_ties_and_duplicates():
    # identical configs (duplicates) are both on the front; a tie in one objective is decided by the other
    points = {"a": [(10, 0.5)], "a_again": [(10, 0.5)], "same_bits_worse": [(10, 0.4)], "b": [(20, 0.7)]}
    assert _front(points) == {"a", "a_again", "b"}
    # equal accuracy, more bits: dominated; equal in both: not
    points = {"x": [(10, 0.5)], "y": [(20, 0.5)], "z": [(10, 0.5)]}
    assert _front(points) == {"x", "z"}


@pytest.mark.parametrize("modes", list(itertools.product(["min", "max"], repeat=2)))
def test_both_directions(modes):
    rng = np.random.default_rng(1)
    points = {f"c{i}": [tuple(rng.random(2)) for _ in range(3)] for i in range(25)}
    table = seed_front(_trials(points), dict(zip(["bits/per_task", "acc/avg"], modes)), by=["config"])
    sign = np.array([1.0 if m == "max" else -1.0 for m in modes])
    means = table[["bits/per_task", "acc/avg"]].to_numpy() * sign  # larger is better in both
    for on, p in zip(table["on_front"], means):  # on the front iff nothing dominates its mean
        dominated = np.any(np.all(means >= p, axis=1) & np.any(means > p, axis=1))
        assert on == (not dominated)
    flipped = {"min": "max", "max": "min"}
    opposite = seed_front(
        _trials(points), {"bits/per_task": flipped[modes[0]], "acc/avg": flipped[modes[1]]}, by=["config"]
    )
    # the front of the opposite directions is another set, except for points extreme in both senses
    assert table["on_front"].any() and opposite["on_front"].any()
    assert not (table["on_front"] & opposite["on_front"]).all()


def test_means_spread_and_n_over_seeds():
    rng = np.random.default_rng(2)
    points = {"a": [tuple(rng.random(2)) for _ in range(3)], "b": [tuple(rng.random(2)) for _ in range(1)]}
    trials = _trials(points)
    trials.loc[2, "acc/avg"] = np.nan  # a metric one trial lacks: n counts values, not trials
    table = over_seeds(trials, ["acc/avg", "bits/per_task"], by=["config"]).set_index("config")
    acc = np.array([p[1] for p in points["a"]])[:2]
    assert table.loc["a", "acc/avg"] == pytest.approx(acc.mean())
    assert table.loc["a", "acc/avg_std"] == pytest.approx(acc.std(ddof=1))
    assert (table.loc["a", "acc/avg_n"], table.loc["a", "n"], table.loc["a", "seeds"]) == (2, 3, "0,1,2")
    assert np.isnan(table.loc["b", "acc/avg_std"]) and table.loc["b", "n"] == 1
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the trials table"):
        over_seeds(trials, ["nope"], by=["config"])


def test_fmt_always_carries_n():
    assert fmt(0.81234, 0.0041, 3, "acc/avg") == "0.812 ± 0.004 (n=3)"
    assert fmt(0.5, float("nan"), 1, "acc/avg") == "0.500 (n=1)"
    assert fmt(84480.0, 0.0, 3, "bits/per_task") == "84,480 (n=3)"
    assert fmt(float("nan"), float("nan"), 0, "acc/avg_coeff_tasks") == "n/a"


def _study_like() -> pd.DataFrame:
    """Trials as `impress.report.prepare` gives them: SupSup ignores ImpressLearn's fields (None)."""
    rng = np.random.default_rng(3)
    rows = []
    for seed in (0, 1, 2):
        rows.append({"method": "supsup", "m": None, "impressions": None, "seed": seed, "acc/avg": rng.random()})
        for m, source in itertools.product([2, 5], ["heterogeneous", "random"]):
            rows.append(
                {"method": "impresslearn", "m": m, "impressions": source, "seed": seed, "acc/avg": rng.random()}
            )
    trials = pd.DataFrame(rows)
    trials["bits/per_task"] = np.where(trials["method"] == "supsup", 84480, trials["m"].fillna(0) * 96)
    trials["bits/total"] = trials["bits/per_task"] * 20
    trials["task_infer/acc/oneshot_h"] = rng.random(len(trials))
    trials["acc/gns/oneshot_h"] = rng.random(len(trials))
    return trials


def test_methods_and_by_m_tables():
    trials = _study_like()
    by = varied_columns(trials, ["method", "m", "impressions", "seed"])
    assert by == ["method", "m", "impressions"]
    assert config_label(trials.iloc[0], by) == "method=supsup"
    methods = methods_table(trials, by=by)
    long = methods.long
    assert set(long["metric"]) == {"acc/avg", "bits/per_task", "bits/total"}  # acc/avg_coeff_tasks: absent
    assert (long["n"] == 3).all() and len(long) == 5 * 3
    sup = trials[trials["method"] == "supsup"]["acc/avg"]
    row = long[(long["method"] == "SupSup") & (long["metric"] == "acc/avg")].iloc[0]
    assert row["mean"] == pytest.approx(sup.mean()) and row["std"] == pytest.approx(sup.std(ddof=1))
    wide = methods.wide()
    assert wide.iloc[0]["method"] == "SupSup" and len(wide) == 5  # SupSup's row survives its None fields
    assert all("(n=3)" in cell for cell in wide["acc/avg"])
    by_m = by_m_table(trials, by=by, metric="acc/avg").wide()
    assert list(by_m["m"]) == ["2", "5"] and {"heterogeneous", "random"} <= set(by_m.columns)
    assert "| m | heterogeneous | random |" in by_m_table(trials, by=by).markdown()


def test_inference_table_per_rule():
    trials = _study_like()
    by = varied_columns(trials, ["method", "m", "impressions"])
    table = inference_table(trials, by=by)
    assert set(table.long["rule"]) == {"oneshot_h"}
    assert set(table.long["metric"]) == {"task_infer/acc", "acc/gns"}
    assert inference_table(trials.drop(columns=["task_infer/acc/oneshot_h", "acc/gns/oneshot_h"]), by=by) is None


def test_a_studys_own_plot_takes_trials_whose_method_ignores_the_grouping_field(tmp_path):
    """SupSup has no coefficient granularity: its trials carry no value there, and still get drawn."""
    from matplotlib.image import imread

    from impress.plots import plot_front

    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "state": ["complete", "complete", "complete", "failed"],
            "method": ["supsup", "impresslearn", "impresslearn", "impresslearn"],
            "granularity": [None, "layer", "channel", "global"],
            "acc/avg": [0.95, 0.6, 0.9, np.nan],
            "bits/per_task": [84480, 960, 167040, np.nan],
        }
    )
    drawn = plot_front(
        trials, x="bits/per_task", y="acc/avg", x_mode="min", y_mode="max", path=tmp_path / "p.png", title="t",
        group="granularity",
    )  # fmt: skip
    image = imread(drawn.path)
    assert image.shape[:2] == drawn.size[::-1] and image.std() > 0
    complete = drawn.points[drawn.points["kind"] == "trial"]
    assert len(complete) == 3  # the failed trial has no values to draw
