"""(b) The ImpressLearn coefficient step against the dense step of the same MLP.

Targets: at most 2x the dense step with m = 32 impressions and at most 2.5x with m = 128, for
global (m coefficients per task) and layer (m per layer) granularity; m = 8 is reported, and so
are per-unit (`channel`: one row of m per output unit) and `group16` coefficients (16 rows of m
per layer, each over a block of units), whose tables are built per row.
"""

from __future__ import annotations

from bench.report import Figure, ratio_figure
from bench.steps import backbone, batches, coefficient_step, dense_step, store_random_bank
from bench.timing import side_by_side

__all__ = ["FIGURES", "run"]

# (granularity, groups, m): the name shows groups when they count ("group16")
CASES = [(g, 1, m) for g in ("global", "layer") for m in (8, 32, 128)]
CASES += [("channel", 1, m) for m in (32, 128)] + [("group", 16, m) for m in (32, 128)]
TARGETS = {32: ("<=", 2.0), 128: ("<=", 2.5)}  # m -> target, global and layer granularity
FIGURES = tuple(f"coef/{g}{groups if g == 'group' else ''}/m={m}" for g, groups, m in CASES)
IN_SHAPE = (1, 28, 28)


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    data = batches(IN_SHAPE, 128)
    dense = dense_step(backbone("fc1024", IN_SHAPE), data)
    net = backbone("fc1024", IN_SHAPE)
    store_random_bank(net, max(m for _, _, m in CASES))  # one bank; a Mixture of m uses its first m masks
    steps = {
        name: coefficient_step(net, data, m=m, granularity=g, groups=groups)
        for name, (g, groups, m) in zip(FIGURES, CASES)
    }
    ratios = side_by_side(dense, steps, repeats=repeats, warmup=2 if quick else 3, clock=clock)
    figures = []
    for name, (g, groups, m) in zip(FIGURES, CASES):
        target = TARGETS.get(m) if g in ("global", "layer") else None
        rows = f" ({groups} per layer)" if g == "group" else ""
        what = f"coefficient step / dense step, {g} coefficients{rows}, m={m} impressions, fc1024 batch 128"
        figures.append(ratio_figure(name, what, ratios[name], target, labels=("dense", "coefficients")))
    return figures
