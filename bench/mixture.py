"""(b) The ImpressLearn coefficient step against the dense step of the same MLP.

Targets: at most 2x the dense step with m = 32 impressions and at most 2.5x with m = 128, for
global (m coefficients per task) and layer (m per layer) granularity; m = 8 is reported, and so
are per-unit (`channel`: one row of m per output unit) and `group16` coefficients (16 rows of m
per layer, each over a block of units), whose tables are built per row. The steps run the native
loops where this machine builds them (the `what` says which); `.../numba` figures run the numba
loops, the fallback, beside them.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.report import Figure, ratio_figure
from bench.steps import backbone, batches, coefficient_step, dense_step, store_random_bank
from bench.timing import side_by_side
from impress.fused_mixture import native_loops, numba_loops

__all__ = ["FIGURES", "run"]

# (granularity, groups, m, loops): the name shows groups when they count ("group16"), and numba's loops
CASES = [(g, 1, m, "native") for g in ("global", "layer") for m in (8, 32, 128)]
CASES += [("channel", 1, m, "native") for m in (32, 128)] + [("group", 16, m, "native") for m in (32, 128)]
CASES += [("layer", 1, m, "numba") for m in (32, 128)]
TARGETS = {32: ("<=", 2.0), 128: ("<=", 2.5)}  # m -> target, global and layer granularity
FIGURES = tuple(
    f"coef/{g}{groups if g == 'group' else ''}/m={m}{'/numba' if loops == 'numba' else ''}"
    for g, groups, m, loops in CASES
)
IN_SHAPE = (1, 28, 28)


def _numba(step: Callable[[], None]) -> Callable[[], None]:
    """`step` with the numba loops, where the native ones would run."""

    def run() -> None:
        with numba_loops():
            step()

    return run


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    data = batches(IN_SHAPE, 128)
    dense = dense_step(backbone("fc1024", IN_SHAPE), data)
    net = backbone("fc1024", IN_SHAPE)
    store_random_bank(net, max(m for _, _, m, _ in CASES))  # one bank; a Mixture of m uses its first m masks
    steps = {}
    for name, (g, groups, m, loops) in zip(FIGURES, CASES):
        step = coefficient_step(net, data, m=m, granularity=g, groups=groups)
        steps[name] = step if loops == "native" else _numba(step)
    ratios = side_by_side(dense, steps, repeats=repeats, warmup=2 if quick else 3, clock=clock)
    native = "native" if native_loops() is not None else "numba: no native loops here"
    figures = []
    for name, (g, groups, m, loops) in zip(FIGURES, CASES):
        target = TARGETS.get(m) if g in ("global", "layer") and loops == "native" else None
        rows = f" ({groups} per layer)" if g == "group" else ""
        what = f"coefficient step / dense step, {g} coefficients{rows}, m={m} impressions, fc1024 batch 128"
        what += f" ({native if loops == 'native' else 'numba'} loops)"
        figures.append(ratio_figure(name, what, ratios[name], target, labels=("dense", "coefficients")))
    return figures
