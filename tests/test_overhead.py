from __future__ import annotations

import pytest

from impress.backbones import build_backbone
from impress.config import Config
from impress.overhead import FLOAT_BITS, SEED_BITS, overhead
from impress.trainer import build, resolve_device, run


def _lenet():
    return build_backbone("lenet300", in_shape=(1, 28, 28), num_classes=10, seed=0)


def test_lenet_supsup_and_global_coefficients():
    net = _lenet()
    sup = overhead(Config(method="supsup", backbone="lenet300"), net)
    assert sup.per_task_bits == 266_200  # 32.5 KiB per task
    assert sup.per_task_bits / 8 / 1024 == pytest.approx(32.5, abs=0.01)
    il = overhead(Config(m=10, granularity="global", backbone="lenet300"), net, coeff_size=10)
    assert il.per_task_bits == 10 * FLOAT_BITS  # 40 bytes
    assert il.one_time_bits == SEED_BITS + 10 * 266_200


def test_totals_and_break_even():
    net = _lenet()
    W = 266_200
    het = overhead(Config(m=10, granularity="layer", backbone="lenet300"), net, coeff_size=30)
    assert het.total_bits(10) == SEED_BITS + 10 * W  # the first m tasks are the bank
    assert het.total_bits(25) == SEED_BITS + 10 * W + 15 * 30 * FLOAT_BITS
    assert het.break_even_tasks() == 11  # equal at T = m, below from m + 1
    hom = overhead(Config(m=10, impressions="homogeneous", backbone="lenet300"), net, coeff_size=30)
    T = hom.break_even_tasks()
    assert hom.total_bits(T) < hom.supsup_total_bits(T) and hom.total_bits(T - 1) >= hom.supsup_total_bits(T - 1)
    rnd = overhead(Config(m=10, impressions="random", backbone="lenet300"), net, coeff_size=30)
    assert rnd.one_time_bits == 2 * SEED_BITS  # backbone seed + bank seed
    assert rnd.break_even_tasks() == 1


def test_per_task_bn_statistics_count():
    cfg = Config(method="supsup", backbone="convnet", num_tasks=2)
    _, method = build(cfg, resolve_device("cpu"))
    o = overhead(cfg, method.net)
    assert o.bn_bits_per_task == 2 * (32 + 64 + 128) * FLOAT_BITS
    assert o.per_task_bits == o.masked_weights + o.bn_bits_per_task
    batch = cfg.replace(bn="batch")
    assert overhead(batch, build(batch, resolve_device("cpu"))[1].net).bn_bits_per_task == 0


@pytest.mark.parametrize("granularity", ["global", "layer", "channel"])
def test_reported_bits_match_what_is_stored(granularity):
    """The per-task bits reported equal the coefficient buffer's actual size per task."""
    cfg = Config(num_tasks=4, m=2, epochs=1, granularity=granularity, widths=(32, 16))
    result = run(cfg)
    _, method = build(cfg, resolve_device("cpu"))
    sizes = {"global": 2, "layer": 3 * 2, "channel": (32 + 16 + 10) * 2}
    assert method.layout.size == sizes[granularity]
    assert result.overhead["coeff_bits_per_task"] == sizes[granularity] * FLOAT_BITS
    assert result.overhead["mask_bits"] == 64 * 32 + 32 * 16 + 16 * 10
