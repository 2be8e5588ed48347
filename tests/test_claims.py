"""End-to-end claims on 20-task digits streams (64-256-256-10 MLP, density 0.5), one seed each, on
the test split (nothing is chosen here); never forgetting is checked on validation too.

The README reports the same quantities as mean and spread over 3 seeds (`analysis/core_claims.py`).
"""

from __future__ import annotations

import numpy as np
import pytest

from impress.config import Config
from impress.trainer import build, resolve_device, run, stored_mask_transfer

ROTATED = Config(stream="rotated", num_tasks=20)


@pytest.fixture(scope="module")
def il_runs():
    runs = {(10, g): run(ROTATED.replace(m=10, granularity=g)) for g in ("global", "layer", "channel")}
    runs[(2, "layer")] = run(ROTATED.replace(m=2, granularity="layer"))
    return runs


def test_supsup_solves_rotated_digits():
    result = run(ROTATED.replace(method="supsup"))
    assert result.metrics["test/acc/avg"] >= 0.95
    assert result.metrics["test/forgetting"] == result.metrics["val/forgetting"] == 0.0


def test_finetune_forgets():
    result = run(ROTATED.replace(method="finetune", lr=0.001))
    assert result.metrics["test/acc/just_trained"] >= 0.9
    assert result.metrics["test/acc/avg"] < result.metrics["test/acc/just_trained"] - 0.2
    assert result.metrics["test/forgetting"] > 0.2


def test_impresslearn_accuracy_rises_with_m(il_runs):
    # the tasks learned by coefficients in both runs (10..19) are the fair comparison
    def last_ten(r):
        return float(np.mean(np.array(r.acc_matrix)[-1, 10:]))

    assert last_ten(il_runs[(10, "layer")]) > last_ten(il_runs[(2, "layer")]) + 0.1


def test_impresslearn_accuracy_rises_with_finer_coefficients(il_runs):
    acc = {g: il_runs[(10, g)].metrics["test/acc/avg_coeff_tasks"] for g in ("global", "layer", "channel")}
    assert acc["global"] + 0.05 < acc["layer"] < acc["channel"] - 0.05
    bits = {g: il_runs[(10, g)].overhead["per_task_bits"] for g in ("global", "layer", "channel")}
    assert bits["global"] < bits["layer"] < bits["channel"]


def test_impresslearn_never_forgets(il_runs):
    for result in il_runs.values():
        for split in ("val", "test"):
            assert result.metrics[f"{split}/forgetting"] == 0.0 and result.metrics[f"{split}/bwt"] == 0.0


def test_one_foreign_impression_alone_is_near_chance_on_permuted_digits():
    cfg = Config(stream="permuted", method="supsup", num_tasks=5)
    stream, method = build(cfg, resolve_device("cpu"))
    for task in stream:
        method.learn(task, lambda event: None)
    A = stored_mask_transfer(method, stream, split="test")
    foreign = A[~np.eye(5, dtype=bool)]
    assert np.diag(A).min() > 0.9
    assert foreign.mean() < 0.2 and foreign.max() < 0.3  # chance is 0.1


def test_group_coefficients_sit_between_layer_and_unit_coefficients_and_8_bits_cost_nothing():
    """On 10-task rotated digits (m = 5): per-block coefficients (G = 16) buy most of the per-unit
    accuracy at a fraction of its bits, and storing them at 8 bits loses under a point (measured
    over 3 seeds: layer 0.440, group 0.895, channel 0.948; 8 bits within 0.11 points of 32)."""
    base = Config(stream="rotated", num_tasks=10, m=5, epochs=8)
    runs = {
        name: run(base.replace(**changes))
        for name, changes in {
            "layer": dict(granularity="layer"),
            "group": dict(granularity="group", groups=16),
            "group8": dict(granularity="group", groups=16, alpha_bits=8),
            "channel": dict(granularity="channel"),
        }.items()
    }
    acc = {k: r.metrics["test/acc/avg_coeff_tasks"] for k, r in runs.items()}
    bits = {k: r.overhead["per_task_bits"] for k, r in runs.items()}
    assert acc["layer"] + 0.3 < acc["group"] < acc["channel"]
    assert bits["layer"] < bits["group"] < bits["channel"] / 10
    assert bits["group8"] == bits["group"] // 4 + 16 * (16 + 16 + 10)  # 8-bit values and a scale per row
    assert abs(acc["group8"] - acc["group"]) < 0.01
