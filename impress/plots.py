"""Figures of studies and runs. Matplotlib, headless (Agg); each writes a PNG and returns a `Drawn`.

    plot_pareto       every trial, the configs' means over seeds with their spread, the front
                      (chosen on validation metrics, drawn at their test twins with `draw="test"`)
    plot_front        the same with each trial its own config (a study's `pareto.png`)
    plot_acc_vs_m     accuracy versus the number of impressions, a line per source of impressions
    plot_acc_matrix   heatmap of an accuracy matrix R[t, j] (one run's, or a mean over seeds)
    plot_task_curves  each task's accuracy as later tasks are learned
    plot_per_task     each task's final accuracy in each run, dedicated tasks filled, versus its
                      angular distance to the nearest impression (or its learned position); a
                      report's per_task.png

A `Drawn` records where every data point landed in the PNG's pixels, which the interactive HTML
(`impress.pagemap`) needs for its hover areas and which lets tests read the picture back.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from impress.metrics import twin
from impress.pareto import SETTING_FIELDS, over_seeds, seed_front
from impress.tables import cell_text, config_parts

__all__ = [
    "Drawn",
    "plot_pareto",
    "plot_front",
    "plot_acc_vs_m",
    "plot_acc_matrix",
    "plot_task_curves",
    "plot_per_task",
]

FRONT_COLOUR = "crimson"
# the default cycle without its red (C3, too near the front) and grey (C7, the incomplete configs)
PALETTE = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DODGE = (5.0, 0.15)  # per-task figure: x step between configs side by side (degrees, learned positions)


@dataclass(frozen=True)
class Drawn:
    """A written figure: `points` has one row per drawn data point (`kind`, `label`, `tip`, and
    `px`, `py` in pixels from the image's top-left); `boxes` the pixel boxes (x0, y0, x1, y1) of
    the legend, axis labels and title."""

    path: Path
    size: tuple[int, int]  # (width, height) in pixels
    points: pd.DataFrame
    boxes: dict[str, tuple[float, float, float, float]]


def _figure(width: float, height: float, *, ncols: int = 1):
    """A figure and its axes: one axis, or (`ncols` > 1) a row of `ncols` sharing the y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ncols == 1:
        return plt.subplots(figsize=(width, height), dpi=110, layout="constrained")
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), dpi=110, layout="constrained", sharey=True)
    return fig, list(axes)


def _save(fig, ax, path: str | Path, points: list[dict], *, axes_of: Sequence | None = None, labels=None) -> Drawn:
    """Lay the figure out, map data points to pixels, write the PNG. A point's x and y are in the
    data coordinates of `ax`, or of `axes_of[i]` where that is given (a twin axis); `labels` names
    more text artists whose pixel boxes to record (a twin's axis label)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    H = fig.bbox.height
    table = pd.DataFrame(points, columns=["kind", "label", "tip", "x", "y", "on_front"])
    table["on_front"] = table["on_front"].astype(object).fillna(False).astype(bool)
    if len(table):
        xy = table[["x", "y"]].to_numpy(dtype=float)
        if axes_of is None:
            xy = ax.transData.transform(xy)
        else:
            xy = np.array([(a or ax).transData.transform(p) for a, p in zip(axes_of, xy, strict=True)])
        table["px"], table["py"] = xy[:, 0], H - xy[:, 1]
    else:
        table["px"], table["py"] = [], []

    def box(artist) -> tuple[float, float, float, float]:
        b = artist.get_window_extent(renderer)
        return (b.x0, H - b.y1, b.x1, H - b.y0)

    boxes = {"xlabel": box(ax.xaxis.label), "ylabel": box(ax.yaxis.label), "title": box(ax.title)}
    boxes |= {name: box(artist) for name, artist in (labels or {}).items()}
    if ax.get_legend() is not None:
        boxes["legend"] = box(ax.get_legend())
    path = Path(path)
    fig.savefig(path, dpi=fig.dpi)
    size = (int(round(fig.bbox.width)), int(round(H)))
    plt.close(fig)
    return Drawn(path, size, table, boxes)


def _tip(row: pd.Series, by: Sequence[str], metrics: Sequence[str]) -> str:
    """Hover text: the config as `config_label` spells it (fields the method has no use for left
    out), then the metrics."""
    parts = config_parts(row, by) + [f"{m}={row[m]:.4g}" for m in metrics if pd.notna(row[m])]
    return "\n".join(parts)


def _text(value) -> str:
    """A config value as a label; a field a trial's method does not use (missing) is "n/a"."""
    return cell_text(value) or "n/a"


