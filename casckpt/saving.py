"""The write pipeline of a save: hash, find what the store lacks, write it in parallel, commit.

:class:`Saving` is a part of :class:`casckpt.Store` (a mixin). Write order is the crash-safety
argument: chunks (``put_if_absent`` without sync), sync them, index entries, then the manifest
(the commit point, :meth:`casckpt.snapshots.Snapshots._publish`), then the registry row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

from . import config as config_mod, fsutil, objcache, spotcheck
from .codec import FRAME_MAGIC
from .chunks import ChunkInfo
from .digest import Digest, digest_of
from .errors import CasckptError
from .manifest import Manifest
from .pipeline import Tally
from .snapshots import _registry_row

log = logging.getLogger("casckpt")


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
class ChunkTask:
    """One chunk to store: its digest, its bytes (a view into the caller's memory), the element
    size to group bytes by (0 for no grouping), and the ``(digest, depth)`` of an indexed chunk to
    store it as a delta against (from :meth:`Store.delta_bases`), if any."""

    digest: Digest
    data: memoryview
    group: int = 0
    base: tuple[Digest, int] | None = None


class Saving:
    """Write-pipeline methods of :class:`casckpt.Store` (a mixin: it uses the store's config,
    chunks, index, pipeline and snapshot directory)."""

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
        if self.backend.local_path is None:
            # NOTE: no HEAD per chunk: the cache is kept coherent with gc instead (objcache)
            objcache.catch_up(self)
            return self.index.has_many(digests)
        have = self.index.has_many(digests, synced_only=self.sync)  # see Index: ``unsynced``
        lost = spotcheck.lost(have, self.chunks.exists)
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
        early = self.sync and self.backend.local_path is not None  # object storage: a PUT is durable

        def put(t: ChunkTask) -> ChunkInfo:
            # NOTE: put() also returns the info of a good file that is already there but not
            # indexed (left by a crashed save, or a concurrent save of the same chunk).
            base, hopeless = self._delta_base(t, cfg)
            info = self.chunks.put(t.digest, t.data, group=t.group, config=cfg, base=base)
            if early:
                # NOTE: made durable now, off the workers, so the disk's writeback overlaps the
                # next chunks' compression instead of following the last one (sync_chunks waits)
                self._syncing[t.digest] = self.pipeline.background(self.chunks.sync_data, t.digest)
            self._remember(t, info, hopeless)
            tally.add(t.data.nbytes)
            return info

        try:
            infos = self.pipeline.map(put, unique, cost=lambda t: (4 if t.base else 2) * t.data.nbytes)
        except OSError as exc:
            raise fsutil.io_error(exc, f"writing chunks into store {self.root}") from exc
        return {t.digest: i for t, i in zip(unique, infos)}

    def sync_chunks(self, digests: Iterable[Digest]) -> None:
        """Make chunk files durable: fsync them (in parallel) and their fan-out folders. A file
        :meth:`write_chunks` began to fsync as it wrote it is waited for, not fsynced again."""
        digests, synced = list(digests), []
        for d in digests:
            pending = self._syncing.pop(d, None)
            if pending is not None:
                pending.result()  # NOTE: its OSError (an EIO from fsync) fails the commit here
                synced.append(d)
        self.chunks.sync(digests, map=lambda fn, xs: self.pipeline.map(fn, list(xs)), data_synced=synced)

    def commit(self, manifest: Manifest, new: Mapping[Digest, ChunkInfo], *, overwrite: bool = False,
               started: float | None = None) -> SaveStats:
        """Make ``new`` chunks durable and indexed, then publish the manifest (the commit point).

        Raises SnapshotExistsError if the name is taken (unless ``overwrite``). The caller
        vouches that every other chunk the manifest references is stored (see :meth:`stored`).
        """
        if "seq" not in manifest.meta:  # NOTE: a save number, for retention (casckpt.retention)
            manifest = dataclasses.replace(manifest, meta={**manifest.meta, "seq": self._next_seq()})
        key = self.manifest_key(manifest.name)
        new = self._with_bases(new)
        data = manifest.to_file()
        if data.startswith(FRAME_MAGIC) and self.config.version < config_mod.VERSION:
            self._upgrade_format()  # NOTE: a compressed manifest needs store format 5 to be read
        try:
            if self.sync:
                self.sync_chunks(new)
            self.index.add_chunks(dict(new), synced=self.sync)
            self._publish(key, data, overwrite=overwrite)
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
