"""The LMDB index: a cache that answers "is this chunk stored?" in O(1) and reports sizes without
reading manifests. The only module that imports lmdb.

Sub-databases:

* ``meta``: ``b"version"`` → ``b"2"``.
* ``chunks``: 32-byte digest → ``<QQB`` (raw_len, stored_len, codec) for a full chunk, or
  ``<QQBB`` + 32 bytes (…, depth, base digest) for a delta chunk. An entry is only ever added
  after its chunk file is durable, so an entry means "this chunk is safely stored"; a delta's
  entry is added only once its base has one, so gc can keep bases without reading chunk files.
  A version 1 index (full entries only, which version 2 reads as they are) is upgraded in place.
* ``snapshots``: UTF-8 name → JSON totals (created, logical_bytes, chunks).
* ``unsynced``: 32-byte digest → boot id, for chunks a ``sync=False`` save committed without
  fsync. Such an entry vouches for its chunk only during the boot that wrote it (a power loss
  may have torn the file since) and never to a save that syncs: those verify the file, fsync it
  and clear the mark.

It is rebuildable from chunk files and manifests (:meth:`casckpt.Store.reindex`); manifests are the
source of truth. The map grows by doubling whenever a write hits its limit, so callers never see
``MapFullError``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import lmdb

from . import fsutil
from .chunks import ChunkInfo
from .digest import Digest
from .errors import IndexDamagedError, StoreIOError

VERSION = b"2"
_UPGRADABLE = {b"1"}  # version 1 entries are version 2 full-chunk entries
_ENTRY = struct.Struct("<QQB")
_DELTA_ENTRY = struct.Struct("<QQBB32s")
DEFAULT_MAP_SIZE = 256 << 20
T = TypeVar("T")


class Index:
    def __init__(self, path: Path, *, map_size: int | None = None, create: bool = False,
                 owner: str = "") -> None:
        # NOTE: the default is looked up per call so a test can start an index tiny and watch it grow.
        map_size = map_size or DEFAULT_MAP_SIZE
        self.path = path
        if not create and not (path / "data.mdb").exists():
            raise IndexDamagedError(f"index {path} is missing; run `casckpt reindex` to rebuild it")
        self.env: lmdb.Environment | None = None
        self.readonly = False  # opened read-only: the store may not be written by this process
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = self._open(path, map_size, create)
            _check_size(self.env, path)
            self._ident = _file_id(path)
            self._meta, self._chunks, self._snaps = (self.env.open_db(name, create=not self.readonly)
                                                     for name in (b"meta", b"chunks", b"snapshots"))
            self._unsynced = self._open_unsynced()
            version = self._read(lambda txn: txn.get(b"version", db=self._meta))
            if version is not None:
                version = bytes(version)
            if version is None or version in _UPGRADABLE:
                # NOTE: version 1 entries read as version 2 ones; a read-only process leaves the
                # stamp to the next writer (and an empty new index has nothing to stamp)
                if not self.readonly:
                    self._write(lambda txn: txn.put(b"version", VERSION, db=self._meta))
            elif version != VERSION:
                raise IndexDamagedError(f"index {path} has version {version!r}; run `casckpt reindex`")
            self._check_owner(owner.encode())
        except lmdb.Error as exc:
            self.close()
            raise self._error(exc) from None
        except OSError as exc:  # the index folder cannot be made (permissions, a file in the way)
            self.close()
            raise StoreIOError(exc.errno, f"index {path}: {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, map_size: int, create: bool) -> lmdb.Environment:
        """The environment, read-write; or read-only (no reader lock table, since ``lock.mdb``
        cannot be written either) when the index may not be written: a read-only mount, a
        store owned by someone else. Read-only, a write raises StoreIOError (EROFS)."""
        try:
            return _open_env(path, map_size)
        except lmdb.Error as exc:
            if create or getattr(exc, "code", None) not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        self.readonly = True
        return _open_env(path, map_size, readonly=True)

    def _open_unsynced(self):
        try:
            return self.env.open_db(b"unsynced", create=not self.readonly)
        except lmdb.NotFoundError:  # an index from before the mark existed, opened read-only
            return None

    def _check_owner(self, owner: bytes) -> None:
        """An index vouches for one store's chunk files: refuse one that another store wrote."""
        if not owner:
            return
        found = self._read(lambda txn: txn.get(b"store", db=self._meta))
        if found is None and self.readonly:
            return
        if found is None:
            self._write(lambda txn: txn.put(b"store", owner, db=self._meta))
        elif bytes(found) != owner:
            raise IndexDamagedError(f"index {self.path} belongs to another store (id {bytes(found).decode()!r}); "
                                    "give every store its own index path")

    def close(self) -> None:
        if self.env is not None:
            _release_env(self.env)
            self.env = None

    def replaced(self) -> bool:
        """Whether the data file on disk is no longer the one this handle maps: another process
        ran reindex (or deleted the index) since this one opened it."""
        return _file_id(self.path) != self._ident

    # -- transactions ---------------------------------------------------------------------------
    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        for _ in range(2):
            try:
                with self.env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
            except lmdb.Error as exc:
                raise self._error(exc) from None
        raise IndexDamagedError(f"index {self.path} keeps changing size")

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        if self.readonly:
            raise StoreIOError(errno.EROFS, f"index {self.path} is open read-only (no write access "
                                            "to the store here); this needs write access")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    out = fn(txn)
                _pad(self.env, self.path)
                return out
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.Error as exc:
                raise self._error(exc) from None

    def _error(self, exc: lmdb.Error) -> Exception:
        """A typed error for an LMDB failure: damage says reindex; anything else (a full disk, an
        I/O error) is a StoreIOError, so callers never see an lmdb exception."""
        if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
                            lmdb.VersionMismatchError)):
            return IndexDamagedError(f"index {self.path} is damaged ({exc}); run `casckpt reindex`")
        code = _errno(exc, self.path)
        what = getattr(exc, "what", "")
        where = f" (in {what})" if what and what != str(self.path) else ""
        return StoreIOError(code, f"index {self.path}: {os.strerror(code)}{where}")

    # -- chunks ---------------------------------------------------------------------------------
    def has_many(self, digests: Iterable[Digest], *, synced_only: bool = False) -> set[Digest]:
        """The subset of ``digests`` that the index records as stored: durably, or written without
        fsync during this boot (unless ``synced_only``)."""
        boot = fsutil.boot_id()

        def probe(txn):
            cur = txn.cursor(db=self._chunks)
            have = {d for d in digests if cur.set_key(d.raw)}
            if self._unsynced is None or not txn.stat(self._unsynced)["entries"]:
                return have
            marks = txn.cursor(db=self._unsynced)
            return {d for d in have if not marks.set_key(d.raw)
                    or not synced_only and boot is not None and marks.value() == boot}
        return self._read(probe)

    def get(self, digest: Digest) -> ChunkInfo | None:
        raw = self._read(lambda txn: txn.get(digest.raw, db=self._chunks))
        return None if raw is None else _unpack(raw)

    def get_many(self, digests: Iterable[Digest]) -> dict[Digest, ChunkInfo]:
        """Entries of those ``digests`` that are indexed (one read transaction)."""
        def probe(txn):
            out = {}
            for d in digests:
                raw = txn.get(d.raw, db=self._chunks)
                if raw is not None:
                    out[d] = _unpack(raw)
            return out
        return self._read(probe)

    def add_chunks(self, infos: dict[Digest, ChunkInfo], *, synced: bool = True) -> None:
        """Record chunks as stored; ``synced=False``: their files were not fsynced (see ``unsynced``)."""
        mark = None if synced else (fsutil.boot_id() or b"?")

        def put(txn):
            for d, i in infos.items():
                txn.put(d.raw, _pack(i), db=self._chunks)
                if mark is not None:
                    txn.put(d.raw, mark, db=self._unsynced)
                else:
                    txn.delete(d.raw, db=self._unsynced)
        self._write(put)

    def remove_chunks(self, digests: Iterable[Digest]) -> None:
        digests = list(digests)

        def drop(txn):
            for d in digests:
                txn.delete(d.raw, db=self._chunks)
                txn.delete(d.raw, db=self._unsynced)
        self._write(drop)

    def chunks(self) -> Iterator[tuple[Digest, ChunkInfo]]:
        def scan(txn):
            return [(Digest(bytes(k)), _unpack(v)) for k, v in txn.cursor(db=self._chunks)]
        return iter(self._read(scan))

    def totals(self) -> tuple[int, int, int]:
        """(chunk count, raw bytes, stored bytes) of every indexed chunk."""
        n = raw = stored = 0
        for _, info in self.chunks():
            n, raw, stored = n + 1, raw + info.raw_len, stored + info.stored_len
        return n, raw, stored

    # -- snapshot registry ----------------------------------------------------------------------
    def put_snapshot(self, name: str, totals: dict) -> None:
        data = json.dumps(totals, separators=(",", ":")).encode()
        self._write(lambda txn: txn.put(name.encode(), data, db=self._snaps))

    def remove_snapshot(self, name: str) -> None:
        self._write(lambda txn: txn.delete(name.encode(), db=self._snaps))

    def snapshot_table(self) -> dict[str, dict]:
        def scan(txn):
            return {bytes(k).decode(): json.loads(bytes(v)) for k, v in txn.cursor(db=self._snaps)}
        try:
            return self._read(scan)
        except (ValueError, UnicodeDecodeError):
            raise IndexDamagedError(f"index {self.path} has a damaged snapshot registry; "
                                    "run `casckpt reindex`") from None


