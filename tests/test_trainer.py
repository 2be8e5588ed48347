from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import Stop, stop_at

from impress.checkpoint import FILENAME, CheckpointError, load_checkpoint, save_checkpoint
from impress.config import Config
from impress.layers import TopK, masked_layers, task_view
from impress.methods import DivergedError, train_epochs
from impress.seeding import generator
from impress.streams import SOURCES, Source
from impress.trainer import build, evaluate, resolve_device, run

CPU = resolve_device("cpu")
SMALL = dict(num_tasks=4, epochs=2, widths=(64, 64))


def _logits(method, task):
    x, _ = task.test_data()
    method.eval()
    with torch.no_grad(), method.view(task.index):
        return method.net(x)


def test_resume_is_exact(tmp_path):
    cfg = Config(m=2, num_tasks=5, epochs=2, widths=(64, 64))
    first: list[dict] = []
    full = run(cfg, report=first.append, checkpoint_dir=tmp_path / "full")
    # resumed after the last task (stopped before its report reached anyone): the final report again,
    # nothing learned again
    again: list[dict] = []
    run(cfg, report=again.append, checkpoint_dir=tmp_path / "full")
    assert [m["step"] for m in again] == [4] and again[0]["resumed_from"] == 5
    same = [k for k in first[-1] if k != "resumed_from"]
    assert {k: again[0][k] for k in same} == {k: first[-1][k] for k in same}

    with pytest.raises(Stop):  # killed in task 3's report (its checkpoint is written): one coefficient task done
        run(cfg, report=stop_at(3), checkpoint_dir=tmp_path / "cut")
    reported = []
    resumed = run(cfg, report=reported.append, checkpoint_dir=tmp_path / "cut")
    assert [m["step"] for m in reported] == [3, 4]  # nothing redone; the lost report of task 3 repeated
    assert {m["resumed_from"] for m in reported} == {4}
    same = [k for k in first[3] if k not in ("resumed_from", "time/task_s")]
    assert {k: reported[0][k] for k in same} == {k: first[3][k] for k in same}
    np.testing.assert_array_equal(np.array(resumed.acc_matrix), np.array(full.acc_matrix))
    np.testing.assert_array_equal(np.array(resumed.val_acc_matrix), np.array(full.val_acc_matrix))
    a = torch.load(tmp_path / "full" / FILENAME, weights_only=True)["method"]
    b = torch.load(tmp_path / "cut" / FILENAME, weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_and_test_images_never_reach_training(tmp_path, monkeypatch):
    """Scrambling the validation and test splits changes what is measured, never what is learned."""
    cfg = Config(m=2, num_tasks=3, epochs=2, widths=(32, 32))
    clean = run(cfg, checkpoint_dir=tmp_path / "clean")
    digits = SOURCES["digits"]

    def scrambled(root=None, download=False):
        s = digits(root, download)
        g = torch.Generator().manual_seed(1)
        noise = {k: torch.rand(getattr(s, f"x_{k}").shape, generator=g) for k in ("val", "test")}
        return Source(
            s.name, s.x_train, s.y_train, noise["val"], s.y_val.flip(0), noise["test"], s.y_test.flip(0), num_classes=10
        )

    monkeypatch.setitem(SOURCES, "digits", scrambled)
    other = run(cfg, checkpoint_dir=tmp_path / "scrambled")
    a = torch.load(tmp_path / "clean" / FILENAME, weights_only=True)["method"]
    b = torch.load(tmp_path / "scrambled" / FILENAME, weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clean.acc_matrix != other.acc_matrix and clean.val_acc_matrix != other.val_acc_matrix


def test_checkpoint_holds_no_frozen_weights(tmp_path):
    cfg = Config(method="supsup", num_tasks=2, epochs=1, widths=(64, 64))
    run(cfg, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / FILENAME, weights_only=True)["method"]
    assert not any(k.endswith(".weight") or k.endswith(".scores") for k in state)
    assert all(v.dtype == torch.uint8 for k, v in state.items() if k.endswith("bank"))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    run(Config(method="supsup", num_tasks=2, epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"differs in \['epochs'\]"):
        run(Config(method="supsup", num_tasks=2, epochs=2), checkpoint_dir=tmp_path)


def test_a_checkpoint_from_before_the_validation_split_is_refused(tmp_path):
    # such a run trained on what is now the validation split: continuing it would mix two splits
    cfg = Config(method="supsup", num_tasks=2, epochs=1, widths=(16,))
    run(cfg, checkpoint_dir=tmp_path)
    payload = load_checkpoint(tmp_path)
    del payload["val_acc_matrix"]
    save_checkpoint(tmp_path, payload)
    with pytest.raises(CheckpointError, match="predates the validation split.*delete it"):
        run(cfg, checkpoint_dir=tmp_path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    run(Config(method="supsup", num_tasks=2, epochs=1), checkpoint_dir=tmp_path)
    path = tmp_path / FILENAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        run(Config(method="supsup", num_tasks=2, epochs=1), checkpoint_dir=tmp_path)


def test_diverging_loss_names_task_and_learning_rate():
    cfg = Config(method="supsup", num_tasks=1, epochs=2)
    stream, method = build(cfg, CPU)
    params = [layer.scores for layer in masked_layers(method.net)]

    def overflowing(x):  # a network whose logits overflow: the loss is NaN
        return method.net(x) * float("inf")

    with task_view(method.net, TopK(0.5)), pytest.raises(DivergedError, match=r"task 0 .*epoch 1.*lr=0.01"):
        train_epochs(
            overflowing,
            params,
            stream[0],
            cfg,
            lr=cfg.lr,
            epochs=2,
            g=generator("t"),
            progress=lambda e: None,
            phase="mask",
        )


def test_reports_use_task_index_as_step():
    reported = []
    result = run(Config(m=2, num_tasks=3, epochs=1), report=reported.append)
    assert [m["step"] for m in reported] == [0, 1, 2]
    for split, R in (("test", result.acc_matrix), ("val", result.val_acc_matrix)):
        task_keys = sorted(k for k in reported[-1] if k.startswith(f"{split}/acc/task_"))
        assert task_keys == [f"{split}/acc/task_000", f"{split}/acc/task_001", f"{split}/acc/task_002"]
        assert reported[-1][f"{split}/acc/avg"] == result.metrics[f"{split}/acc/avg"] == np.mean(R[-1])
    # validation and test are different images: the two matrices are measured, not copied
    assert result.val_acc_matrix != result.acc_matrix
    assert reported[-1]["bits/total"] == result.overhead["total_bits"]
    assert len(result.task_seconds) == 3 and all(s > 0 for s in result.task_seconds)
    assert result.provenance["seed"] == 0 and "torch" in result.provenance["versions"]


def test_split_stream_with_resnet_runs():
    cfg = Config(method="supsup", stream="split", num_tasks=2, backbone="convnet", epochs=1)
    result = run(cfg)
    assert len(result.acc_matrix) == 2 and not math.isnan(result.metrics["test/acc/avg"])


def test_evaluate_is_accuracy_of_the_view():
    cfg = Config(method="supsup", num_tasks=1, epochs=1)
    stream, method = build(cfg, CPU)
    method.learn(stream[0], lambda e: None)
    _, y = stream[0].test_data()
    expected = float((_logits(method, stream[0]).argmax(1) == y).float().mean())
    assert evaluate(method, stream[0]) == pytest.approx(expected)


def test_a_checkpoint_from_before_a_config_field_existed_resumes(tmp_path):
    """A field added to `Config` later has a default that computes what was computed before: a
    checkpoint written without it (by an earlier version) still fits, and resumes."""
    cfg = Config(m=2, num_tasks=3, epochs=1, widths=(32, 32))
    full = run(cfg, checkpoint_dir=tmp_path / "full")

    with pytest.raises(Stop):
        run(cfg, report=stop_at(1), checkpoint_dir=tmp_path / "old")
    ckpt = load_checkpoint(tmp_path / "old")
    del ckpt["config"]["shared_weight"]  # as an earlier version wrote it
    save_checkpoint(tmp_path / "old", ckpt)
    resumed = run(cfg, checkpoint_dir=tmp_path / "old")
    np.testing.assert_array_equal(np.array(resumed.acc_matrix), np.array(full.acc_matrix))
    ckpt["config"]["m"] = 3  # a field it has, with another value: still refused
    save_checkpoint(tmp_path / "old", ckpt)
    with pytest.raises(CheckpointError, match=r"differs in \['m'\]"):
        run(cfg, checkpoint_dir=tmp_path / "old")
