"""`impress study confirm`: a study's front rerun on fresh seeds, on real Ray and a real store."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from impress.cli import main
from impress.confirm import comparison, confirm_study, fresh_seeds, front_cases
from impress.pareto import pareto_mask
from impress.records import load_study
from impress.study import Study, StudyError

SEARCH = {
    "name": "tiny",
    "base": {"num_tasks": 4, "epochs": 1, "widths": [32], "stream": "rotated"},
    "search": {
        "m": {"type": "int", "low": 2, "high": 3},
        "granularity": {"type": "categorical", "choices": ["global", "group"]},
        "groups": {"type": "int", "low": 2, "high": 4},
    },
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
    "sampler": "random",
    "trials": 5,
    "early_stopping": {"grace_tasks": 2},
}


def _trials(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"state": "complete", **r} for r in rows])


def _row(m: float, granularity: str, groups: float, widths: str, acc: float, bits: int) -> dict:
    return {
        "m": m,
        "granularity": granularity,
        "groups": groups,
        "widths": widths,
        "val/acc/avg": acc,
        "bits/per_task": bits,
    }


# ---- choosing what to rerun ---------------------------------------------------------------------


def test_the_cases_are_the_non_dominated_configs_with_their_values_as_the_config_reads_them():
    widths = {"type": "categorical", "choices": ["32", "16,16"]}
    base = {k: v for k, v in SEARCH["base"].items() if k != "widths"}
    study = Study.from_dict({**SEARCH, "base": base, "search": {**SEARCH["search"], "widths": widths}})
    trials = _trials(
        [  # as trials.csv reads back: integers beside a blank as floats
            _row(2.0, "global", np.nan, "32", 0.5, 64),
            _row(3.0, "group", 4.0, "16,16", 0.7, 800),
            _row(3.0, "global", np.nan, "32", 0.4, 96),
            _row(2.0, "group", 2.0, "32", 0.6, 300),
        ]
    )
    trials.loc[len(trials)] = {**trials.iloc[1].to_dict(), "state": "stopped", "val/acc/avg": 0.9}  # no front
    chosen = front_cases(study, trials)
    complete = trials[trials["state"] == "complete"]
    expected = complete[pareto_mask(complete[["val/acc/avg", "bits/per_task"]].to_numpy(float), ["max", "min"])]
    assert len(chosen) == len(expected) == 3
    cases = sorted(chosen["case"], key=lambda c: (c["m"], c["granularity"]))
    assert cases == [
        {"m": 2, "granularity": "global", "widths": "32"},  # no `groups`: global does not read it
        {"m": 2, "granularity": "group", "groups": 2, "widths": "32"},
        {"m": 3, "granularity": "group", "groups": 4, "widths": "16,16"},
    ]
    assert all(type(c["m"]) is int for c in cases)
    assert sorted(chosen["val/acc/avg"]) == sorted(expected["val/acc/avg"])
    confirm_study(study, cases, [1, 2]).example_config()  # every case is a valid config


@pytest.mark.parametrize("written", ["[16, 16]", "(16, 16)"])
def test_a_list_a_grid_study_swept_is_read_back_as_a_list(written):
    base = {**{k: v for k, v in SEARCH["base"].items() if k != "widths"}, "m": 2}
    study = Study.from_dict({**SEARCH, "base": base, "search": {}, "grid": {"widths": [[16, 16], [32]]}})
    trials = _trials([{"widths": written, "val/acc/avg": 0.5, "bits/per_task": 64}])
    (case,) = front_cases(study, trials)["case"]
    assert case == {"widths": [16, 16]}
    assert confirm_study(study, [case], [1]).example_config().widths == (16, 16)


def test_a_study_without_a_complete_trial_has_no_front_to_confirm():
    study = Study.from_dict(SEARCH)
    trials = _trials([{"m": 2, "granularity": "global", "val/acc/avg": 0.5, "bits/per_task": 64}])
    trials["state"] = "failed"
    with pytest.raises(StudyError, match="no complete trial, so no front to confirm"):
        front_cases(study, trials)


@pytest.mark.parametrize(("seeds", "expected"), [([0], [1, 2, 3]), ([1, 3], [0, 2, 4]), ([5], [0, 1, 2])])
def test_fresh_seeds_are_the_smallest_the_study_did_not_run(seeds, expected):
    study = Study.from_dict({**SEARCH, "search": {}, "grid": {"m": [2]}, "seeds": seeds})
    assert fresh_seeds(study, 3) == expected


def test_the_confirmation_is_a_grid_study_on_the_same_base_and_objectives_without_early_stopping():
    study = Study.from_dict({**SEARCH, "concurrency": 1, "resources": {"cpu": 2}})
    confirm = confirm_study(study, [{"m": 2, "granularity": "global"}], [4, 7])
    assert confirm.name == "tiny_confirm" and confirm.kind == "grid"
    assert confirm.base == study.base and confirm.objectives == study.objectives
    assert confirm.early_stopping is None and confirm.seeds == (4, 7)
    assert (confirm.concurrency, confirm.resources) == (1, study.resources)
    assert [p["seed"] for p in confirm.grid_points()] == [4, 7]
    with pytest.raises(StudyError, match=r"m \(5\) must not exceed num_tasks"):  # validated as a study file
        confirm_study(study, [{"m": 5, "granularity": "global"}], [1])


def test_the_comparison_pairs_each_case_with_its_fresh_means():
    study = Study.from_dict(SEARCH)
    chosen = front_cases(
        study,
        _trials(
            [
                {"m": 2, "granularity": "global", "groups": None, "val/acc/avg": 0.6, "bits/per_task": 64},
                {"m": 3, "granularity": "group", "groups": 2, "val/acc/avg": 0.8, "bits/per_task": 300},
            ]
        ),
    )
    confirmed = pd.DataFrame(
        [  # the confirm study's configs (means over seeds), in another order
            {"m": 3, "granularity": "group", "groups": 2.0, "val/acc/avg": 0.7, "val/acc/avg_std": 0.05,
             "val/acc/avg_n": 3, "bits/per_task": 300, "on_front": True},
            {"m": 2, "granularity": "global", "groups": None, "val/acc/avg": 0.65, "val/acc/avg_std": 0.01,
             "val/acc/avg_n": 3, "bits/per_task": 64, "on_front": True},
        ]
    )  # fmt: skip
    table = comparison(chosen, confirmed, study).set_index("m")
    assert table.loc[3, "val/acc/avg@study"] == 0.8 and table.loc[3, "val/acc/avg"] == 0.7
    assert math.isclose(table.loc[3, "val/acc/avg shift"], -0.1) and math.isclose(
        table.loc[2, "val/acc/avg shift"], 0.05
    )
    assert table.loc[3, "val/acc/avg_n"] == 3 and bool(table.loc[2, "on_front"])


# ---- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """A 5-trial search, then its front confirmed with seeds 3 and 1 (Ray, SQLite store)."""
    root = tmp_path_factory.mktemp("confirm")
    (root / "tiny.yaml").write_text(yaml.safe_dump({**SEARCH, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["study", "run", "tiny.yaml", "--storage", "studies"]) == 0
        assert main(["study", "confirm", "tiny", "--storage", "studies", "--seeds", "3", "1"]) == 0
    return root / "studies"


def _same(frame: pd.DataFrame, row: pd.Series) -> pd.Series:
    """The rows of `frame` with `row`'s config (a blank `groups` matches a blank)."""
    groups = frame["groups"].isna() if pd.isna(row["groups"]) else frame["groups"] == row["groups"]
    return (frame["m"] == row["m"]) & (frame["granularity"] == row["granularity"]) & groups


