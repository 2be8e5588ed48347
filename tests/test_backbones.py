from __future__ import annotations

import pytest
import torch

from impress.backbones import BACKBONES, build_backbone
from impress.layers import TopK, masked_layers, task_view

SHAPES = {"resnet18": (3, 32, 32), "convnet": (1, 8, 8)}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_forward_and_is_fully_masked(name):
    in_shape = SHAPES.get(name, (1, 8, 8))
    net = build_backbone(name, in_shape=in_shape, num_classes=10, seed=0)
    x = torch.randn(4, *in_shape, generator=torch.Generator().manual_seed(0))
    with task_view(net, TopK(0.5)):
        out = net(x)
    assert out.shape == (4, 10)
    trainable_other = [n for n, p in net.named_parameters() if not n.endswith("scores") and p.requires_grad]
    assert trainable_other == []  # only mask scores are trainable
    weights = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    assert len(weights) == len(masked_layers(net))  # every weight is a masked, frozen one
    assert not any(n.endswith("bias") for n, _ in net.named_parameters())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_weights_come_from_the_seed(name):
    in_shape = SHAPES.get(name, (1, 8, 8))
    a, b, c = (build_backbone(name, in_shape=in_shape, num_classes=10, seed=s) for s in (3, 3, 4))
    for la, lb, lc in zip(masked_layers(a), masked_layers(b), masked_layers(c)):
        assert torch.equal(la.weight, lb.weight)
        assert not torch.equal(la.weight, lc.weight)


def test_paper_scale_sizes():
    lenet = build_backbone("lenet300", in_shape=(1, 28, 28), num_classes=10, seed=0)
    assert sum(layer.weight.numel() for layer in masked_layers(lenet)) == 266_200
    fc = build_backbone("fc1024", in_shape=(1, 28, 28), num_classes=10, seed=0)
    assert [tuple(layer.weight.shape) for layer in masked_layers(fc)] == [(1024, 784), (1024, 1024), (10, 1024)]
    resnet = build_backbone("resnet18", in_shape=(3, 32, 32), num_classes=100, seed=0)
    assert masked_layers(resnet)[0].weight.shape == (20, 3, 3, 3)  # nf = 20
    assert masked_layers(resnet)[-1].weight.shape == (100, 160)
