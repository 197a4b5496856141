"""The store lock: ``flock`` on the file ``lock`` in the store root.

Saves hold it shared (many saves may run at once); deletion and garbage collection hold it
exclusive, so gc never deletes a chunk that a save in progress is about to reference. The kernel
releases an flock when its holder dies, so a crashed process never leaves the store locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .errors import LockTimeoutError, StoreIOError

SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX


class StoreLock:
    """One hold on the store lock. ``timeout=None`` waits forever; ``0`` does not wait."""

    def __init__(self, path: Path, mode: int, *, timeout: float | None = None,
                 holds: list | None = None) -> None:
        self.path, self.mode, self.timeout = path, mode, timeout
        self._fd: int | None = None
        self._holds = holds  # the owner's list of locks held now (see Store.holds_lock)

    def acquire(self) -> "StoreLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:  # a read-only store, a lock that is a directory or a symlink
            raise StoreIOError(exc.errno, f"cannot open the lock file {self.path}: {exc.strerror}") from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, self.mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        kind = "exclusive" if self.mode == EXCLUSIVE else "shared"
                        raise LockTimeoutError(
                            f"could not take the {kind} lock on {self.path.parent}: another "
                            "process holds it (a save holds it shared, gc/rm exclusive)") from None
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self._holds is not None:
            self._holds.append(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
            if self._holds is not None and self in self._holds:
                self._holds.remove(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
