"""Fronts over seeds and the comparison tables, on hand-made trials (pure pandas; no store). Where
validation and test disagree, what is chosen follows validation and what is shown is test."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from impress.pareto import over_seeds, pareto_mask, seed_front
from impress.records import StudyRecords
from impress.report import DEFAULT_Y, chosen_and_shown, mode_of, pareto_files, prepare
from impress.tables import by_m_table, config_label, fmt, inference_table, methods_table, varied_columns


def _trials(points: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """One row per (config, seed): `points[config][seed] = (bits, acc)`."""
    rows = [
        {"config": name, "seed": seed, "bits/per_task": b, "val/acc/avg": a}
        for name, values in points.items()
        for seed, (b, a) in enumerate(values)
    ]
    return pd.DataFrame(rows)


def _front(points, modes=("min", "max")) -> set[str]:
    table = seed_front(_trials(points), {"bits/per_task": modes[0], "val/acc/avg": modes[1]}, by=["config"])
    return set(table.loc[table["on_front"], "config"])


def test_front_of_means_not_of_lucky_seeds():
    # "lucky" has one seed above everything, but its mean is below "steady" at the same bits
    points = {"steady": [(100, 0.8), (100, 0.8)], "lucky": [(100, 0.99), (100, 0.5)], "cheap": [(10, 0.3), (10, 0.3)]}
    assert _front(points) == {"steady", "cheap"}
    per_trial = pareto_mask(_trials(points)[["bits/per_task", "val/acc/avg"]].to_numpy(), ["min", "max"])
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
    table = seed_front(_trials(points), dict(zip(["bits/per_task", "val/acc/avg"], modes)), by=["config"])
    sign = np.array([1.0 if m == "max" else -1.0 for m in modes])
    means = table[["bits/per_task", "val/acc/avg"]].to_numpy() * sign  # larger is better in both
    for on, p in zip(table["on_front"], means):  # on the front iff nothing dominates its mean
        dominated = np.any(np.all(means >= p, axis=1) & np.any(means > p, axis=1))
        assert on == (not dominated)
    flipped = {"min": "max", "max": "min"}
    opposite = seed_front(
        _trials(points), {"bits/per_task": flipped[modes[0]], "val/acc/avg": flipped[modes[1]]}, by=["config"]
    )
    # the front of the opposite directions is another set, except for points extreme in both senses
    assert table["on_front"].any() and opposite["on_front"].any()
    assert not (table["on_front"] & opposite["on_front"]).all()


def test_means_spread_and_n_over_seeds():
    rng = np.random.default_rng(2)
    points = {"a": [tuple(rng.random(2)) for _ in range(3)], "b": [tuple(rng.random(2)) for _ in range(1)]}
    trials = _trials(points)
    trials.loc[2, "val/acc/avg"] = np.nan  # a metric one trial lacks: n counts values, not trials
    table = over_seeds(trials, ["val/acc/avg", "bits/per_task"], by=["config"]).set_index("config")
    acc = np.array([p[1] for p in points["a"]])[:2]
    assert table.loc["a", "val/acc/avg"] == pytest.approx(acc.mean())
    assert table.loc["a", "val/acc/avg_std"] == pytest.approx(acc.std(ddof=1))
    assert (table.loc["a", "val/acc/avg_n"], table.loc["a", "n"], table.loc["a", "seeds"]) == (2, 3, "0,1,2")
    assert np.isnan(table.loc["b", "val/acc/avg_std"]) and table.loc["b", "n"] == 1
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the trials table"):
        over_seeds(trials, ["nope"], by=["config"])


def test_fmt_always_carries_n():
    assert fmt(0.81234, 0.0041, 3, "acc/avg") == "0.812 ± 0.004 (n=3)"
    assert fmt(0.5, float("nan"), 1, "acc/avg") == "0.500 (n=1)"
    assert fmt(84480.0, 0.0, 3, "bits/per_task") == "84,480 (n=3)"
    assert fmt(float("nan"), float("nan"), 0, "acc/avg_coeff_tasks") == "n/a"


def _study_like() -> pd.DataFrame:
    """Trials as `impress.report.prepare` gives them: SupSup ignores ImpressLearn's fields (None);
    validation and test accuracies drawn apart, so a table showing the wrong split would show."""
    rng = np.random.default_rng(3)
    rows = []
    for seed in (0, 1, 2):
        rows.append({"method": "supsup", "m": None, "impressions": None, "seed": seed})
        for m, source in itertools.product([2, 5], ["heterogeneous", "random"]):
            rows.append({"method": "impresslearn", "m": m, "impressions": source, "seed": seed})
    trials = pd.DataFrame(rows)
    for split in ("val", "test"):
        trials[f"{split}/acc/avg"] = rng.random(len(trials))
    trials["bits/per_task"] = np.where(trials["method"] == "supsup", 84480, trials["m"].fillna(0) * 96)
    trials["bits/total"] = trials["bits/per_task"] * 20
    for split, metric in itertools.product(("val", "test"), ("task_infer/acc", "acc/gns")):
        trials[f"{split}/{metric}/oneshot_h"] = rng.random(len(trials))
    return trials


def test_methods_and_by_m_tables_show_test():
    trials = _study_like()
    by = varied_columns(trials, ["method", "m", "impressions", "seed"])
    assert by == ["method", "m", "impressions"]
    assert config_label(trials.iloc[0], by) == "method=supsup"
    methods = methods_table(trials, by=by)
    long = methods.long
    assert set(long["metric"]) == {"test/acc/avg", "bits/per_task", "bits/total"}  # avg_coeff_tasks: absent
    assert (long["n"] == 3).all() and len(long) == 5 * 3
    sup = trials[trials["method"] == "supsup"]["test/acc/avg"]
    row = long[(long["method"] == "SupSup") & (long["metric"] == "test/acc/avg")].iloc[0]
    assert row["mean"] == pytest.approx(sup.mean()) and row["std"] == pytest.approx(sup.std(ddof=1))
    wide = methods.wide()
    assert wide.iloc[0]["method"] == "SupSup" and len(wide) == 5  # SupSup's row survives its None fields
    assert all("(n=3)" in cell for cell in wide["test/acc/avg"])
    assert "val/acc/avg" not in methods.markdown()  # nothing is chosen here: test alone
    by_m = by_m_table(trials, by=by)
    assert set(by_m.long["metric"]) == {"test/acc/avg"}
    heterogeneous = trials[(trials["m"] == 2) & (trials["impressions"] == "heterogeneous")]["test/acc/avg"]
    assert by_m.wide().iloc[0]["heterogeneous"] == fmt(heterogeneous.mean(), heterogeneous.std(ddof=1), 3)
    assert list(by_m.wide()["m"]) == ["2", "5"] and {"heterogeneous", "random"} <= set(by_m.wide().columns)
    assert "| m | heterogeneous | random |" in by_m.markdown()


def test_inference_table_chooses_each_configs_rule_on_validation_and_shows_test():
    trials = _study_like()
    trials["val/task_infer/acc/binary_g"] = trials["val/task_infer/acc/oneshot_h"] + 0.5  # best on validation
    trials["test/task_infer/acc/binary_g"] = trials["test/task_infer/acc/oneshot_h"] - 0.5  # worst on test
    trials.loc[trials["method"] == "supsup", "val/task_infer/acc/binary_g"] -= 1.0  # SupSup: oneshot_h
    by = varied_columns(trials, ["method", "m", "impressions"])
    table = inference_table(trials, by=by)
    long = table.long
    assert set(long["rule"]) == {"oneshot_h", "binary_g"}
    assert set(long["metric"]) == {"val/task_infer/acc", "test/task_infer/acc", "test/acc/gns"}
    best = long[long["best on val"] == "yes"].drop_duplicates([*by, "rule"])
    assert len(best) == 5  # one rule per config
    assert set(best.loc[best["method"] == "supsup", "rule"]) == {"oneshot_h"}
    assert set(best.loc[best["method"] == "impresslearn", "rule"]) == {"binary_g"}  # though worse on test
    # the chosen rule's test value is shown, beside the validation value it was chosen on
    il = trials[(trials["m"] == 5) & (trials["impressions"] == "random")]
    row = long[(long["m"] == 5) & (long["impressions"] == "random") & (long["rule"] == "binary_g")]
    shown = row.set_index("metric")["mean"]
    assert shown["test/task_infer/acc"] == pytest.approx(il["test/task_infer/acc/binary_g"].mean())
    assert shown["val/task_infer/acc"] == pytest.approx(il["val/task_infer/acc/binary_g"].mean())
    wide = table.wide()
    assert list(wide.columns[-3:]) == ["val/task_infer/acc", "test/task_infer/acc", "test/acc/gns"]
    assert (wide["best on val"] == "yes").sum() == 5
    assert "best rule chosen on val/task_infer/acc" in table.markdown()
    no_rules = [c for c in trials if "task_infer" in c or "acc/gns" in c]
    assert inference_table(trials.drop(columns=no_rules), by=by) is None


def test_mode_and_twins_whatever_the_split():
    for split in ("", "val/", "test/"):
        assert mode_of(f"{split}forgetting") == "min"
        assert mode_of(f"{split}acc/avg") == mode_of(f"{split}bwt") == "max"
        assert chosen_and_shown(f"{split}acc/avg") == ("val/acc/avg", "test/acc/avg")
    assert mode_of("bits/per_task") == mode_of("time/task_s") == "min"
    assert chosen_and_shown("bits/total") == ("bits/total", "bits/total")
    assert chosen_and_shown("task_infer/acc/fit") == ("val/task_infer/acc/fit", "test/task_infer/acc/fit")
    assert DEFAULT_Y == "acc/avg"


def _disagreeing() -> StudyRecords:
    """A study's records where validation and test disagree: at the same bits, m=1 is best on
    validation and m=2 on test; m=3 is cheaper and worse on both. Two seeds each, one stopped trial."""
    values = {1: (500, 0.90, 0.60), 2: (500, 0.80, 0.85), 3: (50, 0.50, 0.50)}  # m: bits, val acc, test acc
    rows = [
        {
            "run_id": f"r{m}{seed}",
            "trial_id": f"t{m}{seed}",
            "run_name": f"m={m}~seed={seed}",
            "state": "complete",
            "complete": True,
            "method": "impresslearn",
            "impressions": "heterogeneous",
            "m": m,
            "seed": seed,
            "bits/per_task": bits,
            "val/acc/avg": val + 0.02 * seed,
            "test/acc/avg": test - 0.02 * seed,
        }
        for m, (bits, val, test) in values.items()
        for seed in (0, 1)
    ]
    stopped = {**rows[0], "run_id": "r9", "trial_id": "t9", "run_name": "m=1~seed=9", "seed": 9}
    rows.append({**stopped, "state": "stopped", "complete": False, "val/acc/avg": 0.99, "test/acc/avg": 0.99})
    return StudyRecords("disagree", "sqlite:///unused.db", None, pd.DataFrame(rows))


@pytest.mark.parametrize("y", ["acc/avg", "val/acc/avg", "test/acc/avg"])
def test_the_front_is_chosen_on_validation_and_shows_test(tmp_path, y):
    records = _disagreeing()
    files, configs = pareto_files(records, tmp_path, y=y)
    assert [f.name for f in files] == [
        "pareto_acc_avg_vs_bits_per_task.png",
        "pareto_acc_avg_vs_bits_per_task.html",
        "front_acc_avg_vs_bits_per_task.csv",
        "front_acc_avg_vs_bits_per_task.md",
    ]  # one objective, whichever split it is named by
    front = pd.read_csv(files[2]).set_index("config")
    assert set(front.index[front["on_front"]]) == {"m=1", "m=3"}  # on test it would be m=2 and m=3
    assert front.loc["m=1", "test/acc/avg"] == pytest.approx(0.59)  # its test mean is shown, not 0.91
    assert front.loc["m=1", "val/acc/avg"] == pytest.approx(0.91)  # beside what it was chosen on
    assert front.loc["m=1", "test/acc/avg_std"] == pytest.approx(np.std([0.60, 0.58], ddof=1))
    assert (front["n"] == 2).all() and (front["test/acc/avg_n"] == 2).all()  # the stopped trial enters no mean
    md = files[3].read_text()
    assert "front chosen on validation (val/acc/avg), shown with test values (test/acc/avg)." in md
    assert "| on front | variant | config | val/acc/avg | test/acc/avg | bits/per_task |" in md
    assert "| yes | ImpressLearn heterogeneous | m=1 | 0.910 ± 0.014 (n=2) | 0.590 ± 0.014 (n=2) | 500 (n=2) |" in md
    assert "|  | ImpressLearn heterogeneous | m=2 | 0.810 ± 0.014 (n=2) | 0.840 ± 0.014 (n=2) | 500 (n=2) |" in md
    page = files[1].read_text()
    assert "front chosen on validation" in page and "<td>0.590 ± 0.014 (n=2)</td>" in page
    assert configs.equals(pareto_files(records, tmp_path / "again", y="val/acc/avg")[1])


def test_the_figure_draws_test_values_with_the_front_chosen_on_validation(tmp_path):
    from impress.plots import plot_pareto

    trials, by = prepare(_disagreeing())
    drawn = plot_pareto(
        trials, x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max", by=by, title="t",
        path=tmp_path / "p.png", colour="variant", draw="test",
    )  # fmt: skip
    configs = drawn.points[drawn.points["kind"] == "config"].set_index("label")
    means = {p["tip"].split("\n")[0]: p for _, p in drawn.points[drawn.points["kind"] == "config"].iterrows()}
    assert means["m=1"]["y"] == pytest.approx(0.59) and means["m=1"]["on_front"]
    assert means["m=2"]["y"] == pytest.approx(0.84) and not means["m=2"]["on_front"]
    assert "val/acc/avg=0.91\ntest/acc/avg=0.59" in means["m=1"]["tip"]
    trial_ys = sorted(drawn.points.loc[drawn.points["kind"] == "trial", "y"])
    assert trial_ys == pytest.approx(sorted(trials.loc[trials["complete"], "test/acc/avg"]))
    incomplete = drawn.points[drawn.points["kind"] == "incomplete"].iloc[0]
    assert incomplete["y"] == pytest.approx(0.99) and not incomplete["on_front"]
    assert len(configs) == 3
    # the same trials drawn without `draw`: the points sit at the validation values they were chosen on
    on_val = plot_pareto(
        trials, x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max", by=by, title="t",
        path=tmp_path / "v.png", colour="variant",
    )  # fmt: skip
    val_means = on_val.points[on_val.points["kind"] == "config"]
    assert sorted(val_means["y"]) == pytest.approx([0.51, 0.81, 0.91])
    with pytest.raises(ValueError, match=r"columns \['test/acc/avg'\]"):
        plot_pareto(
            trials.drop(columns=["test/acc/avg"]), x="bits/per_task", y="val/acc/avg", x_mode="min",
            y_mode="max", by=by, title="t", path=tmp_path / "x.png", draw="test",
        )  # fmt: skip


def test_a_studys_own_plot_takes_trials_whose_method_ignores_the_grouping_field(tmp_path):
    """SupSup has no coefficient granularity: its trials carry no value there, and still get drawn.
    The front is the study's own (its objectives: validation); the points are at their test values."""
    from matplotlib.image import imread

    from impress.plots import plot_front

    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "state": ["complete", "complete", "complete", "failed"],
            "method": ["supsup", "impresslearn", "impresslearn", "impresslearn"],
            "granularity": [None, "layer", "channel", "global"],
            "val/acc/avg": [0.95, 0.6, 0.9, np.nan],
            "test/acc/avg": [0.94, 0.7, 0.97, np.nan],  # on test, "c" would be on the front
            "bits/per_task": [84480, 960, 167040, np.nan],
        }
    )
    drawn = plot_front(
        trials, x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max", path=tmp_path / "p.png", title="t",
        group="granularity",
    )  # fmt: skip
    image = imread(drawn.path)
    assert image.shape[:2] == drawn.size[::-1] and image.std() > 0
    complete = drawn.points[drawn.points["kind"] == "trial"]
    assert len(complete) == 3  # the failed trial has no values to draw
    means = drawn.points[drawn.points["kind"] == "config"]
    means = means.set_index(means["tip"].str.split("\n").str[0])
    assert means["on_front"].to_dict() == {"trial_id=a": True, "trial_id=b": True, "trial_id=c": False}
    assert means["y"].to_dict() == pytest.approx({"trial_id=a": 0.94, "trial_id=b": 0.7, "trial_id=c": 0.97})
    # a study's records without test twins: drawn at what the front was chosen on
    alone = plot_front(
        trials.drop(columns=["test/acc/avg"]), x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max",
        path=tmp_path / "v.png", title="t",
    )  # fmt: skip
    assert sorted(alone.points.loc[alone.points["kind"] == "config", "y"]) == pytest.approx([0.6, 0.9, 0.95])


