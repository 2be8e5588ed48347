"""One training step of each kind, on a backbone built as the library builds it.

    dense         the backbone's weights trained (no mask): the reference every ratio divides by
    topk          edge-popup scores trained through an exact top-k mask (SupSup's per-task learning)
    coefficients  ImpressLearn: only the mixing coefficients of m stored impressions are trained

Each builder returns a closure that runs forward, backward and an Adam step (the trainer's, from
`impress.methods.OPTIMIZERS`, the same for every step) on the next batch of a small fixed pool (so
no step pays for data), and leaves the backbone in the state it trains in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from impress.backbones import build_backbone
from impress.coefficients import CoeffLayout
from impress.config import Config
from impress.layers import TopK, masked_layers, task_view
from impress.methods import OPTIMIZERS
from impress.seeding import generator

__all__ = ["Batches", "backbone", "batches", "dense_step", "topk_step", "coefficient_step", "store_random_bank"]

Batches = list[tuple[torch.Tensor, torch.Tensor]]
Step = Callable[[], None]


def backbone(name: str, in_shape: Sequence[int], *, widths: Sequence[int] = (1024, 1024), seed: int = 0) -> nn.Module:
    """The backbone `name` with 10 classes, fresh scores, in training mode."""
    net = build_backbone(name, in_shape=in_shape, num_classes=10, seed=seed, widths=widths)
    for i, layer in enumerate(masked_layers(net)):
        layer.reset_scores(generator("bench_scores", seed, i))
    return net.train()


def batches(in_shape: Sequence[int], batch_size: int, *, count: int = 4, seed: int = 0) -> Batches:
    """`count` random batches (x (B, *in_shape), y (B,)) of 10 classes."""
    g = generator("bench_batches", seed)
    return [
        (torch.randn(batch_size, *in_shape, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
        for _ in range(count)
    ]


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS["adam"](params, Config(), lr)


def _step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer, data: Batches) -> Step:
    state = {"i": 0}

    def step() -> None:
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def dense_step(net: nn.Module, data: Batches, *, lr: float = 0.01) -> Step:
    """Train the backbone's (otherwise frozen) weights directly, masks off."""
    weights = [layer.weight.requires_grad_(True) for layer in masked_layers(net)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        with task_view(net, None):
            return net(x)

    return _step(forward, _adam(weights, lr), data)


def topk_step(net: nn.Module, data: Batches, *, density: float = 0.5, lr: float = 0.01, fused: bool = True) -> Step:
    """Train the scores of an exact top-`density` mask (straight-through), weights frozen; `fused`
    False takes the eager torch path (what a device without the fused kernels runs)."""
    scores = [layer.scores for layer in masked_layers(net)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        with task_view(net, TopK(density, fused=fused)):
            return net(x)

    return _step(forward, _adam(scores, lr), data)


def store_random_bank(net: nn.Module, m: int, *, density: float = 0.5, seed: int = 0) -> None:
    """Append m random binary masks (about `density` kept) to every masked layer's bank."""
    for i, layer in enumerate(masked_layers(net)):
        for r in range(m):
            layer.store_mask(torch.rand(layer.weight.shape, generator=generator("bench_bank", seed, i, r)) < density)


def coefficient_step(
    net: nn.Module, data: Batches, *, m: int, granularity: str, groups: int = 1, lr: float = 0.05
) -> Step:
    """Train only the coefficients mixing the first m stored masks (ImpressLearn's later tasks);
    `groups` rows per layer with granularity `group`."""
    outs = [layer.weight.shape[0] for layer in masked_layers(net)]
    layout = CoeffLayout(outs, m, granularity, groups=groups)
    raw = nn.Parameter(layout.initial())

    def forward(x: torch.Tensor) -> torch.Tensor:
        with task_view(net, layout.sources(layout.coefficients(raw))):
            return net(x)

    return _step(forward, _adam([raw], lr), data)
