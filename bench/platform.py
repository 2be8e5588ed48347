"""(f) Platform overhead: how busy a study keeps the cores with trial work.

Target: a study of 16 trials of about a minute each on 2 CPUs keeps the cores at least
85% busy with trial work. Measured from outside: the wall time of `impress study run` as a new
process (its imports, Ray's start, every trial's process and checkpoints count as overhead), against
the trainer's own seconds per task summed over all trials (`task_seconds` in each results.json):

    busy = sum of trial work / (wall time x slots),    slots = concurrency = CPUs / CPUs per trial

reported in percent.

`--quick` runs 2 short trials: the figure is reported, not judged (start-up dominates short trials).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import Figure

__all__ = ["FIGURES", "run"]

FIGURES = ("platform/busy",)
SLOTS = 2


def _study(trials: int, epochs: int) -> dict:
    """`trials` SupSup runs of the default 20-task stream, differing only in their seed."""
    return {
        "name": "bench_platform",
        "base": {"method": "supsup", "epochs": epochs},
        "seeds": list(range(trials)),
        "concurrency": SLOTS,
        "resources": {"cpu": 1},
    }


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    trials, epochs = (2, 2) if quick else (16, 80)  # 80 epochs: about a minute per trial here
    with tempfile.TemporaryDirectory(prefix="impress_bench_platform_") as tmp:
        tmp = Path(tmp)
        study_file = tmp / "study.yaml"
        study_file.write_text(yaml.safe_dump(_study(trials, epochs)))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "impress.cli", "study", "run", str(study_file), "--storage", str(tmp / "studies")],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"the benchmark study failed:\n{done.stderr[-3000:]}")
        work = [
            sum(json.loads(p.read_text())["task_seconds"])
            for p in (tmp / "studies" / "bench_platform" / "results").glob("*/results.json")
        ]
    if len(work) != trials:
        raise RuntimeError(f"expected {trials} finished trials, found {len(work)}")
    busy = 100.0 * sum(work) / (wall * SLOTS)  # percent of the slots' time spent in trial work
    return [
        Figure(
            FIGURES[0],
            f"trial work / (wall time x {SLOTS} slots), `impress study run` of {trials} trials, in percent",
            busy,
            "%",
            None if quick else (">=", 85.0),
            n=trials,
            detail=f"wall {wall:.1f} s, trial work {sum(work):.1f} s ({sum(work) / trials:.1f} s per trial), "
            f"overhead {wall * SLOTS - sum(work):.1f} core-seconds",
        )
    ]
