"""Figures: the Pareto front of per-task bits versus accuracy. Matplotlib, headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_front"]


def plot_front(
    trials: pd.DataFrame,
    *,
    x: str,
    y: str,
    x_mode: str,
    y_mode: str,
    title: str,
    path: str | Path,
    group: str | None = None,
) -> Path:
    """Scatter every trial (stopped or failed ones hollow), the non-dominated front of the complete
    ones highlighted and joined; log-scale x when it spans more than a decade. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from impress.pareto import pareto_mask

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    complete = trials[trials["state"] == "complete"]
    groups = sorted(complete[group].astype(str).unique()) if group and group in complete else [None]
    for name in groups:
        part = complete if name is None else complete[complete[group].astype(str) == name]
        ax.scatter(part[x], part[y], s=28, alpha=0.75, label=f"{group}={name}" if name is not None else "trials")
    other = trials[trials["state"] != "complete"]
    if len(other):
        ax.scatter(other[x], other[y], s=28, facecolors="none", edgecolors="grey", label="stopped early / failed")
    if len(complete):
        on = pareto_mask(complete[[x, y]].to_numpy(dtype=float), [x_mode, y_mode])
        front = complete[on].sort_values(x)
        ax.plot(front[x], front[y], "-o", color="crimson", lw=1.5, ms=7, mfc="none", mew=1.5, label="Pareto front")
    values = trials[x].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
