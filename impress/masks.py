"""Binary supermasks: top-k selection with a straight-through gradient, and bit-packing.

`density` is the fraction of weights a mask KEEPS (edge-popup's k); the user-facing knob
`sparsity` (see `impress.config`) is the fraction removed, `1 - density`.
"""

from __future__ import annotations

import torch

__all__ = ["keep_count", "topk_mask", "threshold_mask", "pack_bits", "unpack_bits"]


def keep_count(numel: int, density: float) -> int:
    """Number of weights a layer of `numel` weights keeps at `density` (at least one)."""
    return max(1, min(numel, round(density * numel)))


def _topk_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Float mask with exactly `k` ones at the largest `|scores|`."""
    flat = scores.detach().abs().flatten()
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores)
    # NOTE: a selection, never a full sort: on this CPU a sort of 1M floats is ~7x a topk.
    threshold = flat.kthvalue(n - k).values
    mask = flat > threshold
    if int(mask.sum()) != k:  # ties at the threshold: fall back to exact indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.topk(k, sorted=False).indices] = True
    return mask.view_as(scores).to(scores.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: a fixed binary mask. Backward: the upstream gradient passes unchanged to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Edge-popup mask keeping the top `density` fraction of `|scores|`; the gradient reaches the
    scores through `|scores|` (so it is the upstream gradient times `sign(scores)`)."""
    mask = _topk_select(scores, keep_count(scores.numel(), density))
    return _StraightThrough.apply(scores.abs(), mask)


def threshold_mask(scores: torch.Tensor) -> torch.Tensor:
    """SupSup's "fast" mask `scores >= 0` (density not fixed), straight-through."""
    mask = (scores.detach() >= 0).to(scores.dtype)
    return _StraightThrough.apply(scores, mask)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a binary tensor (any shape) into `ceil(numel / 8)` bytes, most significant bit first."""
    flat = mask.detach().flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8)  # (nbytes, 8)
    return (bits * _BIT_WEIGHTS.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`: a bool tensor of `shape`. `packed` may carry leading dims (..., nbytes)."""
    numel = 1
    for s in shape:
        numel *= s
    lead = packed.shape[:-1]
    bits = packed.unsqueeze(-1) & _BIT_WEIGHTS.to(packed.device)  # (..., nbytes, 8)
    flat = (bits != 0).flatten(start_dim=-2)[..., :numel]
    return flat.reshape(*lead, *shape)