def plot_pareto(
    trials: pd.DataFrame,
    *,
    x: str,
    y: str,
    x_mode: str,
    y_mode: str,
    by: Sequence[str],
    title: str,
    path: str | Path,
    colour: str | None = None,
    marker: str | None = None,
    log_x: bool | None = None,
    draw: str | None = None,
) -> Drawn:
    """Every trial (faint; incomplete ones hollow grey), each config's mean over seeds with ± one
    sample std, and the non-dominated front of the complete configs' means joined in crimson.
    `trials` needs x, y, `complete` and the `by` columns; `colour` / `marker` name columns that
    tell configs apart (e.g. method and source of impressions). Log-scale x for bits by default.
    Trials on different settings (the `SETTING_FIELDS` among `by`: streams, backbones) are never
    compared, so each setting gets a panel of its own, side by side on one accuracy axis.

    The front is chosen on x and y. With `draw` (a split, "test"), every point is drawn at the
    twins of x and y on that split instead (which `trials` then needs too): a front chosen on
    validation, shown on test. Metrics of no split are drawn as they are."""
    dx, dy = (twin(x, draw), twin(y, draw)) if draw else (x, y)
    if missing := [m for m in (dx, dy) if m not in trials]:
        raise ValueError(f"columns {missing} (to draw {x} and {y} on {draw}) are not in the trials table")
    settings = [c for c in by if c in SETTING_FIELDS and trials[c].map(_text).nunique() > 1]
    setting = trials.apply(lambda r: ", ".join(f"{c}={_text(r[c])}" for c in settings), axis=1) if settings else None
    panels = [(k, trials[setting == k]) for k in sorted(setting.unique())] if settings else [("", trials)]
    fig, axes = _figure(9.5 + 4.2 * (len(panels) - 1), 5.2, ncols=len(panels))
    axes = axes if isinstance(axes, list) else [axes]
    keys = sorted({_text(v) for v in trials[colour]}) if colour else [""]
    palette = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    shapes = sorted({_text(v) for v in trials[marker]}) if marker else [""]
    style = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(shapes)}
    look = _Look(
        colour=(lambda r: palette[_text(r[colour])]) if colour else (lambda r: "C0"),
        marker=(lambda r: style[_text(r[marker])]) if marker else (lambda r: "o"),
        key=(lambda r: str(r[colour])) if colour else (lambda r: "config means"),
    )
    points: list[dict] = []
    point_axes: list = []
    for (name, part), ax in zip(panels, axes, strict=True):
        drawn = _pareto_panel(ax, part, x, y, x_mode, y_mode, dx, dy, by, look, colour, marker, len(panels) > 1)
        points += drawn
        point_axes += [ax] * len(drawn)
        if name:
            ax.set_title(name, fontsize=9)
    values = trials[dx].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if log_x is None:
        log_x = bool(len(values)) and (dx.startswith("bits/") or values.max() / values.min() > 10)
    for ax in axes:
        if log_x and len(values):
            ax.set_xscale("log")
        ax.set_xlabel(dx + (" (log scale)" if log_x else ""))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(dy)
    heading = fig.suptitle(title, fontsize=10) if len(panels) > 1 else axes[0].set_title(title, fontsize=10)
    entries: dict[str, object] = {}
    for ax in axes:  # one legend for every panel: the same colours and markers throughout
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    legend = axes[-1].legend(
        list(entries.values()), list(entries), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
    )
    return _save(fig, axes[0], path, points, axes_of=point_axes, labels={"title": heading, "legend": legend})


@dataclass(frozen=True)
class _Look:
    """How a config is drawn: its colour, its marker and its legend entry, from its row."""

    colour: object
    marker: object
    key: object


