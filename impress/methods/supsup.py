"""SupSup: one dedicated supermask per task; bank row t of every masked layer solves task t."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from impress.basis import TaskBasis
from impress.layers import Mixture, Stored, task_view
from impress.methods.base import MaskLearning, Progress
from impress.overhead import SEED_BITS, Overhead, bn_bits_per_task, masked_weights
from impress.streams import Task

if TYPE_CHECKING:
    from impress.config import Config

__all__ = ["SupSup"]


class SupSup(MaskLearning):
    label = "SupSup"
    doc = "a supermask per task"
    examples = ({}, {"backbone": "convnet"})
    infers = True

    @classmethod
    def dedicated_tasks(cls, cfg: Config, num_tasks: int) -> int:
        return num_tasks

    def learn(self, task: Task, progress: Progress) -> None:
        row = self._learn_mask(task, progress)
        assert row == task.index, f"bank row {row} for task {task.index}: tasks must be learned in order"
        self._finish_task(task, task_view(self.net, Stored(row)))

    @property
    def tasks_learned(self) -> int:
        return self.masks_learned()

    def view(self, t: int) -> AbstractContextManager:
        return task_view(self.net, Stored(t), bn_task=t)

    def bits(self) -> Overhead:
        masked, bn = masked_weights(self.net), bn_bits_per_task(self.net)
        return Overhead("supsup", masked, masked, bn, masked, masked + bn, SEED_BITS, 0)

    def task_basis(self, *, unit_gain: bool = True) -> TaskBasis:
        """T tasks over the T bank masks: the identity. NOTE: never rescaled (its masks share one
        density, and its rule stays SupSup's)."""
        n_layers, T = len(self.layers), self.tasks_learned
        eye = torch.eye(T, device=self.layers[0].bank.device)
        return TaskBasis(
            eye, lambda c: [Mixture(c)] * n_layers, lambda c: [c.unsqueeze(-2)] * n_layers, self.net, unit_gain
        )
