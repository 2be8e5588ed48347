"""BatchE (BatchEnsemble as a continual learner): one weight every task shares, and per task and
layer a rank-one fast weight. Task t computes with W * (r_t s_t^T): r_t scales each output unit
(channel), s_t each input unit (channel) of the layer.

The shared weight is the random signed-constant backbone (`shared_weight: random`), or that
backbone trained densely on the first task together with its fast weights and then frozen
(`first_task`, BatchEnsemble's own continual setting; its 32-bit weights are a one-time cost).
Every task's fast weights start at 1 (the shared weight itself) and are trained with `lr`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from impress.layers import GrowingBuffers, task_view
from impress.methods.base import Method, Progress, calibrate_norms, train_epochs
from impress.overhead import FLOAT_BITS, SEED_BITS, Overhead, bn_bits_per_task, masked_weights
from impress.seeding import generator
from impress.streams import Task

if TYPE_CHECKING:
    from impress.config import Config

__all__ = ["BatchE", "RankOne"]


@dataclass(frozen=True, eq=False)
class RankOne:
    """Mask source: the outer product of `r` (out,) and `s` (in,), broadcast over a conv kernel."""

    r: torch.Tensor
    s: torch.Tensor

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        kernel = (1,) * (layer.weight.dim() - 2)
        return self.r.view(-1, 1, *kernel) * self.s.view(1, -1, *kernel)


class BatchE(GrowingBuffers, Method):
    """Per-task state:

    fast  (tasks, size) float32: task t's fast weights, per masked layer its r (out) then its s (in)
    The shared weight is the backbone's own `weight` (checkpointed when trained on the first task).
    """

    label = "BatchE"
    doc = "a shared weight and a rank-one fast weight per task and layer"
    uses = ("shared_weight",)
    examples = ({}, {"shared_weight": "random"}, {"backbone": "convnet"})
    growing_buffers = ("fast",)

    @classmethod
    def dedicated_tasks(cls, cfg: Config, num_tasks: int) -> int:
        """The first task trains the shared weight (`first_task`); every other task only its fast weights."""
        return min(int(cfg.shared_weight == "first_task"), num_tasks)

    @classmethod
    def variant(cls, row: Mapping[str, Any]) -> str:
        shared = row.get("shared_weight")
        return f"{cls.label} {shared}" if isinstance(shared, str) else cls.label

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__(cfg, net)
        self.stores_weights = cfg.shared_weight == "first_task"
        self.sizes = [size for layer in self.layers for size in layer.weight.shape[:2]]  # out, in per layer
        self.register_buffer("fast", torch.zeros(0, sum(self.sizes), device=self.layers[0].weight.device))

    @property
    def tasks_learned(self) -> int:
        return self.fast.shape[0]

    def _sources(self, fast: torch.Tensor) -> list[RankOne]:
        parts = torch.split(fast, self.sizes)
        return [RankOne(r, s) for r, s in zip(parts[0::2], parts[1::2])]

    def learn(self, task: Task, progress: Progress) -> None:
        fast = nn.Parameter(torch.ones(sum(self.sizes), device=self.fast.device))
        shared: Sequence[nn.Parameter] = []
        if task.index == 0 and self.stores_weights:
            shared = [layer.weight for layer in self.layers]
        for w in shared:
            w.requires_grad_(True)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with task_view(self.net, self._sources(fast)):
                return self.net(x)

        self.net.train()
        try:
            train_epochs(
                forward,
                [*shared, fast],
                task,
                self.cfg,
                lr=self.cfg.lr,
                epochs=self.cfg.epochs,
                g=generator("order", self.cfg.seed, task.index, 0),
                progress=progress,
                phase="shared weight and fast weights" if shared else "fast weights",
            )
        finally:
            for w in shared:
                w.requires_grad_(False)
        self.fast = torch.cat([self.fast, fast.detach().unsqueeze(0)])
        with task_view(self.net, self._sources(self.fast[-1])):
            calibrate_norms(self.net, task, self.cfg)

    def view(self, t: int) -> AbstractContextManager:
        return task_view(self.net, self._sources(self.fast[t]), bn_task=t)

    def bits(self) -> Overhead:
        masked, bn = masked_weights(self.net), bn_bits_per_task(self.net)
        fast = sum(self.sizes) * FLOAT_BITS
        shared = masked * FLOAT_BITS if self.stores_weights else 0
        return Overhead("batche", masked, masked, bn, fast, fast + bn, SEED_BITS + shared, 0)
