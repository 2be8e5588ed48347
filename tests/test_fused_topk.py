"""The fused CPU top-k masked weight equals the eager path bit for bit, value and gradient, whatever
its cache holds; and it is the path mask training really takes."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

import impress
from impress.fused_topk import _SIGNS, _weight_data, fused_applies, topk_masked_weight
from impress.layers import MaskedConv2d, MaskedLinear, TopK, masked_layers, task_view
from impress.masks import TopKCache, keep_count, topk_mask
from impress.seeding import generator


def _eager(scores: torch.Tensor, weight: torch.Tensor, density: float) -> torch.Tensor:
    return weight * topk_mask(scores, density)  # no cache: the full selection


def _check(scores: torch.Tensor, weight: torch.Tensor, density: float, cache: TopKCache, seed: object) -> None:
    """Fused value and score gradient equal the eager ones exactly, for a random upstream gradient."""
    scores = scores.detach().requires_grad_(True)
    upstream = torch.randn(weight.shape, generator=generator("upstream", seed)).to(weight.dtype)
    fused = topk_masked_weight(scores, weight, density, cache=cache)
    (grad,) = torch.autograd.grad(fused, scores, upstream)
    eager = _eager(scores, weight, density)
    (grad_eager,) = torch.autograd.grad(eager, scores, upstream)
    assert fused.dtype == weight.dtype and fused.shape == weight.shape
    assert torch.equal(fused, eager)
    assert torch.equal(grad, grad_eager)
    assert int(torch.count_nonzero(fused)) == keep_count(scores.numel(), density)  # the weights have no zeros


def _weight(shape, dtype=torch.float32, seed=0, kind: str = "signed") -> torch.Tensor:
    """A signed-constant weight like the backbones' (read by the loops as int8 signs), or a normal one
    (read as floats); no zeros, so the kept count shows in the product."""
    if kind == "normal":
        w = torch.randn(shape, generator=generator("weight", seed)).to(dtype)
        return torch.where(w == 0, 1.0, w)
    return (torch.randint(0, 2, shape, generator=generator("weight", seed)) * 2 - 1).to(dtype) * 0.05


@pytest.mark.parametrize("weights", ["signed", "normal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["walk", "drift", "ties", "jumps"])
def test_a_training_sequence_equals_the_eager_path(dtype, kind, weights):
    """Scores changing as under an optimizer (and, for `jumps`, far beyond any band), with a shape
    that is not a multiple of the kernel's block: every step exact, and the band really used."""
    g = generator("fused_walk", kind)
    shape = (301, 203)
    weight = _weight(shape, dtype, kind=weights)
    scores = (torch.rand(shape, generator=g) * 2 - 1).to(dtype) * 0.05
    cache = TopKCache()
    for step in range(30):
        _check(scores, weight, 0.5, cache, (kind, step))
        noise = torch.randn(shape, generator=g).to(dtype)
        if kind == "walk":
            scores = scores + 1e-3 * noise
        elif kind == "drift":  # the distribution spreads: the cut moves every step
            scores = scores * 1.03 + 1e-3 * noise
        elif kind == "ties":  # a coarse grid: ties at the cut at every step
            scores = torch.round((scores + 2e-3 * noise) * 200) / 200
        else:  # every third step, a jump no band predicts
            scores = scores * (3.0 if step % 3 == 2 else 1.0) + 1e-3 * noise
    assert cache.warm >= (20 if kind == "jumps" else 28)


@pytest.mark.parametrize("weights", ["signed", "normal"])
@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 1000, 65_537])
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.999, 1.0])
def test_sizes_and_densities(n, density, weights):
    weight = _weight((n,), seed=n, kind=weights)
    scores = torch.randn(n, generator=generator("fused_n", n))
    cache = TopKCache()
    for step in range(3):  # cold, then warm on the same and on slightly moved scores
        _check(scores + 1e-4 * step, weight, density, cache, (n, density, step))


def test_all_equal_and_all_zero_scores_keep_the_first_indices():
    weight = _weight((40_000,))
    for scores in (torch.full((40_000,), 0.25), torch.zeros(40_000)):
        cache = TopKCache()
        for step in range(3):
            _check(scores, weight, 0.4, cache, step)
            kept = topk_masked_weight(scores, weight, 0.4, cache=cache).nonzero().squeeze(1)
            assert torch.equal(kept, torch.arange(16_000))


def test_a_foreign_or_stale_cache_never_changes_the_result():
    cache = TopKCache()
    weight = _weight((200, 250))
    for seed, scale in [(1, 1.0), (2, 100.0), (3, 1e-6), (3, 1e-6)]:  # unrelated tensors through one cache
        scores = torch.randn(200, 250, generator=generator("foreign", seed)) * scale
        _check(scores, weight, 0.5, cache, seed)
    _check(torch.randn(200, 250), weight, 0.2, cache, "density")  # another density, same cache


def test_infinite_and_huge_scores():
    weight = _weight((50_000,))
    scores = torch.randn(50_000, generator=generator("huge"))
    scores[::7] = torch.inf
    scores[3::11] = 3e38  # a band around these overflows to infinity
    cache = TopKCache()
    for density in (0.1, 0.1, 0.2, 0.2, 0.5, 0.5, 0.05):
        _check(scores, weight, density, cache, density)