def _pareto_panel(
    ax, trials, x, y, x_mode, y_mode, dx, dy, by, look: _Look, colour, marker, panels: bool
) -> list[dict]:
    """One setting's trials, configs and front on `ax`; the points drawn (`plot_pareto`)."""
    complete, other = trials[trials["complete"]], trials[~trials["complete"]]
    shown = list(dict.fromkeys([x, y, dx, dy]))  # the hover tips: chosen on, then drawn
    points: list[dict] = []
    for _, r in complete.iterrows():
        ax.scatter(r[dx], r[dy], s=16, alpha=0.35, color=look.colour(r), marker=look.marker(r), lw=0)
        tip = _tip(r, [*by, "seed"], shown)
        points.append(dict(kind="trial", label=r.get("run_name", ""), tip=tip, x=r[dx], y=r[dy]))
    if len(other):
        ax.scatter(
            other[dx], other[dy], s=30, facecolors="none", edgecolors="grey", label="incomplete: not on the front"
        )
        for _, r in other.iterrows():
            tip = _tip(r, [*by, "seed", "state"], shown)
            points.append(dict(kind="incomplete", label=r.get("run_name", ""), tip=tip, x=r[dx], y=r[dy]))
    if not len(complete):
        return points
    extra = [c for c in (colour, marker) if c and c not in by]
    configs = seed_front(complete, {x: x_mode, y: y_mode}, by=[*by, *extra], show=[dx, dy])
    labelled: set[str] = set()
    for _, r in configs.iterrows():
        key = look.key(r)
        ax.errorbar(
            r[dx],
            r[dy],
            xerr=r[f"{dx}_std"] if r["n"] > 1 else None,
            yerr=r[f"{dy}_std"] if r["n"] > 1 else None,
            fmt=look.marker(r),
            ms=7,
            color=look.colour(r),
            capsize=2,
            label=None if key in labelled else key,
        )
        labelled.add(key)
        tip = _tip(r, by, shown) + f"\nmean over n={r['n']} seeds ({r.get('seeds', '')})"
        points.append(dict(kind="config", label=key, tip=tip, x=r[dx], y=r[dy], on_front=bool(r["on_front"])))
    front = configs[configs["on_front"]].sort_values(dx)
    n = f"n={front['n'].min()}" if front["n"].nunique() == 1 else f"n={front['n'].min()}-{front['n'].max()}"
    chosen = "" if (dx, dy) == (x, y) else ", chosen on validation"
    label = f"Pareto front{chosen} (means, {n} seeds)" + (", one per panel" if panels else "")
    ax.plot(front[dx], front[dy], "-D", color=FRONT_COLOUR, lw=1.5, ms=5, zorder=5, label=label)
    ax.scatter([], [], s=16, alpha=0.35, color="grey", lw=0, label="every complete trial (faint)")
    return points


def plot_front(
    trials: pd.DataFrame,
    *,
    x: str,
    y: str,
    x_mode: str,
    y_mode: str,
    title: str,
    path: str | Path,
    by: Sequence[str] = (),
    group: str | None = None,
) -> Drawn:
    """A study's own trials (`state` column: stopped or failed ones hollow) and its configs (the
    `by` columns; none: each trial its own config) as means over seeds, with the front of the means.
    The front is chosen on x and y (a study's objectives: validation); where `trials` has their
    test twins, the points are drawn at those."""
    table = trials.assign(complete=trials["state"] == "complete")
    colour = None
    if group and group in trials:
        table, colour = table.assign(colour=[f"{group}={_text(v)}" for v in trials[group]]), "colour"
    draw = "test" if all(twin(m, "test") in trials for m in (x, y)) else None
    by = [c for c in by if c in trials] or ["trial_id"]
    return plot_pareto(
        table, x=x, y=y, x_mode=x_mode, y_mode=y_mode, by=by, title=title, path=path, colour=colour, draw=draw
    )


