"""Per-task checkpoints: everything a run needs to continue after task t, and nothing it can
regenerate (the frozen backbone weights come back from the seed; scores are per-task scratch).

Written atomically (temporary file, then rename), loaded with `weights_only=True`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
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
    """State-dict keys rebuilt from the config: the backbone's weights (unless the method learns them,
    `stores_weights`) and per-task score scratch."""
    names = {id(p): n for n, p in method.named_parameters()}
    keys = set()
    for layer in masked_layers(method):
        keys.add(names[id(layer.scores)])
        if not getattr(method, "stores_weights", False):
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
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # NOTE: per writer: two trials of one config share a folder
    try:
        # NOTE: through a Python file object, so a failed write (full disk, file-size limit) surfaces
        # as its OSError; torch's own file writer reports only "iostream error"
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
    except Exception as err:
        tmp.unlink(missing_ok=True)
        cause = next((e for e in (err, err.__cause__, err.__context__) if isinstance(e, OSError)), err)
        reason = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else str(cause)
        raise CheckpointError(
            f"{path}: could not write the checkpoint of {payload.get('tasks_done', '?')} finished tasks ({reason}); "
            f"the previous checkpoint is unchanged: make room and resume the run"
        ) from err
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The directory's checkpoint, or None if it has none. Refuses a file whose bytes fail their
    CRC-32 (torch would load flipped tensor bytes silently) or that holds anything but tensors and
    plain data (`weights_only`: nothing in the file is executed)."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    start_over = "delete it to start the run over"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: unreadable checkpoint, truncated or not a checkpoint ({err}); {start_over}"
        ) from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint ({bad} fails its CRC-32 check); {start_over}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((line for line in str(err).splitlines() if "GLOBAL" in line), "").strip()
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects, not only tensors and plain data ({refused}); "
            f"impress never writes such a checkpoint, nothing in it was run; {start_over}"
        ) from None
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); {start_over}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an impress checkpoint of format {FORMAT}")
    return payload
