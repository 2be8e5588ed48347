"""The fused CPU mixture (`impress.fused_mixture`) equals the explicit float sum and the torch path,
value and coefficient gradient, for every shape of alpha, with the native loops and with numba's; it
is the path a coefficient step takes, and without a compiler the numba loops take over."""

from __future__ import annotations

import functools
import os

import pytest
import torch

from impress import fused_mixture
from impress.backbones import build_backbone
from impress.coefficients import CoeffLayout
from impress.fused_mixture import native_loops, numba_loops
from impress.layers import MaskedConv2d, MaskedLinear, Mixture, masked_layers, task_view
from impress.seeding import generator

FUSED = "_MixtureMaskedWeightBackward"  # the fused path's autograd node
CPU = fused_mixture._cpu_has_the_instructions()


@pytest.fixture(params=["native", "numba"])
def loops(request):
    """Runs a test with each implementation of the loops: the native ones (skipped where this machine
    cannot build or run them) and numba's (the fallback)."""
    if request.param == "numba":
        with numba_loops():
            yield request.param
        return
    if not CPU:
        pytest.skip("the native loops need a CPU with AVX-512 (F, BW, VL, DQ, VBMI) and GFNI")
    if native_loops() is None:
        pytest.skip("the native loops could not be built: no C compiler ($CC, default cc) or it failed")
    yield request.param


def _layer(kind: str, n_masks: int, weights: str = "signed", dtype=torch.float32):
    """A small layer with n_masks random stored masks: (layer, masks (n_masks, *weight.shape)). `wide`
    has rows longer than the native backward's tiles, and a length that is no multiple of 32."""
    layer = {"linear": MaskedLinear(40, 24), "conv": MaskedConv2d(3, 6, 3), "wide": MaskedLinear(150, 37)}[kind]
    layer.init_weight(generator("fm_w", kind))  # signed constant: read by the loops as int8 signs
    if weights == "normal":  # read as floats
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator("fm_normal", kind)))
    layer.to(dtype)
    masks = [torch.rand(layer.weight.shape, generator=generator("fm", kind, i)) > 0.5 for i in range(n_masks)]
    masks = torch.stack(masks)
    for mask in masks:
        layer.store_mask(mask)
    return layer, masks.to(dtype)


_shared_layer = functools.cache(_layer)  # for tests that leave the layer as they found it


def _explicit(weight: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """weight * sum_i alpha[row, i] * mask_i by float masks, rows as `torch.tensor_split` cuts units."""
    rows = alpha if alpha.dim() == 2 else alpha.unsqueeze(0)
    out, m = weight.shape[0], rows.shape[1]
    units = torch.tensor_split(torch.arange(out), len(rows))
    per_unit = torch.cat([rows[r].expand(len(u), m) for r, u in enumerate(units)])  # (out, m)
    return weight * torch.einsum("om,mo...->o...", per_unit, masks[:m])


def _value_and_grad(f, alpha: torch.Tensor, upstream: torch.Tensor):
    alpha = alpha.detach().requires_grad_(True)
    value = f(alpha)
    (grad,) = torch.autograd.grad(value, alpha, upstream)
    return value, grad


def _fused(layer, alpha: torch.Tensor) -> torch.Tensor:
    layer.source = Mixture(alpha)
    return layer.masked_weight()


LAYERS = [("linear", "signed"), ("conv", "signed"), ("conv", "normal"), ("wide", "normal")]  # read as int8 or floats


@pytest.mark.parametrize("kind, weights", LAYERS)
# one mask; a whole byte; bytes past m, and a half word of 16 masks in part; two words; three
@pytest.mark.parametrize("m", [1, 8, 20, 40, 70])
@pytest.mark.parametrize("rows", ["m", "1m", "R", "out"])
def test_fused_equals_the_explicit_sum_and_the_torch_path(kind, weights, m, rows, loops):
    layer, masks = _shared_layer(kind, m + 3, weights)  # more stored masks than mixed: they must weigh 0
    out = layer.weight.shape[0]
    shape = {"m": (m,), "1m": (1, m), "R": (5 if out > 6 else 4, m), "out": (out, m)}[rows]  # R: 24/5, 6/4
    alpha = torch.randn(shape, generator=generator("fm_alpha", m, rows))
    upstream = torch.randn(layer.weight.shape, generator=generator("fm_up", m))
    fused, grad = _value_and_grad(lambda a: _fused(layer, a), alpha, upstream)
    explicit, grad_explicit = _value_and_grad(lambda a: _explicit(layer.weight, masks, a), alpha, upstream)
    torch_path, grad_torch = _value_and_grad(lambda a: layer.weight * Mixture(a)(layer), alpha, upstream)
    assert type(fused.grad_fn).__name__ == FUSED
    assert fused.shape == layer.weight.shape and grad.shape == alpha.shape
    assert torch.allclose(fused, explicit, rtol=1e-5, atol=1e-5)
    assert torch.allclose(torch_path, explicit, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad, grad_explicit, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad_torch, grad_explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 24])
def test_forward_is_as_close_to_the_exact_sum_as_a_float32_sum(rows, loops):
    """numba's fixed-point tables sum exactly: the exact mixture rounded once. The native loops sum in
    float32, within the bound of a float32 sum of the m terms: m u sum_i |w alpha_i mask_i|."""
    layer, masks = _layer("linear", 40)
    alpha = torch.randn(rows, 40, generator=generator("fm_exact")) * torch.logspace(-3, 3, 40)  # wide range
    fused = _fused(layer, alpha).double()
    exact = _explicit(layer.weight.double(), masks.double(), alpha.double())
    if loops == "numba":
        bound = torch.finfo(torch.float32).eps * exact.abs() + 1e-12  # one float32 ulp, at most
    else:
        terms = _explicit(layer.weight.double().abs(), masks.double(), alpha.double().abs())
        bound = 40 * 2.0**-24 * terms
    assert ((fused - exact).abs() <= bound).all()


