"""Where datasets live: the config's `data_root` when it is set, else `$IMPRESS_DATA`, else
`$XDG_CACHE_HOME/impress/data` (by default `~/.cache/impress/data`).

`impress data mnist` writes there and `source: mnist` reads from there, so a dataset fetched once
needs no `data_root` in any config or study.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ROOT_ENV", "DataRootError", "default_data_root", "resolve_data_root"]

DATA_ROOT_ENV = "IMPRESS_DATA"


class DataRootError(FileNotFoundError):
    """The default data folder cannot be named. NOTE: a `FileNotFoundError`, like a missing dataset,
    so every command that reports a missing dataset in one line reports this one too."""


def default_data_root() -> Path:
    """`$IMPRESS_DATA` if set, else `<user cache>/impress/data` (not created here)."""
    value = os.environ.get(DATA_ROOT_ENV)
    if value:
        path = Path(value).expanduser()
        # NOTE: a study's trials run in folders of their own, where a relative path names another folder
        if not path.is_absolute():
            raise DataRootError(f"${DATA_ROOT_ENV} must be an absolute path, got {value!r}")
        return path
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # NOTE: the XDG base-directory spec says a relative XDG_CACHE_HOME is invalid and is to be ignored
    base = Path(cache) if Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "impress" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """`root` (with `~` expanded), or the default data folder when it is None."""
    return default_data_root() if root is None else Path(root).expanduser()
