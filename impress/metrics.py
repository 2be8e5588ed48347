"""Continual-learning metrics from the accuracy matrix R, R[i, j] = accuracy on task j after
learning task i (NaN where j > i), and what a reported key that is a metric looks like.

A metric's name is hierarchical and, where it measures data, starts with its split:

    val/acc/avg, val/forgetting, val/task_infer/acc, ...   validation: what studies choose on
    test/acc/avg, test/forgetting, ...                     test: what results report
    bits/per_task, bits/total, time/task_s, ...            no data split
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "SPLIT_PREFIXES",
    "average_accuracy",
    "forgetting",
    "backward_transfer",
    "summary",
    "is_metric",
    "is_task_metric",
    "split_of",
    "twin",
]

# NOTE: a key without a "/" is bookkeeping (`step`, `tasks_done`, ...) or Ray Tune's own (`timestamp`, `pid`)
SPLIT_PREFIXES = ("val", "test")


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


def is_metric(key: str) -> bool:
    """Whether a key of a trial's report is a metric (an MLflow metric, a trials.csv column): a
    hierarchical name, whatever its group (`test/acc/avg`, `val/forgetting`, `bits/per_task`)."""
    return "/" in key


def split_of(metric: str) -> str | None:
    """The data split a metric measures ("val" or "test"), None for one that measures no data."""
    head = metric.split("/", 1)[0]
    return head if head in SPLIT_PREFIXES and "/" in metric else None


def twin(metric: str, split: str) -> str:
    """The same metric measured on `split`: twin("test/acc/avg", "val") == "val/acc/avg"."""
    return f"{split}/{metric.split('/', 1)[1]}" if split_of(metric) else metric


def is_task_metric(key: str) -> bool:
    """Whether a metric is one task's (`acc/task_003`): a cell of the accuracy matrix, kept as an
    MLflow history rather than a column of a table of trials."""
    return is_metric(key) and re.fullmatch(r"task_\d+", key.rsplit("/", 1)[-1]) is not None