def test_the_front_reruns_once_per_fresh_seed_and_confirmed_csv_holds_their_means(confirmed):
    search = pd.read_csv(confirmed / "tiny" / "trials.csv")
    trials = pd.read_csv(confirmed / "tiny_confirm" / "trials.csv")
    study = Study.from_yaml(confirmed / "tiny_confirm" / "study.yaml")
    objectives = ["val/acc/avg", "bits/per_task"]
    complete = search[search["state"] == "complete"]
    means = complete.groupby(["m", "granularity", "groups"], dropna=False)[objectives].mean().reset_index()
    front = means[pareto_mask(means[objectives].to_numpy(float), ["max", "min"])]
    assert {(c["m"], c["granularity"], c.get("groups")) for c in study.cases} == {
        (int(r.m), r.granularity, None if np.isnan(r.groups) else int(r.groups)) for r in front.itertuples()
    }
    assert study.seeds == (3, 1) and study.early_stopping is None
    assert len(trials) == 2 * len(front) and set(trials["state"]) == {"complete"}
    assert sorted(trials["seed"]) == sorted([1, 3] * len(front))

    table = pd.read_csv(confirmed / "tiny_confirm" / "confirmed.csv")
    assert len(table) == len(front)
    for _, row in table.iterrows():
        fresh, before = trials[_same(trials, row)], complete[_same(complete, row)]
        assert sorted(fresh["seed"]) == [1, 3]
        assert math.isclose(row["val/acc/avg"], fresh["val/acc/avg"].mean())
        assert math.isclose(row["test/acc/avg"], fresh["test/acc/avg"].mean())
        assert math.isclose(row["val/acc/avg_std"], fresh["val/acc/avg"].std())
        assert math.isclose(row["val/acc/avg@study"], before["val/acc/avg"].mean())
        assert math.isclose(row["val/acc/avg shift"], row["val/acc/avg"] - row["val/acc/avg@study"])
        assert row["bits/per_task"] == row["bits/per_task@study"]  # bits are the config's, whatever the seed

    records = load_study("tiny_confirm", uri=f"sqlite:///{confirmed.parent / 'mlflow.db'}")  # tracked as any study
    assert len(records.trials) == len(trials) and set(records.trials["seed"]) == {1, 3}
    client = MlflowClient(tracking_uri=records.uri)
    logged = client.download_artifacts(records.parent_run_id, "confirm/confirmed.csv", str(confirmed.parent))
    pd.testing.assert_frame_equal(pd.read_csv(logged), table)


