"""The fast paths are exact: the warm-started top-k selection against a reference `torch.topk`, and
the lookup-table `Mixture` against the float-mask weighted sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impress.layers import MaskedConv2d, MaskedLinear, Mixture, TopK
from impress.masks import TopKCache, keep_count, topk_mask
from impress.seeding import generator


def reference_topk(scores: torch.Tensor, density: float) -> torch.Tensor:
    """`torch.topk` of |scores|, with ties at the cut resolved toward the lowest flat index."""
    flat = scores.detach().abs().flatten()
    k = keep_count(flat.numel(), density)
    cut = flat.topk(k).values[-1]  # the k-th largest magnitude
    mask = flat > cut
    tied = torch.nonzero(flat == cut).squeeze(1)
    mask[tied[: k - int(mask.sum())]] = True
    return mask.to(scores.dtype).view_as(scores)


def _scores(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=generator("fast", seed)).to(dtype)


def test_reference_agrees_with_a_stable_sort():
    scores = torch.round(_scores(5000, 0) * 3) / 3  # many ties
    order = torch.sort(scores.abs(), descending=True, stable=True).indices
    expected = torch.zeros_like(scores)
    expected[order[: keep_count(5000, 0.3)]] = 1
    assert torch.equal(reference_topk(scores, 0.3), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 20_000, 100_003])
@pytest.mark.parametrize("density", [0.01, 0.5, 0.77, 0.999, 1.0])
def test_random_scores_match_topk(dtype, n, density):
    scores = _scores(n, n, dtype)
    cache = TopKCache()
    for _ in range(2):  # cold, then from the cache on the same scores
        mask = topk_mask(scores, density, cache=cache)
        assert mask.dtype == dtype and mask.shape == scores.shape
        assert torch.equal(mask, reference_topk(scores, density))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_take_the_full_selection_exactly(dtype):
    scores = torch.round(_scores(30_000, 7) * 8).to(dtype)  # coarse: many ties
    cache = TopKCache()
    for _ in range(2):
        mask = topk_mask(scores, 0.3, cache=cache)
        assert mask.dtype == dtype
        assert torch.equal(mask.float(), reference_topk(scores.float(), 0.3))
    assert cache.warm == 0  # counts in half precision would not be exact: never warm


@pytest.mark.parametrize("levels", [1, 2, 5, 50])
@pytest.mark.parametrize("n", [9, 30_000, 70_001])
def test_ties_keep_the_lowest_indices(levels, n):
    scores = torch.round(_scores(n, levels) * levels) / levels  # levels=1: mostly -1, 0, 1
    cache = TopKCache()
    for density in (0.5, 0.5, 0.3, 0.9):  # also a density change with the same cache
        assert torch.equal(topk_mask(scores, density, cache=cache), reference_topk(scores, density))


def test_all_equal_and_all_zero_scores():
    for scores in (torch.full((40_000,), 0.25), torch.zeros(40_000)):
        cache = TopKCache()
        for _ in range(3):
            mask = topk_mask(scores, 0.4, cache=cache)
            assert torch.equal(mask, reference_topk(scores, 0.4))
            assert torch.equal(mask.nonzero().squeeze(1), torch.arange(16_000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["walk", "drift", "ties"])
def test_warm_started_training_sequence(dtype, kind):
    """Scores changing a little each step, as under an optimizer: every step equals the reference,
    and the cache is really used."""
    g = generator("walk", kind)
    scores = (torch.rand(300, 200, generator=g) * 2 - 1).to(dtype) * 0.05
    cache = TopKCache()
    for step in range(25):
        assert torch.equal(topk_mask(scores, 0.5, cache=cache), reference_topk(scores, 0.5)), step
        noise = torch.randn(scores.shape, generator=g).to(dtype).sign()
        if kind == "walk":
            scores = scores + 1e-3 * noise
        elif kind == "drift":  # the distribution spreads, so the threshold moves every step
            scores = scores * 1.02 + 2e-3 * noise
        else:  # a coarse grid: ties at the cut at every step
            scores = torch.round((scores + 2e-3 * noise) * 200) / 200
    assert cache.warm >= 20


def test_cache_survives_foreign_and_abrupt_changes():
    cache = TopKCache()
    sequence = [_scores(50_000, 1), _scores(50_000, 2) * 100, _scores(60_000, 3), _scores(60_000, 3) + 5, _scores(9, 4)]
    for scores in sequence:  # unrelated tensors, rescaled, shifted, resized: all through one cache
        assert torch.equal(topk_mask(scores, 0.5, cache=cache), reference_topk(scores, 0.5))


def test_cache_never_changes_the_result_or_the_gradient():
    scores = _scores(40_000, 5).view(200, 200).requires_grad_(True)
    upstream = _scores(40_000, 6).view(200, 200)
    cache = TopKCache()
    topk_mask(scores.detach() * 1.01, 0.3, cache=cache)  # a stale hint
    warm = topk_mask(scores, 0.3, cache=cache)
    (warm * upstream).sum().backward()
    assert torch.equal(warm, topk_mask(scores, 0.3))
    assert torch.equal(scores.grad, upstream * scores.detach().sign())


def test_topk_source_uses_the_layer_cache():
    layer = MaskedLinear(300, 200)
    layer.init_weight(generator("w"))
    layer.reset_scores(generator("s"))
    opt = torch.optim.Adam([layer.scores], lr=0.01)
    layer.source = TopK(0.5)
    x = torch.randn(16, 300, generator=generator("x"))
    for _ in range(10):
        mask = layer.current_mask()
        assert torch.equal(mask, reference_topk(layer.scores, 0.5))
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    assert layer.topk_cache.warm >= 8
    assert "topk_cache" not in str(layer.state_dict().keys())


# ---------------------------------------------------------------------------------------------
# Mixture by lookup tables


def _layer_with_bank(kind: str, m: int):
    layer = MaskedLinear(40, 24) if kind == "linear" else MaskedConv2d(3, 6, 3, padding=1)
    layer.init_weight(generator("bank_w", kind))
    masks = [torch.rand(layer.weight.shape, generator=generator("bank", kind, i)) > 0.5 for i in range(m)]
    for mask in masks:
        layer.store_mask(mask)
    return layer, torch.stack(masks).to(layer.weight.dtype)  # (m, *weight.shape)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("per_unit", [False, True])
def test_mixture_equals_the_float_weighted_sum(kind, m, per_unit):
    layer, masks = _layer_with_bank(kind, m + 3)  # more stored masks than mixed
    out = layer.weight.shape[0]
    shape = (out, m) if per_unit else (m,)
    alpha = torch.randn(shape, generator=generator("alpha", m), dtype=torch.float32).requires_grad_(True)
    upstream = torch.randn(layer.weight.shape, generator=generator("up", m))
    flat = masks[:m].flatten(start_dim=2) if per_unit else masks[:m]
    if per_unit:
        expected = torch.einsum("om,mor->or", alpha, flat).view(layer.weight.shape)
    else:
        expected = torch.tensordot(alpha, flat, dims=1)
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), alpha)
    mixed = Mixture(alpha)(layer)
    (grad,) = torch.autograd.grad((mixed * upstream).sum(), alpha)
    assert torch.allclose(mixed, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad, grad_expected, rtol=1e-5, atol=1e-4)


def test_mixture_follows_the_bank():
    layer, masks = _layer_with_bank("linear", 3)
    alpha = torch.tensor([0.5, -1.0, 2.0])
    before = Mixture(alpha)(layer)
    layer.store_mask(torch.ones_like(layer.weight))  # a new bank tensor: the codes are rebuilt
    assert torch.equal(Mixture(torch.tensor([0.5, -1.0, 2.0, 0.0]))(layer), before)
    assert torch.equal(Mixture(torch.tensor([0.0, 0.0, 0.0, 1.0]))(layer), torch.ones_like(layer.weight))
    with torch.no_grad():
        layer.bank[0].zero_()  # an in-place change: the codes are rebuilt too
    assert torch.allclose(Mixture(alpha)(layer), alpha[1] * masks[1] + alpha[2] * masks[2])
    with pytest.raises(IndexError, match="holds 4 masks; 5 were asked"):
        Mixture(torch.ones(5))(layer)


def test_mixture_one_row_alpha_broadcasts_like_global():
    layer, _ = _layer_with_bank("linear", 4)
    alpha = torch.randn(4, generator=generator("row"))
    assert torch.equal(Mixture(alpha.unsqueeze(0))(layer), Mixture(alpha)(layer))
    x = torch.randn(3, 40)
    layer.source = Mixture(alpha)
    assert torch.allclose(layer(x), F.linear(x, layer.weight * Mixture(alpha)(layer)))
