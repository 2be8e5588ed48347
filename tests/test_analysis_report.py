"""`impress report` and `impress pareto` on a real small study (real Ray, real MLflow SQLite store);
the figures are read back as images. PNGs are also saved to $IMPRESS_SCREENSHOTS for a person.
Fronts and the best config are chosen on validation; what they show is test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import CHROMIUM, chromium, open_page
from mlflow.tracking import MlflowClient
from pixels import near, rgb

from impress.cli import main
from impress.config import Config
from impress.pareto import pareto_mask
from impress.plots import plot_acc_matrix, plot_pareto
from impress.records import acc_matrix, load_study
from impress.report import mean_acc_matrix, pareto_files, prepare, report_files
from impress.study import Study
from impress.tracking import StudyTracker, TrackingError
from impress.trainer import run
from impress.tuner import run_study

STUDY = {
    "name": "reported",
    "base": {"num_tasks": 3, "epochs": 2, "widths": [32, 32]},
    "cases": [
        {"method": "supsup"},
        {"method": "impresslearn", "m": 1},
        {"method": "impresslearn", "m": 2},
        {"method": "impresslearn", "m": 2, "impressions": "random"},
    ],
    "seeds": [0, 1],
    "objectives": [{"metric": "val/acc/avg", "mode": "max"}, {"metric": "bits/per_task", "mode": "min"}],
}
IMPRESS = [sys.executable, "-m", "impress.cli"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study's store and folder, plus one trial stopped after its first task (logged by hand)."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_study(Study.from_dict({**STUDY, "tracking_uri": uri}), storage=root / "studies")
    tracker = StudyTracker(uri, study_name="reported")
    cfg = Config.from_dict({**STUDY["base"], "m": 2, "seed": 5, "threads": 1})
    tracker.trial_run("stopped_one", params=cfg.to_dict(), tags={"impress.run_name": "m=2~seed=5", "seed": "5"})
    reports: list[dict] = []
    run(cfg, report=reports.append)
    tracker.log_task("stopped_one", reports[0])
    tracker.finish_trial("stopped_one", state="stopped", results_dir=None, extra_tags={})
    return root, uri


def _shots(tmp: Path) -> Path:
    shots = Path(os.environ.get("IMPRESS_SCREENSHOTS", tmp))
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _crimson(p) -> bool:
    target = np.array([220, 20, 60])  # matplotlib's "crimson"
    return np.abs(p - target).max() < 40


def _inked(p) -> bool:
    return p.min() < 180  # a colour or ink: neither the white background nor the light grey grid


def test_report_writes_the_files_and_logs_them(study, tmp_path):
    root, uri = study
    out = tmp_path / "report"
    proc = subprocess.run(
        [*IMPRESS, "report", "reported", "--store", uri, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "9 trials, 8 complete" in proc.stdout
    stem = "acc_avg_vs_bits_per_task"
    expected = {
        "report.md",
        "trials.csv",
        f"pareto_{stem}.png",
        f"pareto_{stem}.html",
        f"front_{stem}.csv",
        f"front_{stem}.md",
        "pareto_acc_avg_vs_bits_total.png",
        "acc_vs_m_acc_avg.png",
        "acc_vs_m_acc_avg.html",
        "acc_matrix.png",
        "acc_matrix.html",
        "task_curves.png",
        "task_curves.html",
        "table_methods.csv",
        "table_methods.md",
        "table_by_m_acc_avg.md",
        "per_task.png",
        "per_task.html",
        "per_task.csv",
    }
    assert expected <= {p.name for p in out.iterdir()}
    # the stopped trial is listed and flagged, but enters no mean: every config has its 2 seeds
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 9 and trials["complete"].sum() == 8
    assert trials.loc[~trials["complete"], "state"].tolist() == ["stopped"]
    front = pd.read_csv(out / f"front_{stem}.csv")
    assert len(front) == 4 and (front["n"] == 2).all()
    assert (front["val/acc/avg_n"] == 2).all() and (front["test/acc/avg_n"] == 2).all()
    # means over seeds and the front, recomputed here from the trials' own results.json
    results = [json.loads(p.read_text()) for p in (root / "studies" / "reported" / "results").glob("*/results.json")]
    assert len(results) == 8
    rows = (
        pd.DataFrame(
            {
                "key": [f"{r['config']['method']}/{r['config']['impressions']}/{r['config']['m']}" for r in results],
                "val": [r["metrics"]["val/acc/avg"] for r in results],
                "test": [r["metrics"]["test/acc/avg"] for r in results],
                "bits": [r["overhead"]["per_task_bits"] for r in results],
            }
        )
        .groupby("key")[["val", "test", "bits"]]
        .mean()
    )
    assert sorted(front["test/acc/avg"].round(9)) == sorted(rows["test"].round(9))
    assert sorted(front["val/acc/avg"].round(9)) == sorted(rows["val"].round(9))
    on = pareto_mask(rows[["val", "bits"]].to_numpy(), ["max", "min"])  # the front: on validation
    assert sorted(front.loc[front["on_front"], "test/acc/avg"].round(9)) == sorted(rows["test"][on].round(9))
    # every reported mean carries its n; the SupSup versus ImpressLearn table has all four configs
    methods = (out / "table_methods.md").read_text()
    assert methods.count("(n=2)") >= 4 * 3 and "| SupSup |" in methods
    assert "| test/acc/avg |" in methods and "val/" not in methods
    by_m = (out / "table_by_m_acc_avg.md").read_text()
    assert "test/acc/avg by m and source of impressions" in by_m
    assert re.search(r"\| 2 \| [0-9.]+ ± [0-9.]+ \(n=2\) \| [0-9.]+ ± [0-9.]+ \(n=2\) \|", by_m)
    report = (out / "report.md").read_text()
    assert "Choose on validation, report on test" in report and "front chosen on validation (val/acc/avg)" in report
    # each task's final test accuracy in the runs of each variant's best config (on validation): the
    # last row of the run's test accuracy matrix; a sequential rotated stream of 3 tasks at 0, 120, 240 degrees
    per_task = pd.read_csv(out / "per_task.csv")
    assert set(per_task["variant"]) == {"SupSup", "ImpressLearn heterogeneous", "ImpressLearn random"}
    assert per_task.groupby("variant")["run_id"].nunique().tolist() == [2, 2, 2]  # the stopped run is not one
    complete = trials[trials["complete"]].set_index("run_id")
    for run_id, rows in per_task.groupby("run_id"):
        assert len(rows) == 3 and rows["learned_position"].tolist() == rows["stream_position"].tolist() == [0, 1, 2]
        np.testing.assert_array_equal(rows["final_test_acc"], acc_matrix(uri, run_id, split="test")[-1])
        variant = rows["variant"].iloc[0]
        if variant == "ImpressLearn heterogeneous":  # the first m tasks are the impressions
            m = int(complete.loc[run_id, "m"])
            assert rows["dedicated"].tolist() == [i < m for i in range(3)]
            assert rows["distance_deg"].tolist() == {1: [0, 120, 120], 2: [0, 0, 120]}[m]
        elif variant == "ImpressLearn random":  # no task has its own mask, no impression an angle
            assert not rows["dedicated"].any() and rows["distance_deg"].isna().all()
        else:
            assert rows["dedicated"].all() and (rows["distance_deg"] == 0).all()
    assert "![per-task accuracy](per_task.png)" in report
    assert "ImpressLearn random (no impression with an angle): the task's learned position" in report
    # every task is drawn where the page's hover area says; random impressions' tasks by learned position
    page, img = (out / "per_task.html").read_text(), rgb(out / "per_task.png")
    areas = re.findall(r'<area shape="circle" coords="(\d+),(\d+),\d+" title="([^"]*)"', page)
    assert len(areas) == len(per_task) == 18
    for x, y, tip in areas:
        assert near(img, float(x), float(y), _inked, r=5), tip
    random = [(int(re.search(r"\(position (\d)\)", t).group(1)), int(x)) for x, _, t in areas if "random" in t]
    columns = pd.DataFrame(random, columns=["position", "px"]).groupby("position")["px"]
    assert len(random) == 6 and (columns.nunique() == 1).all() and columns.first().is_monotonic_increasing
    client = MlflowClient(tracking_uri=uri)
    parent = load_study("reported", uri=uri).parent_run_id
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "analysis")}
    assert expected <= logged
    shots = _shots(tmp_path)
    for name in (f"pareto_{stem}.png", "acc_vs_m_acc_avg.png", "acc_matrix.png", "task_curves.png"):
        shutil.copy(out / name, shots / f"analysis_{name}")


def test_pareto_png_shows_every_trial_and_the_front(study, tmp_path):
    root, uri = study
    out = tmp_path / "pareto"
    assert main(["pareto", "reported", "--store", uri, "--out", str(out), "--no-log"]) == 0
    page = (out / "pareto_acc_avg_vs_bits_per_task.html").read_text()
    img = rgb(out / "pareto_acc_avg_vs_bits_per_task.png")
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', page).groups())
    assert img.shape == (height, width, 3) and width >= 800 and height >= 450
    assert (img.min(axis=2) < 250).mean() > 0.02  # not blank
    areas = re.findall(
        r'<area shape="circle" coords="(\d+),(\d+),\d+" title="([^"]*)"[^>]*data-kind="(\w+)" data-front="(\d)"', page
    )
    kinds = pd.Series([a[3] for a in areas]).value_counts().to_dict()
    assert kinds == {"trial": 8, "config": 4, "incomplete": 1}
    front = pd.read_csv(out / "front_acc_avg_vs_bits_per_task.csv")
    on_front = [a for a in areas if a[4] == "1"]
    assert len(on_front) == front["on_front"].sum() >= 2
    for x, y, tip, _, _ in on_front:  # the front's points are drawn in its colour where they are
        assert near(img, float(x), float(y), _crimson), (x, y, tip)
    for x, y, tip, kind, _ in areas:
        assert near(img, float(x), float(y), _inked), (x, y, kind)  # every trial is drawn
        assert "method=" in tip  # hovering shows the config and its values, on both splits
        assert "val/acc/avg=" in tip and "test/acc/avg=" in tip, tip
    # crimson only near the front: off it, no point is drawn in the front's colour
    for x, y, tip, kind, front_flag in areas:
        if kind == "config" and front_flag == "0":
            assert not near(img, float(x), float(y), _crimson, r=1), tip

    # labelled axes and a legend: their boxes in the picture hold ink
    trials, by = prepare(load_study("reported", uri=uri))
    drawn = plot_pareto(
        trials,
        x="bits/per_task",
        y="val/acc/avg",
        x_mode="min",
        y_mode="max",
        by=by,
        title="t",
        path=tmp_path / "again.png",
        colour="variant",
        marker="method",
        draw="test",
    )
    means = drawn.points[drawn.points["kind"] == "config"]  # drawn at the test means, in the front's order
    assert sorted(means["y"].round(9)) == sorted(front["test/acc/avg"].round(9))
    assert means["on_front"].sum() == front["on_front"].sum()
    again = rgb(drawn.path)
    for name in ("xlabel", "ylabel", "legend"):
        x0, y0, x1, y1 = (int(v) for v in drawn.boxes[name])
        assert 0 <= x0 < x1 <= drawn.size[0] and 0 <= y0 < y1 <= drawn.size[1], name
        assert (again[y0:y1, x0:x1].min(axis=2) < 120).sum() > 30, name
    legend = again[int(drawn.boxes["legend"][1]) : int(drawn.boxes["legend"][3]), int(drawn.boxes["legend"][0]) :]
    assert any(_crimson(p) for p in legend.reshape(-1, 3))  # the front has its legend entry
    shutil.copy(out / "pareto_acc_avg_vs_bits_per_task.png", _shots(tmp_path) / "analysis_pareto_cli.png")


def test_accuracy_matrix_matches_the_trial_and_is_drawn(study, tmp_path):
    root, uri = study
    records = load_study("reported", uri=uri)
    row = records.trials[records.trials["complete"]].iloc[0]
    R = acc_matrix(uri, row["run_id"])
    stored = json.loads((root / "studies" / "reported" / "results" / row["trial_id"] / "results.json").read_text())
    np.testing.assert_array_equal(R, np.array(stored["acc_matrix"], dtype=float))  # test, by default
    np.testing.assert_array_equal(
        acc_matrix(uri, row["run_id"], split="val"), np.array(stored["val_acc_matrix"], dtype=float)
    )
    with pytest.raises(ValueError, match="split must be one of"):
        acc_matrix(uri, row["run_id"], split="train")
    drawn = plot_acc_matrix(R, title="R", path=tmp_path / "R.png")
    img = rgb(drawn.path)
    assert img.shape[:2] == drawn.size[::-1]
    cells = drawn.points
    assert len(cells) == 6  # the lower triangle of a 3-task matrix
    for _, c in cells.iterrows():  # a filled cell is coloured, not background
        assert not np.all(img[int(c["py"]) - 8, int(c["px"])] > 245)
    stopped = records.trials[~records.trials["complete"]].iloc[0]
    partial = acc_matrix(uri, stopped["run_id"])
    assert np.isfinite(partial[0, 0]) and np.isnan(partial[1:]).all()  # one task learned, the rest unknown


def test_report_matrix_is_the_mean_over_the_best_configs_seeds(study):
    root, uri = study
    records = load_study("reported", uri=uri)
    trials, _ = prepare(records)
    R, std, n, label = mean_acc_matrix(records, trials)
    folder = root / "studies" / "reported" / "results"
    results = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/results.json")}
    complete = trials[trials["complete"]]
    # by its mean over seeds on validation, not its best seed nor its test accuracy
    best = complete.groupby("config")["val/acc/avg"].mean().idxmax()
    chosen = complete[complete["config"] == best]
    assert n == len(chosen) == 2 and f"config {best} (best mean val/acc/avg " in label and "seeds 0, 1" in label
    stored = np.stack([np.array(results[t]["acc_matrix"], dtype=float) for t in chosen["trial_id"]])
    learned = np.tril_indices(len(R))  # (t, j) with j <= t
    np.testing.assert_allclose(R[learned], stored[:, *learned].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std[learned], stored[:, *learned].std(axis=0, ddof=1), rtol=1e-12)
    assert np.isnan(R[np.triu_indices(len(R), 1)]).all()  # tasks not yet learned stay blank
    one = chosen.iloc[0]
    R1, std1, n1, label1 = mean_acc_matrix(records, trials, one["run_name"])  # --run: that run alone
    assert n1 == 1 and std1 is None and one["run_name"] in label1
    np.testing.assert_array_equal(R1, np.array(results[one["trial_id"]]["acc_matrix"], dtype=float))


def _log_disagreeing_study(uri: str) -> dict[int, tuple[float, float]]:
    """A study logged by hand where validation and test disagree: two configs at the same bits, two
    seeds, two tasks; m=1 is better on validation, m=2 on test. Returns m -> (val, test) accuracy
    of seed 0 (seed 1 is 0.01 above on validation and below on test)."""
    values = {1: (0.90, 0.60), 2: (0.70, 0.80)}
    tracker = StudyTracker(uri, study_name="disagree")
    for m, (val, test) in values.items():
        for seed in (0, 1):
            cfg = Config(num_tasks=2, m=m, seed=seed)
            trial = f"m{m}_seed{seed}"
            tracker.trial_run(trial, params=cfg.to_dict(), tags={"impress.run_name": cfg.run_name()})
            for t in range(2):
                metrics = {"step": t, "bits/per_task": 192, "bits/total": 192 * (t + 1)}
                for split, acc in (("val", val + 0.01 * seed), ("test", test - 0.01 * seed)):
                    metrics |= {f"{split}/acc/task_{j:03d}": acc + 0.001 * (t - j) for j in range(t + 1)}
                    metrics[f"{split}/acc/avg"] = acc
                tracker.log_task(trial, metrics)
            tracker.finish_trial(trial, state="complete", results_dir=None, extra_tags={})
    return values


def test_report_chooses_on_validation_and_shows_test(tmp_path):
    """Validation and test disagree about the best config: the front and the accuracy matrix follow
    validation, and every value shown of what they chose is its test value."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log_disagreeing_study(uri)
    out = tmp_path / "disagree"
    report_files(load_study("disagree", uri=uri), out, log=False)
    front = pd.read_csv(out / "front_acc_avg_vs_bits_per_task.csv").set_index("m")
    assert front["on_front"].to_dict() == {1: True, 2: False}  # on test alone, m=2 would be
    assert front.loc[1, "test/acc/avg"] == pytest.approx(0.595) and front.loc[1, "val/acc/avg"] == pytest.approx(0.905)
    report = (out / "report.md").read_text()
    assert (
        "config m=1 (best mean val/acc/avg 0.905; its test/acc/avg 0.595): test accuracies, mean of n = 2 runs"
        in report
    )
    chosen = "| yes | ImpressLearn heterogeneous | m=1 | 0.905 ± 0.007 (n=2) | 0.595 ± 0.007 (n=2) | 192 (n=2) |"
    assert chosen in report
    methods = (out / "table_methods.md").read_text()  # every config's test value; nothing chosen
    assert "| ImpressLearn | 1 | 0.595 ± 0.007 (n=2) |" in methods
    assert "| ImpressLearn | 2 | 0.795 ± 0.007 (n=2) |" in methods
    records = load_study("disagree", uri=uri)
    R, std, n, label = mean_acc_matrix(records, prepare(records)[0])
    assert n == 2 and label.startswith("config m=1 ")
    np.testing.assert_allclose(R[np.tril_indices(2)], [0.595, 0.596, 0.595])  # m=1's test R[0,0], R[1,0], R[1,1]
    # the CLI's --y names the objective by any of its splits: the same front
    for y in ("acc/avg", "val/acc/avg", "test/acc/avg"):
        assert main(["pareto", "disagree", "--store", uri, "--out", str(tmp_path / y), "--y", y, "--no-log"]) == 0
        again = pd.read_csv(tmp_path / y / "front_acc_avg_vs_bits_per_task.csv").set_index("m")
        pd.testing.assert_frame_equal(again, front[again.columns])


