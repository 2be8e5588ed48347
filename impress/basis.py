"""The stored tasks of a method as rows of coefficients over one set of masks: what task-identity
inference superposes (`impress.inference`). A method that can be inferred over builds its own
(`Method.task_basis`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from impress.layers import MaskSource, masked_layers, unit_blocks

__all__ = ["TaskBasis"]


@dataclass(eq=False)
class TaskBasis:
    """The stored tasks as rows of coefficients over one set of k masks.

    coeffs   (T, size): task t computes with `sources(coeffs[t])`
    sources  coefficients (size,) -> one mask source per masked layer
    blocks   coefficients (..., size) -> per masked layer its block (..., rows, k): rows = 1, one per
             block of output units (group granularity) or one per unit (channel)
    unit_gain  combinations are compared at the logit scale of binary masks (`gain`)
    """

    coeffs: torch.Tensor
    sources: Callable[[torch.Tensor], Sequence[MaskSource]]
    blocks: Callable[[torch.Tensor], Sequence[torch.Tensor]]
    net: nn.Module
    unit_gain: bool = False

    @property
    def num_tasks(self) -> int:
        return self.coeffs.shape[0]

    def superpose(self, beta: torch.Tensor) -> Sequence[MaskSource]:
        """The superposition sum_t beta[t] * task t, collapsed to one combination."""
        return self.sources(beta @ self.coeffs)  # (T,) @ (T, size) -> (size,)

    @cached_property
    def _grams(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer counted by `gain`: the masks' Gram matrices (rows, k, k) and a binary mask's squared norm."""
        layers = masked_layers(self.net)
        shapes = [b.shape[-2:] for b in self.blocks(self.coeffs[:1])]
        if any(isinstance(n, nn.modules.batchnorm._BatchNorm) for n in self.net.modules()):
            layers, shapes = layers[-1:], shapes[-1:]  # behind a BatchNorm a layer's scale is lost
        out = []
        for layer, (rows, k) in zip(layers, shapes):
            units = layer.weight.shape[0]
            bank = layer.bank_float(k)[:k].reshape(k, units, -1)  # (k, units, fan_in)
            per_unit = torch.einsum("iua,jua->uij", bank, bank)  # (units, k, k)
            row_of_unit = torch.arange(rows, device=bank.device).repeat_interleave(
                torch.tensor(unit_blocks(units, rows), device=bank.device)
            )
            gram = per_unit.new_zeros(rows, k, k).index_add_(0, row_of_unit, per_unit)  # summed per row's block
            out.append((gram, gram.diagonal(dim1=1, dim2=2).sum(dim=0).mean()))
        return out

    def gain(self, c: torch.Tensor) -> torch.Tensor:
        """(...,) how much larger than with binary masks the logits under coefficients c (..., size) are.

        A bias-free ReLU net is positively homogeneous: scaling every coefficient by s scales each
        masked layer's output by s and the logits by s^L; no prediction changes, only the entropy.
        Learned coefficient rows reach 2-3x a binary mask's norm per layer (measured), and such a
        task looks confident on any data and wins every entropy search. Per layer the combined mask's
        Frobenius norm is sqrt(a^T Gram a), against a bank mask's; the gain is the geometric mean of
        the ratios over the layers (nets with BatchNorm: the head only), so c / gain(c) sits at the
        scale of a binary mask (a dedicated task: gain 1 exactly, for masks of one density)."""
        blocks = self.blocks(c)
        blocks = blocks[-len(self._grams) :]
        logs = [
            0.5 * (torch.einsum("...ri,rij,...rj->...", a, gram, a).clamp_min(1e-12) / ones).log()
            for a, (gram, ones) in zip(blocks, self._grams)
        ]
        return torch.stack(logs).mean(dim=0).exp()

    def unit(self, c: torch.Tensor) -> torch.Tensor:
        """Coefficients (..., size) rescaled to gain 1 (unchanged without `unit_gain`)."""
        return c / self.gain(c).unsqueeze(-1) if self.unit_gain else c