def test_confirming_again_resumes_and_other_seeds_are_refused(confirmed, capsys, monkeypatch):
    monkeypatch.chdir(confirmed.parent)
    before = pd.read_csv(confirmed / "tiny_confirm" / "trials.csv")
    assert main(["study", "confirm", "tiny", "--storage", "studies", "--seeds", "3", "1"]) == 0
    out = capsys.readouterr().out
    assert "stay on the front chosen over those seeds' means" in out
    pd.testing.assert_frame_equal(pd.read_csv(confirmed / "tiny_confirm" / "trials.csv"), before)
    assert main(["study", "confirm", "tiny", "--storage", "studies", "--seeds", "2"]) == 2
    assert "holds a confirmation of other configs or seeds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["study", "confirm", "nothing"], "error: no finished study 'nothing' under "),
        (["study", "resume", "tiny", "--seeds", "1"], "error: --seeds: only `impress study confirm` takes seeds"),
        (["study", "confirm", "tiny", "--seeds", "1", "1"], "error: --seeds: [1, 1] repeats a seed"),
    ],
)
def test_bad_confirm_requests_exit_2_with_a_message(confirmed, capsys, monkeypatch, args, message):
    monkeypatch.chdir(confirmed.parent)
    assert main([*args, "--storage", "studies"]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_run_resume_continues_the_same_study_and_refuses_another_of_that_name(confirmed, capsys, monkeypatch):
    monkeypatch.chdir(confirmed.parent)
    before = pd.read_csv(confirmed / "tiny" / "trials.csv")
    assert main(["study", "run", "tiny.yaml", "--storage", "studies", "--resume"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(confirmed / "tiny" / "trials.csv"), before)
    changed = yaml.safe_load((confirmed.parent / "tiny.yaml").read_text()) | {"trials": 6}
    (confirmed.parent / "other.yaml").write_text(yaml.safe_dump(changed))
    assert main(["study", "run", "other.yaml", "--storage", "studies", "--resume"]) == 2
    assert re.search(
        r"error: other\.yaml differs from the study of that name in \S+/studies/tiny; rename", capsys.readouterr().err
    )
