from __future__ import annotations

import numpy as np
import pytest

from impress.pareto import pareto_mask, widest_gap


def test_front_max_accuracy_min_bits():
    pts = [(0.9, 1000), (0.8, 100), (0.85, 1000), (0.7, 100), (0.95, 5000), (0.6, 10)]
    assert pareto_mask(pts, ["max", "min"]).tolist() == [True, True, False, False, True, True]


def test_duplicates_and_ties():
    pts = [(1, 1), (1, 1), (1, 0.5), (0.5, 1)]
    # (1, 0.5) is at least as good everywhere and strictly better in bits than (1, 1)
    assert pareto_mask(pts, ["max", "min"]).tolist() == [False, False, True, False]
    assert pareto_mask([(1, 1), (1, 1)], ["max", "max"]).tolist() == [True, True]


@pytest.mark.parametrize("modes", [["max", "max"], ["min", "min"], ["max", "min"], ["min", "max"]])
def test_directions_are_mirror_images(modes):
    rng = np.random.default_rng(0)
    pts = rng.random((40, 2))
    flipped = ["min" if m == "max" else "max" for m in modes]
    assert np.array_equal(pareto_mask(pts, modes), pareto_mask(-pts, flipped))
    front = pts[pareto_mask(pts, modes)]
    sign = np.array([1 if m == "max" else -1 for m in modes])
    for p in pts * sign:  # nothing dominates a front point
        assert not any(np.all(p >= f) and np.any(p > f) for f in front * sign)


def test_nan_rows_never_on_the_front_and_bad_input():
    assert pareto_mask([(np.nan, 1), (0.5, 2)], ["max", "min"]).tolist() == [False, True]
    with pytest.raises(ValueError, match="modes must be"):
        pareto_mask([(1, 2)], ["up", "min"])
    with pytest.raises(ValueError, match=r"points must be \(n, 2\)"):
        pareto_mask([(1, 2, 3)], ["max", "min"])


def test_widest_gap_is_the_largest_ratio_between_neighbouring_costs():
    # the quickstart's shape: layer coefficients at 256 bits, then per-unit ones at 66,816
    assert widest_gap([96, 256, 66_816, 116_928]) == (261.0, 256.0, 66_816.0)
    assert widest_gap([66_816, 96, 256]) == (261.0, 256.0, 66_816.0)  # order does not matter
    ratio, lo, hi = widest_gap([32, 200, 1_000, 8_000, 9_000])
    assert (ratio, lo, hi) == (8.0, 1_000.0, 8_000.0)
    assert widest_gap([500, 500]) is None and widest_gap([7]) is None  # one distinct cost: no step
    with pytest.raises(ValueError, match="positive"):
        widest_gap([0, 10])
