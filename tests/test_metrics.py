from __future__ import annotations

import math

import numpy as np

from impress.metrics import average_accuracy, backward_transfer, forgetting, summary

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
