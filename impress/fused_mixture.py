"""The masked weight of a coefficient step, `weight * sum_i alpha[row, i] * mask_i`, fused on CPU.

ImpressLearn trains only the coefficients alpha (R, m) that mix the first m stored binary masks;
row r covers a contiguous block of output units (`impress.layers.unit_blocks`), hence a contiguous
range of the flat weight. Each weight's bits in the bank are read as bytes (`bank_words`: 32 masks
per uint32, word-major), and per row each byte position g has a table of the 256 partial sums of
the 8 coefficients it covers (the method of four Russians):

    forward   out[w] = weight[w] * sum_g table[row(w)][g][byte_g(w)]       ceil(m/8) lookups
    backward  hist[g][byte_g(w)] += grad[w] * weight[w]   over a row's weights, then
              dalpha[row, 8g + j] = sum of hist[g][b] over the bytes b with bit j set

Weights are frozen, so no weight gradient is made. Masks past m weigh 0 (alpha is padded with
zeros to whole bytes); a signed-constant weight is read as int8 signs and its constant, as in
`impress.fused_topk`. The loops walk a block of weights word by word, so a block's sums (forward)
or gradients (backward) stay in L1 while the words stream by.

The forward's tables hold integers: each alpha rounded to a unit of sum|alpha_row| / 2^52 and
summed in int64, so its lookups are summed exactly and on the integer ports (x86 has two float
adders for 16 lookups per weight at m = 128: that was the limit). Its error, below 2^-52 of
sum|alpha_row|, is smaller than the float32 sum's. The backward sums in float32; it equals the
explicit float sum up to summation order.

NOTE: measured per 1.86M weights (FC-1024-1024's three layers), 1 thread, hot caches, the minimum
of 9 runs on this 2-core VM: forward / backward 1.8 / 1.8 ms at m = 8, 2.6 / 3.6 ms at m = 32 and
8.0 / 11.9 ms at m = 128 (16 lookups per weight); per-unit rows add ~1.5 us (tables) and ~1.2 us
(folds) per row, 11.7 / 14.4 ms at m = 128. The backward is bound by its scattered stores, about
one per cycle (30M of them alone: 11.0 ms). Measured and dropped, at m = 128: float tables in the
forward (9.8 ms); all of a weight's words in one loop, the first design (11.2 / 15.2 ms); two
histograms per table against store-to-load stalls (16.4 ms); int64 histograms (16% slower); and
the backward transposed, per 8 weights a table of their 256 gradient sums and a lookup per mask
(building those tables alone took 11.8 ms). Blocks of 1024 weights make the forward 4% (m = 128)
to 15% (m = 32) faster than blocks of 512 or 256; the backward runs alike at 256 to 2048. A row of a
few weights (a 3x3 conv over 3 channels: 27) pays mostly for its tables, 4-bit tables would be
cheaper there, but such layers hold few weights: 0.35 ms per step at m = 128 per unit for the 64
units of a 3 -> 64 conv, whose own forward on a batch of 128 32x32 images takes 38 ms.
"""

from __future__ import annotations

import numba
import numpy
import torch

from impress.fused_topk import _compiled, _weight_data
from impress.masks import unpack_bits

__all__ = ["bank_words", "fused_applies", "mixture_masked_weight"]

_WORD = 32  # masks per word of `bank_words`
_BLOCK = 1024  # weights per block of the loops
_FIXED = 2.0**52  # the forward's table unit is sum|alpha_row| / _FIXED (see `_fill_tables`)


