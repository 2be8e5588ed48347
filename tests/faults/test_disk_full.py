"""A full disk while `impress run` writes a checkpoint: a real size-limited tmpfs mount (ENOSPC),
and an OS file-size limit on the process (RLIMIT_FSIZE, EFBIG). The run stops with a message
naming the file and the reason, the previous checkpoint is intact, and `--resume` on a roomier
disk finishes with the results of an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from impress.checkpoint import FILENAME, load_checkpoint
from impress.config import Config
from impress.trainer import run

FLAGS = {"method": "supsup", "num_tasks": "4", "epochs": "2", "widths": "256,256"}  # checkpoints grow ~10 KB a task
CFG = Config.from_dict(FLAGS)
PAGE = os.sysconf("SC_PAGE_SIZE")


def _impress_run(out: Path, *extra: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # runs in the child before exec: only the run is limited
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    flags = [token for key, value in FLAGS.items() for token in (f"--{key}", value)]
    # NOTE: no bytecode writes: under a file-size limit Python would leave truncated .pyc files behind
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "impress.cli", "run", *flags, "--out", str(out), *extra],
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's results, each task's checkpoint size, and the checkpoint after 2 tasks."""
    root = tmp_path_factory.mktemp("reference")
    proc = _impress_run(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / CFG.run_name() / "results.json").read_text())
    sizes, after_two = [], {}
    scratch = root / "sizes"

    def measure(metrics: dict) -> None:
        sizes.append((scratch / FILENAME).stat().st_size)
        if metrics["tasks_done"] == 2:
            after_two.update(load_checkpoint(scratch))

    run(CFG.replace(threads=1), report=measure, checkpoint_dir=scratch)
    assert sizes == sorted(sizes) and sizes[2] > sizes[1] + PAGE  # room for a limit between them
    return results, sizes, after_two


def _check_failed_run(proc, run_dir: Path, reason: str, after_two: dict) -> None:
    path = run_dir / "checkpoint" / FILENAME
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path}: could not write the checkpoint of 3 finished tasks ({reason})" in proc.stderr
    assert "previous checkpoint is unchanged" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == [FILENAME]  # no partial file left to fill the disk
    kept = load_checkpoint(path.parent)  # the checkpoint of 2 tasks, whole
    assert kept["tasks_done"] == 2
    for key in ("acc_matrix", "val_acc_matrix"):  # NaN above the diagonal
        np.testing.assert_array_equal(kept[key], after_two[key])
    assert kept["method"].keys() == after_two["method"].keys()
    assert all(torch.equal(kept["method"][k], after_two["method"][k]) for k in kept["method"])


def _check_resumed(out: Path, results: dict) -> None:
    proc = _impress_run(out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((out / CFG.run_name() / "results.json").read_text())
    for key in ("acc_matrix", "val_acc_matrix", "metrics", "overhead", "stream"):
        assert resumed[key] == results[key], key
    assert len(resumed["task_seconds"]) == CFG.num_tasks


def test_file_size_limit_stops_the_run_cleanly_and_resume_finishes_it(reference, tmp_path):
    results, sizes, after_two = reference
    proc = _impress_run(tmp_path, fsize=(sizes[1] + sizes[2]) // 2)  # the 3rd task's checkpoint is too large
    _check_failed_run(proc, tmp_path / CFG.run_name(), "File too large", after_two)
    _check_resumed(tmp_path, results)


@pytest.fixture
def small_disk(tmp_path, reference):
    """A tmpfs holding the run's config and two checkpoints side by side, but not the 3rd task's one
    beside the 2nd's (the atomic write needs both at once)."""
    _, sizes, _ = reference
    pages = [math.ceil(s / PAGE) for s in sizes]
    size = (1 + pages[0] + pages[1] + 1) * PAGE  # config.yaml, checkpoints 1+2, a page to spare
    assert size < (1 + pages[1] + pages[2]) * PAGE
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_full_disk_stops_the_run_cleanly_and_resume_finishes_it(reference, small_disk, tmp_path):
    results, _, after_two = reference
    proc = _impress_run(small_disk)
    run_dir = small_disk / CFG.run_name()
    _check_failed_run(proc, run_dir, "No space left on device", after_two)
    moved = tmp_path / "roomy"  # the run moves to a disk with room and continues there
    shutil.copytree(run_dir, moved / CFG.run_name())
    _check_resumed(moved, results)
