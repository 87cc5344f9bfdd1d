"""Progress of long jobs: a live bar on a terminal, a few plain lines anywhere else.

A redrawn bar is useful to a person watching a terminal, but in a log file or a CI console it
becomes hundreds of kilobytes of carriage-return noise. So every long job asks ``progress_bar(...)``
for its reporter: on a terminal that is a tqdm bar (with rate and ETA); otherwise a
``PlainProgress`` that prints one line at every tenth of the work (and after a minute without one,
so that a slow job's log never stays silent for long) and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO

QUIET_AT_MOST_S = 60  # a plain line at least this often while a job runs


def progress_bar(
    total: int, desc: str, unit: str = "img", initial: int = 0, enabled: bool = True, file: IO[str] | None = None
):
    """The reporter for a job of ``total`` steps: ``update(n)``, ``close()``, usable as a context manager.

    ``enabled=False`` gives a silent one (``--quiet``). Output goes to ``file`` (default stderr), so
    a command's results on stdout stay clean.
    """
    file = file or sys.stderr
    if not enabled:
        return PlainProgress(total, desc, unit, initial, file=file, lines=0)
    if _is_terminal(file):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, dynamic_ncols=True)
    return PlainProgress(total, desc, unit, initial, file=file)


def _is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class PlainProgress:
    """``lines`` lines like ``embedding: 300/1000 img (30%), 41.2 img/s, ETA 0:17`` (more when a tenth of the
    work takes over ``QUIET_AT_MOST_S``), plus the last."""

    def __init__(
        self, total: int, desc: str, unit: str = "img", initial: int = 0, file: IO[str] | None = None, lines: int = 10
    ):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file or sys.stderr
        self.lines = lines
        self._start_n, self._start = initial, time.monotonic()
        self._last_line = self._start
        self._next = self._mark(initial) + 1
        self._closed = False
        self._postfix = ""

    def _mark(self, n: int) -> int:
        return n * self.lines // self.total if self.total > 0 else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not (self.lines and 0 < self.total and self.n < self.total):
            return
        if self._mark(self.n) >= self._next or time.monotonic() - self._last_line >= QUIET_AT_MOST_S:
            self._next = self._mark(self.n) + 1
            self._print()

    def set_postfix(self, **values) -> None:
        """As tqdm's: ``loss=0.31`` etc., shown on the next line printed."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed and self.lines and self.n > self._start_n:
            self._print()
        self._closed = True

    def _print(self) -> None:
        self._last_line = time.monotonic()
        elapsed = max(self._last_line - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        if self.total > 0:
            line += f" ({100 * self.n // self.total}%)"
        line += f", {rate:.1f} {self.unit}/s"
        if rate > 0 and self.n < self.total:
            line += f", ETA {_clock((self.total - self.n) / rate)}"
        elif self.n >= self.total:
            line += f", {_clock(elapsed)} in all"
        if self._postfix:
            line += f" ({self._postfix})"
        print(line, file=self.file, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