def _pack(i: ChunkInfo) -> bytes:
    if i.base is None:
        return _ENTRY.pack(i.raw_len, i.stored_len, i.codec)
    return _DELTA_ENTRY.pack(i.raw_len, i.stored_len, i.codec, i.depth, i.base.raw)


def _unpack(raw) -> ChunkInfo:
    if len(raw) == _DELTA_ENTRY.size:
        raw_len, stored_len, kind, depth, base = _DELTA_ENTRY.unpack(raw)
        return ChunkInfo(raw_len, stored_len, kind, Digest(base), depth)
    if len(raw) != _ENTRY.size:
        raise IndexDamagedError(f"index has a chunk entry of {len(raw)} bytes; run `casckpt reindex`")
    return ChunkInfo(*_ENTRY.unpack(raw))


def _errno(exc: lmdb.Error, path: Path) -> int:
    """The errno behind an LMDB failure. LMDB turns a short write (how a full disk often shows)
    into EIO; with next to no space left on the index's file system, ENOSPC is the truth."""
    code = getattr(exc, "code", None)
    code = code if isinstance(code, int) and 0 < code < 4096 else errno.EIO
    if code == errno.EIO:
        try:
            st = os.statvfs(path)
        except OSError:
            return code
        if st.f_bavail * st.f_frsize < _FULL:
            return errno.ENOSPC
    return code


