"""The mask banks ImpressLearn mixes (random, homogeneous), and the collapsed superposition of all
tasks at every coefficient granularity and for SupSup."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from impress.config import Config
from impress.inference import entropy, task_basis
from impress.layers import Threshold, TopK, masked_layers, task_view
from impress.masks import keep_count
from impress.trainer import build, resolve_device

CPU = resolve_device("cpu")
# digits: masked layers of 64x32, 32x32 and 32x10 weights
TINY = dict(stream="permuted", widths=(32, 32), epochs=1, threads=1)


@pytest.fixture(autouse=True)
def _one_thread():
    # NOTE: `build` does not apply cfg.threads (`run` does); conftest restores the count afterwards
    torch.set_num_threads(TINY["threads"])


def _noop(event: dict) -> None:
    pass


def _masks(layer) -> list[torch.Tensor]:
    return [layer.stored_mask(r) for r in range(layer.bank.shape[0])]


def _all_distinct(masks: list[torch.Tensor]) -> bool:
    return all(not torch.equal(a, b) for a, b in itertools.combinations(masks, 2))


# ---------------------------------------------------------------------------------------------
# The banks


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_random_bank_keeps_exactly_the_configured_density_and_its_masks_differ(sparsity):
    cfg = Config(method="impresslearn", impressions="random", m=4, sparsity=sparsity, num_tasks=2, **TINY)
    stream, method = build(cfg, CPU)
    drawn = [layer.bank.clone() for layer in masked_layers(method.net)]
    for task in stream:  # every task learns coefficients only: the bank stays the drawn one
        method.learn(task, _noop)
    layers = masked_layers(method.net)
    assert len(layers) == 3
    for layer, bank in zip(layers, drawn):
        n = layer.weight.numel()
        k = keep_count(n, cfg.density)
        assert 1 < k < n
        assert layer.bank.shape[0] == cfg.m and torch.equal(layer.bank, bank)
        masks = _masks(layer)
        assert [int(mask.sum()) for mask in masks] == [k] * cfg.m, (n, k)
        assert _all_distinct(masks), n


@pytest.mark.parametrize("mask", ["topk", "threshold"])
def test_homogeneous_impressions_are_m_distinct_masks_learned_on_task_0(mask):
    cfg = Config(method="impresslearn", impressions="homogeneous", m=3, mask=mask, num_tasks=2, **TINY)
    stream, method = build(cfg, CPU)
    method.learn(stream[0], _noop)
    assert method.n_dedicated == 1 and method.tasks_learned == 1
    source = TopK(cfg.density) if mask == "topk" else Threshold()
    banks = []
    for layer in masked_layers(method.net):
        assert layer.bank.shape[0] == cfg.m  # all m impressions from task 0
        masks = _masks(layer)
        assert _all_distinct(masks), layer.weight.shape
        if mask == "topk":  # exact density
            assert [int(m.sum()) for m in masks] == [keep_count(layer.weight.numel(), cfg.density)] * cfg.m
        else:  # scores >= 0: no fixed density, but neither empty nor full
            assert all(0 < int(m.sum()) < m.numel() for m in masks)
        # the last impression is its source on the scores left by training it
        with torch.no_grad():
            assert torch.equal(masks[-1], source(layer).bool())
        banks.append(layer.bank.clone())
    method.learn(stream[1], _noop)  # a later task: coefficients over the same m impressions
    assert method.tasks_learned == 2
    assert all(torch.equal(layer.bank, bank) for layer, bank in zip(masked_layers(method.net), banks))


# ---------------------------------------------------------------------------------------------
# The collapsed superposition, at every granularity and stored precision


LEARNED = {
    "impresslearn-global": Config(method="impresslearn", m=3, granularity="global", num_tasks=5, **TINY),
    "impresslearn-layer": Config(method="impresslearn", m=3, granularity="layer", num_tasks=5, **TINY),
    "impresslearn-group": Config(method="impresslearn", m=3, granularity="group", groups=3, num_tasks=5, **TINY),
    "impresslearn-channel-8bit": Config(
        method="impresslearn", m=3, granularity="channel", alpha_bits=8, num_tasks=5, **TINY
    ),
    "impresslearn-group-16bit-random": Config(
        method="impresslearn",
        m=3,
        granularity="group",
        groups=5,
        alpha_bits=16,
        impressions="random",
        num_tasks=3,
        **TINY,
    ),
    "impresslearn-global-homogeneous": Config(
        method="impresslearn", m=3, granularity="global", impressions="homogeneous", num_tasks=3, **TINY
    ),
    "impresslearn-layer-random": Config(
        method="impresslearn", m=3, granularity="layer", impressions="random", num_tasks=3, **TINY
    ),
    "supsup": Config(method="supsup", num_tasks=4, **TINY),
}


@functools.cache
def _learned(name: str):
    torch.set_num_threads(TINY["threads"])
    stream, method = build(LEARNED[name], CPU)
    for task in stream:
        method.learn(task, _noop)
    method.eval()
    return stream, method


@pytest.mark.parametrize("name", list(LEARNED))
@pytest.mark.parametrize("gain", ["raw", "unit"])
def test_collapsed_superposition_is_the_explicit_sum_of_each_tasks_view(name, gain):
    """Per layer, the one combination beta @ C (`basis.superpose(beta)`) against sum_t beta_t *
    (task t's own mask under `method.view(t)`), rows at unit gain divided by their raw gain; and the
    entropy's gradient with respect to beta through both."""
    stream, method = _learned(name)
    cfg = LEARNED[name]
    basis = task_basis(method, gain=gain)
    T = basis.num_tasks
    assert T == cfg.num_tasks
    if cfg.method == "impresslearn":
        assert method.n_dedicated < T  # some tasks are coefficient rows
    unit = gain == "unit" and cfg.method == "impresslearn"
    scale = task_basis(method, gain="raw").gain(task_basis(method, gain="raw").coeffs) if unit else torch.ones(T)
    layers = masked_layers(method.net)
    views = []
    for t in range(T):
        with method.view(t):
            views.append([layer.current_mask().detach().clone() for layer in layers])
    beta = torch.rand(T, generator=torch.Generator().manual_seed(1)) + 0.5  # distinct weights ...
    beta[1::2] *= -1  # ... of both signs
    beta.requires_grad_(True)
    x = stream[0].test_data()[0][:64]

    with task_view(method.net, basis.superpose(beta)):
        collapsed = [layer.current_mask() for layer in layers]
        h_collapsed = entropy(method.net(x), 10).mean()
    explicit = [sum(beta[t] / scale[t] * views[t][i] for t in range(T)) for i in range(len(layers))]
    assert len(collapsed) == len(explicit) == 3
    for i, (a, b) in enumerate(zip(collapsed, explicit)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"layer {i}: {m}")
    with task_view(method.net, [lambda layer, mask=mask: mask for mask in explicit]):
        h_explicit = entropy(method.net(x), 10).mean()
    (g_collapsed,) = torch.autograd.grad(h_collapsed, beta)
    (g_explicit,) = torch.autograd.grad(h_explicit, beta)
    torch.testing.assert_close(g_collapsed, g_explicit, rtol=1e-4, atol=1e-6)
