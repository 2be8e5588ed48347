"""Finetune: the dense backbone's weights trained on each task in turn. Nothing is stored per task
(but BN statistics), so earlier tasks are forgotten: the lower bound of continual learning."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import nn

from impress.layers import task_view
from impress.methods.base import Method, Progress, calibrate_norms, train_epochs
from impress.overhead import FLOAT_BITS, SEED_BITS, Overhead, bn_bits_per_task, masked_weights
from impress.seeding import generator
from impress.streams import Task

if TYPE_CHECKING:
    from impress.config import Config

__all__ = ["Finetune"]


class Finetune(Method):
    label = "Finetune"
    doc = "dense weights, retrained on every task"
    stores_weights = True
    forgets = True

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__(cfg, net)
        for layer in self.layers:
            layer.weight.requires_grad_(True)
        self.register_buffer("tasks_done", torch.zeros((), dtype=torch.long))

    @property
    def tasks_learned(self) -> int:
        return int(self.tasks_done)

    def learn(self, task: Task, progress: Progress) -> None:
        self.net.train()
        with task_view(self.net, None):
            train_epochs(
                self.net,
                [layer.weight for layer in self.layers],
                task,
                self.cfg,
                lr=self.cfg.lr,
                epochs=self.cfg.epochs,
                g=generator("order", self.cfg.seed, task.index, 0),
                progress=progress,
                phase="weights",
            )
            calibrate_norms(self.net, task, self.cfg)
        self.tasks_done += 1

    def view(self, t: int) -> AbstractContextManager:
        return task_view(self.net, None, bn_task=t)

    def bits(self) -> Overhead:
        """The trained dense weights are stored once (32 bits each); nothing but BN grows per task."""
        masked, bn = masked_weights(self.net), bn_bits_per_task(self.net)
        return Overhead("finetune", masked, masked, bn, 0, bn, SEED_BITS + masked * FLOAT_BITS, 0)
