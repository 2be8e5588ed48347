"""Per-task checkpoints: everything a run needs to continue after task t, and nothing it can
regenerate (the frozen backbone weights come back from the seed; scores are per-task scratch).

Written atomically (temporary file, then rename), loaded with `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from impress.layers import masked_layers

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "method_state", "load_method_state"]

FORMAT = 1
FILENAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, truncated, or from another configuration."""


def _regenerated_keys(method: nn.Module) -> set[str]:
    """State-dict keys rebuilt from the config: frozen weights and per-task score scratch."""
    names = {id(p): n for n, p in method.named_parameters()}
    keys = set()
    for layer in masked_layers(method):
        keys.add(names[id(layer.scores)])
        if not layer.weight.requires_grad:
            keys.add(names[id(layer.weight)])
    return keys


def method_state(method: nn.Module) -> dict[str, torch.Tensor]:
    skip = _regenerated_keys(method)
    return {k: v.detach().cpu() for k, v in method.state_dict().items() if k not in skip}


def load_method_state(method: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = method.load_state_dict(state, strict=False)
    wrong = set(missing) - _regenerated_keys(method)
    if wrong or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the model: missing {sorted(wrong)}, unexpected {sorted(unexpected)}"
        )


def save_checkpoint(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (plain data and tensors) as the directory's checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The directory's checkpoint, or None if it has none."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); delete it to start the run over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an impress checkpoint of format {FORMAT}")
    return payload