_FULL = 1 << 20  # bytes free below which an EIO from LMDB is taken for a full disk

# NOTE: LMDB allows one open environment per database per process ("already open in this
# process"), so every Index on the same database shares one, counted by references. The key is
# the data file's identity, so a database removed and made anew (reindex) gets a fresh one.
_ENVS: dict[tuple, list] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(path: Path, map_size: int, *, readonly: bool = False) -> lmdb.Environment:
    with _ENVS_LOCK:
        key = (_file_id(path), readonly)
        entry = _ENVS.get(key) if key[0] is not None else None
        if entry is None:
            env = lmdb.open(str(path), map_size=map_size, max_dbs=8, subdir=True,
                            readonly=readonly, lock=not readonly)
            entry = _ENVS[(_file_id(path), readonly)] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_env(env: lmdb.Environment) -> None:
    with _ENVS_LOCK:
        for key, entry in list(_ENVS.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _ENVS[key]
                    env.close()
                return
    env.close()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = (path / "data.mdb").stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _pad(env: lmdb.Environment, path: Path) -> None:
    """Extend the data file to the pages its meta page counts. NOTE: LMDB does not write pages a
    transaction allocated and freed again (they go to the free list), so a file can end before
    its last page number says, and :func:`_check_size` would take it for a truncated copy. Done
    holding LMDB's writer lock (an empty write transaction, aborted), so no other writer is
    writing pages past the end meanwhile; ``posix_fallocate`` only ever extends a file."""
    txn = env.begin(write=True)
    try:
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        fd = os.open(path / "data.mdb", os.O_WRONLY)
        try:
            have = os.fstat(fd).st_size
            if have < need:
                os.posix_fallocate(fd, have, need - have)
        finally:
            os.close(fd)
    except OSError:
        pass  # a full disk or a file system without it: the check at open may then refuse
    finally:
        txn.abort()


def _check_size(env: lmdb.Environment, path: Path) -> None:
    """Refuse a data file shorter than its meta page says: LMDB would map pages past the end of
    the file and the process would die of SIGBUS on the first read instead of raising."""
    # NOTE: env.info() reads only the meta pages (at the start of the file), so it is safe here.
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = (path / "data.mdb").stat().st_size
    if have < need:
        env.close()
        raise IndexDamagedError(f"index {path} is truncated ({have} of {need} bytes); run "
                                "`casckpt reindex` to rebuild it from the chunks and manifests")
