"""Exact parameter overhead in bits: what a method must store per task and once.

Each method counts its own (`Method.bits`) into an `Overhead`. SupSup stores one bit per masked
weight per task; ImpressLearn stores coefficients per task (at 32, 16 or 8 bits each, with a scale
per row at 8: `impress.precision`) plus a one-time bank of m masks (a `random` bank is rebuilt
from its seed, so it costs a seed); BatchE stores two 32-bit vectors per layer and task. Per-task
BatchNorm statistics (two float32 vectors per BN layer) count per task where used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from impress.layers import masked_layers, task_norms

__all__ = ["Overhead", "SEED_BITS", "FLOAT_BITS", "masked_weights", "bn_bits_per_task"]

SEED_BITS = 64
FLOAT_BITS = 32


def masked_weights(net: nn.Module) -> int:
    """Weights under a mask: the bits of one supermask."""
    return sum(layer.weight.numel() for layer in masked_layers(net))


def bn_bits_per_task(net: nn.Module) -> int:
    """Per-task BatchNorm statistics: a float32 mean and variance per channel."""
    return sum(2 * n.num_features * FLOAT_BITS for n in task_norms(net) if n.per_task)


@dataclass(frozen=True)
class Overhead:
    method: str
    masked_weights: int  # weights under a mask (= bits of one supermask)
    mask_bits: int  # bits of one dedicated supermask
    bn_bits_per_task: int  # per-task BatchNorm statistics
    params_bits_per_task: int  # the method's own per-task parameters (a mask, coefficients, fast weights)
    per_task_bits: int  # steady-state cost of one more task: its parameters and BN statistics
    one_time_bits: int  # backbone seed + what every task shares (a bank, its seed, trained weights)
    bank_tasks: int  # the first tasks whose own state is part of the one-time bits (they store BN only)

    def total_bits(self, num_tasks: int) -> int:
        """Everything stored after `num_tasks` tasks."""
        in_bank = min(num_tasks, self.bank_tasks)
        return self.one_time_bits + num_tasks * self.per_task_bits - in_bank * self.params_bits_per_task

    def supsup_total_bits(self, num_tasks: int) -> int:
        """What SupSup would store for the same backbone after `num_tasks` tasks."""
        return SEED_BITS + num_tasks * (self.mask_bits + self.bn_bits_per_task)

    def break_even_tasks(self) -> int | None:
        """Smallest task count T at which this method stores fewer bits than SupSup (None: never)."""
        start = self.bank_tasks + 1
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
