"""impress: ImpressLearn and SupSup continual learning over random, frozen backbones."""

from __future__ import annotations

from typing import Any

from impress.config import Config, ConfigError

__all__ = ["Config", "ConfigError", "Result", "run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # NOTE: the trainer (and torch, ~2 s) loads on first use, so commands that build no config (`impress
    # --help`, `status`, `stop`) start without it; `from impress import run` works as before
    if name in ("Result", "run"):
        from impress import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'impress' has no attribute {name!r}")
