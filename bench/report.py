"""Figures and the table that prints them against their targets."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bench.timing import Ratio

__all__ = ["Figure", "ratio_figure", "format_table"]

_COMPARE = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Figure:
    """One measured quantity. `target` is (comparison, bound), e.g. ("<=", 1.5); None: reported only."""

    name: str  # stable key, e.g. "topk/mlp"
    what: str  # what the value is, in words
    value: float
    unit: str  # "x" (a ratio), "bit", "B"
    target: tuple[str, float] | None = None
    spread: tuple[float, float] | None = None  # interquartile range of a ratio
    n: int | None = None  # repeats behind the value
    detail: str = ""  # context: absolute times, sizes

    @property
    def met(self) -> bool | None:
        return None if self.target is None else _COMPARE[self.target[0]](self.value, self.target[1])

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def ratio_figure(name: str, what: str, ratio: Ratio, target: tuple[str, float] | None, labels=("dense", "step")):
    """A timing ratio as a figure, with both median times as its detail."""
    base, cand = labels
    return Figure(
        name,
        what,
        ratio.median,
        "x",
        target,
        (ratio.q1, ratio.q3),
        ratio.n,
        f"{base} {ratio.base_ms:.1f} ms, {cand} {ratio.cand_ms:.1f} ms",
    )


def _number(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "bit":
        return f"{value:.4f} bit"
    return f"{value:.3g} {unit}"


def format_table(figures: Iterable[Figure]) -> str:
    rows = [("figure", "value", "spread (IQR)", "n", "target", "status", "what / detail")]
    for f in figures:
        spread = "" if f.spread is None else f"{f.spread[0]:.2f}-{f.spread[1]:.2f}"
        target = "" if f.target is None else f"{f.target[0]} {_number(f.target[1], f.unit)}"
        status = {True: "met", False: "MISSED", None: "-"}[f.met]
        rows.append((f.name, _number(f.value, f.unit), spread, "" if f.n is None else str(f.n), target, status, f.what))
        if f.detail:
            rows.append(("", "", "", "", "", "", f"  {f.detail}"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]
    return "\n".join(line.rstrip() for line in lines)