def test_non_contiguous_scores_and_conv_shaped_weights():
    weight = _weight((16, 8, 3, 3))
    scores = torch.randn(3, 3, 8, 16, generator=generator("conv")).permute(3, 2, 1, 0)  # not contiguous
    cache = TopKCache()
    for step in range(3):
        _check(scores * (1 + 1e-3 * step), weight, 0.5, cache, step)


def test_a_signed_constant_weight_is_read_as_signs_until_it_changes():
    weight = _weight((120, 90))
    scores = torch.randn(120, 90, generator=generator("signs"))
    cache = TopKCache()
    w, scale = _weight_data(weight)
    assert w.dtype == numpy.int8 and scale == numpy.float32(0.05)
    assert torch.equal(torch.from_numpy(w).float() * float(scale), weight.flatten())
    _check(scores, weight, 0.5, cache, 0)
    with torch.no_grad():  # changed in place (a new version): read as floats from now on
        weight[0, 0] = 0.07
    assert _weight_data(weight)[0].dtype == numpy.float32
    _check(scores, weight, 0.5, cache, 1)
    weight.data = _weight((120, 90), seed=1)  # new storage, signed again: new signs
    assert torch.equal(torch.from_numpy(_weight_data(weight)[0]).float() * 0.05, weight.flatten())
    _check(scores, weight, 0.5, cache, 2)
    key = id(weight)
    del weight
    gc.collect()
    assert key not in _SIGNS  # the signs go with their weight


def test_the_fused_path_applies_only_where_it_is_exact():
    scores, weight = torch.randn(10), torch.randn(10)
    assert fused_applies(scores, weight)
    assert not fused_applies(scores.half(), weight.half())  # no exact compiled loop for half precision
    assert not fused_applies(scores, weight.double())
    trained = weight.clone().requires_grad_(True)  # a trained weight gets its gradient from the eager path
    assert not fused_applies(scores, trained)
    (grad,) = torch.autograd.grad(topk_masked_weight(scores, trained, 0.5).sum(), trained)
    assert torch.equal(grad, topk_mask(scores, 0.5))


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_mask_training_takes_the_fused_path_with_the_eager_result(layer_kind):
    """Ten Adam steps of a layer's scores, fused and eager from the same start: identical scores."""
    results = []
    for fused in (True, False):
        layer = MaskedLinear(300, 200) if layer_kind == "linear" else MaskedConv2d(8, 16, 3, padding=1)
        layer.init_weight(generator("layer_w"))
        layer.reset_scores(generator("layer_s"))
        x = torch.randn(16, *((300,) if layer_kind == "linear" else (8, 10, 10)), generator=generator("layer_x"))
        opt = torch.optim.Adam([layer.scores], lr=0.01)
        with task_view(layer, TopK(0.5, fused=fused)):
            for _ in range(10):
                opt.zero_grad()
                layer(x).square().mean().backward()
                opt.step()
        if fused:
            assert layer.topk_cache.warm >= 8
        results.append(layer.scores.detach().clone())
    assert torch.equal(*results)


def test_a_backbone_trains_its_scores_through_the_fused_path():
    from impress.backbones import build_backbone

    net = build_backbone("fc1024", in_shape=(1, 8, 8), num_classes=10, seed=0, widths=(64, 64))
    for i, layer in enumerate(masked_layers(net)):
        layer.reset_scores(generator("bb", i))
    with task_view(net, TopK(0.5)):
        net(torch.randn(4, 1, 8, 8)).sum().backward()
        net(torch.randn(4, 1, 8, 8)).sum().backward()
    assert all(layer.topk_cache.warm + layer.topk_cache.full == 2 for layer in masked_layers(net))
    assert all(layer.scores.grad is not None for layer in masked_layers(net))


# A fresh process that imports the package from a read-only mount and checks the fused path there.
_READ_ONLY_PROBE = """
import sys, torch, impress
from impress import fused_topk
from impress.masks import TopKCache, topk_mask
assert impress.__file__.startswith(sys.argv[1]), impress.__file__
s, w = torch.randn(300, 200).requires_grad_(True), torch.randn(300, 200)
cache = TopKCache()
for _ in range(3):
    fused = fused_topk.topk_masked_weight(s, w, 0.5, cache=cache)
    assert torch.equal(fused, w * topk_mask(s, 0.5))
    fused.sum().backward()
assert cache.warm == 2 and torch.equal(s.grad, 3 * w * s.detach().sign())
print("cached:", fused_topk._mask_and_band._cache.__class__.__name__)
"""


def test_a_read_only_install_without_a_writable_home_still_imports_and_computes(tmp_path):
    """numba caches compiled code beside the source or in the user's cache; with neither writable
    (a read-only container image, say) the loops compile in the process instead."""
    stage, ro = tmp_path / "stage", tmp_path / "ro"
    shutil.copytree(Path(impress.__file__).parent, stage / "impress", ignore=shutil.ignore_patterns("__pycache__"))
    ro.mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(stage), str(ro)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here ({mount.stderr.strip()})")
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(ro),
            "HOME": str(ro),  # the user-wide cache (~/.cache/numba) is read-only too
            "XDG_CACHE_HOME": str(ro / ".cache"),
            "NUMBA_CACHE_DIR": str(ro / "numba"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc = subprocess.run(
            [sys.executable, "-c", _READ_ONLY_PROBE, str(ro)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]  # the package from the mount, not the checkout
        assert "cached: NullCache" in proc.stdout  # compiled in the process, nothing written
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)
