"""What the editing commands tell a person on stderr while they work (stdout keeps the results).

The library reports through `logging` (compute_z's per-request lines at INFO, its per-step losses at
DEBUG, problems at WARNING), so that a program embedding it decides what it sees. The CLI shows
those records as plain lines between progress bars, at one of three levels:

    --quiet     warnings and errors only; no progress bars
    (default)   progress bars, one line per edit request, one summary line
    --verbose   also compute_z's loss at every step
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from . import progress

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
PACKAGE_LOGGER = "collabedit_secure"


class _LineHandler(logging.Handler):
    """One record, one stderr line (tqdm.write, so a terminal's bar stays whole)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not end the edit
            self.handleError(record)
            return
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        progress.note(prefix + message)


@contextmanager
def reporting(level: str = NORMAL):
    """Show the package's log records on stderr at `level` for the duration of one command."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _LineHandler()
    saved_level, saved_quiet = logger.level, progress.is_quiet()
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    progress.set_quiet(level == QUIET)
    hf_bars = _hf_progress_bars(level != QUIET)  # transformers' "Loading weights" and "Writing model shards"
    try:
        yield
    finally:  # main() may run again in the same process (tests, embedding programs)
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        progress.set_quiet(saved_quiet)
        _hf_progress_bars(hf_bars)


def _hf_progress_bars(enabled: bool) -> bool:
    """Turn transformers' own progress bars on or off; whether they were on."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    return was


def add_verbosity_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const=VERBOSE, default=NORMAL,
                       help="more detail on stderr: compute_z's loss at every step")
    group.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const=QUIET,
                       help="no progress bars or per-request lines on stderr; warnings and errors only")


def seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 600 else f"{value / 60:.1f}min"


def c0_origin(sources: dict[str, str]) -> str:
    """Where C0 came from, in a few words: computed (and from which corpus), shipped, or files."""
    kinds = set()
    for text in sources.values():
        if text.startswith("computed: "):
            kinds.add(text.removeprefix("computed: ").split(",")[0])
        else:
            kinds.add("files in " + text.split(" (")[0].rsplit("/", 1)[0])
    return "; ".join(sorted(kinds))


def edit_summary_line(n_requests: int, layers: list[int], lam, schedule: str, sources: dict[str, str],
                      stages: dict[str, float]) -> str:
    """One line: what was edited, with which settings, and where the time went."""
    lam_text = "[" + ", ".join(f"{v:g}" for v in lam) + "]" if isinstance(lam, (list, tuple)) else f"{lam:g}"
    times = ", ".join(f"{stage} {seconds(value)}" for stage, value in stages.items())
    return (f"edited {n_requests} request(s), {schedule}: layers {layers}, lambda {lam_text}, "
            f"C0 from {c0_origin(sources)}; {times}")


class StageClock:
    """Seconds per stage of a command, in the order the stages ran."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._charged = 0.0  # seconds of the current lap already charged by add()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to `stage`."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last - self._charged
        self._last, self._charged = now, 0.0

    def add(self, seconds: dict[str, float]) -> None:
        """Stages timed inside a call (the edit's compute_z and solve), charged now."""
        for stage, value in seconds.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + value
        self._charged += sum(seconds.values())
