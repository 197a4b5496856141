"""The store lock: ``flock`` on the file ``lock`` in the store root.

Saves hold it shared (many saves may run at once); deletion and garbage collection hold it
exclusive, so gc never deletes a chunk that a save in progress is about to reference. The kernel
releases an flock when its holder dies, so a crashed process never leaves the store locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from .errors import CasckptError, LockTimeoutError, StoreIOError

SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX

# NOTE: flock treats every open of the lock file apart, even in one process: a thread that holds
# the lock and asks for it exclusively would wait on itself forever. Holds are counted per thread
# (lock path -> count) so that case fails at once, and so a store knows not to lock twice.
_local = threading.local()


def _holds() -> dict[str, int]:
    return _local.__dict__.setdefault("holds", {})


def held_by_this_thread(path: Path) -> bool:
    """Whether the calling thread holds the lock at ``path`` (in either mode)."""
    return _holds().get(str(path), 0) > 0


def _open(path: Path) -> int:
    """The lock file, opened for writing, or else read-only: flock works on any open file, so a
    store the caller may not write (permissions, a read-only mount) is still locked properly."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            try:
                return os.open(path, os.O_RDONLY | nofollow)
            except OSError as again:
                exc = again
        # a lock that is a directory or a symlink, or missing in a folder we may not write
        raise StoreIOError(exc.errno, f"cannot open the lock file {path}: {exc.strerror}") from None


class StoreLock:
    """One hold on the store lock. ``timeout=None`` waits forever; ``0`` does not wait."""

    def __init__(self, path: Path, mode: int, *, timeout: float | None = None) -> None:
        self.path, self.mode, self.timeout = path, mode, timeout
        self._fd: int | None = None
        self._counted: dict[str, int] | None = None  # the holding thread's counts

    def acquire(self) -> "StoreLock":
        if self.mode == EXCLUSIVE and held_by_this_thread(self.path):
            raise CasckptError(f"this thread already holds the lock on {self.path.parent} (a save in "
                               "progress, or a writer not yet closed); taking it exclusively would "
                               "wait forever")
        fd = _open(self.path)
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
        self._counted = _holds()
        self._counted[str(self.path)] = self._counted.get(str(self.path), 0) + 1
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
            if self._counted is not None:
                self._counted[str(self.path)] -= 1
                self._counted = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
