"""File-system helpers: atomic writes, directory fsync, safe opens.

Files are written under a unique temp name in the store's temp area and moved into place:
:func:`atomic_write` (fsync, rename, fsync the directory) for the config, and the same steps done
by hand where the rename must not replace an existing file (``link(2)`` for chunks and
manifests). Readers open with ``O_NOFOLLOW`` so a symlink planted inside the store cannot
redirect a read outside it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

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
    total = 0
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view.nbytes:
                n = os.write(fd, view)
                total += n
                view = view[n:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return total


def atomic_write(path: Path, parts: Iterable, *, tmp_dir: Path, sync: bool = True) -> None:
    """Write ``parts`` to ``path`` atomically: readers see the old state or the whole new file."""
    tmp = temp_path(tmp_dir, ".tmp")
    try:
        write_parts(tmp, parts, sync=sync)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


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
