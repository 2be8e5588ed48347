"""Non-dominated (Pareto) fronts over any number of objectives, each maximised or minimised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_mask"]


def pareto_mask(points: np.ndarray | Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """Bool mask of the non-dominated rows of `points` (n, k); `modes[i]` is "max" or "min".

    A point is dominated when another is at least as good in every objective and strictly better
    in one. Duplicates of a front point are all on the front; rows with NaN are never on it."""
    P = np.asarray(points, dtype=float)
    if P.ndim != 2 or P.shape[1] != len(modes):
        raise ValueError(f"points must be (n, {len(modes)}) for modes {list(modes)}, got shape {P.shape}")
    if any(m not in ("max", "min") for m in modes):
        raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
    sign = np.array([1.0 if m == "max" else -1.0 for m in modes])
    G = P * sign  # larger is better in every column
    valid = ~np.isnan(G).any(axis=1)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        others = G[valid]
        dominated = np.any(np.all(others >= G[i], axis=1) & np.any(others > G[i], axis=1))
        front[i] = not dominated
    return front
