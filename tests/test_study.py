from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from impress.study import Study, StudyError
from impress.tuner import _as_yaml

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))

SEARCH = {
    "name": "s",
    "base": {"num_tasks": 4},
    "search": {"m": {"type": "int", "low": 2, "high": 4}, "granularity": ["global", "layer"]},
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_are_valid_and_round_trip(path):
    study = Study.from_yaml(path)
    assert study.name == path.stem
    assert study.question
    again = Study.from_dict(yaml.safe_load(yaml.safe_dump(_as_yaml(study), sort_keys=False)))
    assert again == study


def test_grid_points_are_cases_times_axes_times_seeds():
    study = Study.from_dict(
        {
            "name": "g",
            "cases": [{"method": "supsup"}, {"m": 2}],
            "grid": {"sparsity": [0.3, 0.5]},
            "seeds": [0, 1],
            "base": {"num_tasks": 4},
        }
    )
    points = study.grid_points()
    assert len(points) == 2 * 2 * 2
    assert points[0] == {"method": "supsup", "sparsity": 0.3, "seed": 0}
    assert len({tuple(sorted(p.items())) for p in points}) == 8  # no duplicates
    assert study.config(**points[-1]).m == 2


def _error(data) -> str:
    with pytest.raises(StudyError) as info:
        Study.from_dict(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nme": "x"}, "unknown study key(s) ['nme']"),
        ({"name": "a b"}, "name: 'a b' must be"),
        ({"base": {"num_taks": 3}}, "base: unknown config key(s) ['num_taks']"),
        ({"base": {"num_tasks": 4, "sparsity": 1.5}}, "sparsity: 1.5 is outside"),
        (
            {"search": {**SEARCH["search"], "sparsity": {"type": "float", "low": 0.1, "high": 1.0}}},
            "search.sparsity: 1.0 would make an invalid config: sparsity: 1.0 is outside",
        ),
        (
            {"search": {"sparsity": {"type": "float", "low": 0.1, "high": 0.5}}},
            "base with every searched field at its low or first value: m: heterogeneous",
        ),
        ({"search": {"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}}, "needs low > 0"),
        ({"search": {"m": {"type": "int", "low": 5, "high": 2}}}, "search.m: low (5) must not exceed high (2)"),
        ({"search": {"m": {"type": "int", "low": 1.5, "high": 4}}}, "search.m: an int parameter needs integer"),
        ({"search": {"m": {"type": "int", "low": 2}}}, "search.m: an int parameter needs `low` and `high`"),
        (
            {"search": {**SEARCH["search"], "granularity": ["global", "pixel"]}},
            "search.granularity: 'pixel' would make",
        ),
        ({"search": {"m": {"type": "normal", "low": 1, "high": 2}}}, "search.m.type: 'normal' is not one of"),
        ({"search": {"m": {"type": "int", "low": 2, "high": 4, "stepp": 1}}}, "search.m: unknown key(s) ['stepp']"),
        ({"objectives": [{"metric": "accuracy", "mode": "max"}]}, "objectives[0].metric: 'accuracy' is not one of"),
        ({"objectives": [{"metric": "val/acc/avg", "mode": "up"}]}, "objectives[0].mode: 'up'"),
        (
            {"objectives": [{"metric": "val/task_infer/acc", "mode": "max"}]},
            "objectives[0].metric: val/task_infer/acc is never reported at base with every searched field at its "
            "low or first value: task identity is given (scenario GG)",
        ),
        (
            {"base": {"num_tasks": 4, "scenario": "GNu"}, "objectives": [{"metric": "val/acc/gns", "mode": "max"}]},
            "val/acc/gns is never reported at base with every searched field at its low or first value: the trial's "
            "scenario is GNu",
        ),
        (
            {
                "base": {"num_tasks": 4, "scenario": "GNs"},
                "objectives": [{"metric": "val/task_infer/acc/fit", "mode": "max"}],
            },
            "'fit' is not among its infer_rules ['oneshot_h']",
        ),
        ({"objectives": [{"metric": "val/task_infer/acc/guess", "mode": "max"}]}, "nor an inference metric per rule"),
        ({"choose_on_test": "yes"}, "choose_on_test: expected true or false, got 'yes'"),
        ({"sampler": "cmaes"}, "sampler: 'cmaes' is not one of"),
        ({"trials": 0}, "trials: expected an integer >= 1"),
        ({"seeds": [0, 1]}, "seeds: a search study runs each proposed config with one seed"),
        ({"grid": {"m": [2, 3]}}, "a study either searches (Optuna) or sweeps a grid"),
        ({"base": {"num_tasks": 4, "m": 3}}, "search: ['m'] also fixed in base"),
        ({"resources": {"gpu": -1}}, "resources: cpu must be > 0 and gpu >= 0"),
        ({"resources": {"gpus": 1}}, "resources: unknown key(s) ['gpus']"),
        ({"early_stopping": {"grace_tasks": 4}}, "early_stopping.grace_tasks: 4 must be below"),
        ({"early_stopping": {"metric": "loss"}}, "early_stopping.metric: 'loss'"),
        ({"base": {"num_tasks": 4, "seed": 1}}, "base: set seeds with the study's `seeds` list"),
    ],
)
def test_malformed_studies_name_the_field(change, message):
    assert message in _error({**SEARCH, **change})


def test_inference_objectives_are_accepted_where_every_trial_reports_them():
    data = {
        "name": "gn",
        "base": {"num_tasks": 4, "m": 2, "scenario": "GNu", "superfluous": 4, "infer_rules": ["oneshot_h", "binary_g"]},
        "grid": {"method": ["supsup", "impresslearn"]},
        "objectives": [{"metric": "val/acc/gnu/binary_g", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
    }
    assert Study.from_dict(data).objectives[0].metric == "val/acc/gnu/binary_g"
    data["grid"]["scenario"] = ["GNu", "GG"]  # one grid point would never report it
    assert "grid point (method=supsup, scenario=GG): task identity is given" in _error(data)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"method": "supsup"}, "SupSup keeps full state of its own for every one of the 4 tasks"),
        ({"m": 4}, "ImpressLearn keeps full state of its own for every one of the 4 tasks"),
    ],
)
def test_coefficient_task_accuracy_is_an_objective_only_where_some_task_is_learned_by_coefficients(case, reason):
    data = {
        "name": "coeff",
        "base": {"num_tasks": 4},
        "cases": [{"m": 2}, case],
        "objectives": [{"metric": "val/acc/avg_coeff_tasks", "mode": "max"}],
    }
    assert "val/acc/avg_coeff_tasks is never reported at grid point" in _error(data) and reason in _error(data)
    data["cases"] = [{"m": 2}, {"m": 4, "impressions": "random"}, {"method": "finetune"}]
    assert len(Study.from_dict(data).grid_points()) == 3


def test_invalid_grid_point_is_named():
    data = {"name": "g", "base": {"num_tasks": 4}, "grid": {"m": [2, 8]}}
    assert "grid point (m=8): m: heterogeneous impressions" in _error(data)


def test_study_file_errors(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        Study.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(StudyError, match="bad.yaml: not valid YAML"):
        Study.from_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(StudyError, match="must be a mapping"):
        Study.from_yaml(bad)


@pytest.mark.parametrize("name", ["..", ".", "", "../elsewhere", "a/b"])
def test_a_name_that_would_put_files_outside_its_folder_is_refused(name):
    # the name is the study's folder under the storage and under mlartifacts/: `..` would be their parent
    assert f"name: {name!r} would put files outside its folder" in _error({**SEARCH, "name": name})


def test_names_with_dots_inside_are_still_names():
    assert Study.from_dict({**SEARCH, "name": "v1.2..final"}).name == "v1.2..final"


def test_a_trial_budget_from_the_command_line_is_checked_as_the_files_is():
    study = Study.from_dict(SEARCH)
    assert study.with_trials(3) == Study.from_dict({**SEARCH, "trials": 3})
    for bad in (0, -2, 2.5, True):
        with pytest.raises(StudyError) as from_flag:
            study.with_trials(bad, where="--trials")
        assert str(from_flag.value) == f"--trials: expected an integer >= 1, got {bad!r}"
        assert str(from_flag.value).removeprefix("--") == _error({**SEARCH, "trials": bad})


def test_a_grid_study_takes_no_trial_budget():
    grid = Study.from_dict({"name": "g", "base": {"num_tasks": 4}, "grid": {"m": [2, 3]}, "seeds": [0, 1]})
    with pytest.raises(StudyError) as info:
        grid.with_trials(5, where="--trials")
    assert str(info.value) == (
        "--trials: study 'g' is a grid study: it runs each of its 4 grid points once; "
        "only a search takes a number of trials"
    )


# ---------------------------------------------------------------------------------------------
# Choose on validation, report on test


def _with_metric(where: str, metric: str) -> dict:
    """SEARCH choosing (objectives) or stopping early (early_stopping) on `metric`."""
    if where == "objectives":
        return {**SEARCH, "objectives": [{"metric": metric, "mode": "max"}, SEARCH["objectives"][1]]}
    return {**SEARCH, "early_stopping": {"metric": metric, "grace_tasks": 1}}


def _file_error(tmp_path, data) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(StudyError) as info:
        Study.from_yaml(path)
    return str(info.value)


@pytest.mark.parametrize("where", ["objectives", "early_stopping"])
def test_a_study_file_choosing_on_test_is_refused_naming_the_validation_twin(tmp_path, where):
    field = "objectives[0].metric" if where == "objectives" else "early_stopping.metric"
    err = _file_error(tmp_path, _with_metric(where, "test/acc/avg"))
    assert f"{field}: 'test/acc/avg' is measured on the test split, and a study chooses on validation: " in err
    assert "use 'val/acc/avg'" in err and "`choose_on_test: true`" in err
    # a name without its split (as metrics were once named, when they meant test)
    err = _file_error(tmp_path, _with_metric(where, "acc/avg"))
    assert f"{field}: 'acc/avg' names no data split" in err and "use 'val/acc/avg'" in err
    assert "'test/forgetting'" not in err
    assert "use 'val/forgetting'" in _file_error(tmp_path, _with_metric(where, "test/forgetting"))


def test_an_inference_objective_on_test_is_refused_naming_its_validation_twin(tmp_path):
    data = {**SEARCH, "base": {"num_tasks": 4, "scenario": "GNs"}}
    for metric in ("test/task_infer/acc/oneshot_h", "task_infer/acc/oneshot_h"):
        data["objectives"] = [{"metric": metric, "mode": "max"}]
        assert "use 'val/task_infer/acc/oneshot_h'" in _file_error(tmp_path, data)


@pytest.mark.parametrize("where", ["objectives", "early_stopping"])
def test_choose_on_test_admits_test_metrics_knowingly_and_round_trips(tmp_path, where):
    data = {**_with_metric(where, "test/acc/avg"), "choose_on_test": True}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    study = Study.from_yaml(path)
    assert study.choose_on_test
    chosen = study.objectives[0] if where == "objectives" else study.early_stopping
    assert chosen.metric == "test/acc/avg"
    # the study.yaml a study writes (what `resume` reads) keeps it
    written = yaml.safe_dump(_as_yaml(study), sort_keys=False)
    assert "choose_on_test: true" in written and Study.from_dict(yaml.safe_load(written)) == study
    # validation metrics stay admitted; a name without its split is still no metric
    assert Study.from_dict({**_with_metric(where, "val/acc/avg"), "choose_on_test": True}).choose_on_test
    err = _error({**_with_metric(where, "acc/avg"), "choose_on_test": True})
    assert "use 'val/acc/avg'" in err and "with `choose_on_test: true`, 'test/acc/avg' chooses on test" in err


def test_a_study_chooses_on_validation_by_default():
    study = Study.from_dict({"name": "d", "base": {"num_tasks": 4, "m": 2}, "early_stopping": {}})
    assert [o.metric for o in study.objectives] == ["val/acc/avg"] and not study.choose_on_test
    assert study.early_stopping.metric == "val/acc/avg"
    assert "choose_on_test: false" in yaml.safe_dump(_as_yaml(study))
