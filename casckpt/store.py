"""The Store: opens a store and ties its back-end, chunks, index, manifests and lock together.

A store is blobs under one root of a back-end (:mod:`casckpt.backends`; byte-level details in
docs/FORMAT.md)::

    casckpt.json          config: format, version, chunk size, codec settings
    chunks/00 … chunks/ff one blob per chunk, named by its BLAKE3 digest
    snapshots/NAME.json   one manifest per committed snapshot
    tmp/                  the local back-end's temp files; garbage once no save is running

and, on a local back-end, ``lock`` (flock target; shared: saves; exclusive: rm, gc) and
``index/`` (the LMDB index: a rebuildable cache; its location is configurable).

:class:`Store` is a facade: its duties live in their own modules, mixed in here so that
``store.put_arrays(...)``, ``store.manifest(...)`` and the rest stay where users find them:
:mod:`casckpt.snapshots` (the snapshot directory), :mod:`casckpt.saving` (the write pipeline),
:mod:`casckpt.arrays` (the numpy API), :mod:`casckpt.bases` (delta bases) and
:mod:`casckpt.reindex`. This module opens and creates stores, owns the index's life and the lock.

Write order is the crash-safety argument: chunks, made durable, index entries, then the manifest
(the commit point), then the snapshot's registry entry. Reading goes the other way and needs only
manifest and chunks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import chunking, config as config_mod, fsutil, objcache, objlock, packs, reindex as reindex_mod
from .arrays import Arrays
from .backends import Backend, open_backend
from .bases import DeltaWrites, delta_config
from .chunks import ChunkDir
from .codec import CodecConfig
from .config import CONFIG, StoreConfig, check_chunk_size, check_empty, check_layout, create_layout
from .delta import DeltaConfig
from .errors import CasckptError, StoreNotFoundError
from .index import Index
from .lock import SHARED, StoreLock, held_by_this_thread
from .manifest import Manifest
from .pipeline import DEFAULT_INFLIGHT, Pipeline
from .saving import ChunkTask, SaveStats, Saving
from .snapshots import SnapshotInfo, Snapshots

__all__ = ["ChunkTask", "SaveStats", "SnapshotInfo", "Store", "has_snapshot", "is_store"]

log = logging.getLogger("casckpt")


class Store(Snapshots, Saving, Arrays, DeltaWrites):
    """A casckpt store. Open with :meth:`open`; use as a context manager or call :meth:`close`."""

    lock_timing = objlock.TIMING  # how lock objects age on object storage

    def __init__(self, backend: Backend, config: StoreConfig, *, index_path: Path | None,
                 sync: bool, workers: int | None, inflight_bytes: int, lock_timeout: float | None,
                 fresh: bool = False) -> None:
        self.backend = backend
        # NOTE: the root folder on a local back-end (tests and messages use it), else the URL
        self.root = backend.local_path or backend.url
        self.config = config
        self.sync = sync
        self.lock_timeout = lock_timeout
        self.chunks = ChunkDir(backend)
        self.pipeline = Pipeline(workers=workers, inflight_bytes=inflight_bytes)
        self._syncing: dict = {}  # chunk digest → its fsync under way (Saving.write_chunks)
        if index_path is None and backend.local_path is None:
            index_path = objcache.index_path(config.store_id)  # a per-host cache (casckpt.objcache)
        self.index_path = index_path or backend.local_path / "index"
        self._index: Index | None = Index(self.index_path, create=True, owner=self.config.store_id) if fresh else None
        self._parsed: OrderedDict[tuple, Manifest] = OrderedDict()  # see manifest()
        self._views = {}  # see hold_view()
        self._parts = packs.PartCache()  # decoded packs, for refs into part of a chunk

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike | Backend, *, create: bool = False, chunk_size: int | None = None,
             level: int | None = None, byte_grouping: bool | None = None,
             index_path: str | os.PathLike | None = None, sync: bool = True,
             workers: int | None = None, inflight_bytes: int = DEFAULT_INFLIGHT,
             lock_timeout: float | None = None, delta: bool | None = None,
             max_depth: int | None = None, storage_options: dict | None = None) -> "Store":
        """Open the store at ``path`` (a folder, a URL, or a :class:`casckpt.backends.Backend`);
        with ``create=True`` make it first if it does not exist.

        ``chunk_size`` applies when creating. ``level`` / ``byte_grouping`` override the store's
        codec settings for this session. ``index_path`` keeps the LMDB index elsewhere (a local
        disk when the store is on a network file system). ``sync=False`` skips fsync (faster,
        not durable across power loss). ``lock_timeout`` bounds waits for the store lock.
        ``delta=False`` stores every new chunk whole instead of as a delta against the chunk at the
        same place in the previous snapshot; ``max_depth`` bounds chains of deltas. Both are store
        defaults when creating and session overrides otherwise, like ``level``.

        ``path`` may be a URL of object storage (``s3://bucket/prefix``, ``gs://…``, ``az://…``);
        ``storage_options`` then override the settings taken from the environment (see
        :mod:`casckpt.backends.object`), and the index is a cache on this host
        (:mod:`casckpt.objcache`) unless ``index_path`` says where.
        """
        backend = open_backend(path, options=storage_options)
        config = _read_config(backend)
        if config is None:
            if not create:
                raise StoreNotFoundError(f"{backend.url} is not a casckpt store (no {CONFIG})")
            check_empty(backend)
            config = StoreConfig(check_chunk_size(chunk_size or chunking.DEFAULT_CHUNK_SIZE),
                                 CodecConfig(level=1 if level is None else level,
                                             byte_grouping=True if byte_grouping is None else byte_grouping),
                                 uuid.uuid4().hex, delta_config(DeltaConfig(), delta, max_depth))
            if not create_layout(backend, config):
                config = _read_config(backend)  # NOTE: racing creators: the first config wins
            fresh = True
        else:
            fresh = False
            check_layout(backend)
            if chunk_size is not None and chunk_size != config.chunk_size:
                raise CasckptError(f"store {backend.url} has chunk size {config.chunk_size}; "
                                   f"chunk_size={chunk_size} applies only when creating a store")
            codec = replace(config.codec, level=config.codec.level if level is None else level,
                            byte_grouping=config.codec.byte_grouping if byte_grouping is None else byte_grouping)
            config = StoreConfig(config.chunk_size, codec, config.store_id,
                                 delta_config(config.delta, delta, max_depth), config.version)
        return cls(backend, config, index_path=Path(index_path).absolute() if index_path else None,
                   sync=sync, workers=workers, inflight_bytes=inflight_bytes, lock_timeout=lock_timeout,
                   fresh=fresh)

    @property
    def index(self) -> Index:
        """The LMDB index, opened on first use; rebuilt automatically if it is missing."""
        if self._index is None:
            if _empty_or_missing(self.index_path / "data.mdb"):
                # NOTE: on object storage the index is a per-host cache: a new host starts without one
                (log.info if self.backend.local_path is None else log.warning)(
                    "casckpt: index %s is missing; rebuilding it from the store", self.index_path)
                # NOTE: the shared lock keeps gc from deleting chunks while they are indexed; a
                # thread that already holds the lock (a save, a gc) must not wait on itself.
                with contextlib.nullcontext() if self.holds_lock else self.lock(SHARED):
                    self._index = Index(self.index_path, create=True, owner=self.config.store_id)
                    reindex_mod.rebuild(self, self._index)  # chunk headers only: O(chunks), not O(bytes)
            else:
                self._index = Index(self.index_path, owner=self.config.store_id)
        return self._index

    def close(self) -> None:
        for pending in self._syncing.values():  # NOTE: a failed save's fsyncs: none outlives the store
            pending.exception()
        self._syncing.clear()
        self.pipeline.close()
        if self._index is not None:
            self._index.close()
            self._index = None
        self.backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def lock(self, mode: int = SHARED, *, timeout: float | None = ...) -> StoreLock:
        """A hold on the store lock (use as ``with store.lock(EXCLUSIVE): ...``). The one place
        that knows how the store is locked: ``flock`` on ``lock`` in a local back-end's root, lock
        objects on object storage (:mod:`casckpt.objlock`)."""
        timeout = self.lock_timeout if timeout is ... else timeout
        if self.backend.local_path is None:
            return objlock.ObjectLock(self.backend, mode, timeout=timeout, timing=self.lock_timing)
        return StoreLock(self._lock_path, mode, timeout=timeout)

    def check_lock(self) -> None:
        """Raise LockLostError if this process's hold on an object-storage store's lock lapsed;
        called right before each write the lock protects (the manifest, a chunk deletion)."""
        if self.backend.local_path is None:
            objlock.check_held(self.backend.url)

    def before_chunk_deletes(self) -> None:
        """Called under the exclusive lock before chunks are deleted: on object storage, tell
        every host's index cache (casckpt.objcache) to drop what no manifest references."""
        if self.backend.local_path is None:
            self.check_lock()
            objcache.announce_deletes(self)

    @property
    def _lock_path(self) -> Path:
        if self.backend.local_path is None:
            raise CasckptError(f"no lock for a store at {self.backend.url} yet (only local stores lock)")
        return self.backend.local_path / "lock"

    def reading(self) -> contextlib.AbstractContextManager:
        """Hold the shared lock while reading chunks, so gc cannot delete them meanwhile (as
        restic's readers do); a no-op when this thread holds the lock already."""
        return contextlib.nullcontext() if self.holds_lock else self.lock(SHARED)

    @property
    def holds_lock(self) -> bool:
        """Whether the calling thread holds the store lock now (in either mode)."""
        if self.backend.local_path is None:
            return objlock.held_by_this_thread(self.backend.url)
        return held_by_this_thread(self._lock_path)


    def reset_index(self) -> Index:
        """Close the index, delete LMDB's files and open an empty one (:func:`casckpt.reindex.reindex`
        fills it; the caller holds the exclusive lock)."""
        if self._index is not None:
            self._index.close()
            self._index = None
        # NOTE: only LMDB's own files: index_path may be a folder the user shares with others.
        for f in ("data.mdb", "lock.mdb"):
            fsutil.unlink_quiet(self.index_path / f)
        self._index = Index(self.index_path, create=True, owner=self.config.store_id)
        return self._index

    def reindex(self, *, progress: Callable[[int, int], None] | None = None, verify: bool = False) -> dict:
        """Rebuild the LMDB index from chunk headers and manifests (:func:`casckpt.reindex.reindex`;
        with ``verify`` every referenced chunk is read and hashed first). Returns counts and seconds."""
        return reindex_mod.reindex(self, progress=progress, verify=verify)


def is_store(location: str | os.PathLike) -> bool:
    """Whether ``location`` holds a casckpt store (its config), without opening it."""
    try:
        return open_backend(location).exists(CONFIG)
    except OSError:  # unreadable, or an unsafe path: not a store we can open
        return False


def has_snapshot(location: str | os.PathLike, name: str) -> bool:
    """Whether the store at ``location`` holds snapshot ``name``, without opening it."""
    try:
        return open_backend(location).exists(Store.manifest_key(name))
    except OSError:
        return False


def _read_config(backend: Backend) -> StoreConfig | None:
    try:
        return config_mod.read(backend)
    except OSError as exc:
        if isinstance(exc, CasckptError):
            raise
        raise fsutil.io_error(exc, f"cannot read the config of the store at {backend.url}") from None


def _empty_or_missing(path: Path) -> bool:
    # NOTE: LMDB takes a zero-length data file for a new, empty index; treat it as lost instead.
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True
