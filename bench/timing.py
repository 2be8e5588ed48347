"""Side-by-side timing: steps run in alternation, each ratio taken within one round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["CLOCKS", "Ratio", "side_by_side"]

# wall: what a user waits for; cpu: this process's CPU time, steadier on a loaded machine
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Ratio:
    """candidate time / baseline time over `n` rounds: median and interquartile range."""

    median: float
    q1: float
    q3: float
    n: int
    base_ms: float  # median baseline time
    cand_ms: float  # median candidate time


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return q1, q2, q3


def side_by_side(
    base: Callable[[], object],
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 3,
    clock: str = "wall",
) -> dict[str, Ratio]:
    """Run `base` and every candidate once per round, `warmup` + `repeats` rounds; each candidate's
    ratio is taken against the baseline of the same round, so slow phases of the machine cancel."""
    now = CLOCKS[clock]
    names = list(candidates)
    times: dict[str | None, list[float]] = {name: [] for name in [None, *names]}
    for r in range(warmup + repeats):
        order = [None, *names] if r % 2 == 0 else [*names, None]  # alternate who goes first
        for name in order:
            fn = base if name is None else candidates[name]
            start = now()
            fn()
            if r >= warmup:
                times[name].append(now() - start)
    result = {}
    for name in names:
        ratios = [c / b for c, b in zip(times[name], times[None])]
        q1, med, q3 = _quartiles(ratios)
        result[name] = Ratio(
            med, q1, q3, repeats, 1e3 * statistics.median(times[None]), 1e3 * statistics.median(times[name])
        )
    return result
