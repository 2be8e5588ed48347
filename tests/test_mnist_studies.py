"""The shipped MNIST studies run end to end on the real data, reduced (two tasks, one epoch, one
seed; heterogeneous banks cut to the two tasks there are): MNIST fetched by `impress data mnist`,
Ray Tune, MLflow, the study's front chosen on validation with test beside it. The full studies take
about an hour each on two cores; what this checks is that a new user's first `impress study run` of
them works, not their numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from impress.study import Study

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
IMPRESS = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "impress"
MNIST_STUDIES = sorted(p.name for p in (PROJECT / "studies").glob("*.yaml") if "mnist_lenet" in p.name)


def _reduced(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["base"] = {**data["base"], "num_tasks": 2, "epochs": 1}
    data["seeds"] = data["seeds"][:1]
    cases = []
    for case in data["cases"]:
        if case.get("impressions", "heterogeneous") == "heterogeneous" and "m" in case:
            case = {**case, "m": min(case["m"], 2)}
        if case not in cases:
            cases.append(case)
    data["cases"] = cases
    return data


@pytest.fixture(scope="module")
def mnist() -> None:
    """MNIST in the default data folder (the registry is reachable in CI; a second call only verifies)."""
    done = subprocess.run([str(IMPRESS), "data", "mnist"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr


def test_both_mnist_studies_are_shipped():
    assert MNIST_STUDIES == ["permuted_mnist_lenet.yaml", "rotated_mnist_lenet.yaml"]
    for name in MNIST_STUDIES:
        study = Study.from_yaml(PROJECT / "studies" / name)
        assert len(study.seeds) == 3 and all(o.metric.startswith(("val/", "bits/")) for o in study.objectives)


@pytest.mark.parametrize("name", MNIST_STUDIES)
def test_a_reduced_mnist_study_runs_on_the_real_data(name, mnist, tmp_path):
    study_file = tmp_path / name
    reduced = {**_reduced(PROJECT / "studies" / name), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    study_file.write_text(yaml.safe_dump(reduced, sort_keys=False))
    done = subprocess.run(
        [str(IMPRESS), "study", "run", str(study_file), "--storage", str(tmp_path / "studies")],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "studies" / Study.from_yaml(study_file).name
    trials = pd.read_csv(root / "trials.csv")
    assert set(trials["state"]) == {"complete"} and len(trials) == len(Study.from_yaml(study_file).grid_points())
    for split in ("val", "test"):  # chosen on validation, reported on test: both are recorded
        assert trials[f"{split}/acc/avg"].between(0.5, 1.0).all(), trials[f"{split}/acc/avg"]
    assert (trials["test/acc/avg"] != trials["val/acc/avg"]).any()
    front = pd.read_csv(root / "front.csv")
    assert {"val/acc/avg", "test/acc/avg", "bits/per_task"} <= set(front.columns)
