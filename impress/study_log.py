"""A running study's two outputs: its own lines on the terminal, everything else in its log file.

Ray, Tune and MLflow print a great deal while a study runs: Ray's token-auth notice, Tune's restore
advice on Ctrl-C, a 40-line traceback for a killed worker. The study's own lines (a trial started,
a task done, a trial failed and why) are what a person watches. While `study_log(path)` is open,
file descriptors 1 and 2 of this process, and so of every process it starts (a local Ray's GCS,
raylet and workers), write to the log; the stream it yields writes to the terminal and to the log.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["Tee", "study_log"]


class Tee:
    """A text stream writing to the terminal and to the log, a whole line at a time."""

    def __init__(self, terminal: TextIO, log: TextIO) -> None:
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        for stream in (self.terminal, self.log):
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def __reduce__(self):
        # NOTE: Tune pickles a study's callbacks, and with them this stream; a restored study gets
        # fresh callbacks, so what unpickles is only a placeholder
        return _stderr, ()


def _stderr() -> TextIO:
    return sys.stderr


@contextlib.contextmanager
def study_log(path: Path) -> Iterator[Tee]:
    """Send fds 1 and 2 to `path` (appended to) while open; yield the stream for the study's own lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    log = open(path, "a", buffering=1, encoding="utf-8")
    streams = sys.stdout, sys.stderr
    try:
        own = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        own = False
    # the terminal is what sys.stderr writes to: fd 2 as it was, or a stream of its own (a notebook's)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace") if own else sys.stderr
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log  # NOTE: also where fds 1 and 2 are not what sys.stderr writes to
        yield Tee(terminal, log)
    finally:
        log.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if own:
            terminal.close()
        log.close()
