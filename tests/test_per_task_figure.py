"""`impress report`'s per-task figure (per_task.png / .html / .csv) on a real small study (real Ray,
real MLflow SQLite store): a shuffled rotated stream, heterogeneous and homogeneous ImpressLearn
with m = 2, SupSup, and one config on a permuted stream that the figure leaves out. The PNG is
read back; PNGs are also saved to $IMPRESS_SCREENSHOTS for a person."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pixels import near, rgb

from impress.config import Config
from impress.plots import plot_per_task
from impress.records import acc_matrix, load_study
from impress.report import PER_TASK_COLUMNS, per_task_accuracies, per_task_runs, prepare, report_files
from impress.streams import learning_order
from impress.study import Study
from impress.tracking import StudyTracker
from impress.tuner import run_study

T, M = 6, 2
STUDY = {
    "name": "per_task",
    "base": {"num_tasks": T, "epochs": 1, "widths": [32, 32], "task_order": "shuffled"},
    "cases": [
        {"method": "impresslearn", "m": M},
        {"method": "impresslearn", "m": M, "impressions": "homogeneous"},
        {"method": "supsup"},
        {"method": "impresslearn", "m": M, "stream": "permuted"},
    ],
    "seeds": [0, 1],
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
}
ROTATED_VARIANTS = {"ImpressLearn heterogeneous", "ImpressLearn homogeneous", "SupSup"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study's store, and its report written once."""
    root = tmp_path_factory.mktemp("per_task")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_study(Study.from_dict({**STUDY, "tracking_uri": uri}), storage=root / "studies")
    out = root / "report"
    report_files(load_study("per_task", uri=uri), out, log=False)
    return uri, out


def _inked(p) -> bool:
    return p.min() < 180  # a colour or ink: neither the white background nor the light grey grid


def _by_hand(angles: list[float], impressions: list[float]) -> list[float]:
    """Each angle's distance around the circle to the nearest impression, spelt out."""
    out = []
    for a in angles:
        gaps = []
        for b in impressions:
            gap = abs(a - b)
            while gap >= 360:
                gap -= 360
            gaps.append(gap if gap <= 180 else 360 - gap)
        out.append(min(gaps))
    return out


def test_dedicated_tasks_and_distances_follow_each_runs_learning_order(study):
    uri, _ = study
    records = load_study("per_task", uri=uri)
    trials, _ = prepare(records)
    table = per_task_accuracies(records, trials)
    assert list(table.columns) == list(PER_TASK_COLUMNS)
    # the permuted config is left out (the study mixes streams); each rotated variant: both seeds, every task
    assert set(table["stream"]) == {"rotated"} and set(table["variant"]) == ROTATED_VARIANTS
    assert len(table) == len(ROTATED_VARIANTS) * 2 * T
    assert table.groupby("variant")["seed"].apply(lambda s: sorted(set(s))).tolist() == [[0, 1]] * 3
    assert table["distance_deg"].between(0, 180).all()
    shuffled = 0
    for (variant, run_id), run in table.groupby(["variant", "run_id"]):
        run = run.sort_values("learned_position")
        seed = int(run["seed"].iloc[0])
        order = learning_order(T, "shuffled", seed)
        shuffled += order != list(range(T))
        assert run["learned_position"].tolist() == list(range(T))
        assert run["stream_position"].tolist() == order
        angles = [k * 360 / T for k in order]  # rotated stream task k sits at k * 360 / T degrees
        np.testing.assert_allclose(run["angle_deg"], angles)
        # the final test accuracy of each task: the last row of the run's test accuracy matrix
        np.testing.assert_array_equal(run["final_test_acc"], acc_matrix(uri, run_id, split="test")[-1])
        dedicated = {"ImpressLearn heterogeneous": M, "ImpressLearn homogeneous": 1, "SupSup": T}[variant]
        assert run["dedicated"].tolist() == [i < dedicated for i in range(T)], variant
        assert (run.loc[run["dedicated"], "distance_deg"] == 0).all()
        # heterogeneous: the impressions are the first m tasks learned; homogeneous: all on the first
        np.testing.assert_allclose(run["distance_deg"], _by_hand(angles, angles[:dedicated]), atol=1e-9)
        if variant == "ImpressLearn heterogeneous":
            assert (run.loc[~run["dedicated"], "distance_deg"] > 0).all()  # a coefficient task is another angle
    assert shuffled >= 1  # some run learned its tasks out of the stream's order


def test_only_permuted_runs_are_drawn_by_learned_position(study, tmp_path):
    uri, _ = study
    records = load_study("per_task", uri=uri)
    trials, _ = prepare(records)
    permuted = trials[trials["stream"] == "permuted"]
    runs, notes = per_task_runs(permuted)
    assert len(runs) == 2 and notes == []
    table = per_task_accuracies(records, permuted)
    assert len(table) == 2 * T and table["angle_deg"].isna().all() and table["distance_deg"].isna().all()
    assert table.groupby("run_id")["dedicated"].sum().tolist() == [M, M]
    assert (table.loc[table["dedicated"], "learned_position"] < M).all()
    drawn = plot_per_task(table, title="permuted", path=tmp_path / "permuted.png")
    np.testing.assert_array_equal(drawn.points["x"], table["learned_position"])  # one config, no angle: its position
    img = rgb(drawn.path)
    for _, p in drawn.points.iterrows():
        assert near(img, p["px"], p["py"], _inked, r=5)
    # beside tasks with a distance, tasks without one are drawn by learned position on an axis of their own
    rotated = per_task_accuracies(records, trials[trials["stream"] == "rotated"])
    both = pd.concat([rotated, table], ignore_index=True)
    drawn = plot_per_task(both, title="both", path=tmp_path / "both.png")
    img = rgb(drawn.path)
    x0, y0, x1, y1 = (int(v) for v in drawn.boxes["xlabel_top"])
    assert y1 < drawn.boxes["xlabel"][1] and (img[y0:y1, x0:x1].min(axis=2) < 120).sum() > 30
    positions = drawn.points["px"][both["stream"] == "permuted"].groupby(both["learned_position"])
    assert (positions.nunique() == 1).all() and positions.first().is_monotonic_increasing
    assert positions.first().diff().dropna().round(3).nunique() == 1  # evenly spaced: positions 0 to T - 1
    for _, p in drawn.points.iterrows():
        assert near(img, p["px"], p["py"], _inked, r=5)