def test_each_stream_gets_a_panel_of_its_own_with_its_own_front(tmp_path):
    """Fronts of different streams are never compared, and each is drawn on its own axis: every
    point of a stream lands in that stream's panel, and a config that would be dominated by the other
    stream's points is on its own front."""
    from matplotlib.image import imread

    from impress.plots import plot_pareto

    one = _disagreeing().trials.assign(stream="rotated")
    other = one.assign(  # an easier stream: every accuracy higher, so one shared front would take only its points
        stream="permuted", **{m: one[m] + 0.05 for m in ("val/acc/avg", "test/acc/avg")}
    )
    trials, by = prepare(StudyRecords("two", "sqlite:///unused.db", None, pd.concat([one, other], ignore_index=True)))
    assert "stream" in by
    kw = dict(x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max", by=by, title="t", colour="variant")
    drawn = plot_pareto(trials, path=tmp_path / "two.png", draw="test", **kw)
    single = plot_pareto(trials[trials["stream"] == "rotated"], path=tmp_path / "one.png", draw="test", **kw)
    assert drawn.size[0] > single.size[0] * 1.3 and drawn.size[1] == single.size[1]  # two panels, side by side
    points = drawn.points.assign(stream=["permuted" if "permuted" in t else "rotated" for t in drawn.points["tip"]])
    assert set(points["stream"]) == {"permuted", "rotated"}
    left, right = (points[points["stream"] == s]["px"] for s in ("permuted", "rotated"))  # panels in sorted order
    assert left.max() < right.min()
    configs = points[points["kind"] == "config"]
    for stream, lift in (("permuted", 0.05), ("rotated", 0.0)):  # m=1 and m=3's test means, each on its stream
        front = configs[(configs["stream"] == stream) & configs["on_front"]]
        assert sorted(front["y"]) == pytest.approx([0.49 + lift, 0.59 + lift])
    img = imread(drawn.path)
    assert img.shape[1] == drawn.size[0] and img.shape[0] == drawn.size[1]
    x0, y0, x1, y1 = (int(v) for v in drawn.boxes["title"])
    assert (img[y0:y1, x0:x1, :3].min(axis=2) < 0.5).sum() > 10  # the title is drawn once, over both panels


def test_no_config_is_drawn_in_the_fronts_colour(tmp_path):
    """Configs take their colours from a cycle without red or grey: a point off the front never looks
    like the front (crimson), however many colours the figure needs."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from impress.plots import FRONT_COLOUR, plot_front

    n = 12  # more groups than the cycle has colours
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "state": "complete",
            "group": [f"g{i:02d}" for i in range(n)],
            "val/acc/avg": [0.9 - 0.05 * i for i in range(n)],  # only the first is on the front
            "bits/per_task": [100.0 * (i + 1) for i in range(n)],
        }
    )
    drawn = plot_front(
        trials, x="bits/per_task", y="val/acc/avg", x_mode="min", y_mode="max", path=tmp_path / "p.png", title="t",
        group="group",
    )  # fmt: skip
    image = imread(drawn.path)[..., :3]
    off = drawn.points[(drawn.points["kind"] == "config") & ~drawn.points["on_front"].astype(bool)]
    assert len(off) == n - 1
    for _, p in off.iterrows():
        centre = image[round(p["py"]), round(p["px"])]
        assert np.abs(centre - to_rgb(FRONT_COLOUR)).sum() > 0.4, (p["tip"], centre)
        assert np.ptp(centre) > 0.1, (p["tip"], centre)  # a colour, not the grey of incomplete trials
