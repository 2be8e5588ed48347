from __future__ import annotations

import pytest
import torch

from impress.masks import keep_count, pack_bits, threshold_mask, topk_mask, unpack_bits


@pytest.mark.parametrize("shape", [(7,), (64, 256), (10, 3, 3, 3), (1000, 33)])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.77, 0.999, 1.0])
def test_topk_density_is_exact(shape, density):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = topk_mask(scores, density)
    assert mask.shape == scores.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == keep_count(scores.numel(), density)


def test_topk_keeps_the_largest_magnitudes():
    scores = torch.randn(50, 40, generator=torch.Generator().manual_seed(2))
    mask = topk_mask(scores, 0.3).bool()
    assert scores.abs()[mask].min() > scores.abs()[~mask].max()


def test_topk_is_exact_under_ties():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, -2.0, 0.5, 0.0])  # k=4 cuts through the tied 1.0s
    mask = topk_mask(scores, 0.5)
    assert int(mask.sum()) == 4
    assert mask[0] == 1 and mask[5] == 1 and mask[6] == 0 and mask[7] == 0


def test_straight_through_gradient():
    """d(loss)/d(scores) is the upstream gradient times sign(scores), whatever the mask."""
    scores = torch.randn(20, 30, generator=torch.Generator().manual_seed(3), requires_grad=True)
    upstream = torch.randn(20, 30, generator=torch.Generator().manual_seed(4))
    (topk_mask(scores, 0.4) * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream * scores.detach().sign())

    scores.grad = None
    (threshold_mask(scores) * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream)


def test_threshold_mask_is_nonnegative_scores():
    scores = torch.tensor([-1.0, 0.0, 2.0, -0.1])
    assert threshold_mask(scores).tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("shape", [(1,), (8,), (9,), (3, 5), (300, 100), (4, 3, 3, 3)])
def test_pack_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(5)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-mask.numel() // 8)  # one bit per weight
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_unpack_leading_dims():
    masks = torch.rand(6, 4, 5, generator=torch.Generator().manual_seed(6)) > 0.5
    packed = torch.stack([pack_bits(m) for m in masks])
    assert torch.equal(unpack_bits(packed, (4, 5)), masks)
