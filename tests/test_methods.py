"""What every registered method must do, run for each of its `examples`: a method added to
`impress.methods.METHODS` is tested here without a line of its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import Stop, stop_at

from impress.checkpoint import FILENAME, method_state
from impress.config import Config, ConfigError
from impress.layers import task_norms
from impress.methods import METHODS, foreign_fields
from impress.trainer import build, resolve_device, run

CPU = resolve_device("cpu")
SMALL = dict(num_tasks=4, epochs=2, widths=(64, 64), threads=1)
CASES = [
    pytest.param(
        Config(method=name, **{**SMALL, **example}), id=f"{name}-{'-'.join(map(str, example.values())) or 'default'}"
    )
    for name, cls in METHODS.items()
    for example in cls.examples
]


def _logits(method, task):
    x, _ = task.test_data()
    method.eval()
    with torch.no_grad(), method.view(task.index):
        return method.net(x)


def _scratch(key: str) -> bool:
    return "running_" in key or key.endswith("num_batches_tracked")


def _stored_bits(method) -> int:
    """Bits of the method's checkpointed state: a bank's masks at one bit per weight, floats and
    int8 values at their size (32, 16, 8); BatchNorm's running statistics (scratch of the task being
    learned) and bookkeeping counters (int64) not counted."""
    bits = 0
    for key, value in method_state(method).items():
        if _scratch(key):
            continue
        if key.endswith("bank"):
            layer = next(layer for name, layer in method.named_modules() if key == f"{name}.bank")
            bits += value.shape[0] * layer.weight.numel()
        elif value.is_floating_point() or value.dtype == torch.int8:
            bits += value.numel() * value.element_size() * 8
    return bits


def test_config_choices_are_the_registry():
    method = next(f for f in dataclasses.fields(Config) if f.name == "method")
    assert method.default in METHODS
    for name in METHODS:
        assert Config(method=name).method == name
    with pytest.raises(ConfigError, match="method: 'nope' is not one of"):
        Config(method="nope")


@pytest.mark.parametrize("cfg", CASES)
def test_old_tasks_are_bit_identical_after_later_tasks(cfg):
    stream, method = build(cfg, CPU)
    if method.forgets:
        pytest.skip(f"{method.label} forgets by design")  # NOTE: a skip, not a pass: reported as such
    method.learn(stream[0], lambda e: None)
    method.learn(stream[1], lambda e: None)
    before = [_logits(method, stream[t]) for t in range(2)]
    state = {k: v.clone() for k, v in method_state(method).items()}
    for t in range(2, len(stream)):
        method.learn(stream[t], lambda e: None)
    for t in range(2):
        assert torch.equal(_logits(method, stream[t]), before[t])
    after = method_state(method)
    for key, value in state.items():  # stored per-task state only grows: its first rows never change
        if _scratch(key):
            continue
        assert torch.equal(after[key][: len(value)] if value.dim() else after[key], value), key
    assert method.tasks_learned == len(stream)


@pytest.mark.parametrize("cfg", CASES)
def test_reported_bits_are_what_the_checkpoint_grows_by(cfg):
    """The bits a method reports per task are what its stored state grows by in the steady state,
    and its total after the stream is what is stored (plus the backbone's seed, and a random bank's)."""
    stream, method = build(cfg, CPU)
    sizes = []
    for task in stream:
        method.learn(task, lambda e: None)
        sizes.append(_stored_bits(method))
    bits = method.bits()
    T = len(stream)
    assert bits.bank_tasks < T - 1, "every example must learn two tasks past those in its one-time bits"
    assert sizes[-1] - sizes[-2] == bits.per_task_bits
    regenerated = getattr(cfg, "impressions", None) == "random" and cfg.method == "impresslearn"
    if not regenerated:  # NOTE: a random bank is in the checkpoint but costs only its seed
        assert sizes[-1] + 64 == bits.total_bits(T)


@pytest.mark.parametrize("cfg", CASES)
def test_resume_after_a_stop_is_exact(cfg, tmp_path):
    cfg = cfg.replace(num_tasks=3)
    full = run(cfg, checkpoint_dir=tmp_path / "full")

    with pytest.raises(Stop):
        run(cfg, report=stop_at(1), checkpoint_dir=tmp_path / "cut")
    reported = []
    resumed = run(cfg, report=reported.append, checkpoint_dir=tmp_path / "cut")
    assert [m["step"] for m in reported] == [1, 2] and {m["resumed_from"] for m in reported} == {2}
    np.testing.assert_array_equal(np.array(resumed.acc_matrix), np.array(full.acc_matrix))
    a = torch.load(tmp_path / "full" / FILENAME, weights_only=True)["method"]
    b = torch.load(tmp_path / "cut" / FILENAME, weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(METHODS))
def test_task_inference_runs_exactly_where_the_method_can_be_inferred(name):
    cls = METHODS[name]
    cfg = dict(
        method=name, scenario="GNu", stream="permuted", **{**SMALL, "num_tasks": 3, "epochs": 1, **cls.examples[0]}
    )
    if not cls.infers:
        with pytest.raises(ConfigError, match="stores none to infer from"):
            Config(**cfg)
        return
    result = run(Config(**cfg))
    for split in ("val", "test"):
        assert {f"{split}/task_infer/acc", f"{split}/acc/gnu"} <= set(result.metrics)
    assert result.metrics["test/task_infer/acc"] > 1 / 3  # above chance on permuted digits


def test_every_method_labels_its_rows_and_blanks_what_it_ignores():
    for name, cls in METHODS.items():
        assert cls.variant({"method": name}).startswith(cls.label)
        assert not set(foreign_fields(name)) & set(cls.uses)
        for field in foreign_fields(name):
            assert field in {f.name for f in dataclasses.fields(Config)}


def test_per_task_norms_are_stored_for_every_task():
    for name, cls in METHODS.items():
        cfg = Config(method=name, **{**SMALL, "num_tasks": 3, "epochs": 1, **cls.examples[0], "backbone": "convnet"})
        stream, method = build(cfg, CPU)
        for task in stream:
            method.learn(task, lambda e: None)
        assert all(n.task_mean.shape[0] == 3 for n in task_norms(method.net)), name
