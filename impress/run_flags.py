"""The config flags of `impress run`: every `Config` field is a `--key value` flag.

Both the parsing and the help are read off the dataclass (each field's type, default, `choices` or
`range`, and one line of `doc` in its metadata), so a new field is a flag, documented, at once.
The flags are parsed here rather than by argparse so that `impress run [config.yaml] [--key value ...]`
takes any field, with `-` or `_`, as `--key value` or `--key=value`, and names an unknown key.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
import typing
from typing import Any

from impress.config import Config, ConfigError, choices

__all__ = ["parse_overrides", "flags_help"]


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--key value` and `--key=value` pairs; every key must be a config field."""
    fields = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; config flags look like --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown config key(s) [{key!r}]; known keys: {sorted(fields)}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{key}: a value is required after --{key}")
            value, i = tokens[i + 1], i + 1
        out[key] = value
        i += 1
    return out


_TYPE_NAMES = {int: "INT", float: "FLOAT", str: "STR", bool: "{true,false}"}


def _value_syntax(f: dataclasses.Field, hint: Any) -> str:
    """How a field's value is written: `{a,b}` for choices, else its type (`INT`, `INT,INT,...`),
    then its range (`in [1, 100000]`) and `or null` where null is allowed."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if (allowed := choices(f)) is not None:
        text = "{" + ",".join(map(str, allowed)) + "}"
    elif typing.get_origin(base) is tuple:
        item = _TYPE_NAMES[typing.get_args(base)[0]]
        text = f"{item},{item},..."
    else:
        text = _TYPE_NAMES[base]
    if "range" in f.metadata:
        lo, hi, lo_open, hi_open = f.metadata["range"]
        text += f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return text + (" or null" if optional else "")


def _shown(value: Any) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def flags_help(width: int | None = None) -> str:
    """The config flags as argparse lays out options: the flag and its value's syntax, then its
    help and default, wrapped to the terminal."""
    width = width or shutil.get_terminal_size().columns - 2
    indent = 24  # argparse's column for help text
    hints = typing.get_type_hints(Config)
    lines = ["config flags (override the config file; null sets an optional field to none):"]
    for f in dataclasses.fields(Config):
        flag = f"  --{f.name} {_value_syntax(f, hints[f.name])}"
        text = f"{f.metadata['doc']} (default:\xa0{_shown(f.default)})"  # NOTE: no break inside the default
        first = flag.ljust(indent) if len(flag) < indent - 1 else None  # short flags keep the help beside them
        if first is None:
            lines.append(flag)
        lines += textwrap.wrap(
            text,
            max(width, indent + 20),
            initial_indent=first or " " * indent,
            subsequent_indent=" " * indent,
            break_on_hyphens=False,
        )
    return "\n".join(lines).replace("\xa0", " ")