def _circle(area: dict) -> tuple[float, float, float]:
    cx, cy, r = map(float, area["coords"].split(","))
    return cx, cy, r


async def _hover_every_area(port: int, page_file: Path, screenshot: Path) -> list[tuple[dict, list]]:
    """Load the page, point at the centre of each of its hover areas; returns (area, [tooltip shown,
    its text, its position]) for each, and saves a screenshot taken while pointing at the first."""
    async with open_page(port) as page:
        await page.call(
            "Emulation.setDeviceMetricsOverride", width=1600, height=1400, deviceScaleFactor=1, mobile=False
        )
        await page.call("Page.navigate", url=page_file.as_uri())
        ready = "document.readyState === 'complete' && document.images.length > 0 && document.images[0].complete"
        deadline = time.monotonic() + 120
        while not await page.evaluate(ready):
            assert time.monotonic() < deadline, "the page and its figure never finished loading"
            await asyncio.sleep(0.1)
        areas = await page.evaluate(
            "Array.from(document.querySelectorAll('area')).map(a => ({coords: a.coords, tip: a.dataset.tip}))"
        )
        left, top = await page.evaluate("(r => [r.left, r.top])(document.images[0].getBoundingClientRect())")
        seen = []
        for i, area in enumerate(areas):
            cx, cy, _ = _circle(area)
            await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=left + cx, y=top + cy)
            tip = await page.evaluate(
                "(t => [getComputedStyle(t).display, t.textContent, t.getBoundingClientRect().left,"
                " t.getBoundingClientRect().top])(document.getElementById('tip'))"
            )
            seen.append((area, [*tip, left + cx, top + cy]))
            if i == 0:
                await page.screenshot(screenshot)
        return seen


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_interactive_front_shows_each_points_values_on_hover_in_a_browser(study, tmp_path):
    _, uri = study
    made, configs = pareto_files(load_study("reported", uri=uri), tmp_path / "front")
    page_file = next(p for p in made if p.suffix == ".html")
    with chromium(tmp_path / "chrome") as port:
        seen = asyncio.run(_hover_every_area(port, page_file, _shots(tmp_path) / "analysis_pareto_hover.png"))
    assert len(seen) >= 9 + len(configs)  # every trial (8 complete, 1 stopped) and every config mean
    for area, (display, text, tip_x, tip_y, x, y) in seen:
        cx, cy, r = map(float, area["coords"].split(","))
        # an image map answers with the first area that holds the pointer: the front and means first
        first = next(
            a for a, _ in seen if np.hypot(*np.subtract(list(map(float, a["coords"].split(",")))[:2], (cx, cy))) <= r
        )
        assert display == "block" and text == first["tip"]
        assert 0 < tip_x - x <= 20 and 0 < tip_y - y <= 20  # beside the pointer
    shown = {text for _, (_, text, *_) in seen}
    for config in configs["config"]:  # every config mean can be read off the figure, spelt as in the tables
        assert any(text.startswith(config.replace("~", "\n") + "\n") and "mean over n=2" in text for text in shown)
    assert not any("nan" in text for text in shown)