def test_report_writes_the_per_task_figure_and_its_data(study, tmp_path):
    uri, out = study
    assert {"per_task.png", "per_task.html", "per_task.csv"} <= {p.name for p in out.iterdir()}
    data = pd.read_csv(out / "per_task.csv")
    assert len(data) == len(ROTATED_VARIANTS) * 2 * T
    for run_id, run in data.groupby("run_id"):
        np.testing.assert_array_equal(
            run.sort_values("learned_position")["final_test_acc"], acc_matrix(uri, run_id, split="test")[-1]
        )
    report = (out / "report.md").read_text()
    assert "![per-task accuracy](per_task.png) ([interactive](per_task.html), data: per_task.csv)" in report
    assert "Filled markers: tasks solved by a dedicated mask; hollow: tasks learned by coefficients" in report
    assert "the study mixes rotated and other streams" in report and "on permuted streams" in report
    assert "angular distance (degrees, 0-180 around the circle) to the nearest impression" in report

    # the PNG read back: its size is the page's, it is not blank, every task is drawn where it is
    page = (out / "per_task.html").read_text()
    img = rgb(out / "per_task.png")
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', page).groups())
    assert img.shape == (height, width, 3) and width >= 800 and height >= 450
    assert (img.min(axis=2) < 250).mean() > 0.02
    areas = pd.DataFrame(
        re.findall(r'<area shape="circle" coords="(\d+),(\d+),\d+" title="([^"]*)"', page), columns=["px", "py", "tip"]
    ).astype({"px": float, "py": float})
    assert len(areas) == len(data)
    areas["dedicated"] = areas["tip"].str.contains("\ndedicated mask\n")
    assert areas["dedicated"].sum() == data["dedicated"].sum() == 2 * (M + 1 + T)
    assert areas["tip"].str.contains("final test accuracy=").all()
    for _, p in areas.iterrows():
        assert near(img, p["px"], p["py"], _inked, r=5), p["tip"]  # every task is drawn
        if p["dedicated"]:
            assert near(img, p["px"], p["py"], _inked, r=1), p["tip"]  # filled: ink at its centre
    # a hollow marker with no other point near it is an empty ring: background at its centre
    xy = areas[["px", "py"]].to_numpy()
    alone = [i for i in range(len(xy)) if np.sort(np.hypot(*(xy - xy[i]).T))[1] > 14]
    hollow = [i for i in alone if not areas["dedicated"].iloc[i]]
    assert hollow, "no lone coefficient task to look at"
    for i in hollow:
        px, py = xy[i]
        assert not _inked(img[int(py), int(px)]), areas["tip"].iloc[i]
    # drawn again from the table: x is the distance on a rotated stream, y the final accuracy
    records = load_study("per_task", uri=uri)
    table = per_task_accuracies(records, prepare(records)[0])
    drawn = plot_per_task(table, title="again", path=tmp_path / "again.png")
    # configs side by side: each shifted by its own small constant from its tasks' distances
    shifts = (drawn.points["x"] - table["distance_deg"]).groupby([table["variant"], table["config"]])
    assert (shifts.nunique() == 1).all() and shifts.first().nunique() == 3 and shifts.first().abs().max() <= 12
    np.testing.assert_allclose(drawn.points["y"], table["final_test_acc"])
    again = rgb(drawn.path)
    assert again.shape[:2] == drawn.size[::-1]
    for _, p in drawn.points.iterrows():
        assert near(again, p["px"], p["py"], _inked, r=5), p["tip"]
    for name in ("xlabel", "ylabel", "legend"):
        x0, y0, x1, y1 = (int(v) for v in drawn.boxes[name])
        assert 0 <= x0 < x1 <= drawn.size[0] and 0 <= y0 < y1 <= drawn.size[1], name
        assert (again[y0:y1, x0:x1].min(axis=2) < 120).sum() > 30, name
    shots = Path(os.environ.get("IMPRESS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "per_task.png", shots / "analysis_per_task.png")


def test_no_per_task_accuracies_no_figure_and_report_says_why(tmp_path):
    """A study whose runs logged no `test/acc/task_NNN`: no per_task files, and report.md says why."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, study_name="no_tasks")
    for seed in (0, 1):
        trial = f"seed{seed}"
        tracker.trial_run(trial, params=Config(num_tasks=2, m=1, seed=seed).to_dict(), tags={})
        for t in range(2):
            metrics = {"step": t, "val/acc/avg": 0.8, "test/acc/avg": 0.7, "bits/per_task": 10, "bits/total": 10}
            tracker.log_task(trial, metrics)
        tracker.finish_trial(trial, state="complete", results_dir=None, extra_tags={})
    out = tmp_path / "report"
    files = report_files(load_study("no_tasks", uri=uri), out, log=False)
    assert not any(p.name.startswith("per_task") for p in files)
    assert not any(p.name.startswith("per_task") for p in out.iterdir())
    report = (out / "report.md").read_text()
    assert "No per-task figure: no complete run recorded per-task test accuracies (`test/acc/task_NNN`)." in report
