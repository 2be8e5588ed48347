"""The precision a task's coefficients are stored at (`alpha_bits`), and what it costs in bits.

A task's coefficients are rows of m: one per layer, per block of output units or per unit, as the
layout makes them (`CoeffLayout`); the flat vector is those rows end to end.

    alpha_bits  stored as                                      bits per task
    32          float32                                        32 * size
    16          float16 (10-bit mantissa; bfloat16's 7 bits    16 * size
                would lose three of them for range not needed)
    8           int8 per coefficient, symmetric, with one      8 * size + 16 * rows
                float16 scale per row of m (max |row| / 127)

Training always produces float32 coefficients; what is evaluated, inferred over and checkpointed
is what `store` returns, read back by `load`: the accuracy reported is the stored one.
"""

from __future__ import annotations

import torch

__all__ = ["SCALE_BITS", "stored_bits", "store", "load", "round_trip"]

SCALE_BITS = 16  # one float16 scale per row at 8 bits
_INT8_MAX = 127  # symmetric: -127..127, so a row's largest magnitude is stored exactly up to its scale


def stored_bits(size: int, m: int, alpha_bits: int) -> int:
    """Bits of one task's `size` coefficients (rows of m) stored at `alpha_bits`."""
    if size % m:
        raise ValueError(f"{size} coefficients are not rows of {m}")
    if alpha_bits == 8:
        return 8 * size + SCALE_BITS * (size // m)
    if alpha_bits in (16, 32):
        return alpha_bits * size
    raise ValueError(f"alpha_bits must be 32, 16 or 8, got {alpha_bits}")


def store(coeffs: torch.Tensor, m: int, alpha_bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Coefficients (..., size) float32 as stored: (values, scales). At 8 bits the values are int8
    and the scales (..., size / m) float16; otherwise the values are float32 or float16, no scales."""
    if alpha_bits == 32:
        return coeffs.float(), None
    if alpha_bits == 16:
        return coeffs.half(), None
    if alpha_bits != 8:
        raise ValueError(f"alpha_bits must be 32, 16 or 8, got {alpha_bits}")
    rows = coeffs.float().unflatten(-1, (-1, m))  # (..., rows, m)
    scales = (rows.abs().amax(dim=-1) / _INT8_MAX).half()
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row (or underflow)
    values = (rows / scales.float().unsqueeze(-1)).round().clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return values.flatten(-2), scales


def load(values: torch.Tensor, scales: torch.Tensor | None, m: int) -> torch.Tensor:
    """The float32 coefficients (..., size) that stored `values` (and `scales`) stand for."""
    if scales is None:
        return values.float()
    return (values.float().unflatten(-1, (-1, m)) * scales.float().unsqueeze(-1)).flatten(-2)


def round_trip(coeffs: torch.Tensor, m: int, alpha_bits: int) -> torch.Tensor:
    """What float32 coefficients become once stored and read back."""
    return load(*store(coeffs, m, alpha_bits), m)
