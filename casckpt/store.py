"""The Store: opens a store root and ties chunks, index, manifests and the lock together.

Layout of a store root (byte-level details in docs/FORMAT.md)::

    casckpt.json          config: format, version, chunk size, codec settings
    lock                  flock target (shared: saves; exclusive: rm, gc)
    chunks/00 … chunks/ff one file per chunk, named by its BLAKE3 digest
    snapshots/NAME.json   one manifest per committed snapshot
    index/                the LMDB index (a rebuildable cache; location configurable)
    tmp/                  temp files; anything here is garbage once no save is running

Write order is the crash-safety argument: chunk files, fsync them, index entries, then the
manifest (temp, fsync, link into place, fsync the directory: the commit point), then the
snapshot's registry entry. Reading goes the other way and needs only manifest and chunks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from . import chunking, config as config_mod, delta, dtypes, fsutil, packs, spotcheck
from .chunks import ChunkDir, ChunkInfo
from .codec import CodecConfig
from .bases import DeltaWrites, delta_config
from .delta import DeltaConfig
from .digest import Digest, digest_of
from .config import CONFIG, StoreConfig, check_chunk_size, check_empty, check_layout, create_layout
from .errors import (CasckptError, ChunkError, IndexDamagedError, ManifestError, SnapshotExistsError,
                     SnapshotNotFoundError, StoreIOError, StoreNotFoundError)
from .index import Index
from .lock import EXCLUSIVE, SHARED, StoreLock, held_by_this_thread
from .manifest import ChunkRef, Item, Manifest, check_name, is_valid_name, resumable, tags_of, utc_now
from .pipeline import DEFAULT_INFLIGHT, Pipeline, Tally
from .reclaim import reclaim

log = logging.getLogger("casckpt")

# Seconds of clock skew between hosts that "latest" tolerates (see Store._latest).
LATEST_SKEW = 60.0

@dataclass(frozen=True, slots=True)
class SaveStats:
    """What one save cost. ``bytes_written`` counts stored (compressed) bytes of new chunks."""

    snapshot: str
    logical_bytes: int
    chunks: int
    new_chunks: int
    bytes_written: int
    seconds: float

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per byte written (``inf`` when the save wrote nothing new)."""
        return self.logical_bytes / self.bytes_written if self.bytes_written else math.inf

    def to_json(self) -> dict:
        d = asdict(self)
        d["dedup_ratio"] = None if math.isinf(self.dedup_ratio) else round(self.dedup_ratio, 3)
        return d


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: str
    logical_bytes: int
    chunks: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ChunkTask:
    """One chunk to store: its digest, its bytes (a view into the caller's memory), the element
    size to group bytes by (0 for no grouping), and the ``(digest, depth)`` of an indexed chunk to
    store it as a delta against (from :meth:`Store.delta_bases`), if any."""

    digest: Digest
    data: memoryview
    group: int = 0
    base: tuple[Digest, int] | None = None


