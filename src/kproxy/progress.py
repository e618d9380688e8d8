"""Progress for long work (restores, syncs, lab builds) on a terminal, and silence everywhere else.

``busy("what")`` shows a rich spinner with the elapsed time on standard error only when it is a
terminal and the work is still going after ``delay`` seconds, so quick commands and scripts reading
the output see nothing. ``step`` names the current stage of a multi-stage job.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

DELAY = 1.0


class Busy:
    """A spinner that appears after ``delay`` seconds (from a timer thread) and goes away at the end."""

    def __init__(self, what: str, stream: IO[str], delay: float) -> None:
        self.what = what
        self.stream = stream
        self.delay = delay
        self._lock = threading.Lock()
        self._progress: Any = None
        self._task: Any = None
        self._done = False
        self._timer = threading.Timer(delay, self._show)
        self._timer.daemon = True

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with self._lock:
            if self._done:
                return
            console = Console(file=self.stream, force_terminal=True)
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=console, transient=True)
            self._task = self._progress.add_task(self.what, total=None)
            self._progress.start()

    def step(self, what: str) -> None:
        """Say which stage the work is in now."""
        self.what = what
        with self._lock:
            if self._progress is not None:
                self._progress.update(self._task, description=what)

    def start(self) -> None:
        if self.delay <= 0:
            self._show()
        else:
            self._timer.start()

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            if self._progress is not None:
                self._progress.stop()


class _Quiet:
    def step(self, what: str) -> None:
        return None


def on_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def busy(what: str, stream: IO[str] | None = None, delay: float = DELAY) -> Iterator[Busy | _Quiet]:
    """Show progress for the work inside the block, if it is long and standard error is a terminal."""
    out = sys.stderr if stream is None else stream
    if not on_terminal(out):
        yield _Quiet()
        return
    b = Busy(what, out, delay)
    b.start()
    try:
        yield b
    finally:
        b.stop()
