"""`python -m bench --quick` runs and prints every figure it declares (never its timings' values)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every figure measured once: a minute and a half on two idle cores


def _bench(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[str, dict]:
    path = tmp_path_factory.mktemp("bench") / "figures.json"
    out = _bench("--quick", "--json", str(path))
    return out, json.loads(path.read_text())


def test_quick_bench_prints_every_figure(quick_run):
    out, _ = quick_run
    names = _bench("--list").split()
    assert len(names) >= 14 and len(set(names)) == len(names)
    printed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(names) <= printed, sorted(set(names) - printed)
    assert "targets met:" in out and "threads 1" in out


def test_quick_bench_json_holds_every_figure_with_its_provenance(quick_run):
    _, data = quick_run
    names = _bench("--list").split()
    figures = {f["name"]: f for f in data["figures"]}
    assert list(figures) == names
    for f in figures.values():
        if f["name"].startswith("mnist/") and f["value"] != f["value"]:
            # real MNIST or a finished MNIST study may be absent here: then the figure says so, unjudged
            assert f["detail"].startswith("not ") or "impress data mnist" in f["detail"], f
            assert f["met"] is None
            continue
        assert f["value"] == f["value"] and f["value"] >= 0, f  # a number, not NaN
        if f["unit"] == "x" and f["n"] is not None:  # a timing ratio says its n and spread
            assert f["n"] >= 2 and f["spread"][0] <= f["value"] <= f["spread"][1]
        assert f["met"] in (True, False, None)
    assert data["provenance"]["git_commit"] is None or len(data["provenance"]["git_commit"]) == 40