class Store(DeltaWrites):
    """A casckpt store. Open with :meth:`open`; use as a context manager or call :meth:`close`."""

    def __init__(self, root: Path, config: StoreConfig, *, index_path: Path | None,
                 sync: bool, workers: int | None, inflight_bytes: int, lock_timeout: float | None,
                 fresh: bool = False) -> None:
        self.root = root
        self.config = config
        self.sync = sync
        self.lock_timeout = lock_timeout
        self.tmp_dir = root / "tmp"
        self.snap_dir = root / "snapshots"
        self.chunks = ChunkDir(root / "chunks", self.tmp_dir)
        self.pipeline = Pipeline(workers=workers, inflight_bytes=inflight_bytes)
        self.index_path = index_path or root / "index"
        self._index: Index | None = Index(self.index_path, create=True, owner=self.config.store_id) if fresh else None
        self._parsed: OrderedDict[tuple, Manifest] = OrderedDict()  # see manifest()
        self._parts = packs.PartCache()  # decoded packs, for refs into part of a chunk

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, chunk_size: int | None = None,
             level: int | None = None, byte_grouping: bool | None = None,
             index_path: str | os.PathLike | None = None, sync: bool = True,
             workers: int | None = None, inflight_bytes: int = DEFAULT_INFLIGHT,
             lock_timeout: float | None = None, delta: bool | None = None,
             max_depth: int | None = None) -> "Store":
        """Open the store at ``path``; with ``create=True`` make it first if it does not exist.

        ``chunk_size`` applies when creating. ``level`` / ``byte_grouping`` override the store's
        codec settings for this session. ``index_path`` keeps the LMDB index elsewhere (a local
        disk when the store is on a network file system). ``sync=False`` skips fsync (faster,
        not durable across power loss). ``lock_timeout`` bounds waits for the store lock.
        ``delta=False`` stores every new chunk whole instead of as a delta against the chunk at the
        same place in the previous snapshot; ``max_depth`` bounds chains of deltas. Both are store
        defaults when creating and session overrides otherwise, like ``level``.
        """
        root = Path(path).absolute()
        cfg_path = root / CONFIG
        if not cfg_path.exists():
            if not create:
                raise StoreNotFoundError(f"{root} is not a casckpt store (no {CONFIG})")
            check_empty(root)
            config = StoreConfig(check_chunk_size(chunk_size or chunking.DEFAULT_CHUNK_SIZE),
                                 CodecConfig(level=1 if level is None else level,
                                             byte_grouping=True if byte_grouping is None else byte_grouping),
                                 uuid.uuid4().hex, delta_config(DeltaConfig(), delta, max_depth))
            create_layout(root, config)
            fresh = True
        else:
            fresh = False
            config = StoreConfig.from_bytes(fsutil.read_file(cfg_path), str(cfg_path))
            check_layout(root)
            if chunk_size is not None and chunk_size != config.chunk_size:
                raise CasckptError(f"store {root} has chunk size {config.chunk_size}; "
                                   f"chunk_size={chunk_size} applies only when creating a store")
            codec = replace(config.codec, level=config.codec.level if level is None else level,
                            byte_grouping=config.codec.byte_grouping if byte_grouping is None else byte_grouping)
            config = StoreConfig(config.chunk_size, codec, config.store_id,
                                 delta_config(config.delta, delta, max_depth), config.version)
        return cls(root, config, index_path=Path(index_path).absolute() if index_path else None,
                   sync=sync, workers=workers, inflight_bytes=inflight_bytes, lock_timeout=lock_timeout,
                   fresh=fresh)

    @property
    def index(self) -> Index:
        """The LMDB index, opened on first use; rebuilt automatically if it is missing."""
        if self._index is None:
            if _empty_or_missing(self.index_path / "data.mdb"):
                log.warning("casckpt: index %s is missing; rebuilding it from the store", self.index_path)
                # NOTE: the shared lock keeps gc from deleting chunks while they are indexed; a
                # thread that already holds the lock (a save, a gc) must not wait on itself.
                with contextlib.nullcontext() if self.holds_lock else self.lock(SHARED):
                    self._index = Index(self.index_path, create=True, owner=self.config.store_id)
                    self._rebuild_index()
            else:
                self._index = Index(self.index_path, owner=self.config.store_id)
        return self._index

    def close(self) -> None:
        self.pipeline.close()
        if self._index is not None:
            self._index.close()
            self._index = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def lock(self, mode: int = SHARED, *, timeout: float | None = ...) -> StoreLock:
        """A hold on the store lock (use as ``with store.lock(EXCLUSIVE): ...``)."""
        return StoreLock(self.root / "lock", mode, timeout=self.lock_timeout if timeout is ... else timeout)

    def reading(self) -> contextlib.AbstractContextManager:
        """Hold the shared lock while reading chunks, so gc cannot delete them meanwhile (as
        restic's readers do); a no-op when this thread holds the lock already."""
        return contextlib.nullcontext() if self.holds_lock else self.lock(SHARED)

    @property
    def holds_lock(self) -> bool:
        """Whether the calling thread holds the store lock now (in either mode)."""
        return held_by_this_thread(self.root / "lock")

    # -- snapshots ------------------------------------------------------------------------------
    def manifest_path(self, name: str) -> Path:
        return self.snap_dir / f"{check_name(name)}.json"

    def resolve(self, name: str) -> str:
        """``"latest"`` → the newest committed snapshot's name; other names are checked and returned."""
        return self._latest() if name == "latest" else check_name(name)

    def _latest(self, accept: Callable[[Manifest], bool] | None = resumable) -> str:
        """The committed snapshot with the greatest ``(created, name)`` (the order of
        :meth:`snapshots`), found from manifest files alone: any rank on any host can resolve it
        without the LMDB index. Only snapshots ``accept`` takes count (by default not imports:
        see :func:`casckpt.manifest.resumable`) unless there are no others.

        A manifest is published after its ``created`` time, so once a manifest created at C is
        seen, files last modified more than ``LATEST_SKEW`` seconds before C cannot be newer and
        are not read (the margin absorbs clock skew between hosts sharing the store).
        """
        paths = []
        for name in self.snapshot_names():
            try:
                paths.append((os.stat(self.manifest_path(name)).st_mtime, name))
            except FileNotFoundError:
                continue  # deleted meanwhile
        best: tuple[str, str] | None = None
        for mtime, name in sorted(paths, reverse=True):
            if best is not None and mtime < _timestamp(best[0]) - LATEST_SKEW:
                break
            try:
                m = self.manifest(name)
            except SnapshotNotFoundError:
                continue
            except CasckptError as exc:  # NOTE: one damaged manifest must not block every resume
                if accept is not None:  # warn once (a second pass without ``accept`` may follow)
                    log.warning("casckpt: 'latest' skips snapshot %s, whose manifest is unreadable: %s", name, exc)
                continue
            if accept is not None and not accept(m):
                continue
            best = max(best or (m.created, name), (m.created, name))
        if best is None and accept is not None:
            return self._latest(None)
        if best is None:
            raise SnapshotNotFoundError(f"store {self.root} has no snapshots (asked for 'latest')")
        return best[1]

    def exists(self, name: str) -> bool:
        return self.manifest_path(name).exists()

    def manifest(self, name: str) -> Manifest:
        """The committed manifest of ``name`` (or ``"latest"``), fully validated.

        A committed manifest never changes in place (overwrite replaces the file), so parses are
        kept for the few most recent files, keyed by the file's identity: resolving "latest" and
        then loading it parses the manifest once.
        """
        name = self.resolve(name)
        path = self.manifest_path(name)
        try:
            st = os.stat(path, follow_symlinks=False)
            key = (name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key in self._parsed:
                self._parsed.move_to_end(key)
                return self._parsed[key]
            data = fsutil.read_file(path)
        except FileNotFoundError:
            raise SnapshotNotFoundError(f"no snapshot {name!r} in store {self.root}") from None
        except CasckptError:
            raise  # a symlink planted in the store (UnsafePathError)
        except OSError as exc:  # a folder where the manifest should be, an I/O error
            raise ManifestError(f"manifest of snapshot {name!r} in {self.root} is unreadable: "
                                f"{exc.strerror or exc}") from None
        try:
            m = Manifest.from_bytes(data, source=f"manifest of snapshot {name!r} in {self.root}")
        except ManifestError as exc:
            if str(exc).startswith("manifest of"):
                raise
            raise ManifestError(f"manifest of snapshot {name!r} in {self.root}: {exc}") from None
        if m.name != name:
            raise ManifestError(f"manifest {path} names snapshot {m.name!r}, not {name!r}")
        self._parsed[key] = m
        while len(self._parsed) > 8:
            self._parsed.popitem(last=False)
        return m

    def snapshot_names(self) -> list[str]:
        """Names of committed snapshots, from the manifest directory (the source of truth)."""
        names = []
        for f in os.listdir(self.snap_dir):
            if f.endswith(".json"):
                try:
                    names.append(check_name(f[:-5]))
                except CasckptError:
                    continue
        return names

    def read_manifests(self, progress: Callable[[int, int], None] | None = None
                       ) -> tuple[dict[str, Manifest], dict[str, str]]:
        """Every committed manifest that parses, and ``{name: why}`` for those that do not (a
        snapshot deleted meanwhile is in neither). ``progress(done, total)`` counts manifests."""
        good, bad = {}, {}
        names = self.snapshot_names()
        for i, name in enumerate(names, 1):
            try:
                good[name] = self.manifest(name)
            except SnapshotNotFoundError:
                pass  # deleted meanwhile (a reader without the lock)
            except CasckptError as exc:
                bad[name] = str(exc)
            if progress:
                progress(i, len(names))
        return good, bad

    def snapshots(self) -> list[SnapshotInfo]:
        """Every committed snapshot, oldest first (registry totals; manifests fill any gap).

        A snapshot without a registry row whose manifest cannot be read is left out with a
        warning (``casckpt.usage.ls`` lists it as damaged). Needs no write: on a full disk or a
        read-only store the missing rows are computed and not saved."""
        table = self.index.snapshot_table()
        out = []
        for name in self.snapshot_names():
            row = table.get(name)
            if row is None:  # committed, but the process died before it updated the registry
                try:
                    row = _registry_row(self.manifest(name))
                except SnapshotNotFoundError:
                    continue  # deleted meanwhile
                except CasckptError as exc:
                    log.warning("casckpt: snapshot %s has an unreadable manifest: %s", name, exc)
                    continue
                self._put_row(name, row)
            out.append(SnapshotInfo(name, row["created"], row["logical_bytes"], row["chunks"]))
        return sorted(out, key=lambda s: (s.created, s.name))

    def _put_row(self, name: str, row: dict) -> None:
        """Save a registry row; it is a cache, so a full disk or read-only index only costs a re-read."""
        try:
            self.index.put_snapshot(name, row)
        except (StoreIOError, IndexDamagedError):
            pass

    def stray_files(self) -> list[str]:
        """Names in ``snapshots/`` that are not manifests casckpt could have written (reported by
        verify, never read, never deleted)."""
        return sorted(f for f in os.listdir(self.snap_dir)
                      if not (f.endswith(".json") and is_valid_name(f[:-5])))

    # -- writing --------------------------------------------------------------------------------
    def hash_spans(self, data: memoryview, spans: list[tuple[int, int]]) -> list[Digest]:
        """BLAKE3 of each ``(offset, length)`` span of ``data``, in parallel."""
        return self.pipeline.map(lambda s: digest_of(data[s[0]:s[0] + s[1]]), spans)

    def stored(self, digests: Iterable[Digest]) -> set[Digest]:
        """Which digests are safely stored already (index lookup; coordinator only).

        A chunk the index lists but whose file is gone (deleted by hand, lost with a disk) is not
        stored: its entry is dropped and the save writes the chunk again, rather than committing
        a snapshot that references nothing. Files are checked by sample, not one ``lstat``
        per indexed chunk (see :mod:`casckpt.spotcheck` for the trade and what heals a miss).
        """
        if self._index is not None and self._index.replaced():
            # NOTE: a reindex in another process replaced the LMDB file; the old mapping would
            # still claim chunks that a gc has deleted since, and the save would skip them.
            self._index.close()
            self._index = None
        have = self.index.has_many(digests, synced_only=self.sync)  # see Index: ``unsynced``
        lost = spotcheck.lost(have, self.chunks.path)
        if lost:
            log.warning("casckpt: %d indexed chunks are missing from %s; writing them again",
                        len(lost), self.root)
            self.index.remove_chunks(lost)
        return have - lost

    def write_chunks(self, tasks: list[ChunkTask], *, tally: Tally | None = None) -> dict[Digest, ChunkInfo]:
        """Compress and write chunks the index does not hold, in parallel, memory bounded.

        Returns the info of every chunk handled (written now or found intact on disk); these
        files are not yet durable: :meth:`commit` syncs them before anything references them.
        """
        unique = list({t.digest: t for t in tasks}.values())
        cfg = self.config.codec
        if unique and self.config.version < config_mod.VERSION:
            self._upgrade_format()
        tally = tally or Tally(None)
        tally.grow(sum(t.data.nbytes for t in unique))

        def put(t: ChunkTask) -> ChunkInfo:
            # NOTE: put() also returns the info of a good file that is already there but not
            # indexed (left by a crashed save, or a concurrent save of the same chunk).
            base, hopeless = self._delta_base(t, cfg)
            info = self.chunks.put(t.digest, t.data, group=t.group, config=cfg, base=base)
            self._remember(t, info, hopeless)
            tally.add(t.data.nbytes)
            return info

        try:
            infos = self.pipeline.map(put, unique, cost=lambda t: (4 if t.base else 2) * t.data.nbytes)
        except OSError as exc:
            raise fsutil.io_error(exc, f"writing chunks into store {self.root}") from exc
        return {t.digest: i for t, i in zip(unique, infos)}

    def sync_chunks(self, digests: Iterable[Digest]) -> None:
        """Make chunk files durable: fsync them (in parallel) and their fan-out folders."""
        self.chunks.sync(digests, map=lambda fn, xs: self.pipeline.map(fn, list(xs)))

    def commit(self, manifest: Manifest, new: Mapping[Digest, ChunkInfo], *, overwrite: bool = False,
               started: float | None = None) -> SaveStats:
        """Make ``new`` chunks durable and indexed, then publish the manifest (the commit point).

        Raises SnapshotExistsError if the name is taken (unless ``overwrite``). The caller
        vouches that every other chunk the manifest references is stored (see :meth:`stored`).
        """
        if "seq" not in manifest.meta:  # NOTE: a save number, for retention (casckpt.retention)
            manifest = dataclasses.replace(manifest, meta={**manifest.meta, "seq": self._next_seq()})
        path = self.manifest_path(manifest.name)
        new = self._with_bases(new)
        try:
            if self.sync:
                self.sync_chunks(new)
            self.index.add_chunks(dict(new), synced=self.sync)
            self._publish(path, manifest.to_bytes(), overwrite=overwrite)
        except OSError as exc:
            if isinstance(exc, CasckptError):  # SnapshotExistsError, StoreIOError, ...
                raise
            raise fsutil.io_error(exc, f"committing snapshot {manifest.name!r} in store {self.root}") from exc
        try:
            self.index.put_snapshot(manifest.name, _registry_row(manifest))
        except CasckptError as exc:  # committed already; the row is rebuilt from the manifest
            log.warning("casckpt: snapshot %s is committed and whole; its registry row (sizes cached for "
                        "ls/du) was not written (%s), so ls/du read its manifest instead", manifest.name, exc)
        written = sum(i.stored_len for i in new.values())
        return SaveStats(manifest.name, manifest.logical_bytes, manifest.refs,
                         len(new), written, time.perf_counter() - started if started else 0.0)

    def _next_seq(self) -> int:
        """One more than the greatest ``seq`` in the snapshot registry; in a store whose snapshots
        have none (saved by an older casckpt), the number of snapshots. From the registry, not the
        manifests: one LMDB scan, whatever the manifests' size."""
        rows = self.index.snapshot_table().values()
        seqs = [r.get("seq") for r in rows if type(r.get("seq")) is int]
        return max(seqs) + 1 if seqs else len(rows)

    def _publish(self, path: Path, data: bytes, *, overwrite: bool) -> None:
        tmp = fsutil.temp_path(self.tmp_dir, ".manifest")
        try:
            fsutil.write_parts(tmp, [data], sync=self.sync)
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if the name was committed meanwhile
                except FileExistsError:
                    raise SnapshotExistsError(f"snapshot {path.stem!r} already exists in store {self.root}") from None
        finally:
            fsutil.unlink_quiet(tmp)
        if self.sync:
            fsutil.fsync_dir(path.parent)

    def put_arrays(self, name: str, arrays: Mapping[str, np.ndarray], *, meta: dict | None = None,
                   overwrite: bool = False, dtype_names: Mapping[str, str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SaveStats:
        """Save numpy arrays as snapshot ``name``. Only chunks the store lacks are written.

        ``dtype_names`` gives the store dtype of items whose array only holds the bytes of a type
        numpy lacks (``{"w": "bfloat16"}`` with a uint16 array; ``"bytes"`` with uint8).
        ``progress(done, total)`` counts bytes hashed, then bytes of new chunks written.

        If the save fails, the chunk files it wrote are deleted at once when no other save runs
        (:mod:`casckpt.reclaim`), so a failure on a full disk does not keep the disk full."""
        attempted: set[Digest] = set()
        try:
            return self._put_arrays(name, arrays, meta, overwrite, dtype_names, progress, attempted)
        except Exception:
            reclaim(self, attempted)
            raise

    def _put_arrays(self, name: str, arrays: Mapping[str, np.ndarray], meta: dict | None, overwrite: bool,
                    dtype_names: Mapping[str, str] | None, progress: Callable[[int, int], None] | None,
                    attempted: set[Digest]) -> SaveStats:
        started = time.perf_counter()
        check_name(name)
        with self.lock(SHARED):
            if not overwrite and self.exists(name):
                raise SnapshotExistsError(f"snapshot {name!r} already exists in store {self.root}")
            items, tasks = {}, []
            tally = Tally(progress, sum(np.asarray(a).nbytes for a in arrays.values()))
            for key, arr in arrays.items():
                as_dtype = (dtype_names or {}).get(key)
                items[str(key)], item_tasks = self._plan_array(str(key), arr, as_dtype)
                tasks.extend(item_tasks)
                tally.add(items[str(key)].nbytes)
            have = self.stored(t.digest for t in tasks)
            attempted.update(t.digest for t in tasks if t.digest not in have)
            todo = self._with_delta_bases([t for t in tasks if t.digest not in have], items)
            new = self.write_chunks(todo, tally=tally)
            m = Manifest(name, utc_now(), self.config.chunk_size, items, meta or {})
            return self.commit(m, new, overwrite=overwrite, started=started)

    def _plan_array(self, key: str, arr: np.ndarray, as_dtype: str | None = None) -> tuple[Item, list[ChunkTask]]:
        arr = np.asarray(arr)
        dt = dtypes.from_numpy(arr.dtype) if as_dtype is None else dtypes.lookup(as_dtype)
        if as_dtype is not None and arr.dtype.newbyteorder("<") != np.dtype(dt.numpy):
            raise TypeError(f"item {key!r}: {as_dtype} is held as numpy {np.dtype(dt.numpy)}, got {arr.dtype}")
        data = np.require(arr, dtype=np.dtype(dt.numpy), requirements="C")  # keeps 0-d shapes
        view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")
        spans = chunking.spans(data.shape, dt.itemsize, self.config.chunk_size)
        digests = self.hash_spans(view, spans)
        group = dt.itemsize if dt.floating else 0
        item = Item(dt.name, tuple(data.shape), tuple(ChunkRef(d, n) for d, (_, n) in zip(digests, spans)))
        return item, [ChunkTask(d, view[o:o + n], group) for d, (o, n) in zip(digests, spans)]

    # -- reading --------------------------------------------------------------------------------
    def read_item(self, item: Item, out: memoryview, *, key: str = "",
                  select: Iterable[int] | None = None) -> None:
        """Decode ``item``'s chunks (all, or the indices in ``select``) into ``out`` (its full size),
        verifying every digest, in parallel."""
        offsets = item.offsets()
        which = range(len(item.chunks)) if select is None else list(select)

        def read(i: int) -> None:
            c = item.chunks[i]
            self.read_ref(c, out[offsets[i]:offsets[i] + c.length], item=key)

        self.pipeline.map(read, list(which))

    def read_ref(self, ref: ChunkRef, out: memoryview, *, item: str = "") -> None:
        """Decode the bytes ``ref`` names into ``out``, verified. A ref into part of a chunk
        (``ref.offset`` set) decodes and checks the whole chunk, then copies its slice."""
        if ref.offset is None:
            self.chunks.get(ref.digest, out=out, item=item)
            return
        raw = self._parts.get(ref.digest, lambda: self.chunks.get(ref.digest, item=item))
        if ref.offset + ref.length > raw.nbytes:
            raise ManifestError(f"item {item!r} refers to bytes {ref.offset}-{ref.offset + ref.length} "
                                f"of chunk {ref.digest}, which holds {raw.nbytes}")
        out[:] = raw[ref.offset:ref.offset + ref.length]

    def get_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Every item of snapshot ``name`` (or ``"latest"``) as a numpy array, bit-exact.

        Types numpy lacks (bfloat16, float8) come back as unsigned integers of the same width.
        """
        with self.reading():  # gc waits until every chunk is read
            m = self.manifest(name)
            return {key: self.read_array(m, key) for key in m.items}

    def read_array(self, m: Manifest, key: str) -> np.ndarray:
        """Item ``key`` of manifest ``m`` as a numpy array (as :meth:`get_arrays`), verified."""
        item = m.items[key]
        arr = np.empty(item.shape, dtype=np.dtype(dtypes.lookup(item.dtype).numpy))
        if arr.nbytes:
            try:
                self.read_item(item, memoryview(arr.reshape(-1).view(np.uint8)), key=key)
            except ChunkError as exc:
                raise exc.within(m.name, self.root) from None
        return arr

    # -- removing and rebuilding ----------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Forget snapshot ``name`` (its manifest); its chunks stay until ``gc``."""
        self.delete_all([name])

    def delete_all(self, names: Iterable[str]) -> list[str]:
        """Forget every snapshot in ``names``, all or none: under one hold of the exclusive lock,
        each must exist before any goes. A damaged manifest can be deleted. Returns the names."""
        names = list(dict.fromkeys(check_name(n) for n in names))
        with self.lock(EXCLUSIVE):
            missing = [n for n in names if not os.path.lexists(self.manifest_path(n))]
            if missing:
                raise SnapshotNotFoundError(f"no snapshot {', '.join(map(repr, missing))} in store "
                                            f"{self.root}; nothing removed")
            for n in names:
                fsutil.unlink_quiet(self.manifest_path(n))
            if self.sync:
                fsutil.fsync_dir(self.snap_dir)
            for n in names:
                self.index.remove_snapshot(n)
        return names

    def reindex(self, *, progress: Callable[[int, int], None] | None = None, verify: bool = False) -> dict:
        """Rebuild the LMDB index from chunk headers and manifests (:mod:`casckpt.reindex`; with
        ``verify`` every referenced chunk is read and hashed first). Returns counts and seconds.
        ``progress(done, total)`` counts chunk files checked."""
        with self.lock(EXCLUSIVE):
            if self._index is not None:
                self._index.close()
                self._index = None
            # NOTE: only LMDB's own files: index_path may be a folder the user shares with others.
            for f in ("data.mdb", "lock.mdb"):
                fsutil.unlink_quiet(self.index_path / f)
            self._index = Index(self.index_path, create=True, owner=self.config.store_id)
            return self._rebuild_index(progress, verify=verify)

    def _rebuild_index(self, progress: Callable[[int, int], None] | None = None, *, verify: bool = False) -> dict:
        from . import reindex  # NOTE: reindex imports this module
        return reindex.rebuild(self, self._index, verify=verify, progress=progress)



def _empty_or_missing(path: Path) -> bool:
    # NOTE: LMDB takes a zero-length data file for a new, empty index; treat it as lost instead.
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


def _timestamp(created: str) -> float:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return float("-inf")  # an unexpected format: read every manifest


def _registry_row(m: Manifest) -> dict:
    """A snapshot's registry row: its totals, and the labels ``ls`` shows (so ls reads no manifest)."""
    seq, user = m.meta.get("seq"), m.meta.get("user")
    return {"created": m.created, "logical_bytes": m.logical_bytes, "chunks": m.refs,
            **({"seq": seq} if type(seq) is int else {}), "tags": tags_of(m),
            "user": user if isinstance(user, dict) else None, "origin": "save" if resumable(m) else "import"}
