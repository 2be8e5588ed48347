"""Reading a user's YAML file (a run config, a study file): whatever keeps it from being read, the
error is one line that names the file and what is wrong with it, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml"]


def read_yaml(path: str | Path, *, error: type[Exception], what: str) -> Any:
    """The YAML document in `path` (None for an empty file). A missing, unreadable, binary or
    non-UTF-8 file, a folder, or invalid YAML raises `error("<path>: ...")`; `what` names the file's
    role in the message ("config file", "study file")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except PermissionError:
        raise error(f"{path}: cannot read the {what}: permission denied") from None
    except UnicodeDecodeError as err:
        raise error(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); a {what} is YAML "
            f"in UTF-8"
        ) from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    if "\0" in text:  # valid UTF-8 yet binary (YAML refuses NUL anyway, in a message about characters)
        raise error(f"{path}: not a text file (it holds NUL bytes); a {what} is YAML text")
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