def test_one_hot_coefficients_give_the_stored_mask_exactly(loops):
    layer, masks = _layer("conv", 20)
    for i in (0, 7, 19):
        alpha = torch.nn.functional.one_hot(torch.tensor(i), 20).float()
        assert torch.equal(_fused(layer, alpha), layer.weight * masks[i])


def test_bank_words_are_cached_until_the_bank_changes(loops):
    layer, masks = _layer("linear", 3)
    alpha = torch.tensor([0.5, -1.0, 2.0])
    words = layer.bank_words()
    before = _fused(layer, alpha)
    assert layer.bank_words() is words  # cached
    layer.store_mask(torch.ones_like(layer.weight))  # a new bank tensor: the words are rebuilt
    assert layer.bank_words() is not words
    assert torch.equal(_fused(layer, torch.tensor([0.5, -1.0, 2.0, 0.0])), before)
    assert torch.equal(_fused(layer, torch.tensor([0.0, 0.0, 0.0, 1.0])), layer.weight)
    words = layer.bank_words()
    with torch.no_grad():
        layer.bank[0].zero_()  # an in-place change: the words are rebuilt too
    assert layer.bank_words() is not words
    assert torch.allclose(_fused(layer, alpha), layer.weight * (alpha[1] * masks[1] + alpha[2] * masks[2]))


@pytest.mark.parametrize("case", ["float64", "trained weight", "non-finite alpha"])
def test_what_the_fused_path_does_not_take_goes_the_torch_way(case):
    layer, masks = _layer("linear", 5, dtype=torch.float64 if case == "float64" else torch.float32)
    alpha = torch.randn(5, generator=generator("fm_fallback")).to(layer.weight.dtype)
    if case == "trained weight":
        layer.weight.requires_grad_(True)
    if case == "non-finite alpha":
        alpha[2] = float("inf")
    mixed = _fused(layer, alpha.requires_grad_(True))
    assert type(mixed.grad_fn).__name__ != FUSED
    if case == "non-finite alpha":  # not fixed-point garbage: non-finite, as the float sum is
        assert not mixed.isfinite().all()
    else:
        assert torch.allclose(mixed, _explicit(layer.weight, masks, alpha.detach()), atol=1e-6)


def test_alpha_rows_and_masks_are_checked():
    layer, _ = _layer("linear", 4)
    with pytest.raises(ValueError, match="25 rows; between 1 and the layer's 24"):
        _fused(layer, torch.ones(25, 4))
    with pytest.raises(IndexError, match="holds 4 masks; 5 were asked"):
        _fused(layer, torch.ones(5))


def test_a_coefficient_step_takes_the_fused_path(loops):
    net = build_backbone("fc1024", in_shape=(1, 8, 8), num_classes=10, seed=0, widths=(32, 32))
    for i, layer in enumerate(masked_layers(net)):
        for r in range(9):
            layer.store_mask(torch.rand(layer.weight.shape, generator=generator("fm_net", i, r)) > 0.5)
    layout = CoeffLayout([layer.weight.shape[0] for layer in masked_layers(net)], 9, "channel")
    raw = torch.nn.Parameter(layout.initial())
    with task_view(net, layout.sources(raw)):
        weights = [layer.masked_weight() for layer in masked_layers(net)]
        net(torch.randn(4, 1, 8, 8)).sum().backward()
    assert all(type(w.grad_fn).__name__ == FUSED for w in weights)
    assert raw.grad is not None and raw.grad.abs().sum() > 0


@pytest.mark.skipif(not CPU, reason="without AVX-512 and GFNI the native loops are never built")
@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"])  # no such program; a failing build
def test_without_a_working_compiler_the_numba_loops_run(compiler, monkeypatch):
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setenv("XDG_CACHE_HOME", os.devnull)  # no cache folder: nothing built before is found
    native_loops.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="numba loops instead"):
            assert native_loops() is None
        layer, masks = _layer("conv", 6)
        alpha = torch.randn(6, generator=generator("fm_no_cc"))
        mixed = _fused(layer, alpha.requires_grad_(True))
        assert type(mixed.grad_fn).__name__ == FUSED
        assert torch.allclose(mixed, _explicit(layer.weight, masks, alpha.detach()), atol=1e-6)
    finally:
        native_loops.cache_clear()  # the next test builds (or finds) them again


def test_a_cpu_without_the_instructions_runs_the_numba_loops_silently(monkeypatch, recwarn):
    monkeypatch.setattr(fused_mixture.binding, "get_host_cpu_features", lambda: {"avx2": True})
    assert fused_mixture._load("cc") is None
    assert not recwarn.list


@pytest.mark.skipif(not CPU or native_loops() is None, reason="needs a C compiler and AVX-512 with GFNI")
def test_the_native_loops_are_built_once_into_the_cache_or_a_temporary_folder(tmp_path, monkeypatch):
    compiler = os.path.realpath(fused_mixture.shutil.which(os.environ.get("CC") or "cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = fused_mixture._cache_folder()
    assert folder == tmp_path / "impress" / "kernels"
    library = fused_mixture._build(compiler, folder)
    built = library.stat().st_mtime_ns
    assert fused_mixture._build(compiler, folder) == library and library.stat().st_mtime_ns == built  # not rebuilt
    assert [p.name for p in folder.iterdir()] == [library.name]  # no partial file left behind
    monkeypatch.setenv("XDG_CACHE_HOME", str(library))  # a file: no cache folder can be made in it
    assert fused_mixture._cache_folder() is None
    assert fused_mixture._load(os.environ.get("CC") or "cc") is not None  # built in a temporary folder
