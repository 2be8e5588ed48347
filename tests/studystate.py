"""What a study's folder says about its trials, for tests that wait on state rather than on time."""

from __future__ import annotations

import contextlib
from pathlib import Path

from impress.checkpoint import FILENAME, CheckpointError, load_checkpoint


def tasks_checkpointed(root: Path) -> dict[str, int]:
    """Finished tasks in each trial checkpoint of the study in `root`, by checkpoint folder."""
    done = {}
    for path in (root / "checkpoints").glob(f"*/{FILENAME}"):
        # NOTE: a checkpoint is replaced (atomically) after every task; one just being replaced is skipped
        with contextlib.suppress(FileNotFoundError, CheckpointError):
            done[path.parent.name] = load_checkpoint(path.parent)["tasks_done"]
    return done
