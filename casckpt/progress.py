"""Progress bars for the command line: tqdm on stderr, drawn only when stderr is a terminal.

Library functions report progress through a plain ``progress(done, total)`` callable and know
nothing of bars; :class:`Bar` is such a callable. It is the only module that imports tqdm.
"""

from __future__ import annotations

import os
import sys
import threading

from tqdm import tqdm


class Bar:
    """``bar(done, total)`` draws a bar with human units, rate and ETA; a no-op unless ``stream``
    (default stderr) is a terminal. Use as a context manager so the bar is closed.

    Safe to call from several threads at once (the store's worker pool reports from its
    threads): updates are serialized by a lock and never move the bar backwards, so a report
    that arrives late from a slow thread is ignored. ``total`` may grow between calls.
    """

    def __init__(self, label: str, *, unit: str = "B", stream=None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.on = _isatty(self.stream)
        self._lock = threading.Lock()
        self._bar: tqdm | None = None

    @property
    def done(self) -> int:
        """How far the bar has got (0 when nothing was drawn)."""
        return self._bar.n if self._bar is not None else 0

    def __call__(self, done: int, total: int) -> None:
        if not self.on:
            return
        with self._lock:
            if not self.on:  # closed meanwhile
                return
            bar = self._bar
            if bar is None:
                # NOTE: bytes in KiB/MiB/GiB; counts (chunks) stay whole numbers.
                bytes_ = self.unit == "B"
                bar = self._bar = tqdm(total=total, desc=self.label, unit=self.unit, unit_scale=bytes_,
                                       unit_divisor=1024, file=self.stream, leave=True, mininterval=0.1,
                                       **_size(self.stream))
            if total != bar.total:
                bar.total = total
            if done > bar.n:
                bar.update(done - bar.n)

    def close(self) -> None:
        """Finish the bar (idempotent); later reports are ignored."""
        with self._lock:
            self.on = False
            if self._bar is not None:
                self._bar.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def status(text: str, stream=None) -> None:
    """Say what a long step is doing (one line on stderr, only on a terminal)."""
    stream = stream or sys.stderr
    if _isatty(stream):
        stream.write(f"{text}\n")
        stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _size(stream) -> dict:
    # NOTE: a terminal that reports no size (a bare pty, some CI consoles) makes tqdm draw nothing
    try:
        cols, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        cols = rows = 0
    return {"ncols": min(cols, 160) if cols >= 40 else 100, "nrows": rows if rows >= 2 else 24}