def plot_acc_vs_m(trials: pd.DataFrame, *, metric: str, lines: Sequence[str], title: str, path: str | Path) -> Drawn:
    """`metric` (mean ± sample std over seeds) versus m, one line per value of the `lines` columns
    (e.g. the source of impressions); complete trials only."""
    fig, ax = _figure(8.0, 4.8)
    complete = trials[trials["complete"]]
    configs = over_seeds(complete, [metric], by=[*lines, "m"]) if len(complete) else complete
    points: list[dict] = []
    groups = configs.groupby(list(lines), sort=True, dropna=False) if lines else [("all", configs)]
    for key, part in groups:
        part = part.sort_values("m")
        name = "~".join(f"{k}={v}" for k, v in zip(lines, key if isinstance(key, tuple) else (key,))) or "all"
        n = f"n={part['n'].min()}" if part["n"].nunique() == 1 else f"n={part['n'].min()}-{part['n'].max()}"
        yerr = part[f"{metric}_std"].where(part["n"] > 1)
        ax.errorbar(part["m"], part[metric], yerr=yerr, fmt="-o", capsize=3, label=f"{name} ({n} seeds)")
        for _, r in part.iterrows():
            tip = f"{name}\nm={r['m']}\n{metric}={r[metric]:.4g} ± {r[f'{metric}_std']:.2g} (n={r['n']})"
            points.append(dict(kind="config", label=name, tip=tip, x=r["m"], y=r[metric]))
    ax.set_xlabel("m, impressions in the bank")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(configs):
        ax.set_xticks(sorted(configs["m"].unique()))
        ax.legend(fontsize=8, loc="best")
    return _save(fig, ax, path, points)


def _cell(R: np.ndarray, std: np.ndarray | None, n: int, t: int, j: int) -> str:
    """R[t, j] as a hover tip: the value, and over n > 1 runs its sample std and n."""
    return f"{R[t, j]:.4f}" if std is None else f"{R[t, j]:.4f} ± {std[t, j]:.4f} (n = {n})"


