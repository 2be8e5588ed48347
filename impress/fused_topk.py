"""The top-k masked weight of mask training, one pass over the weights each way on CPU.

In eager torch, `weight * topk_mask(scores, density)` costs about eight memory-bound passes over
the weights per training step: |s|, two compares and two counts to place the cut, the product,
and in the backward grad * w, sign(s) and a product. On CPU the same results come from two
compiled loops (numba), one per direction:

    forward   out = w * (|s| > hi); count the kept; collect the indices with lo < |s| <= hi
              (the band around the predicted cut, a few hundred weights), then rank only the band
              (a stable sort: ties keep the lowest index)
    backward grad_s = grad * w * sign(s)    (the straight-through gradient through |s|)

The loops are memory-bound, so a signed-constant weight (every weight +c or -c, as the backbones
draw it) is read as int8 signs and c. The result equals the eager path's (`weight * topk_mask(...)`,
the path on other devices), value and gradient: the same exact top-k with ties at the cut keeping
the lowest flat indices, whatever the cache holds (a zero gradient may differ in its sign bit).
Measured per 1M weights on 1 thread, with cold caches as inside a training step: 0.65 ms forward
and 0.62 ms backward for a signed-constant weight (0.77 and 0.90 ms reading floats), where the
eager path takes ~2.2 and ~1.2 ms.

NOTE: the loops are single-threaded. Split over 2 Python threads (they release the GIL) they ran
1.3-1.5x faster alone, but right after a 2-thread matrix product a split loop took twice its
lone time (0.8 against 0.4 ms per 1M weights; most likely torch's OpenMP workers still spinning),
and a 2-thread training step gained nothing, so the split is not kept.
"""

from __future__ import annotations

import math
import weakref

import numba
import numpy
import torch

from impress.masks import _REPRESENT, TopKCache, _top_of, keep_count, topk_mask

__all__ = ["fused_applies", "topk_masked_weight"]

_CHUNK = 32  # weights per block of the forward loop: a block is compacted only if it meets the band
_BAND = 512  # weights the band aims to hold when the cut is predicted well
_TRIES = 3  # bands tried (each wider, moved toward the cut) before the full selection


def _compiled(loop):
    """`loop` compiled by numba (releasing the GIL), its machine code cached on disk beside this file
    or in the user's cache, wherever numba finds room to write; on a read-only install without a
    writable home, compiled afresh in each process instead (~0.6 s) rather than failing to import."""
    try:
        return numba.njit(cache=True, nogil=True)(loop)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(loop)


@_compiled
def _mask_and_band(s, w, scale, out, lo, hi, band):  # pragma: no cover - compiled
    """out = (scale * w) * (|s| > hi); the indices with lo < |s| <= hi into `band` (ascending; len(s)
    slots suffice, as a write lands at most at the index being read). Returns (kept, band size)."""
    n = s.size
    kept = 0
    size = 0
    body = n - n % _CHUNK
    for start in range(0, body, _CHUNK):
        near = 0
        for i in range(start, start + _CHUNK):  # vectorised: no branch, no store that depends on i
            a = abs(s[i])
            keep = a > hi
            out[i] = (scale * w[i]) * keep
            kept += numpy.int32(keep)
            near += numpy.int32(a > lo) - numpy.int32(keep)
        if near:  # rare when the band is narrow: compact the block without branching
            for i in range(start, start + _CHUNK):
                a = abs(s[i])
                band[size] = i
                size += (a > lo) & (a <= hi)
    for i in range(body, n):
        a = abs(s[i])
        keep = a > hi
        out[i] = (scale * w[i]) * keep
        kept += numpy.int32(keep)
        band[size] = i
        size += (a > lo) & (a <= hi)
    return kept, size


@_compiled
def _straight_through_abs_grad(grad, w, scale, s, out):  # pragma: no cover - compiled
    """out = (grad * scale) * (w * sign(s)): the gradient of `scale * w * mask(|s|)` w.r.t. s, straight
    through the mask (equal to the eager `(grad * weight) * sign(s)`: only signs and an exact 1 differ)."""
    for i in range(s.size):
        out[i] = (grad[i] * scale) * (w[i] * numpy.sign(s[i]))


@_compiled
def _settle(s, w, scale, out, band, need):  # pragma: no cover - compiled
    """Rank the band by |s| descending, ties by index ascending (a stable sort of an ascending band),
    and keep its `need` first in `out`. Returns (whether any is left out, the largest left out)."""
    neg = numpy.empty(band.size, s.dtype)
    for j in range(band.size):
        neg[j] = -abs(s[band[j]])
    order = numpy.argsort(neg, kind="mergesort")
    for j in range(need):
        i = band[order[j]]
        out[i] = scale * w[i]
    if need < band.size:
        return True, -float(neg[order[need]])
    return False, 0.0


