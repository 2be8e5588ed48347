"""Binary supermasks: top-k selection with a straight-through gradient, and bit-packing.

`density` is the fraction of weights a mask KEEPS (edge-popup's k); the user-facing knob
`sparsity` (see `impress.config`) is the fraction removed, `1 - density`.

The top-k mask is exact: it keeps exactly `keep_count(numel, density)` weights, the largest `|scores|`,
and among scores tied at the cut it keeps the lowest flat indices (the order of a stable descending
sort). Selecting it is the hot path of mask training, so it is done in two ways with the same result:

    full selection   `kthvalue` over all magnitudes (~10 ms per 1M floats on one core here)
    warm selection   from a `TopKCache` of the last steps' cuts: count the magnitudes above a
                     predicted threshold, then rank only the few in a narrow band beside it (~2-3 ms
                     per 1M floats: five passes, `abs`, then twice a compare and a per-row count);
                     a band that misses is settled and the next one tried, then the full selection,
                     so the result never depends on the cache
"""

from __future__ import annotations

import numpy
import torch

__all__ = ["keep_count", "TopKCache", "topk_mask", "threshold_mask", "pack_bits", "unpack_bits"]


def keep_count(numel: int, density: float) -> int:
    """Number of weights a layer of `numel` weights keeps at `density` (at least one)."""
    return max(1, min(numel, round(density * numel)))


# ---------------------------------------------------------------------------------------------
# Exact top-k selection


class TopKCache:
    """Warm-start hint for the top-k selection of one score tensor (e.g. one layer's scores).

    It remembers the cut of the last two selections (a threshold that reproduces the mask: the
    largest dropped magnitude) and how densely magnitudes lie near it; the next selection starts
    from the extrapolated cut. A hint only: a stale, foreign or empty cache costs time, never
    exactness. Not persistent: no state dict holds it.
    """

    __slots__ = ("key", "cut", "last_cut", "per_unit", "error", "warm", "full")

    def __init__(self) -> None:
        self.key: tuple | None = None  # (numel, k, dtype) the thresholds belong to
        self.cut: float | None = None  # the last selection's cut
        self.last_cut: float | None = None  # ... and of the one before
        self.per_unit = 0.0  # magnitudes per unit of |score| near the cut (a band width guide)
        self.error = 0.0  # how far the predicted cut has lately been from the real one
        self.warm = 0  # selections done from the cache
        self.full = 0  # selections that needed a full `kthvalue`

    def predict(self) -> float:
        if self.last_cut is None:
            return self.cut
        return self.cut + (self.cut - self.last_cut)  # thresholds drift smoothly while training

    def record(self, key: tuple, cut: float) -> None:
        self.last_cut = self.cut if self.key == key else None
        self.key, self.cut = key, cut


# NOTE: below this size a full selection is as fast as the bookkeeping of a warm one.
_WARM_MIN_NUMEL = 1 << 14
_WARM_MAX_BANDS = 4  # band passes before giving up to the full selection
_ROW = 64  # magnitudes per row of the block view that locates a band without a full `nonzero`
# counts are sums of 0/1 floats: exact while every partial sum is an integer the dtype represents
_EXACT_COUNT = {torch.float32: 1 << 24, torch.float64: 1 << 53}
_REPRESENT = {torch.float32: numpy.float32, torch.float64: numpy.float64}  # round a threshold to the dtype


