"""Where a number came from: code version, libraries, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["provenance"]

_PACKAGES = ("impress", "torch", "numpy", "numba", "scikit-learn", "torchvision")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _code_version() -> tuple[str | None, bool | None]:
    """The git commit of this checkout and whether tracked files differ from it."""
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status)
    if commit is None and os.environ.get("IMPRESS_GIT_COMMIT"):  # code uploaded without .git (a cluster job)
        commit, dirty = os.environ["IMPRESS_GIT_COMMIT"], os.environ.get("IMPRESS_GIT_DIRTY") == "True"
    return commit, dirty


# NOTE: read once, when the process imports the code it runs: a result written an hour later names
# that code, not whatever the checkout's HEAD has moved on to in between
_CODE = _code_version()


def provenance(device: str | torch.device = "cpu") -> dict[str, object]:
    """Git commit and dirty flag of the code this process imported, library versions, Python, host,
    device and threads."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit, dirty = _CODE
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
