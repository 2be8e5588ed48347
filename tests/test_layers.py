from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impress.layers import (
    MaskedConv2d,
    MaskedLinear,
    Mixture,
    Stored,
    TaskBatchNorm2d,
    TopK,
    masked_layers,
    task_view,
)
from impress.seeding import generator


def _layers():
    linear = MaskedLinear(12, 7)
    conv = MaskedConv2d(3, 5, 3, padding=1)
    for i, layer in enumerate((linear, conv)):
        layer.init_weight(generator("test", i))
        layer.reset_scores(generator("scores", i))
    return [(linear, torch.randn(4, 12)), (conv, torch.randn(2, 3, 6, 6))]


def _plain(layer, x, weight):
    return F.linear(x, weight) if isinstance(layer, MaskedLinear) else F.conv2d(x, weight, padding=1)


@pytest.mark.parametrize("index", [0, 1])
def test_all_ones_mask_is_the_plain_layer(index):
    layer, x = _layers()[index]
    layer.store_mask(torch.ones_like(layer.weight))
    layer.source = Stored(0)
    assert torch.equal(layer(x), _plain(layer, x, layer.weight))
    layer.source = None  # dense
    assert torch.equal(layer(x), _plain(layer, x, layer.weight))


@pytest.mark.parametrize("index", [0, 1])
def test_signed_constant_weights(index):
    layer, _ = _layers()[index]
    scale = math.sqrt(2.0 / layer.fan_in)
    assert torch.allclose(layer.weight.abs(), torch.full_like(layer.weight, scale))
    assert 0.3 < (layer.weight > 0).float().mean() < 0.7
    assert not layer.weight.requires_grad


@pytest.mark.parametrize("index", [0, 1])
def test_one_hot_mixture_is_the_stored_impression(index):
    layer, x = _layers()[index]
    masks = [torch.rand(layer.weight.shape, generator=generator("m", i)) > 0.5 for i in range(4)]
    for mask in masks:
        layer.store_mask(mask)
    for i, mask in enumerate(masks):
        assert torch.equal(layer.stored_mask(i), mask)
        layer.source = Mixture(F.one_hot(torch.tensor(i), 4).float())
        out_mix = layer(x)
        layer.source = Stored(i)
        assert torch.equal(out_mix, layer(x))
        assert torch.equal(out_mix, _plain(layer, x, layer.weight * mask))


@pytest.mark.parametrize("index", [0, 1])
def test_mixture_is_the_weighted_sum_of_masks(index):
    layer, _ = _layers()[index]
    masks = [(torch.rand(layer.weight.shape, generator=generator("m", i)) > 0.5).float() for i in range(3)]
    for mask in masks:
        layer.store_mask(mask)
    alpha = torch.tensor([0.7, -0.4, 1.3])  # negative coefficients count too
    layer.source = Mixture(alpha)
    expected = sum(a * m for a, m in zip(alpha, masks))
    assert torch.allclose(layer.current_mask(), expected)
    per_unit = torch.randn(layer.weight.shape[0], 3, generator=generator("alpha"))
    layer.source = Mixture(per_unit)
    expected = sum(per_unit[:, i].view(-1, *[1] * (layer.weight.dim() - 1)) * m for i, m in enumerate(masks))
    assert torch.allclose(layer.current_mask(), expected, atol=1e-6)


def test_mixture_gradient_reaches_coefficients():
    layer, x = _layers()[0]
    for i in range(3):
        layer.store_mask(torch.rand(layer.weight.shape, generator=generator("m", i)) > 0.5)
    alpha = torch.full((3,), 1 / 3, requires_grad=True)
    layer.source = Mixture(alpha)
    g = torch.randn(4, 7, generator=generator("g"))
    (layer(x) * g).sum().backward()
    # d/dalpha_i sum(g * (x @ (W * M_i)^T)) = sum(M_i * W * (g^T x))
    gw = g.t() @ x
    expected = torch.stack([(layer.stored_mask(i).float() * layer.weight * gw).sum() for i in range(3)])
    assert torch.allclose(alpha.grad, expected, rtol=1e-5, atol=1e-5)


def test_task_view_scopes_and_restores():
    net = torch.nn.Sequential(MaskedLinear(4, 4), torch.nn.ReLU(), MaskedLinear(4, 2))
    layers = masked_layers(net)
    with task_view(net, TopK(0.5)):
        assert all(layer.source == TopK(0.5) for layer in layers)
        with task_view(net, [None, Stored(0)]):
            assert layers[0].source is None and layers[1].source == Stored(0)
        assert all(layer.source == TopK(0.5) for layer in layers)
    assert all(layer.source is None for layer in layers)
    with pytest.raises(ValueError, match="3 mask sources given for 2 masked layers"):
        with task_view(net, [None, None, None]):
            pass


def test_bank_grows_and_loads_into_a_fresh_layer():
    layer, x = _layers()[0]
    for i in range(3):
        layer.store_mask(torch.rand(layer.weight.shape, generator=generator("m", i)) > 0.5)
    fresh = MaskedLinear(12, 7)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.bank, layer.bank)
    fresh.source = layer.source = Stored(2)
    assert torch.equal(fresh(x), layer(x))


def test_task_batchnorm_uses_each_tasks_statistics():
    bn = TaskBatchNorm2d(3)
    batches = [torch.randn(64, 3, 4, 4, generator=generator("bn", t)) * (t + 1) + 5 * t for t in range(2)]
    for x in batches:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exact statistics of the batch
        bn.train()
        bn(x)
        bn.store_stats()
    bn.eval()
    for t, x in enumerate(batches):
        bn.task = t
        expected = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True) + bn.eps)
        assert torch.allclose(bn(x), expected, atol=1e-4)
    assert bn.task_mean.shape == (2, 3)


def test_batch_statistics_option_has_no_state():
    bn = TaskBatchNorm2d(3, per_task=False)
    bn.eval()
    x = torch.randn(16, 3, 2, 2) * 3 + 1
    assert bn.running_mean is None
    assert torch.allclose(bn(x).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
