"""A back-end on a local (or network-mounted POSIX) file system.

Each blob is a file at ``root/<key>``. Writes go to a unique temp file in ``root/tmp`` and are
then moved into place: ``link(2)`` for write-if-absent (it fails if the name exists, so exactly
one racing writer wins, and a reader never sees a partly written file), ``rename(2)`` for
replace. With ``sync=True`` the file is fsynced before it is moved and its folder after;
``sync=False`` leaves both to :meth:`LocalBackend.sync`. Reads open with ``O_NOFOLLOW``, so a
symlink planted in the store cannot redirect a read outside it; listings never follow links.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Collection, Iterable, Iterator

from .. import fsutil
from ..errors import UnsafePathError
from . import Backend, Blob, BlobNotFoundError, check_key, check_prefix

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
TMP = "tmp"


class LocalBackend(Backend):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).absolute()
        self.local_path = self.root
        self.tmp_dir = self.root / TMP
        self._real: set[str] = set()  # folders (keys) seen to be real folders, not links

    @property
    def url(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key`` (checked: it cannot name anything outside the root)."""
        folder = check_key(key).rpartition("/")[0]
        if folder and folder not in self._real:
            self._check_folders(folder)
        return self.root / key

    def _check_folders(self, folder: str) -> None:
        """Refuse a key below a symlinked folder (``O_NOFOLLOW`` guards only the last component).
        Folders that do not exist yet pass; they are checked again once made."""
        parts = folder.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self._real:
                continue
            try:
                mode = os.lstat(self.root / sub).st_mode
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(mode):
                raise UnsafePathError(f"{self.root / sub} is not a folder (a symlink?); casckpt never follows links")
            self._real.add(sub)

    # -- reads ------------------------------------------------------------------------------------
    def _open(self, key: str) -> int:
        path = self.path(key)
        try:
            return os.open(path, os.O_RDONLY | _O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):  # NOTE: a file where a folder would be
            raise BlobNotFoundError(f"no blob {key!r} in {self.root}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{path} is a symlink; casckpt never follows links in a store") from None
            raise

    def get(self, key: str) -> bytes:
        try:
            return fsutil.read_file(self.path(key))  # NOTE: O_NOFOLLOW; the reader tests watch
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFoundError(f"no blob {key!r} in {self.root}") from None

    def version(self, key: str):
        try:
            st = os.lstat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _version(st)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad byte range [{start}, {end})")
        fd = self._open(key)
        try:
            return _pread(fd, start, end)
        finally:
            os.close(fd)

    def get_head(self, key: str, n: int) -> tuple[bytes, int]:
        fd = self._open(key)  # NOTE: header and size of one open file, whatever replaces it meanwhile
        try:
            return _pread(fd, 0, n), os.fstat(fd).st_size
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        try:
            return os.lstat(self.path(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list(self, prefix: str = "") -> Iterator[Blob]:
        check_prefix(prefix)
        folder, _, _ = prefix.rpartition("/")
        if folder:
            try:
                self.path(folder + "/x")
            except UnsafePathError:
                return
        for key, st in _walk(self.root / folder if folder else self.root, folder):
            if key.startswith(prefix):
                yield Blob(key, st.st_size, st.st_mtime, _version(st))

    # -- writes -----------------------------------------------------------------------------------
    def put_if_absent(self, key: str, parts: Iterable, *, sync: bool = True) -> bool:
        final = self.path(key)
        if os.path.lexists(final):
            return False
        tmp = self._write_temp(parts, sync)
        try:
            created = _link_into_place(tmp, final)
        finally:
            fsutil.unlink_quiet(tmp)
        if created and sync:
            fsutil.fsync_dir(final.parent)
        return created

    def replace(self, key: str, parts: Iterable, *, sync: bool = True) -> None:
        final = self.path(key)
        _make_parent(final)
        if not self.tmp_dir.is_dir():
            self.tmp_dir.mkdir(parents=True, exist_ok=True)  # a bare root (the store makes its own)
        fsutil.atomic_write(final, parts, tmp_dir=self.tmp_dir, sync=sync)

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
            return True
        except FileNotFoundError:
            return False

    def sync(self, keys: Iterable[str], *, map=map, data_synced: Collection[str] = ()) -> None:
        """fsync the files (``map`` may run them in parallel) but those in ``data_synced``, then
        the folders of all (which makes links and deletes durable: a deleted key has no file left
        to fsync)."""
        keys = list(keys)
        paths = [self.path(k) for k in keys]
        list(map(_fsync_if_there, [p for k, p in zip(keys, paths) if k not in data_synced]))
        folders = {p.parent for p in paths}
        list(map(fsutil.fsync_dir, sorted(folders)))
        # NOTE: the folders above, once each: a fan-out folder this batch may have made
        above = {f.parent for f in folders if f.parent != self.root and f.parent.parent == self.root}
        list(map(fsutil.fsync_dir, sorted(above - folders)))

    def sync_data(self, key: str) -> None:
        """fsync the file (not its folder: a later :meth:`sync` does that, once per folder)."""
        _fsync_if_there(self.path(key))

    def _write_temp(self, parts: Iterable, sync: bool) -> Path:
        tmp = fsutil.temp_path(self.tmp_dir, ".tmp")
        try:
            fsutil.write_parts(tmp, parts, sync=sync)
        except FileNotFoundError:
            # NOTE: a bare root (the store makes its own tmp/); a racing writer may make it first,
            # so retry once whoever made it
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fsutil.write_parts(tmp, parts, sync=sync)
        except BaseException:
            fsutil.unlink_quiet(tmp)
            raise
        return tmp


def _make_parent(final: Path) -> None:
    """Create the folders above ``final`` inside the root; a symlinked folder is refused."""
    try:
        if stat.S_ISDIR(os.lstat(final.parent).st_mode):
            return
        raise UnsafePathError(f"{final.parent} is not a folder (a symlink?); casckpt never follows links")
    except FileNotFoundError:
        _make_parent(final.parent)
        try:
            os.mkdir(final.parent)
        except FileExistsError:
            pass  # a concurrent writer made it


def _link_into_place(tmp: Path, final: Path) -> bool:
    """Publish ``tmp`` as ``final`` unless ``final`` exists: True if this call published it."""
    try:
        try:
            os.link(tmp, final)
        except FileNotFoundError:  # the folder's first file: folders are made on first use (256
            # mkdirs at store creation would cost a cold save ~0.2 s here)
            _make_parent(final)
            os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    # A file system without hard links: O_EXCL claims the name (one racer wins), then a rename
    # puts the complete file there. A reader may see the empty claim for a moment (no header
    # check accepts it), never a partly written file.
    try:
        os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644))
    except FileExistsError:
        return False
    os.replace(tmp, final)
    return True


def _fsync_if_there(path: Path) -> None:
    # NOTE: a deleted key has no file to open (fsyncing its folder makes the delete durable);
    # lstat first, so syncing deletes opens nothing
    if os.path.lexists(path):
        try:
            fsutil.fsync_file(path)
        except FileNotFoundError:
            pass  # deleted meanwhile


def _version(st: os.stat_result) -> tuple:
    # NOTE: a replace makes a new inode, so this changes even within one mtime tick
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _pread(fd: int, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an open file, cut at its end."""
    out = bytearray()
    while len(out) < end - start:
        got = os.pread(fd, end - start - len(out), start + len(out))
        if not got:
            break  # the end of the file
        out += got
    return bytes(out)


def _walk(folder: Path, key_prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """``(key, lstat)`` of regular files below ``folder``; links and other odd entries are skipped."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        key = f"{key_prefix}/{e.name}" if key_prefix else e.name
        if e.is_dir(follow_symlinks=False):
            yield from _walk(Path(e.path), key)
        elif e.is_file(follow_symlinks=False):
            try:
                yield key, e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted meanwhile
