"""Every shipped study on the embedded digits runs end to end, shrunk (one seed, one epoch, narrow
nets, few search trials): Ray Tune, Optuna, MLflow, the study's own front and plot, then
`impress report` on its records. What this checks is the pipeline each study file takes, not its
numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from impress.study import Study
from impress.tuner import run_study

pytestmark = pytest.mark.slow

STUDIES = Path(__file__).resolve().parents[1] / "studies"
ON_DIGITS = sorted(p.name for p in STUDIES.glob("*.yaml") if Study.from_yaml(p).example_config().source == "digits")


def _shrunk(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["base"] = {**data.get("base", {}), "epochs": 1, "alpha_epochs": 1, "widths": [16, 16]}
    data["seeds"] = data.get("seeds", [0])[:1]
    if "search" in data:
        data["trials"] = 4
    return data


def test_the_digits_studies_are_all_shipped():
    assert {"quickstart.yaml", "granularity.yaml", "impressions_vs_m.yaml", "inference_rules.yaml"} <= set(ON_DIGITS)


@pytest.mark.parametrize("name", ON_DIGITS)
def test_shipped_study_runs_and_reports(name, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = Study.from_dict({**_shrunk(STUDIES / name), "tracking_uri": uri})
    outcome = run_study(study, storage=tmp_path / "studies")
    trials = pd.read_csv(outcome.root / "trials.csv")
    expected = study.trials if study.kind == "search" else len(study.grid_points())
    assert outcome.complete and len(trials) == expected and set(trials["state"]) == {"complete"}
    for o in study.objectives:  # every objective reached the study's table, for every trial
        assert trials[o.metric].notna().all(), o.metric
    if len(study.objectives) == 2:
        assert (outcome.root / "pareto.png").stat().st_size > 10_000
    report = subprocess.run(
        [sys.executable, "-m", "impress.cli", "report", study.name, "--store", uri, "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"{expected} trials, {expected} complete" in report.stdout
    assert (tmp_path / "report" / "report.md").exists()
