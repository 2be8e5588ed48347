from __future__ import annotations

import pytest

from impress.backbones import build_backbone
from impress.config import Config
from impress.methods import METHODS
from impress.overhead import FLOAT_BITS, SEED_BITS
from impress.trainer import build, resolve_device, run

W = 784 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100's weights: one supermask's bits


def _bits(**changes):
    """The bits a method counts on LeNet-300-100 (its coefficient sizes its own)."""
    cfg = Config(backbone="lenet300", num_tasks=30, **changes)
    net = build_backbone("lenet300", in_shape=(1, 28, 28), num_classes=10, seed=0)
    return METHODS[cfg.method](cfg, net).bits()


def test_lenet_supsup_and_global_coefficients():
    sup = _bits(method="supsup")
    assert sup.per_task_bits == W == 266_200  # 32.5 KiB per task
    assert sup.per_task_bits / 8 / 1024 == pytest.approx(32.5, abs=0.01)
    il = _bits(m=10, granularity="global")
    assert il.per_task_bits == 10 * FLOAT_BITS  # 40 bytes
    assert il.one_time_bits == SEED_BITS + 10 * W


def test_coefficient_bits_follow_the_granularity():
    assert _bits(m=10, granularity="layer").params_bits_per_task == 3 * 10 * FLOAT_BITS
    assert _bits(m=10, granularity="channel").params_bits_per_task == (300 + 100 + 10) * 10 * FLOAT_BITS
    assert _bits(m=4, granularity="channel").params_bits_per_task == (300 + 100 + 10) * 4 * FLOAT_BITS


def test_group_coefficients_count_one_row_per_block_clamped_to_the_units():
    # G = 16: 16 rows in the 300 and 100 unit layers, the 10-unit head clamped to one row per unit
    assert _bits(m=4, granularity="group", groups=16).params_bits_per_task == (16 + 16 + 10) * 4 * FLOAT_BITS
    assert _bits(m=4, granularity="group", groups=1).params_bits_per_task == _bits(m=4).params_bits_per_task
    every_unit = _bits(m=4, granularity="group", groups=300).params_bits_per_task
    assert every_unit == _bits(m=4, granularity="channel").params_bits_per_task


@pytest.mark.parametrize("granularity", ["global", "layer", "group", "channel"])
def test_coefficient_precision_counts_the_stored_values_and_one_scale_per_row_at_8_bits(granularity):
    rows = {"global": 1, "layer": 3, "group": 4 + 4 + 4, "channel": 300 + 100 + 10}[granularity]
    m = 5
    for alpha_bits, per_row in [(32, 32 * m), (16, 16 * m), (8, 8 * m + 16)]:
        bits = _bits(m=m, granularity=granularity, groups=4, alpha_bits=alpha_bits)
        assert bits.params_bits_per_task == rows * per_row, alpha_bits
        assert bits.one_time_bits == SEED_BITS + m * W  # precision changes nothing stored once


def test_batche_counts_two_vectors_per_layer_and_its_shared_weight_once():
    fast = (300 + 784 + 100 + 300 + 10 + 100) * FLOAT_BITS
    trained = _bits(method="batche")
    assert trained.per_task_bits == fast and trained.one_time_bits == SEED_BITS + W * FLOAT_BITS
    assert _bits(method="batche", shared_weight="random").one_time_bits == SEED_BITS
    assert trained.total_bits(5) == SEED_BITS + W * FLOAT_BITS + 5 * fast


def test_totals_and_break_even():
    het = _bits(m=10, granularity="layer")
    assert het.total_bits(10) == SEED_BITS + 10 * W  # the first m tasks are the bank
    assert het.total_bits(25) == SEED_BITS + 10 * W + 15 * 30 * FLOAT_BITS
    assert het.break_even_tasks() == 11  # equal at T = m, below from m + 1
    hom = _bits(m=10, impressions="homogeneous")
    T = hom.break_even_tasks()
    assert hom.total_bits(T) < hom.supsup_total_bits(T) and hom.total_bits(T - 1) >= hom.supsup_total_bits(T - 1)
    rnd = _bits(m=10, impressions="random")
    assert rnd.one_time_bits == 2 * SEED_BITS  # backbone seed + bank seed
    assert rnd.break_even_tasks() == 1
    assert _bits(method="supsup").break_even_tasks() is None
    assert _bits(method="batche").break_even_tasks() == 40  # 32 W once: T > 32 W / (W - fast) = 39.6


def test_per_task_bn_statistics_count():
    cfg = Config(method="supsup", backbone="convnet", num_tasks=2)
    o = build(cfg, resolve_device("cpu"))[1].bits()
    assert o.bn_bits_per_task == 2 * (32 + 64 + 128) * FLOAT_BITS
    assert o.per_task_bits == o.masked_weights + o.bn_bits_per_task
    batch = cfg.replace(bn="batch")
    assert build(batch, resolve_device("cpu"))[1].bits().bn_bits_per_task == 0


@pytest.mark.parametrize("granularity", ["global", "layer", "group", "channel"])
def test_reported_bits_match_what_is_stored(granularity):
    """The per-task bits reported equal the coefficient buffer's actual size per task."""
    cfg = Config(num_tasks=4, m=2, epochs=1, granularity=granularity, groups=5, widths=(32, 16))
    result = run(cfg)
    _, method = build(cfg, resolve_device("cpu"))
    sizes = {"global": 2, "layer": 3 * 2, "group": (5 + 5 + 5) * 2, "channel": (32 + 16 + 10) * 2}
    assert method.layout.size == sizes[granularity]
    assert result.overhead["params_bits_per_task"] == sizes[granularity] * FLOAT_BITS
    assert result.overhead["mask_bits"] == 64 * 32 + 32 * 16 + 16 * 10
