"""(b) The ImpressLearn coefficient step against the dense step of the same MLP.

Target: at most 2x the dense step with m = 32 impressions; reported for m = 8, 32, 128
and for global (m coefficients per task) and layer (m per layer) granularity.
"""

from __future__ import annotations

from bench.report import Figure, ratio_figure
from bench.steps import backbone, batches, coefficient_step, dense_step, store_random_bank
from bench.timing import side_by_side

__all__ = ["FIGURES", "run"]

IMPRESSIONS = (8, 32, 128)
GRANULARITIES = ("global", "layer")
FIGURES = tuple(f"coef/{g}/m={m}" for g in GRANULARITIES for m in IMPRESSIONS)
IN_SHAPE = (1, 28, 28)


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    data = batches(IN_SHAPE, 128)
    dense = dense_step(backbone("fc1024", IN_SHAPE), data)
    net = backbone("fc1024", IN_SHAPE)
    store_random_bank(net, max(IMPRESSIONS))  # one bank; a Mixture of m uses its first m masks
    steps = {
        f"coef/{g}/m={m}": coefficient_step(net, data, m=m, granularity=g) for g in GRANULARITIES for m in IMPRESSIONS
    }
    ratios = side_by_side(dense, steps, repeats=repeats, warmup=2 if quick else 3, clock=clock)
    figures = []
    for name, ratio in ratios.items():
        _, granularity, m = name.split("/")
        target = ("<=", 2.0) if m == "m=32" else None
        what = f"coefficient step / dense step, {granularity} coefficients, {m} impressions, fc1024 batch 128"
        figures.append(ratio_figure(name, what, ratio, target, labels=("dense", "coefficients")))
    return figures
