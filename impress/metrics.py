"""Continual-learning metrics from the accuracy matrix R, R[i, j] = accuracy on task j after
learning task i (NaN where j > i)."""

from __future__ import annotations

import numpy as np

__all__ = ["average_accuracy", "forgetting", "backward_transfer", "summary"]


def average_accuracy(R: np.ndarray, tasks: slice | None = None) -> float:
    """Mean accuracy over tasks seen, after the last task (optionally over a subset of tasks)."""
    last = R[-1, : R.shape[0]]
    return float(np.mean(last[tasks if tasks is not None else slice(None)]))


def forgetting(R: np.ndarray) -> float:
    """Mean over all but the last task of (best earlier accuracy - final accuracy); 0 for one task."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([np.max(R[j : T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R: np.ndarray) -> float:
    """Mean over all but the last task of (final accuracy - accuracy just after learning it)."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def summary(R: np.ndarray, *, dedicated_tasks: int = 0) -> dict[str, float]:
    """The headline metrics after the last row of R. `acc/avg_coeff_tasks` averages only the tasks
    learned by coefficients (index >= dedicated_tasks); NaN when there are none."""
    T = R.shape[0]
    coeff = R[-1, dedicated_tasks:T] if dedicated_tasks < T else np.array([])
    return {
        "acc/avg": average_accuracy(R),
        "acc/avg_coeff_tasks": float(np.mean(coeff)) if coeff.size else float("nan"),
        "acc/just_trained": float(np.mean(np.diag(R))),
        "forgetting": forgetting(R),
        "bwt": backward_transfer(R),
    }
