from __future__ import annotations

import math

import numpy as np

from impress.config import Config
from impress.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    is_metric,
    is_task_metric,
    split_of,
    summary,
    twin,
)
from impress.trainer import run

NAN = float("nan")


def test_metrics_on_a_hand_made_matrix():
    R = np.array(
        [
            [0.9, NAN, NAN],
            [0.7, 0.8, NAN],
            [0.6, 0.85, 0.95],
        ]
    )
    assert math.isclose(average_accuracy(R), (0.6 + 0.85 + 0.95) / 3)
    # best earlier minus final: task 0: 0.9 - 0.6; task 1: 0.8 - 0.85
    assert math.isclose(forgetting(R), ((0.9 - 0.6) + (0.8 - 0.85)) / 2)
    assert math.isclose(backward_transfer(R), ((0.6 - 0.9) + (0.85 - 0.8)) / 2)
    s = summary(R, dedicated_tasks=1)
    assert math.isclose(s["acc/avg_coeff_tasks"], (0.85 + 0.95) / 2)
    assert math.isclose(s["acc/just_trained"], (0.9 + 0.8 + 0.95) / 3)


def test_no_forgetting_when_rows_repeat():
    R = np.tril(np.tile([0.5, 0.6, 0.7, 0.8], (4, 1)))
    R[np.triu_indices(4, 1)] = NAN
    assert forgetting(R) == 0.0 and backward_transfer(R) == 0.0
    assert math.isnan(summary(R, dedicated_tasks=4)["acc/avg_coeff_tasks"])


def test_single_task():
    R = np.array([[0.5]])
    assert forgetting(R) == 0.0 and backward_transfer(R) == 0.0 and average_accuracy(R) == 0.5


BOOKKEEPING = {"step", "task", "tasks_done", "num_tasks", "resumed_from"}  # what the trainer reports about itself


def test_every_key_the_trainer_reports_is_a_metric_but_its_bookkeeping():
    """What decides which keys reach trials.csv and MLflow: a flat name the trainer adds would fail
    here, not silently vanish from every study. Every measured metric exists on both splits."""
    rules = ("oneshot_h", "binary_g")
    cfg = Config(m=1, num_tasks=2, epochs=1, widths=(16,), scenario="GNs", superfluous=1, infer_rules=rules)
    reported = []
    run(cfg, report=reported.append)
    keys = set(reported[-1])
    assert {k for k in keys if not is_metric(k)} == BOOKKEEPING
    for split in ("val", "test"):
        assert {f"{split}/{k}" for k in summary(np.eye(2))} <= keys
        assert {k for k in keys if is_task_metric(k) and split_of(k) == split} == {
            f"{split}/acc/task_000",
            f"{split}/acc/task_001",
        }
        assert {f"{split}/task_infer/acc", f"{split}/acc/gns", f"{split}/task_infer/acc/oneshot_h"} <= keys
    assert "time/infer_batch_ms/binary_g" in keys and "val/time/infer_batch_ms" not in keys
    assert not any(is_task_metric(k) for k in keys if "/task_infer/" in k)
    # a measured metric's split is in its name; bits and time measure no data
    assert {split_of(k) for k in keys if is_metric(k)} == {"val", "test", None}
    assert all(split_of(k) is None for k in keys if k.startswith(("bits/", "time/")))


def test_twin_names_the_same_metric_on_the_other_split():
    assert twin("test/acc/avg", "val") == "val/acc/avg"
    assert twin("val/task_infer/acc/fit", "test") == "test/task_infer/acc/fit"
    assert twin("bits/per_task", "val") == "bits/per_task"
    assert split_of("val") is None and split_of("test/forgetting") == "test"