def _select(s: torch.Tensor, w: torch.Tensor, k: int, cache: TopKCache, read: tuple) -> torch.Tensor:
    """w * (exact top-k mask of |s|), flat CPU tensors; `read` is what the loops read for w (see
    `_weight_data`); `cache` places the band (a hint only)."""
    n, exact = s.numel(), _REPRESENT[s.dtype]
    if k >= n:
        return w.clone()
    out = torch.empty_like(w)
    key = (n, k, s.dtype)
    predicted = cache.predict() if cache.key == key else math.nan
    if math.isfinite(predicted):
        t = predicted
        per_unit = cache.per_unit or n / max(2.0 * abs(t), 1e-30)  # magnitudes per unit of |s| near the cut
        half = max(3.0 * cache.error, 0.5 * _BAND / per_unit)
        band = torch.empty(n, dtype=torch.int64)
        arrays = s.numpy(), *read, out.numpy()
        for _ in range(_TRIES):
            lo, hi = exact(t - half), exact(t + half)
            if not lo < hi:  # narrower than the dtype resolves
                lo = numpy.nextafter(hi, exact(-numpy.inf))
            kept, size = _mask_and_band(*arrays, lo, hi, band.numpy())
            width = float(hi) - float(lo)  # in float64: the dtype's own subtraction may overflow
            if size and math.isfinite(width):
                cache.per_unit = per_unit = size / width
            if kept <= k <= kept + size:
                dropped, cut = _settle(*arrays, band.numpy()[:size], k - kept)
                cut = cut if dropped else float(lo)  # all of the band kept: lo separates kept and dropped
                cache.error = max(abs(cut - predicted), 0.5 * cache.error)
                cache.warm += 1
                cache.record(key, cut)
                return out
            # the cut lies outside the band: move toward it by the counts, and widen
            t = float(hi) + (kept - k) / per_unit if kept > k else float(lo) - (k - kept - size) / per_unit
            half *= 4
    mask, cut = _top_of(s.abs(), k)
    cache.full += 1
    cache.record(key, float(cut))
    return torch.mul(w, mask, out=out)


# id(weight) -> (weakref to it, its identity, (signs, c) or None); an entry goes with its weight
# (NOTE: not a WeakKeyDictionary: it compares keys with ==, which tensors answer elementwise)
_SIGNS: dict[int, tuple] = {}


def _weight_data(weight: torch.Tensor) -> tuple[numpy.ndarray, numpy.floating]:
    """(w, scale) the loops read for `weight`, scale * w being the weight. A signed constant (every
    weight +c or -c, as the backbones draw them) is read as its signs, int8, and c: a quarter of the
    bytes (the loops are memory-bound: ~25% faster here). Else the weights themselves and 1. Which
    one is checked once per weight tensor, storage and version (a frozen weight: once)."""
    flat, one = weight.detach().reshape(-1), _REPRESENT[weight.dtype]
    identity = (weight._version, weight.data_ptr(), weight.dtype)
    known = _SIGNS.get(id(weight))
    if known is None or known[0]() is not weight:  # a weight not seen before (its id may be reused)
        weakref.finalize(weight, _SIGNS.pop, id(weight), None)
        known = None
    if known is None or known[1] != identity:
        mags = flat.abs()
        c = mags.max() if flat.numel() else torch.zeros(())
        signed = bool(c > 0) and bool((mags == c).all())
        known = weakref.ref(weight), identity, ((flat > 0).to(torch.int8) * 2 - 1, one(c)) if signed else None
        _SIGNS[id(weight)] = known
    if known[2] is None:
        return flat.contiguous().numpy(), one(1)
    signs, c = known[2]
    return signs.numpy(), c


class _TopKMaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, weight: torch.Tensor, k: int, cache: TopKCache, read: tuple) -> torch.Tensor:
        scores = scores.detach().contiguous()
        ctx.save_for_backward(scores)
        ctx.read = read
        flat = weight.detach().reshape(-1).contiguous()
        return _select(scores.view(-1), flat, k, cache, read).view(weight.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (scores,) = ctx.saved_tensors
        out = torch.empty_like(scores)
        g, s, o = (t.reshape(-1).numpy() for t in (grad.contiguous(), scores, out))
        _straight_through_abs_grad(g, *ctx.read, s, o)
        return out, None, None, None, None


def fused_applies(scores: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `topk_masked_weight` takes the fused path: CPU float32/64 scores, a frozen weight of
    the same dtype (a trained weight needs its own gradient, which only the eager path gives)."""
    return (
        scores.device.type == "cpu"
        and weight.device.type == "cpu"
        and scores.dtype in _REPRESENT
        and weight.dtype == scores.dtype
        and not weight.requires_grad
    )


def topk_masked_weight(
    scores: torch.Tensor, weight: torch.Tensor, density: float, *, cache: TopKCache | None = None, fused: bool = True
) -> torch.Tensor:
    """`weight * topk_mask(scores, density, cache=cache)`, value and gradient, fused on CPU unless
    `fused` is False (the eager path, kept for comparison and for other devices)."""
    if not (fused and fused_applies(scores, weight)):
        return weight * topk_mask(scores, density, cache=cache)
    k = keep_count(scores.numel(), density)
    return _TopKMaskedWeight.apply(scores, weight, k, cache or TopKCache(), _weight_data(weight))