def test_clear_errors(study, tmp_path, capsys):
    root, uri = study
    assert main(["report", "nosuch", "--store", uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study 'nosuch' in the MLflow store" in err and "it holds: reported" in err
    # a study whose only trial stopped early
    tracker = StudyTracker(uri, study_name="unfinished")
    tracker.trial_run("t0", params=Config(num_tasks=3, m=2).to_dict(), tags={})
    tracker.log_task("t0", {"step": 0, "acc/avg": 0.5, "bits/per_task": 10})
    tracker.finish_trial("t0", state="stopped", results_dir=None, extra_tags={})
    assert main(["pareto", "unfinished", "--store", uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "study 'unfinished'" in err and "has no complete trial (1 stopped)" in err
    assert main(["pareto", "reported", "--store", uri, "--out", str(tmp_path), "--y", "acc/nope", "--no-log"]) == 2
    assert "no complete trial has ['val/acc/nope', 'test/acc/nope']; its metrics are" in capsys.readouterr().err
    # a study recorded before metrics named their split: nothing to choose on, and the error says why
    tracker = StudyTracker(uri, study_name="unsplit")
    tracker.trial_run("t0", params=Config(num_tasks=3, m=2).to_dict(), tags={})
    tracker.log_task("t0", {"step": 2, "acc/avg": 0.5, "bits/per_task": 10})
    tracker.finish_trial("t0", state="complete", results_dir=None, extra_tags={})
    assert main(["pareto", "unsplit", "--store", uri, "--out", str(tmp_path), "--no-log"]) == 2
    assert "predate the validation split" in capsys.readouterr().err
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=empty).search_experiments()  # a store that exists and holds no study
    with pytest.raises(TrackingError, match="holds no studies"):
        load_study("x", uri=empty)


@pytest.mark.parametrize("command", ["pareto", "report"])
def test_a_read_only_command_creates_no_store(tmp_path, monkeypatch, capsys, command):
    """Reading a study from a store that is not there says which store it looked for and how to name
    another, and leaves no empty `mlflow.db` behind (MLflow would create one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: mlflow.db in the working directory
    assert main([command, "quickstart"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no MLflow store at {tmp_path / 'mlflow.db'} (tracking URI sqlite:///{tmp_path}")
    assert "--store" in err and "MLFLOW_TRACKING_URI" in err and err.count("\n") == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert main([command, "quickstart"]) == 2
    assert f"no MLflow store at {tmp_path / 'env.db'}" in capsys.readouterr().err
    assert main([command, "quickstart", "--store", "sqlite:///relative.db"]) == 2
    assert f"no MLflow store at {tmp_path / 'relative.db'}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_ui_over_no_store_creates_none(tmp_path):
    # NOTE: a subprocess: the UI replaces its process with the MLflow server once the store is found
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([*IMPRESS, "ui"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: no MLflow store at {tmp_path / 'mlflow.db'}")
    assert list(tmp_path.iterdir()) == []
