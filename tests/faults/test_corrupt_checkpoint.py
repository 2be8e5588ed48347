"""A damaged or hostile checkpoint under `impress run --resume` (a real subprocess): the run stops
with a message naming the file and what to do, and every file in the run's folder is left as it was.
A checkpoint carrying a pickled Python object is refused by `weights_only` loading: nothing in it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from impress.checkpoint import FILENAME
from impress.config import Config

FLAGS = {"method": "impresslearn", "m": "2", "num_tasks": "3", "epochs": "1", "widths": "64,64"}
NAME = Config.from_dict(FLAGS).run_name()


def _impress_run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [token for key, value in FLAGS.items() for token in (f"--{key}", value)]
    return subprocess.run(
        [sys.executable, "-m", "impress.cli", "run", *flags, "--out", str(out), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    proc = _impress_run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / NAME


class _Payload:
    """Unpickling this would create a directory: the stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _truncate_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flip(where: float):
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        i = int(len(data) * where)
        data[i : i + 8] = bytes(b ^ 0xFF for b in data[i : i + 8])
        path.write_bytes(bytes(data))

    return flip


def _pickled_object(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    payload["method"]["extra"] = _Payload(path.parent / "code-ran")
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate_half, "unreadable checkpoint, truncated or not a checkpoint"),
        (_empty, "unreadable checkpoint, truncated or not a checkpoint"),
        (_flip(0.5), "corrupted checkpoint (archive/data/"),  # inside a tensor: torch alone would load it
        (_flip(0.05), "corrupted checkpoint (archive/data.pkl fails its CRC-32 check)"),
        (_pickled_object, "refused to load: it holds Python objects"),
    ],
    ids=["truncated", "empty", "tensor_bytes_flipped", "pickle_bytes_flipped", "pickled_object"],
)
def test_damaged_checkpoint_stops_resume_and_overwrites_nothing(finished_run, tmp_path, damage, message):
    run_dir = tmp_path / NAME
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "checkpoint" / FILENAME
    damage(path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}

    proc = _impress_run(tmp_path, "--resume")

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path}: {message}" in proc.stderr
    assert "delete it to start the run over" in proc.stderr and "Traceback" not in proc.stderr
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # results, accuracy matrices, config.yaml and the checkpoint untouched
    assert not (run_dir / "checkpoint" / "code-ran").exists()


def test_a_checkpoint_from_before_the_validation_split_stops_resume_and_overwrites_nothing(finished_run, tmp_path):
    """A checkpoint without validation accuracies was trained on what is now the validation split:
    continuing it would choose on data it learned from."""
    run_dir = tmp_path / NAME
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "checkpoint" / FILENAME
    payload = torch.load(path, weights_only=True)
    del payload["val_acc_matrix"]
    torch.save(payload, path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}

    proc = _impress_run(tmp_path, "--resume")

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path.parent}: the checkpoint has no validation accuracies" in proc.stderr
    assert "delete it to start the run afresh" in proc.stderr and "Traceback" not in proc.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_pickled_object_is_refused_and_never_run_by_the_loader(tmp_path):
    from impress.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "code-ran"
    torch.save({"format": 1, "config": _Payload(marker)}, tmp_path / FILENAME)
    with pytest.raises(CheckpointError, match="unsupported GLOBAL posix.mkdir"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    torch.load(tmp_path / FILENAME, weights_only=False)  # what `weights_only` prevents: the code runs
    assert marker.is_dir()
