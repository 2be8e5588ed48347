"""The trials table and a study's front over configs (`impress.trials`), and the study's summary
of it: a config is on the front for its mean over seeds, never for one lucky seed."""

from __future__ import annotations

from pathlib import Path

from impress.study import Study
from impress.study_outcome import StudyOutcome, config_keys, front_summary
from impress.trials import config_front, trials_table

W = 266_200  # LeNet-300-100's masked weights: SupSup's bits per task


def _row(trial: str, seed: int, acc: float, bits: int, **values) -> dict:
    return {"trial_id": trial, "state": "complete", "seed": seed, **values, "val/acc/avg": acc,
            "test/acc/avg": acc - 0.01, "bits/per_task": bits}  # fmt: skip


def _rows() -> list[dict]:
    # "lucky": one seed at 0.95, the other at 0.55 (mean 0.75); "steady": 0.80 on both, same bits
    return [
        _row("t0", 0, 0.95, 480, method="impresslearn", m=5, granularity="layer"),
        _row("t1", 1, 0.55, 480, method="impresslearn", m=5, granularity="layer"),
        _row("t2", 0, 0.80, 480, method="impresslearn", m=5, granularity="channel"),
        _row("t3", 1, 0.80, 480, method="impresslearn", m=5, granularity="channel"),
        _row("t4", 0, 0.96, W, method="supsup", m=10, granularity="layer"),
        _row("t5", 1, 0.94, W, method="supsup", m=10, granularity="layer"),
    ]


def test_a_field_the_method_ignores_is_blank_and_metrics_follow_the_values():
    trials = trials_table(_rows(), first=["test/acc/avg"])
    supsup = trials[trials["method"] == "supsup"]
    assert supsup["m"].isna().all() and supsup["granularity"].isna().all()  # SupSup reads neither
    assert trials.loc[trials["method"] == "impresslearn", "m"].tolist() == [5, 5, 5, 5]
    columns = list(trials.columns)
    assert columns.index("test/acc/avg") < columns.index("val/acc/avg")  # `first` leads the metrics
    assert columns.index("granularity") < columns.index("test/acc/avg")  # values before metrics


def test_groups_is_blank_where_the_granularity_is_not_group_so_such_configs_are_one():
    # a search samples `groups` for every trial; only granularity group reads it
    rows = [
        _row("t0", 0, 0.50, 480, method="impresslearn", m=5, granularity="layer", groups=8),
        _row("t1", 1, 0.60, 480, method="impresslearn", m=5, granularity="layer", groups=32),
        _row("t2", 0, 0.70, 960, method="impresslearn", m=5, granularity="group", groups=8),
        _row("t3", 0, 0.80, 1920, method="impresslearn", m=5, granularity="group", groups=32),
    ]
    trials = trials_table(rows)
    assert trials["groups"].isna().tolist() == [True, True, False, False]
    configs = config_front(trials, {"val/acc/avg": "max", "bits/per_task": "min"}, by=["granularity", "groups"])
    layer = configs[configs["granularity"] == "layer"]
    assert len(layer) == 1 and layer.iloc[0]["n"] == 2 and layer.iloc[0]["trials"] == "t0,t1"
    assert sorted(configs.loc[configs["granularity"] == "group", "groups"]) == [8, 32]


def test_what_a_study_fixes_decides_what_a_row_reads():
    # a search of ImpressLearn alone: neither the method nor (in the second study) the granularity is a column
    rows = [
        {"trial_id": "t0", "granularity": "layer", "groups": 8},
        {"trial_id": "t1", "granularity": "group", "groups": 8},
    ]
    blanked = trials_table(rows, base={"method": "impresslearn"})
    assert blanked["groups"].isna().tolist() == [True, False]
    grouped = trials_table([{"trial_id": "t0", "groups": 8}], base={"granularity": "group"})
    assert grouped["groups"].tolist() == [8]
    assert trials_table([{"trial_id": "t0", "groups": 8}])["groups"].isna().all()  # the default granularity: layer
    supsup = trials_table([{"trial_id": "t0", "m": 5}], base={"method": "supsup"})
    assert supsup["m"].isna().all()


def test_the_front_is_over_configs_means_not_over_single_seeds():
    trials = trials_table(_rows())
    by_trial = trials.assign(config=trials["trial_id"])
    per_trial = config_front(by_trial, {"val/acc/avg": "max", "bits/per_task": "min"}, by=["config"])
    assert "t0" in set(per_trial.loc[per_trial["on_front"], "config"])  # per trial, the lucky seed is on it
    configs = config_front(trials, {"val/acc/avg": "max", "bits/per_task": "min"}, by=["method", "granularity"])
    front = configs[configs["on_front"]]
    assert set(front["trials"]) == {"t2,t3", "t4,t5"}  # steady (0.80) beats lucky (mean 0.75) at equal bits
    assert front["n"].tolist() == [2, 2] and set(front["seeds"]) == {"0,1"}
    lucky = configs[configs["trials"] == "t0,t1"].iloc[0]
    assert lucky["val/acc/avg"] == 0.75 and abs(lucky["val/acc/avg_std"] - 0.2828) < 1e-3 and not lucky["on_front"]


def test_the_summary_prints_integers_as_integers_and_no_nan_for_fields_a_method_ignores():
    study = Study.from_dict(
        {
            "name": "summary",
            "cases": [{"method": "supsup"}, {"method": "impresslearn", "m": 5, "granularity": "layer"},
                      {"method": "impresslearn", "m": 5, "granularity": "channel"}],
            "seeds": [0, 1],
            "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
        }
    )  # fmt: skip
    trials = trials_table(_rows())
    keys = [k for k in config_keys(study) if k in trials]
    assert keys == ["method", "m", "granularity"]
    configs = config_front(trials, {"val/acc/avg": "max", "bits/per_task": "min"}, by=keys, show=["test/acc/avg"])
    summary = front_summary(StudyOutcome(Path("."), trials, configs, keys, complete=True), study)
    assert "266200" in summary and "e+05" not in summary
    assert "nan" not in summary.lower()
    assert "0.8 (2)" in summary and "266200 (2)" in summary  # steady: mean and n (no spread to show)
    assert "0.75 ± 0.2828 (2)" in summary  # every config, with its spread, below the front
    front_part = summary.split("every config")[0]
    assert "0.75" not in front_part  # the lucky config is not on the front


def test_configs_on_different_streams_are_never_compared():
    rows = [
        _row("p0", 0, 0.97, W, method="supsup", stream="permuted"),
        _row("r0", 0, 0.96, W, method="supsup", stream="rotated"),
        _row("r1", 0, 0.70, 480, method="impresslearn", m=5, stream="rotated"),
    ]
    configs = config_front(trials_table(rows), {"val/acc/avg": "max", "bits/per_task": "min"}, by=["stream", "method"])
    assert configs["on_front"].all()  # rotated SupSup is on its stream's front, though permuted SupSup beats it
