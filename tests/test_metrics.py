from __future__ import annotations

import math

import numpy as np

from impress.config import Config
from impress.metrics import (
    FLAT_METRICS,
    average_accuracy,
    backward_transfer,
    forgetting,
    is_metric,
    is_task_metric,
    summary,
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
    """What decides which keys reach trials.csv and MLflow: a flat name the trainer adds without
    listing it in FLAT_METRICS would fail here, not silently vanish from every study."""
    rules = ("oneshot_h", "binary_g")
    cfg = Config(m=1, num_tasks=2, epochs=1, widths=(16,), scenario="GNs", superfluous=1, infer_rules=rules)
    reported = []
    run(cfg, report=reported.append)
    keys = set(reported[-1])
    assert {k for k in keys if not is_metric(k)} == BOOKKEEPING
    assert set(FLAT_METRICS) | set(summary(np.eye(2))) <= keys
    assert {k for k in keys if is_task_metric(k)} == {"acc/task_000", "acc/task_001"}
    assert {"task_infer/acc", "acc/gns", "task_infer/acc/oneshot_h", "time/infer_batch_ms/binary_g"} <= keys
    assert not any(is_task_metric(k) for k in keys if k.startswith("task_infer/"))
