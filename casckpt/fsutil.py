"""File-system helpers: atomic writes, directory fsync, safe opens.

Files are written under a unique temp name and moved into place. :func:`atomic_file` (and
:func:`atomic_write` over it) is the one atomic-write path: temp, write, fsync, rename, fsync the
folder; the local back-end's ``replace`` and every export to a user's path use it. Where the move
must not replace an existing file (``put_if_absent``), the local back-end writes with
:func:`write_parts` and links the temp file into place. Readers open with ``O_NOFOLLOW`` so a symlink planted inside the store cannot
redirect a read outside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .errors import StoreIOError, UnsafePathError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# NOTE: gc deletes only files in tmp/ whose names match this: a folder adopted by mistake, or a
# file a user put there, is never deleted.
_TEMP_NAME = re.compile(r"[0-9a-f]{16}\.[0-9]+\.(chunk|manifest|tmp)")


def temp_path(tmp_dir: Path, suffix: str) -> Path:
    return tmp_dir / f"{secrets.token_hex(8)}.{os.getpid()}{suffix}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one :func:`temp_path` makes (suffix ``.chunk``, ``.manifest`` or ``.tmp``)."""
    return _TEMP_NAME.fullmatch(name) is not None


def write_parts(path: Path, parts: Iterable, *, sync: bool) -> int:
    """Write bytes-like ``parts`` to a new file (never following or replacing an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
    try:
        total = _write_all(fd, parts)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return total


def _write_all(fd: int, parts: Iterable) -> int:
    total = 0
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            n = os.write(fd, view)
            total += n
            view = view[n:]
    return total


@contextlib.contextmanager
def atomic_file(path: Path, *, tmp_dir: Path, sync: bool = True) -> Iterator[BinaryIO]:
    """The one atomic-write path: yields a new temp file in ``tmp_dir`` (on the same file system
    as ``path``) to write; when the block ends without error the file is fsynced, renamed over
    ``path`` and the folder fsynced, so readers see the old state or the whole new file; on an
    error the temp file is removed and ``path`` is untouched. ``sync=False`` skips both fsyncs."""
    tmp = temp_path(tmp_dir, ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


def atomic_write(path: Path, parts: Iterable, *, tmp_dir: Path, sync: bool = True) -> int:
    """Write bytes-like ``parts`` to ``path`` atomically (see :func:`atomic_file`); returns the size."""
    with atomic_file(path, tmp_dir=tmp_dir, sync=sync) as f:
        return _write_all(f.fileno(), parts)


def unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_file(path: Path) -> bytes:
    """Read a whole regular file inside the store; a symlink is refused with UnsafePathError."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symlink; casckpt never follows links in a store") from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def io_error(exc: OSError, what: str) -> StoreIOError:
    """Wrap an OSError (disk full, permission denied, ...) in the typed error, keeping errno."""
    err = StoreIOError(exc.errno, f"{what}: {exc.strerror or exc}")
    if exc.filename is not None:  # NOTE: a filename of None would print as a stray ": None"
        err.filename = exc.filename
    return err


# NOTE: a module attribute, so a test can stand in a file for the kernel's (a "reboot").
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> bytes | None:
    """This boot's id (changes at every boot, so after a power loss), or None where unknown."""
    try:
        with open(BOOT_ID_PATH, "rb") as f:
            return f.read().strip() or None
    except OSError:
        return None
