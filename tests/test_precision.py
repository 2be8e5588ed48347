"""Coefficient precision: what `alpha_bits` stores, what it costs, and that the stored values are
what a task is evaluated and inferred with."""

from __future__ import annotations

import functools

import pytest
import torch

from impress.config import Config, ConfigError
from impress.inference import task_basis
from impress.layers import task_view
from impress.methods import ImpressLearn
from impress.precision import load, round_trip, store, stored_bits
from impress.trainer import build, resolve_device

CPU = resolve_device("cpu")


def _rows(n: int, m: int, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 1, n).unsqueeze(1)  # rows of very different magnitude
    return (torch.randn(n, m, generator=g) * scale).flatten()


@pytest.mark.parametrize("alpha_bits", [32, 16, 8])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_counted_bits_are_the_stored_tensors_bits(alpha_bits, m):
    coeffs = _rows(7, m)
    values, scales = store(coeffs, m, alpha_bits)
    held = values.numel() * values.element_size() * 8
    held += 0 if scales is None else scales.numel() * scales.element_size() * 8
    assert held == stored_bits(coeffs.numel(), m, alpha_bits)
    assert values.dtype == {32: torch.float32, 16: torch.float16, 8: torch.int8}[alpha_bits]


def test_float_precisions_round_as_their_dtype():
    coeffs = _rows(6, 5)
    assert torch.equal(round_trip(coeffs, 5, 32), coeffs)
    assert torch.equal(round_trip(coeffs, 5, 16), coeffs.half().float())
    assert not torch.equal(round_trip(coeffs, 5, 16), coeffs)


def test_int8_keeps_each_row_within_half_a_step_of_its_own_scale():
    m = 5
    coeffs = _rows(40, m)
    values, scales = store(coeffs, m, 8)
    rows, back = coeffs.view(-1, m), round_trip(coeffs, m, 8).view(-1, m)
    step = scales.float().unsqueeze(1)
    assert (values.abs() <= 127).all()
    assert ((back - rows).abs() <= step / 2 + 1e-7 * rows.abs()).all()
    # a row's largest magnitude uses the full range: its error is the float16 scale's rounding only
    top = rows.abs().argmax(dim=1)
    assert (values.view(-1, m).gather(1, top.unsqueeze(1)).abs() >= 126).all()
    # per-row scales: the smallest rows (1e-3) keep three significant digits, not zero
    assert (back[0] != 0).any() and torch.allclose(back[0], rows[0], rtol=0.02, atol=1e-5)


def test_int8_zero_rows_and_batches():
    m = 4
    zero = torch.zeros(3 * m)
    assert torch.equal(round_trip(zero, m, 8), zero)
    batch = torch.stack([_rows(3, m, seed=s) for s in range(5)])  # (tasks, size): one scale per task and row
    values, scales = store(batch, m, 8)
    assert values.shape == batch.shape and scales.shape == (5, 3)
    for t in range(5):
        assert torch.equal(load(values[t], scales[t], m), round_trip(batch[t], m, 8))


def test_alpha_bits_is_a_validated_choice():
    assert Config.from_dict({"alpha_bits": "16"}).alpha_bits == 16
    with pytest.raises(ConfigError, match=r"alpha_bits: 4 is not one of \[32, 16, 8\]"):
        Config(alpha_bits=4)


# ---------------------------------------------------------------------------------------------
# A method stores, evaluates and infers with the stored coefficients

BASE = Config(method="impresslearn", m=3, granularity="group", groups=3, stream="permuted", num_tasks=5)
BASE = BASE.replace(widths=(32, 32), epochs=2, threads=1)


@functools.cache
def _learned(alpha_bits: int) -> tuple[list, ImpressLearn]:
    torch.set_num_threads(1)
    stream, method = build(BASE.replace(alpha_bits=alpha_bits), CPU)
    for task in stream:
        method.learn(task, lambda event: None)
    return stream, method.eval()


def _logits(method, x, t=None, alpha=None):
    with torch.no_grad():
        if alpha is None:
            with method.view(t):
                return method.net(x)
        with task_view(method.net, method.layout.sources(alpha), bn_task=t):
            return method.net(x)


@pytest.mark.parametrize("alpha_bits", [16, 8])
def test_stored_coefficients_are_the_float32_ones_rounded_and_are_what_a_task_computes_with(alpha_bits):
    """Training is the same at every precision (the same seed learns the same float32 rows); what
    is kept is those rows stored at `alpha_bits`, and a task's view computes with exactly them."""
    stream, full = _learned(32)
    _, low = _learned(alpha_bits)
    assert low.coeffs.dtype == {16: torch.float16, 8: torch.int8}[alpha_bits]
    values, scales = store(full.coeffs, BASE.m, alpha_bits)
    assert torch.equal(low.coeffs, values)
    if scales is not None:
        assert torch.equal(low.coeff_scales, scales)
    stored = round_trip(full.coeffs, BASE.m, alpha_bits)
    assert torch.equal(low.alphas, stored)
    x = stream[-1].test_data()[0]
    for t in range(low.n_dedicated, BASE.num_tasks):
        row = t - low.n_dedicated
        seen = _logits(low, x, t)
        assert torch.equal(seen, _logits(low, x, t, stored[row]))
        assert not torch.equal(seen, _logits(full, x, t, full.coeffs[row]))  # the rounding is visible


def test_inference_superposes_the_stored_coefficients():
    _, low = _learned(8)
    basis = task_basis(low, gain="raw")
    assert torch.equal(basis.coeffs[low.n_dedicated :], low.alphas)


def test_a_stored_8_bit_checkpoint_reloads_exactly():
    stream, low = _learned(8)
    _, again = build(BASE.replace(alpha_bits=8), CPU)
    again.load_state_dict(low.state_dict())
    again.eval()
    x = stream[-1].test_data()[0]
    assert torch.equal(_logits(again, x, BASE.num_tasks - 1), _logits(low, x, BASE.num_tasks - 1))
