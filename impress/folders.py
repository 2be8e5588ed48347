"""Names that become folders: a study's name and a run's name each name one folder in its storage.

A study `NAME` is written to `<storage>/NAME/` (trials, Optuna's database, Tune's state, results)
and its MLflow artifacts to `mlartifacts/NAME/`; a run `NAME` to `<out>/NAME/`. A name of `..`, or
one holding a `/`, would put those files outside their folder (`..` makes a study's folder the
parent of `runs/studies`), so every place that takes such a name checks it here, with one message.
"""

from __future__ import annotations

__all__ = ["FolderNameError", "folder_name"]

# NOTE: `\` is a separator on Windows, NUL ends a path in the OS; neither belongs in a folder name
_SEPARATORS = ("/", "\\", "\0")


class FolderNameError(ValueError):
    """A name would not stay one folder inside its storage; the message names the field."""


def folder_name(name: object, *, field: str) -> str:
    """`name` if it is a single folder name: not empty, `.` or `..`, and without a path separator
    (so `<root>/name` is always a folder directly inside `<root>`). Else `FolderNameError`."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(s in name for s in _SEPARATORS):
        raise FolderNameError(
            f"{field}: {name!r} would put files outside its folder; a name is one folder name "
            f"(not empty, '.' or '..', and without '/')"
        )
    return name
