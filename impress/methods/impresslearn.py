"""ImpressLearn: a bank of m impressions (binary masks); a task is a real-valued combination of them.

The first `n_dedicated` tasks are solved by their own stored mask (heterogeneous: the m
impressions are those masks; homogeneous: m masks learned on task 0; random: none, the bank is m
random masks drawn from the seed). Every later task stores only its coefficients, at
`alpha_bits` (`impress.precision`): it is evaluated, inferred over and checkpointed as stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from impress.basis import TaskBasis
from impress.coefficients import CoeffLayout
from impress.layers import GrowingBuffers, Stored, task_view
from impress.masks import keep_count
from impress.methods.base import MaskLearning, Progress, train_epochs
from impress.overhead import SEED_BITS, Overhead, bn_bits_per_task, masked_weights
from impress.precision import load, store, stored_bits
from impress.seeding import generator
from impress.streams import Task

if TYPE_CHECKING:
    from impress.config import Config

__all__ = ["ImpressLearn"]

# tasks that keep a dedicated mask, by the source of the impressions
_DEDICATED = {"heterogeneous": lambda m: m, "homogeneous": lambda m: 1, "random": lambda m: 0}


class ImpressLearn(GrowingBuffers, MaskLearning):
    """Per-task state, besides the masks in every layer's bank:

    coeffs        (tasks_with_coefficients, layout.size): effective mixing coefficients as stored
                  (float32, float16 or int8 by `alpha_bits`); task t's row is t - n_dedicated
    coeff_scales  (tasks_with_coefficients, layout rows) float16: at 8 bits only, a scale per row
    """

    label = "ImpressLearn"
    doc = "masks mixed by per-task coefficients"
    uses = (
        "impressions",
        "m",
        "granularity",
        "groups",
        "alpha_bits",
        "alpha_param",
        "alpha_lr",
        "alpha_epochs",
        "infer_gain",
    )
    examples = (
        {"m": 2, "granularity": "channel"},
        {"m": 2, "granularity": "group", "groups": 3, "alpha_bits": 8},
        {"m": 2, "granularity": "layer", "alpha_bits": 16},
        {"m": 2, "impressions": "homogeneous"},
        {"m": 3, "impressions": "random", "granularity": "layer"},
        {"m": 2, "granularity": "global", "backbone": "convnet"},
    )
    infers = True
    growing_buffers = ("coeffs", "coeff_scales")

    @classmethod
    def config_error(cls, cfg: Config) -> str | None:
        if cfg.impressions == "heterogeneous" and cfg.m > cfg.num_tasks:
            return (
                f"m: heterogeneous impressions are the first m tasks' masks, so m ({cfg.m}) "
                f"must not exceed num_tasks ({cfg.num_tasks})"
            )
        return None

    @classmethod
    def dedicated_tasks(cls, cfg: Config, num_tasks: int) -> int:
        return min(_DEDICATED[cfg.impressions](cfg.m), num_tasks)

    @classmethod
    def ignores(cls, row: Mapping[str, Any]) -> tuple[str, ...]:
        return () if row.get("granularity") == "group" else ("groups",)

    @classmethod
    def variant(cls, row: Mapping[str, Any]) -> str:
        impressions = row.get("impressions")
        return f"{cls.label} {impressions}" if isinstance(impressions, str) else cls.label

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__(cfg, net)
        self.layout = CoeffLayout(
            [layer.weight.shape[0] for layer in self.layers],
            cfg.m,
            cfg.granularity,
            groups=cfg.groups,
            param=cfg.alpha_param,
        )
        self.n_dedicated = _DEDICATED[cfg.impressions](cfg.m)
        device = self.layers[0].weight.device
        values, scales = store(torch.zeros(0, self.layout.size, device=device), cfg.m, cfg.alpha_bits)
        self.register_buffer("coeffs", values)
        if scales is not None:  # NOTE: registered only at 8 bits, so older checkpoints still load
            self.register_buffer("coeff_scales", scales)
        if cfg.impressions == "random":
            self._draw_random_bank()

    def _draw_random_bank(self) -> None:
        """m random masks at exactly the configured density, from the seed (so they cost a seed)."""
        for i, layer in enumerate(self.layers):
            n = layer.weight.numel()
            k = keep_count(n, self.cfg.density)
            for r in range(self.cfg.m):
                keep = torch.randperm(n, generator=generator("random_bank", self.cfg.seed, r, i))[:k]
                mask = torch.zeros(n, dtype=torch.bool)
                mask[keep] = True
                layer.store_mask(mask.view(layer.weight.shape))

    @property
    def tasks_learned(self) -> int:
        if self.cfg.impressions == "random":
            return self.coeffs.shape[0]
        return min(self.masks_learned(), self.n_dedicated) + self.coeffs.shape[0]

    def learn(self, task: Task, progress: Progress) -> None:
        t, cfg = task.index, self.cfg
        if t < self.n_dedicated:
            if cfg.impressions == "homogeneous":  # m masks on task 0, differing in score init and order
                for r in range(cfg.m):
                    self._learn_mask(task, progress, replica=r, phase=f"impression {r + 1}/{cfg.m}")
            else:
                self._learn_mask(task, progress)
            self._finish_task(task, task_view(self.net, Stored(t)))
            return
        raw = nn.Parameter(self.layout.initial(self.coeffs.device))

        def forward(x: torch.Tensor) -> torch.Tensor:
            with task_view(self.net, self.layout.sources(self.layout.coefficients(raw))):
                return self.net(x)

        self.net.train()
        train_epochs(
            forward,
            [raw],
            task,
            cfg,
            lr=cfg.alpha_lr,
            epochs=cfg.alpha_epochs or cfg.epochs,
            g=generator("order", cfg.seed, t, 0),
            progress=progress,
            phase="coefficients",
        )
        values, scales = store(self.layout.coefficients(raw).detach().unsqueeze(0), cfg.m, cfg.alpha_bits)
        self.coeffs = torch.cat([self.coeffs, values])
        if scales is not None:
            self.coeff_scales = torch.cat([self.coeff_scales, scales])
        self._finish_task(task, task_view(self.net, self.layout.sources(self._stored(-1))))

    def _stored(self, row: int | slice) -> torch.Tensor:
        """Coefficient row(s) float32, as stored and read back."""
        scales = getattr(self, "coeff_scales", None)
        return load(self.coeffs[row], None if scales is None else scales[row], self.cfg.m)

    @property
    def alphas(self) -> torch.Tensor:
        """(tasks_with_coefficients, layout.size) float32: the stored coefficients, read back."""
        return self._stored(slice(None))

    def view(self, t: int) -> AbstractContextManager:
        if t < self.n_dedicated:
            return task_view(self.net, Stored(t), bn_task=t)
        return task_view(self.net, self.layout.sources(self._stored(t - self.n_dedicated)), bn_task=t)

    def bits(self) -> Overhead:
        masked, bn = masked_weights(self.net), bn_bits_per_task(self.net)
        coeff_bits = stored_bits(self.layout.size, self.cfg.m, self.cfg.alpha_bits)
        bank = SEED_BITS if self.cfg.impressions == "random" else self.cfg.m * masked
        return Overhead(
            "impresslearn", masked, masked, bn, coeff_bits, coeff_bits + bn, SEED_BITS + bank, self.n_dedicated
        )

    def task_basis(self, *, unit_gain: bool = True) -> TaskBasis:
        """T tasks over the m impressions: a dedicated task (solved by bank mask t) is the one-hot
        e_t in every coefficient row of the layout, a later task its stored row. With `unit_gain`
        every row is rescaled to the logit scale of a binary mask (`TaskBasis.gain`)."""
        layout, m = self.layout, self.cfg.m
        dedicated = min(self.n_dedicated, self.tasks_learned)
        one_hot = torch.eye(m, device=self.coeffs.device)[:dedicated].repeat(1, sum(layout.rows))
        basis = TaskBasis(torch.cat([one_hot, self.alphas]), layout.sources, layout.blocks, self.net, unit_gain)
        basis.coeffs = basis.unit(basis.coeffs)
        return basis
