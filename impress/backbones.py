"""Random, frozen, bias-free backbones built from masked layers.

Every backbone is a plain `nn.Module` taking images (N, C, H, W). Its weights are regenerated
from the seed by `init_backbone`, so a checkpoint stores the seed, not the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from impress.layers import MaskedConv2d, MaskedLinear, TaskBatchNorm2d, masked_layers
from impress.seeding import generator

__all__ = ["MLP", "ConvNet", "ResNet18", "BACKBONES", "build_backbone", "init_backbone"]


class MLP(nn.Module):
    """Flatten, then masked linear layers of `widths` with ReLU between them."""

    def __init__(self, in_shape: Sequence[int], widths: Sequence[int], num_classes: int, **_) -> None:
        super().__init__()
        sizes = [int(torch.tensor(in_shape).prod()), *widths, num_classes]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=1)  # (N, C*H*W)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x  # (N, classes)


def _conv_bn(c_in: int, c_out: int, *, stride: int = 1, per_task_bn: bool) -> nn.Sequential:
    return nn.Sequential(
        MaskedConv2d(c_in, c_out, 3, stride=stride, padding=1), TaskBatchNorm2d(c_out, per_task=per_task_bn)
    )


class ConvNet(nn.Module):
    """Small conv net: three 3x3 conv-BN-ReLU stages (32, 64, 128), global average pool, linear."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, *, per_task_bn: bool = True, **_) -> None:
        super().__init__()
        c = in_shape[0]
        self.stages = nn.ModuleList(
            [
                _conv_bn(c, 32, per_task_bn=per_task_bn),
                _conv_bn(32, 64, stride=2, per_task_bn=per_task_bn),
                _conv_bn(64, 128, stride=2, per_task_bn=per_task_bn),
            ]
        )
        self.head = MaskedLinear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = F.relu(stage(x))  # (N, C_s, H_s, W_s)
        return self.head(x.mean(dim=(2, 3)))  # (N, classes)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, per_task_bn: bool) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride=stride, per_task_bn=per_task_bn)
        self.conv2 = _conv_bn(c_out, c_out, per_task_bn=per_task_bn)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                MaskedConv2d(c_in, c_out, 1, stride=stride), TaskBatchNorm2d(c_out, per_task=per_task_bn)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNet18(nn.Module):
    """The reduced ResNet-18 of GEM / SupSup (nf=20 filters at the first stage, for 32x32 inputs)."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int, *, nf: int = 20, per_task_bn: bool = True, **_
    ) -> None:
        super().__init__()
        self.stem = _conv_bn(in_shape[0], nf, per_task_bn=per_task_bn)
        blocks, c_in = [], nf
        for i, c_out in enumerate([nf, 2 * nf, 4 * nf, 8 * nf]):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(c_in, c_out, stride, per_task_bn))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = MaskedLinear(8 * nf, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))  # (N, 8nf, H/8, W/8)
        return self.head(x.mean(dim=(2, 3)))  # (N, classes)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet300": lambda in_shape, num_classes, **kw: MLP(in_shape, (300, 100), num_classes),
    "fc1024": lambda in_shape, num_classes, **kw: MLP(in_shape, (1024, 1024), num_classes),
    "convnet": ConvNet,
    "resnet18": ResNet18,
}


def init_backbone(model: nn.Module, seed: int) -> nn.Module:
    """Regenerate every masked layer's frozen weight from `seed` (layer i uses seed (seed, i))."""
    for i, layer in enumerate(masked_layers(model)):
        layer.init_weight(generator("backbone", seed, i))
    return model


def build_backbone(
    name: str,
    *,
    in_shape: Sequence[int],
    num_classes: int,
    seed: int,
    widths: Sequence[int] = (256, 256),
    per_task_bn: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A backbone from `BACKBONES`, its weights drawn from `seed`, on `device`."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    model = BACKBONES[name](in_shape=in_shape, widths=widths, num_classes=num_classes, per_task_bn=per_task_bn)
    return init_backbone(model, seed).to(device)
