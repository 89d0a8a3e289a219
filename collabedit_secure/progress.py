"""Progress bars that read well both in a terminal and in a log.

In a terminal: an ordinary tqdm bar. When standard error is a file or a pipe (CI, a redirected demo),
tqdm would write one carriage-returned frame per refresh, thousands per run; here it writes a whole
line at most every LOG_INTERVAL_S seconds (and at the end), with no carriage returns or cursor moves.
"""

from __future__ import annotations

import io
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

LOG_INTERVAL_S = 5.0
_quiet = False  # `--quiet`: no bar anywhere, whatever the caller asked for
_CONTROL = re.compile(r"\r|\x1b\[[0-9;]*[A-Za-z]")  # carriage returns and ANSI cursor moves


class _LogLines(io.TextIOBase):
    """tqdm's output when stderr is not a terminal: every refresh becomes one complete line."""

    def write(self, text: str) -> int:
        line = _CONTROL.sub("", text).strip()
        if line:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def stderr_is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(iterable=None, *, desc: str, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm(iterable, desc=...), as a bar on a terminal and as sparse log lines elsewhere."""
    if not enabled or _quiet:
        return tqdm(iterable, desc=desc, disable=True, **kwargs)
    if stderr_is_terminal():
        return tqdm(iterable, desc=desc, **kwargs)
    kwargs.pop("leave", None)  # a log keeps every line anyway
    return tqdm(iterable, desc=desc, file=_LogLines(), ascii=True, mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S * 4, dynamic_ncols=False, ncols=100, **kwargs)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


_topics: ContextVar[frozenset] = ContextVar("progress_topics", default=frozenset())


@contextmanager
def showing(topic: str):
    """Turn on the bars of `topic` (e.g. "eval") inside the block. Helpers deep in a computation ask
    `shown(topic)`, so a command shows their bars without every caller between passing a flag, and
    library users (simulate's many evaluations) see none."""
    token = _topics.set(_topics.get() | {topic})
    try:
        yield
    finally:
        _topics.reset(token)


def shown(topic: str) -> bool:
    return topic in _topics.get()


def note(message: str) -> None:
    """A line between progress bars (tqdm.write keeps a terminal bar intact)."""
    tqdm.write(message, file=sys.stderr)
