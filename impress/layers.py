"""Masked layers: frozen signed-constant random weights whose effective mask comes from a source.

One class per torch op (`MaskedLinear`, `MaskedConv2d`) plus the affine-free, per-task
`TaskBatchNorm2d`. What a layer computes is set by a *mask source*, a small strategy object:

    TopK(density)   edge-popup: keep the top `density` fraction of |scores| (straight-through);
                    on CPU the masked weight is fused (`impress.fused_topk`), same result
    Threshold()     SupSup's fast mask: scores >= 0 (straight-through)
    Stored(i)       the i-th stored binary mask of the layer's bank
    Mixture(alpha)  sum_i alpha[r, i] * bank[i] over the first m stored masks, alpha (m,) or (R, m):
                    row r for the r-th of R blocks of output units; on CPU the masked weight is
                    fused (`impress.fused_mixture`), same result up to float rounding
    None            dense: the plain weight (used by the `finetune` baseline)

The only door that changes a model's sources is the `task_view` context manager.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy
import torch
import torch.nn.functional as F
from torch import nn

from impress.fused_mixture import bank_words, mixture_masked_weight
from impress.fused_mixture import fused_applies as mixture_fused_applies
from impress.fused_topk import topk_masked_weight
from impress.masks import TopKCache, pack_bits, threshold_mask, topk_mask, unpack_bits

__all__ = [
    "GrowingBuffers",
    "MaskedLinear",
    "MaskedConv2d",
    "TaskBatchNorm2d",
    "TopK",
    "Threshold",
    "Stored",
    "Mixture",
    "masked_layers",
    "task_norms",
    "task_view",
    "unit_blocks",
]


# ---------------------------------------------------------------------------------------------
# Mask sources


@dataclass(frozen=True)
class TopK:
    density: float
    fused: bool = True  # False: the eager torch path on CPU too (for comparison; same result)

    def __call__(self, layer: _MaskedWeight) -> torch.Tensor:
        return topk_mask(layer.scores, self.density, cache=layer.topk_cache)


@dataclass(frozen=True)
class Threshold:
    def __call__(self, layer: _MaskedWeight) -> torch.Tensor:
        return threshold_mask(layer.scores)


@dataclass(frozen=True)
class Stored:
    index: int

    def __call__(self, layer: _MaskedWeight) -> torch.Tensor:
        return layer.bank_float(self.index + 1)[self.index]


def unit_blocks(units: int, rows: int) -> list[int]:
    """How many output units each of `rows` coefficient rows covers: contiguous blocks, the first
    `units % rows` one unit larger (as `torch.tensor_split`); rows beyond `units` are clamped to it."""
    rows = min(rows, units)
    return [units // rows + (1 if r < units % rows else 0) for r in range(rows)]


@functools.cache
def _row_bounds(units: int, rows: int, unit_size: int) -> numpy.ndarray:
    """The flat weight offsets where each of `rows` coefficient rows begins, and the end: (rows + 1,)."""
    bounds = numpy.cumsum([0, *unit_blocks(units, rows)]) * unit_size
    bounds.flags.writeable = False
    return bounds


@dataclass(frozen=True, eq=False)
class Mixture:
    """Real-valued combination of the first m stored masks; `alpha` is (m,) for the whole layer or
    (R, m) for R contiguous blocks of output units (`unit_blocks`; R = out: one row per unit)."""

    alpha: torch.Tensor

    def rows(self, layer: _MaskedWeight) -> torch.Tensor:
        """alpha as (R, m), checked against the layer: 1 <= R <= out units, m <= masks stored."""
        alpha = self.alpha if self.alpha.dim() == 2 else self.alpha.unsqueeze(0)
        (rows, m), out = alpha.shape, layer.weight.shape[0]
        if m > len(layer.bank):
            raise IndexError(f"the layer's bank holds {len(layer.bank)} masks; {m} were asked for")
        if not 1 <= rows <= out:
            raise ValueError(f"alpha has {rows} rows; between 1 and the layer's {out} output units expected")
        return alpha

    def __call__(self, layer: _MaskedWeight) -> torch.Tensor:
        alpha = self.rows(layer)
        (rows, m), out = alpha.shape, layer.weight.shape[0]
        per_unit = rows > 1
        if per_unit and rows < out:  # each unit its block's row
            alpha = alpha.repeat_interleave(torch.tensor(unit_blocks(out, rows), device=alpha.device), dim=0)
        alpha = alpha if per_unit else alpha[0]
        width = 8 if per_unit else 16  # impressions per code
        codes = layer.bank_codes(per_unit=per_unit)[: -(-m // width)]  # (groups, numel)
        a = F.pad(alpha, (0, len(codes) * width - m)).unflatten(-1, (-1, width))  # masks past m weigh 0
        bits = _BYTE_BITS.to(device=alpha.device, dtype=alpha.dtype)  # (256, 8)
        if per_unit:  # a table per group and output unit: (groups, out * 256)
            tables = torch.einsum("ogj,bj->gob", a, bits).flatten(1)
        else:  # a table per group of 16 from two of 8: entry hi * 256 + lo = table_hi[hi] + table_lo[lo]
            lo, hi = a[:, :8] @ bits.T, a[:, 8:] @ bits.T  # (groups, 256)
            tables = (hi.unsqueeze(2) + lo.unsqueeze(1)).flatten(1)  # (groups, 65536)
        return _GatherSum.apply(tables, codes).view(layer.weight.shape)

    def masked_weight(self, layer: _MaskedWeight) -> torch.Tensor:
        """`layer.weight * self(layer)`, fused on CPU (`impress.fused_mixture`) when it applies."""
        alpha = self.rows(layer)
        if not mixture_fused_applies(alpha, layer.weight):
            return layer.weight * self(layer)
        out = layer.weight.shape[0]
        bounds = _row_bounds(out, len(alpha), layer.weight[0].numel())
        return mixture_masked_weight(alpha, layer.weight, layer.bank_words(), bounds)


# NOTE: `sum_i alpha_i * M_i` over float masks reads m floats per weight, forward and backward (m=32
# on FC-1024-1024's 1.86M weights: 238 MB each way, ~17 ms per 1M weights here). Instead each weight
# keeps, per group of 16 impressions, the 16 bits it has in them (its code, int32); a group's 65536
# partial sums of alpha (its table) are gathered by code, and a table's gradient is the upstream
# gradient summed per code (~4 ms per 1M weights at m=32). Per-unit alphas use groups of 8 and a
# 256-entry table per unit; R rows of blocks of units repeat each row over its block's units. Equal
# up to float summation order, and no float bank is made. This is the path of other devices, of
# float64, and of the mask alone (`Mixture(alpha)(layer)`). A CPU coefficient step's masked weight
# is fused instead (`impress.fused_mixture`: one pass each way, AVX-512 table lookups where the
# machine builds them, else numba's): the step on FC-1024-1024, batch 128, went from 2.22x / 5.79x
# the dense step at m = 32 / 128 (global, this path) to 1.43x / 2.66x with numba's loops and
# 1.13x / 1.48x with the native ones (`python -m bench --only mixture`, n = 30 medians).
_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).float()  # (256, 8): bit j of byte b


class _GatherSum(torch.autograd.Function):
    """`sum_g tables[g][codes[g]]` (numel,); the gradient of each table is summed per code."""

    @staticmethod
    def forward(ctx, tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(codes)
        ctx.table_size = tables.shape[1]
        out = tables[0].index_select(0, codes[0])  # (numel,)
        for g in range(1, len(codes)):
            out.add_(tables[g].index_select(0, codes[g]))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (codes,) = ctx.saved_tensors
        tables = grad.new_zeros(len(codes), ctx.table_size)
        for g in range(len(codes)):
            tables[g].index_add_(0, codes[g], grad)
        return tables, None


MaskSource = TopK | Threshold | Stored | Mixture | None


# ---------------------------------------------------------------------------------------------
# Layers


class GrowingBuffers:
    """Mixin for modules whose per-task buffers (named in `growing_buffers`) grow with tasks:
    loading a state dict first gives each such buffer the stored shape, then copies into it."""

    growing_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.growing_buffers:
            if (stored := state_dict.get(prefix + name)) is not None:
                setattr(self, name, getattr(self, name).new_empty(stored.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _MaskedWeight(GrowingBuffers):
    """State shared by masked layers. Declared in `_init_mask_state`:

    weight  frozen signed-constant weights, regenerated from `init_weight(seed)`; not trained
    scores  (weight shape) real scores of the mask being learned now
    bank    (n_masks, ceil(numel / 8)) uint8: every stored binary mask, bit-packed

    Not state (never saved): `topk_cache`, the warm start of `TopK` selections on `scores` (a
    speed hint only), and three views of the bank derived on demand: its float masks (`bank_float`),
    its per-weight codes for the torch mixture (`bank_codes`) and its per-weight words for the fused
    one (`bank_words`).
    """

    growing_buffers = ("bank",)
    weight: nn.Parameter
    scores: nn.Parameter
    bank: torch.Tensor
    source: MaskSource

    def _init_mask_state(self) -> None:
        self.weight.requires_grad_(False)
        self.scores = nn.Parameter(torch.zeros_like(self.weight))
        nbytes = math.ceil(self.weight.numel() / 8)
        self.register_buffer("bank", torch.zeros(0, nbytes, dtype=torch.uint8, device=self.weight.device))
        self.source = None
        self.topk_cache = TopKCache()
        # float copy of the bank and the bank tensor it was made from (every change replaces the tensor)
        self._bank_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._codes_cache: dict[bool, tuple[torch.Tensor, int, torch.Tensor]] = {}  # per_unit: (bank, version, codes)
        self._words_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (bank, version, words)

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    def init_weight(self, generator: torch.Generator) -> None:
        """Signed Kaiming constant: +-sqrt(2 / fan_in) with random signs (no zeros)."""
        signs = torch.randint(0, 2, self.weight.shape, generator=generator).float() * 2 - 1
        with torch.no_grad():
            self.weight.copy_(signs * math.sqrt(2.0 / self.fan_in))

    def reset_scores(self, generator: torch.Generator) -> None:
        """Fresh scores, uniform in +-1/sqrt(fan_in) (edge-popup's Kaiming-uniform with a=sqrt(5))."""
        bound = 1.0 / math.sqrt(self.fan_in)
        fresh = torch.rand(self.weight.shape, generator=generator) * (2 * bound) - bound
        with torch.no_grad():
            self.scores.copy_(fresh)

    def store_mask(self, mask: torch.Tensor) -> int:
        """Append a binary mask to the bank; returns its index."""
        packed = pack_bits(mask.to(self.bank.device) != 0).unsqueeze(0)
        self.bank = torch.cat([self.bank, packed])
        return self.bank.shape[0] - 1

    def stored_mask(self, index: int) -> torch.Tensor:
        """The index-th stored mask as a bool tensor of the weight's shape."""
        return unpack_bits(self.bank[index], self.weight.shape)

    def bank_float(self, rows: int) -> torch.Tensor:
        """The bank as float masks (n_masks, *weight.shape), cached; must hold at least `rows`."""
        if rows > self.bank.shape[0]:
            raise IndexError(f"the layer's bank holds {self.bank.shape[0]} masks; {rows} were asked for")
        if self._bank_cache is None or self._bank_cache[0] is not self.bank:
            self._bank_cache = self.bank, unpack_bits(self.bank, self.weight.shape).to(self.weight.dtype)
        return self._bank_cache[1]

    def bank_codes(self, *, per_unit: bool = False) -> torch.Tensor:
        """Each weight's bits in the stored masks, as the codes a `Mixture` gathers by: (ceil(n_masks
        / 16), numel) int32, mask 16g + j being bit j of code g; with `per_unit`, groups of 8 plus
        256 x the weight's output unit. Cached until the bank changes (replaced or written to)."""
        cached = self._codes_cache.get(per_unit)
        if cached is not None and cached[0] is self.bank and cached[1] == self.bank._version:
            return cached[2]
        numel, out, width = self.weight.numel(), self.weight.shape[0], 8 if per_unit else 16
        codes = torch.zeros(-(-len(self.bank) // width), numel, dtype=torch.int32, device=self.bank.device)
        for i in range(len(self.bank)):  # one mask at a time: never all unpacked at once
            codes[i // width] |= unpack_bits(self.bank[i], (numel,)).int() << (i % width)
        if per_unit:
            codes += torch.arange(out, dtype=torch.int32, device=codes.device).repeat_interleave(numel // out) * 256
        self._codes_cache[per_unit] = self.bank, self.bank._version, codes
        return codes

    def bank_words(self) -> torch.Tensor:
        """Each weight's bits in the stored masks as the fused mixture reads them (`impress.
        fused_mixture.bank_words`, CPU). Cached until the bank changes (replaced or written to)."""
        cached = self._words_cache
        if cached is not None and cached[0] is self.bank and cached[1] == self.bank._version:
            return cached[2]
        words = bank_words(self.bank, self.weight.numel())
        self._words_cache = self.bank, self.bank._version, words
        return words

    def current_mask(self) -> torch.Tensor | None:
        """The mask the layer computes with now (None: dense)."""
        return None if self.source is None else self.source(self)

    def masked_weight(self) -> torch.Tensor:
        if isinstance(self.source, TopK):  # mask training's hot path: one pass each way on CPU
            density, fused = self.source.density, self.source.fused
            return topk_masked_weight(self.scores, self.weight, density, cache=self.topk_cache, fused=fused)
        if isinstance(self.source, Mixture):  # coefficient training's hot path
            return self.source.masked_weight(self)
        mask = self.current_mask()
        return self.weight if mask is None else self.weight * mask


class MaskedLinear(_MaskedWeight, nn.Linear):
    """Bias-free linear layer over a frozen random weight and a mask from `source`."""

    def __init__(self, in_features: int, out_features: int, *, device=None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=False, device=device)
        self._init_mask_state()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight())


class MaskedConv2d(_MaskedWeight, nn.Conv2d):
    """Bias-free 2-d convolution over a frozen random weight and a mask from `source`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0, device=None
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False, device=device
        )
        self._init_mask_state()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), None)


class TaskBatchNorm2d(GrowingBuffers, nn.BatchNorm2d):
    """Affine-free BatchNorm whose running statistics are per-task state.

    task_mean, task_var  (n_tasks, C): statistics stored for each finished task
    While a task trains, the inherited `running_mean/var` collect its statistics; `store_stats`
    appends them. `task` (set by `task_view`) selects the stored row used in eval mode. With
    `per_task=False` the layer always normalises with the batch's own statistics.
    """

    growing_buffers = ("task_mean", "task_var")

    def __init__(self, num_features: int, *, per_task: bool = True, device=None) -> None:
        super().__init__(num_features, affine=False, track_running_stats=per_task, device=device)
        self.per_task = per_task
        self.register_buffer("task_mean", torch.zeros(0, num_features, device=device))
        self.register_buffer("task_var", torch.zeros(0, num_features, device=device))
        self.task: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_task or self.training or self.task is None:
            return super().forward(x)
        if self.task >= self.task_mean.shape[0]:
            return super().forward(x)  # evaluating the task being learned: its running stats
        return F.batch_norm(x, self.task_mean[self.task], self.task_var[self.task], training=False, eps=self.eps)

    def store_stats(self) -> int:
        """Append the running statistics as the next task's row; returns its index."""
        self.task_mean = torch.cat([self.task_mean, self.running_mean.unsqueeze(0)])
        self.task_var = torch.cat([self.task_var, self.running_var.unsqueeze(0)])
        return self.task_mean.shape[0] - 1


# ---------------------------------------------------------------------------------------------
# Model-level access


def masked_layers(model: nn.Module) -> list[MaskedLinear | MaskedConv2d]:
    """The model's masked layers in definition order."""
    return [m for m in model.modules() if isinstance(m, _MaskedWeight)]


def task_norms(model: nn.Module) -> list[TaskBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]


@contextmanager
def task_view(
    model: nn.Module, masks: MaskSource | Sequence[MaskSource], *, bn_task: int | None = None
) -> Iterator[nn.Module]:
    """Within the block, the model's masked layers compute with `masks` (one source for all
    layers, or one per masked layer) and its per-task BatchNorms use task `bn_task`'s statistics."""
    layers, norms = masked_layers(model), task_norms(model)
    sources = list(masks) if isinstance(masks, Sequence) else [masks] * len(layers)
    if len(sources) != len(layers):
        raise ValueError(f"{len(sources)} mask sources given for {len(layers)} masked layers")
    saved = [(layer.source) for layer in layers], [norm.task for norm in norms]
    for layer, source in zip(layers, sources):
        layer.source = source
    for norm in norms:
        norm.task = bn_task
    try:
        yield model
    finally:
        for layer, source in zip(layers, saved[0]):
            layer.source = source
        for norm, task in zip(norms, saved[1]):
            norm.task = task