def plot_acc_matrix(R: np.ndarray, *, title: str, path: str | Path, std: np.ndarray | None = None, n: int = 1) -> Drawn:
    """Heatmap of R[t, j], accuracy on task j after learning task t (blank above the diagonal); a
    mean over n runs if `std` is given."""
    R = np.asarray(R, dtype=float)  # (T, T)
    T = len(R)
    fig, ax = _figure(2.0 + 0.42 * max(T, 10), 1.4 + 0.38 * max(T, 10))
    image = ax.imshow(np.ma.masked_invalid(R), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy")
    points: list[dict] = []
    for t in range(T):
        for j in range(T):
            if np.isfinite(R[t, j]):
                if T <= 20:
                    colour = "black" if R[t, j] > 0.6 else "white"
                    ax.text(j, t, f"{R[t, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
                tip = f"after task {t}, task {j}: {_cell(R, std, n, t, j)}"
                points.append(dict(kind="cell", label=f"R[{t},{j}]", tip=tip, x=j, y=t))
    ticks = range(0, T, max(1, T // 10))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.set_xlabel("task evaluated (j)")
    ax.set_ylabel("after learning task (t)")
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, points)


def plot_task_curves(
    R: np.ndarray, *, title: str, path: str | Path, std: np.ndarray | None = None, n: int = 1
) -> Drawn:
    """Each task's accuracy from when it is learned to the end of the stream, and the average over
    the tasks seen so far (`acc/avg` at each step); means over n runs if `std` is given."""
    R = np.asarray(R, dtype=float)  # (T, T)
    T = len(R)
    fig, ax = _figure(8.5, 4.8)
    points: list[dict] = []
    for j in range(T):
        steps = np.arange(j, T)
        ax.plot(steps, R[j:, j], "-o", ms=3, lw=1, alpha=0.8, label=f"task {j}")
        for t in steps:
            if np.isfinite(R[t, j]):
                tip = f"task {j} after task {t}: {_cell(R, std, n, t, j)}"
                points.append(dict(kind="cell", label=f"task {j}", tip=tip, x=t, y=R[t, j]))
    seen = [np.nanmean(R[t, : t + 1]) if np.isfinite(R[t, : t + 1]).any() else np.nan for t in range(T)]
    ax.plot(range(T), seen, "-", color="black", lw=2.5, label="average over tasks seen")
    ax.set_xlabel("tasks learned (t)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(list(range(0, T, max(1, T // 10))))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + T // 16, borderaxespad=0)
    return _save(fig, ax, path, points)


def plot_per_task(table: pd.DataFrame, *, title: str, path: str | Path) -> Drawn:
    """Each task's final accuracy in each run: one colour per variant and config, filled where the
    task has a dedicated mask, hollow where it was learned by coefficients. x is `distance_deg`,
    the angular distance to the nearest impression; where it is NaN (no angle: not a rotated
    stream, a random bank, no bank) the task's `learned_position`, which the axis label says: on
    an axis of its own at the top when the figure has both (`boxes["xlabel_top"]`).

    Configs on one axis are drawn side by side, each shifted by a small constant (`DODGE`; its
    points' `x` include it) so that one does not hide another's tasks at the same x; the hover tip
    has the exact values. `table` as `impress.report.per_task_accuracies` returns it."""
    fig, ax = _figure(9.5, 5.2)
    angled = table["distance_deg"].notna()
    x = table["distance_deg"].where(angled, table["learned_position"]).astype(float)
    keys = sorted(dict.fromkeys(zip(table["variant"], table["config"])))
    by_angle = {k: bool(angled[(table["variant"] == k[0]) & (table["config"] == k[1])].all()) for k in keys}
    top = ax.twiny() if angled.any() and not angled.all() else None  # positions above, distances below
    same = {c for c in ("stream", "task_order") if c in table and table[c].nunique() == 1}
    points: list[dict] = []
    axes_of: list = []
    for i, (variant, config) in enumerate(keys):
        group = [k for k in keys if by_angle[k] == by_angle[(variant, config)]]
        step = DODGE[0 if by_angle[(variant, config)] else 1] * min(1.0, 8 / len(group))
        shift = (group.index((variant, config)) - (len(group) - 1) / 2) * step
        where = top if top is not None and not by_angle[(variant, config)] else ax
        colour = f"C{i % 10}"
        part = table[(table["variant"] == variant) & (table["config"] == config)]
        runs = part["run_id"].nunique()
        parts = [p for p in config.split("~") if p.split("=")[0] not in {"method", "impressions", *same}]
        label = f"{variant}" + (f" ({', '.join(parts)})" if parts else "") + f", {runs} run{'s' if runs > 1 else ''}"
        if where is top:
            label += "; top axis: learned position"
        ax.scatter([], [], s=36, color=colour, label=textwrap.fill(label, 48, subsequent_indent="  "))
        for dedicated in (True, False):
            rows = part[part["dedicated"] == dedicated]
            face = colour if dedicated else "none"
            where.scatter(
                x[rows.index] + shift, rows["final_test_acc"], s=36, facecolors=face, edgecolors=colour, lw=1.2
            )
        for j, r in part.iterrows():
            at = f"stream task {r['stream_position']}"
            if pd.notna(r["angle_deg"]):
                at += f" at {r['angle_deg']:.4g} deg"
            tip = [
                f"{variant}: {config}",
                f"run {r['run_name']} (seed {r['seed']})",
                f"learned {_ordinal(r['learned_position'])}, {at}",
                "dedicated mask" if r["dedicated"] else "learned by coefficients",
            ]
            if pd.notna(r["distance_deg"]):
                tip.append(f"distance to the nearest impression: {r['distance_deg']:.4g} deg")
            tip.append(f"final test accuracy={r['final_test_acc']:.4f}")
            points.append(dict(kind="task", label=config, tip="\n".join(tip), x=x[j] + shift, y=r["final_test_acc"]))
            axes_of.append(where)
    ax.scatter([], [], s=36, color="grey", label="filled: a dedicated mask")
    ax.scatter([], [], s=36, facecolors="none", edgecolors="grey", lw=1.2, label="hollow: learned by coefficients")
    distance = "angular distance to the nearest impression of the run (degrees)"
    position = "learned position of the task"
    T = int(table["learned_position"].max()) + 1 if len(table) else 1
    if angled.any():
        ax.set_xlabel(distance)
        ax.set_xlim(-10, 190)
        ax.set_xticks(range(0, 181, 30))
    else:
        rotated = "stream" in table and (table["stream"] == "rotated").any()
        ax.set_xlabel(f"{position} ({'no impression angle' if rotated else 'not a rotated stream: no angle'})")
        ax.set_xticks(list(range(0, T, max(1, T // 10))))
    labels = {}
    if top is not None:
        without = ", ".join(dict.fromkeys(table.loc[~angled, "variant"]))
        top.set_xlabel(f"{without}: {position} (no impression angle)")
        top.set_xlim(-0.5, T - 0.5)
        top.set_xticks(list(range(0, T, max(1, T // 10))))
        labels["xlabel_top"] = top.xaxis.label
    ax.set_ylabel("final test accuracy (after the last task)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, ax, path, points, axes_of=axes_of, labels=labels)


def _ordinal(i: int) -> str:
    """Learned position i (from 0) as words: 0 -> "1st (position 0)"."""
    n = int(i) + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} (position {int(i)})"