def _top_of(vals: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float mask of the `keep` largest of 1-D `vals` (ties: lowest index first) and the largest
    value left out (None if all are kept)."""
    b = vals.numel()
    if keep >= b:
        return torch.ones_like(vals), None
    cut = vals.kthvalue(b - keep).values  # the (keep+1)-th largest: a selection, never a full sort
    top = torch.gt(vals, cut, out=torch.empty_like(vals))
    short = keep - int(torch.count_nonzero(top))
    if short:  # the keep-th and (keep+1)-th largest are tied: keep the first `short` of the tied values
        tied = torch.nonzero(vals == cut).squeeze(1)
        top[tied[:short]] = 1
    return top, cut


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """Ones of a 0/1 float mask per row of `_ROW` in its block view, the tail past the last full row
    counted as one more row: (ceil(numel / _ROW),)."""
    rows = mask.numel() // _ROW
    counts = mask[: rows * _ROW].view(rows, _ROW).sum(dim=1)
    return torch.cat([counts, mask[rows * _ROW :].sum().view(1)]) if rows * _ROW < mask.numel() else counts


def _band(
    inner: torch.Tensor, outer: torch.Tensor, inner_counts: torch.Tensor, outer_counts: torch.Tensor
) -> torch.Tensor:
    """Ascending flat indices where two nested 0/1 masks differ, given their `_row_counts`: `nonzero`
    runs only over the rows whose counts differ (~1 ms saved per 1M floats), not the whole tensor."""
    rows_hit = torch.nonzero(inner_counts != outer_counts).squeeze(1)  # (h,)
    rows = inner.numel() // _ROW
    tail = len(rows_hit) > 0 and int(rows_hit[-1]) == rows  # the short row past the last full one
    body = rows_hit[:-1] if tail else rows_hit

    def pick(m: torch.Tensor) -> torch.Tensor:
        return m[: rows * _ROW].view(rows, _ROW).index_select(0, body)  # (h, _ROW)

    r, c = torch.nonzero(pick(inner) != pick(outer), as_tuple=True)
    idx = body[r] * _ROW + c
    if tail:
        idx = torch.cat([idx, torch.nonzero(inner[rows * _ROW :] != outer[rows * _ROW :]).squeeze(1) + rows * _ROW])
    return idx


def _warm_select(mags: torch.Tensor, k: int, cache: TopKCache) -> tuple[torch.Tensor, float] | None:
    """The top-k mask of 1-D `mags` and its largest dropped value, ranking only magnitudes near a
    predicted threshold; None if the bands keep missing (the caller then selects in full)."""
    n, exact = mags.numel(), _REPRESENT[mags.dtype]  # compare only with thresholds the dtype holds
    t = float(exact(cache.predict()))
    mask = torch.gt(mags, t, out=torch.empty_like(mags))  # (n,) 1.0 where |score| > t
    counts = _row_counts(mask)
    above = int(counts.sum())
    per_unit = cache.per_unit or n / max(2.0 * abs(t), 1e-30)  # first guess: spread over [0, 2t]
    for _ in range(_WARM_MAX_BANDS):
        if above == k:  # exactly k above t: nothing straddles t, the mask is the top-k
            return mask, t
        drop, need = above > k, abs(above - k)  # magnitudes to drop from / add to the mask
        if need > n // 8:  # a band this wide costs as much as a full selection
            return None
        width = (1.5 * need + 64) / per_unit
        edge = float(exact(t + width if drop else t - width))
        if edge == t:  # narrower than the dtype resolves: the next representable value
            edge = float(numpy.nextafter(exact(t), exact(numpy.inf if drop else -numpy.inf)))
        edge_mask = torch.gt(mags, edge, out=torch.empty_like(mags))
        edge_counts = _row_counts(edge_mask)
        # the band: (t, edge] when dropping, (edge, t] when adding
        idx = _band(*((edge_mask, mask, edge_counts, counts) if drop else (mask, edge_mask, counts, edge_counts)))
        cache.per_unit = per_unit = max(len(idx), 1) / abs(edge - t)
        if len(idx) < need:  # the cut lies beyond the band: go on from its edge
            mask, counts, above, t = edge_mask, edge_counts, int(edge_counts.sum()), edge
            continue
        # the band holds the ranks around k: rank it by (|score| descending, index ascending)
        vals = mags[idx]
        if drop:
            top, cut = _top_of(vals, len(idx) - need)
            mask[idx[top == 0]] = 0.0
            return mask, float(cut)
        top, cut = _top_of(vals, need)
        mask[idx[top == 1]] = 1.0
        return mask, (edge if cut is None else float(cut))
    return None


def _topk_select(mags: torch.Tensor, k: int, cache: TopKCache | None = None) -> torch.Tensor:
    """Mask (dtype and shape of `mags`) with exactly `k` ones at the largest `mags`, ties by index."""
    n = mags.numel()
    if k >= n:
        return torch.ones_like(mags)
    flat = mags.flatten()
    key = (n, k, flat.dtype)
    result = None
    if cache is not None and cache.key == key and _WARM_MIN_NUMEL <= n <= _EXACT_COUNT.get(flat.dtype, 0):
        result = _warm_select(flat, k, cache)
    if cache is not None:
        cache.warm += result is not None
        cache.full += result is None
    if result is None:
        mask, cut = _top_of(flat, k)
        result = mask, float(cut)
    mask, cut = result
    if cache is not None:
        cache.record(key, cut)
    return mask.view_as(mags)


class _StraightThrough(torch.autograd.Function):
    """Forward: a fixed binary mask. Backward: the upstream gradient passes unchanged to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _StraightThroughAbs(torch.autograd.Function):
    """Forward: a fixed binary mask. Backward: as if the mask were `|scores|`, the upstream gradient
    times `sign(scores)` (one fused pass instead of an `abs` node and a straight-through node)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scores)
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scores,) = ctx.saved_tensors
        return scores.sign().mul_(grad), None


def topk_mask(scores: torch.Tensor, density: float, *, cache: TopKCache | None = None) -> torch.Tensor:
    """Edge-popup mask keeping the top `density` fraction of `|scores|`; the gradient reaches the
    scores through `|scores|` (so it is the upstream gradient times `sign(scores)`).

    Exactly `keep_count(numel, density)` ones; ties at the cut keep the lowest flat indices. `cache`
    (one per score tensor) makes repeated selections on slowly changing scores fast; same result."""
    mask = _topk_select(scores.detach().abs(), keep_count(scores.numel(), density), cache)
    return _StraightThroughAbs.apply(scores, mask)


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
