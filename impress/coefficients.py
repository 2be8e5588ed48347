"""Mixing coefficients: how one task's flat coefficient vector maps onto the masked layers.

granularity   per task                        per layer l
global        m floats                        the same (m,) for every layer
layer         L * m floats                    its own (m,)
group         sum_l min(G, out_l) * m floats  (G_l, m): one combination per block of output units
channel       sum_l out_l * m floats          (out_l, m): one combination per output unit

Groups are contiguous blocks of a layer's output units (conv layers: output channels), sized by
`impress.layers.unit_blocks`: the first out % G blocks hold one unit more. A layer with fewer
units than G gets one row per unit, so `group` spans `layer` (G = 1) to `channel` (G >= every
layer's units).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from impress.layers import Mixture, unit_blocks

__all__ = ["CoeffLayout"]


class CoeffLayout:
    """Splits a flat coefficient vector into per-layer `Mixture` sources."""

    def __init__(
        self, out_features: Sequence[int], m: int, granularity: str, *, groups: int = 1, param: str = "linear"
    ) -> None:
        if granularity not in ("global", "layer", "group", "channel"):
            raise ValueError(f"granularity must be global, layer, group or channel, got {granularity!r}")
        if groups < 1:
            raise ValueError(f"groups must be at least 1, got {groups}")
        if param not in ("linear", "softmax"):
            raise ValueError(f"param must be linear or softmax, got {param!r}")
        self.m, self.granularity, self.param = m, granularity, param
        self.out_features = list(out_features)
        rows = {
            "global": [1],
            "layer": [1] * len(out_features),
            "group": [len(unit_blocks(out, groups)) for out in self.out_features],
            "channel": self.out_features,
        }[granularity]
        self.rows = rows  # coefficient rows per layer (global: one row shared by all layers)
        self.size = sum(rows) * m

    def initial(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The raw parameter vector whose coefficients are all 1/m."""
        if self.param == "softmax":
            return torch.zeros(self.size, device=device)
        return torch.full((self.size,), 1.0 / self.m, device=device)

    def coefficients(self, raw: torch.Tensor) -> torch.Tensor:
        """Effective coefficients (size,) from the raw parameter (softmax over each row of m)."""
        if self.param == "softmax":
            return torch.softmax(raw.view(-1, self.m), dim=-1).flatten()
        return raw

    def blocks(self, coeffs: torch.Tensor) -> list[torch.Tensor]:
        """Per masked layer its block of coefficients (..., size) -> (..., rows, m): one row (global,
        layer), one per block of units (group) or per unit (channel). Global's single block is every
        layer's."""
        if self.granularity == "global":
            return [coeffs.unsqueeze(-2)] * len(self.out_features)
        parts = torch.split(coeffs, [r * self.m for r in self.rows], dim=-1)
        return [p.unflatten(-1, (r, self.m)) for p, r in zip(parts, self.rows)]

    def sources(self, coeffs: torch.Tensor) -> list[Mixture]:
        """One `Mixture` per masked layer from effective coefficients (size,)."""
        if self.granularity == "global":
            return [Mixture(coeffs)] * len(self.out_features)
        return [Mixture(b) for b in self.blocks(coeffs)]