def bank_words(bank: torch.Tensor, numel: int) -> torch.Tensor:
    """Each weight's bits in the packed bank (n_masks, ceil(numel / 8)) as (ceil(n_masks / 32), numel)
    int32 words (read as uint32): mask 32k + j is bit j of word k. Word-major, so a mixture of the
    first m masks reads only ceil(m / 32) words per weight whatever the bank holds."""
    words = torch.zeros(-(-len(bank) // _WORD), numel, dtype=torch.int32)
    for i in range(len(bank)):  # one mask at a time: never all unpacked at once
        words[i // _WORD] |= unpack_bits(bank[i], (numel,)).int() << (i % _WORD)
    return words


@_compiled
def _fill_tables(alpha, tables):  # pragma: no cover - compiled
    """tables[g][b] = sum of alpha[8g + j] over the bits j set in b, in int64 units of
    sum|alpha| / 2^52 (each alpha rounded to a unit); returns the unit. alpha (8G,), tables (G, 256)."""
    total = 0.0
    for j in range(alpha.size):
        total += abs(numpy.float64(alpha[j]))
    unit = total / _FIXED if total > 0.0 else 1.0
    for g in range(tables.shape[0]):
        t = tables[g]
        t[0] = 0
        for j in range(8):
            a = numpy.int64(numpy.round(alpha[8 * g + j] / unit))
            half = 1 << j
            for b in range(half):  # the entries whose top bit is j: those below, plus alpha_j
                t[half + b] = t[b] + a
    return unit


@numba.njit(inline="always")
def _lookup(t0, t1, t2, t3, x, one):  # pragma: no cover - compiled
    """The tables' entries for the four bytes of word x (only its lowest if `one`)."""
    if one:
        return t0[x & 255]
    return (t0[x & 255] + t1[(x >> 8) & 255]) + (t2[(x >> 16) & 255] + t3[x >> 24])


@_compiled
def _forward(words, groups, bounds, alpha, w, scale, out):  # pragma: no cover - compiled
    """out[i] = scale * w[i] * sum_g tables_row(i)[g][byte g of i's bits]; alpha (R, 8 * groups),
    row r covering bounds[r]:bounds[r + 1]."""
    n_words = -(-groups // 4)
    tables = numpy.zeros((4 * n_words, 256), numpy.int64)  # bytes past the last group look up zeros
    acc = numpy.empty(_BLOCK, numpy.int64)
    for r in range(bounds.size - 1):
        unit = _fill_tables(alpha[r], tables[:groups])
        for start in range(bounds[r], bounds[r + 1], _BLOCK):
            n = min(_BLOCK, bounds[r + 1] - start)
            for k in range(n_words):
                x_ = words[k, start : start + n]
                t0, t1, t2, t3 = tables[4 * k], tables[4 * k + 1], tables[4 * k + 2], tables[4 * k + 3]
                one = groups - 4 * k == 1  # a word holding one group (m = 8 of 128: one lookup, not four)
                if k == 0:
                    for i in range(n):
                        acc[i] = _lookup(t0, t1, t2, t3, x_[i], one)
                else:
                    for i in range(n):
                        acc[i] += _lookup(t0, t1, t2, t3, x_[i], one)
            w_, out_ = w[start : start + n], out[start : start + n]
            for i in range(n):
                out_[i] = (scale * unit) * w_[i] * acc[i]


@numba.njit(inline="always")
def _scatter(h0, h1, h2, h3, x, v, one):  # pragma: no cover - compiled
    """Add v to the histograms' bins of the four bytes of word x (only its lowest if `one`)."""
    h0[x & 255] += v
    if not one:
        h1[(x >> 8) & 255] += v
        h2[(x >> 16) & 255] += v
        h3[x >> 24] += v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _fold(hist, scale, out):  # pragma: no cover - compiled
    """out[j] += scale * (sum of hist[b] over the b with bit j set); consumes hist (256,). The upper
    half of the bins has the top bit and folds onto the lower half: 510 adds, reassociated."""
    for j in range(7, -1, -1):
        half = 1 << j
        s = numpy.float32(0.0)
        for b in range(half):
            v = hist[half + b]
            s += v
            hist[b] += v
        out[j] += scale * s


@_compiled
def _backward(words, groups, bounds, grad, w, scale, dalpha):  # pragma: no cover - compiled
    """dalpha[r, 8g + j] += scale * (sum of grad[i] * w[i] over row r's weights i with mask 8g + j)."""
    n_words = -(-groups // 4)
    hist = numpy.empty((4 * n_words, 256), numpy.float32)
    gw = numpy.empty(_BLOCK, numpy.float32)
    for r in range(bounds.size - 1):
        hist[:] = 0.0
        for start in range(bounds[r], bounds[r + 1], _BLOCK):
            n = min(_BLOCK, bounds[r + 1] - start)
            grad_, w_ = grad[start : start + n], w[start : start + n]
            for i in range(n):
                gw[i] = grad_[i] * w_[i]
            for k in range(n_words):
                x_ = words[k, start : start + n]
                h0, h1, h2, h3 = hist[4 * k], hist[4 * k + 1], hist[4 * k + 2], hist[4 * k + 3]
                one = groups - 4 * k == 1
                for i in range(n):
                    _scatter(h0, h1, h2, h3, x_[i], gw[i], one)
        for g in range(groups):
            _fold(hist[g], scale, dalpha[r, 8 * g : 8 * g + 8])


class _MixtureMaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: torch.Tensor, weight: torch.Tensor, words: torch.Tensor, bounds, read: tuple):
        rows, m = alpha.shape
        groups = -(-m // 8)
        padded = alpha.detach().new_zeros(rows, 8 * groups)
        padded[:, :m] = alpha.detach()  # masks past m weigh 0
        codes = words[: -(-m // _WORD)].numpy().view(numpy.uint32)  # (ceil(m / 32), numel)
        out = torch.empty(weight.shape)
        _forward(codes, groups, bounds, padded.numpy(), *read, out.view(-1).numpy())
        ctx.codes, ctx.groups, ctx.bounds, ctx.read, ctx.m = codes, groups, bounds, read, m
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dalpha = torch.zeros(len(ctx.bounds) - 1, 8 * ctx.groups)
        _backward(ctx.codes, ctx.groups, ctx.bounds, grad.contiguous().view(-1).numpy(), *ctx.read, dalpha.numpy())
        return dalpha[:, : ctx.m], None, None, None, None


def fused_applies(alpha: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `mixture_masked_weight` applies: finite CPU float32 coefficients (the forward's tables
    are fixed-point) and a frozen CPU float32 weight (a trained one needs its own gradient, which
    only the torch path gives)."""
    return (
        alpha.device.type == "cpu"
        and weight.device.type == "cpu"
        and alpha.dtype == torch.float32
        and weight.dtype == torch.float32
        and not weight.requires_grad
        and bool(torch.isfinite(alpha).all())
    )


def mixture_masked_weight(
    alpha: torch.Tensor, weight: torch.Tensor, words: torch.Tensor, bounds: numpy.ndarray
) -> torch.Tensor:
    """`weight * sum_i alpha[r, i] * mask_i` with r the row of each weight, value and gradient w.r.t.
    alpha (R, m): row r covers the flat weights bounds[r]:bounds[r + 1] (int64, R + 1 of them);
    `words` is `bank_words(bank, weight.numel())`."""
    return _MixtureMaskedWeight.apply(alpha, weight, words, bounds, _weight_data(weight))
