"""Exact parameter overhead in bits: what a method must store per task and once.

SupSup stores one bit per masked weight per task; ImpressLearn stores 32-bit coefficients per task
plus a one-time bank of m masks (a `random` bank is rebuilt from its seed, so it costs a seed).
Per-task BatchNorm statistics (two float32 vectors per BN layer) count per task where used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from impress.config import Config, dedicated_tasks
from impress.layers import masked_layers, task_norms

__all__ = ["Overhead", "overhead", "SEED_BITS", "FLOAT_BITS"]

SEED_BITS = 64
FLOAT_BITS = 32


@dataclass(frozen=True)
class Overhead:
    method: str
    masked_weights: int  # weights under a mask (= bits of one supermask)
    mask_bits: int  # bits of one dedicated supermask
    bn_bits_per_task: int  # per-task BatchNorm statistics
    coeff_bits_per_task: int  # mixing coefficients of one task (impresslearn)
    per_task_bits: int  # steady-state cost of one more task
    one_time_bits: int  # backbone seed + bank (or its seed)
    dedicated_tasks: int  # tasks solved by a stored mask (their masks are the bank)

    def total_bits(self, num_tasks: int) -> int:
        """Everything stored after `num_tasks` tasks."""
        if self.method == "supsup":
            return self.one_time_bits + num_tasks * self.per_task_bits
        if self.method == "finetune":
            return self.one_time_bits + num_tasks * self.bn_bits_per_task
        dedicated = min(num_tasks, self.dedicated_tasks)
        return (
            self.one_time_bits + num_tasks * self.bn_bits_per_task + (num_tasks - dedicated) * self.coeff_bits_per_task
        )

    def supsup_total_bits(self, num_tasks: int) -> int:
        """What SupSup would store for the same backbone after `num_tasks` tasks."""
        return SEED_BITS + num_tasks * (self.mask_bits + self.bn_bits_per_task)

    def break_even_tasks(self) -> int | None:
        """Smallest task count T at which this method stores fewer bits than SupSup (None: never)."""
        if self.method == "supsup":
            return None
        start = self.dedicated_tasks + 1
        for t in range(1, start + 1):
            if self.total_bits(t) < self.supsup_total_bits(t):
                return t
        # past `start` both totals are linear in T: solve for the crossing
        gap = self.total_bits(start) - self.supsup_total_bits(start)
        slope = (self.total_bits(start + 1) - self.supsup_total_bits(start + 1)) - gap
        if slope >= 0:
            return None
        return start + gap // -slope + 1

    def as_dict(self, num_tasks: int) -> dict[str, int | str | None]:
        return {
            **asdict(self),
            "total_bits": self.total_bits(num_tasks),
            "supsup_total_bits": self.supsup_total_bits(num_tasks),
            "break_even_tasks": self.break_even_tasks(),
        }


def overhead(cfg: Config, net: nn.Module, coeff_size: int = 0) -> Overhead:
    """Exact bit counts for `cfg.method` on the backbone `net` (coefficients per task: `coeff_size`)."""
    masked = sum(layer.weight.numel() for layer in masked_layers(net))
    bn = sum(2 * n.num_features * FLOAT_BITS for n in task_norms(net) if n.per_task)
    coeff_bits = coeff_size * FLOAT_BITS
    if cfg.method == "supsup":
        return Overhead("supsup", masked, masked, bn, 0, masked + bn, SEED_BITS, 0)
    if cfg.method == "finetune":
        # the trained dense weights are stored once (32 bits each); nothing else but BN grows per task
        dense = sum(layer.weight.numel() for layer in masked_layers(net)) * FLOAT_BITS
        return Overhead("finetune", masked, masked, bn, 0, bn, SEED_BITS + dense, 0)
    bank = SEED_BITS if cfg.impressions == "random" else cfg.m * masked
    dedicated = dedicated_tasks(cfg.method, cfg.impressions, cfg.m)
    return Overhead("impresslearn", masked, masked, bn, coeff_bits, coeff_bits + bn, SEED_BITS + bank, dedicated)
