"""CasWriter: DCP StorageWriter that saves into a casckpt store, deduplicating at global planning."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
import weakref
from typing import Any

from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from .. import checkpoint_id as ids, chunking, gcpause, packs
from ..digest import Digest
from ..errors import CasckptError, SnapshotExistsError, SnapshotNotFoundError, StoreNotFoundError
from ..lock import SHARED
from ..delta import same_place
from ..manifest import ChunkRef, Item, Manifest, check_name, user_meta, utc_now
from ..reclaim import reclaim
from ..store import SaveStats, Store
from .host import write_key
from .meta import metadata_to_text
from .planner import CasStorageMeta, ItemDigests, LocalDigests, RankPlan
from .rankwrite import RankWrite, collect, covered_refs
from .reshard import covers

_NO_PLAN = RankPlan(None, frozenset(), frozenset())


class CasWriter(StorageWriter):
    """Save a DCP checkpoint as snapshot ``snapshot`` of the casckpt store ``store``.

    ``store`` is a path (created on first save; ``chunk_size`` applies then) or an open
    :class:`casckpt.Store`. The snapshot name comes from ``checkpoint_id`` when DCP passes one,
    else from ``snapshot=``. Either may be a path as frameworks pass it: ``/ckpt/run/step-100``
    is snapshot ``step-100`` of the store ``/ckpt/run`` (then ``store`` may be omitted; if given,
    the path must lie in it; see :mod:`casckpt.checkpoint_id`). Snapshots are immutable: a writer
    reused without a new ``checkpoint_id`` raises SnapshotExistsError, unlike DCP's
    FileSystemWriter, which overwrites; ``overwrite=True`` replaces an existing snapshot of that
    name. Without DCP's collectives (``use_collectives=False``) every rank saves a snapshot of its
    own, so each rank needs its own ``checkpoint_id``.
    ``sync_files=False`` (as DCP's FileSystemWriter) skips fsync: faster, but a power loss may
    lose the newest snapshots. ``index_path`` keeps the LMDB index elsewhere (a local disk when
    the store is on a network file system); ``delta=False`` stores every new chunk whole (default:
    the store's setting, delta chunks on); these apply only when ``store`` is a path.
    Pair it with :class:`DedupSavePlanner` so dedup is decided at global planning; with DCP's
    default planner it still works (each rank hashes in ``write_data`` and skips chunks of the
    latest snapshot that are still stored).

    DCP's call order, and which ranks make each call:

    0. all ranks: ``reset(checkpoint_id)``, only when ``dcp.save`` got a ``checkpoint_id``;
       releases a lock left by an earlier failed save.
    1. all ranks: ``storage_meta()`` (carries the chunk size to the planner), then
       ``set_up_storage_writer(is_coordinator)``: the coordinator opens (or creates) the store
       and checks the name is free. Other ranks do not touch the store.
    2. all ranks: ``prepare_local_plan(plan)``: nothing to add.
    3. coordinator: ``prepare_global_plan(plans)``: takes the store's shared lock (so gc cannot
       run until the commit), looks every planned digest up in the index, drops stored chunks,
       assigns each new digest to one rank, and gives it a delta base (the indexed chunk at the
       same place in the latest snapshot) that the rank reads back from the chunk directory.
    4. all ranks: ``write_data(plan, planner)``: writes this rank's chunk files (never the index)
       and fsyncs them; returns one ``WriteResult`` per rank (what it wrote), not one per item.
    5. coordinator: ``finish(metadata, results)``: builds the manifest (DCP's Metadata as JSON;
       items from the digests of planning and those ranks without them hashed)
       and commits it (chunks fsynced, indexed, manifest published), then releases the lock.

    If step 3 or the coordinator's step 4 fails, the lock is released at once. If another rank
    fails in step 4, DCP never calls ``finish``: the lock then lives until the writer is reset,
    closed or garbage-collected. ``casckpt.save`` always closes its writer; with ``dcp.save``,
    use a fresh writer per save or call ``close()`` after a failure.

    Only the coordinator opens the LMDB index, so ranks on other hosts need only the chunk and
    snapshot directories. ``stats`` holds the last save's :class:`casckpt.SaveStats` (coordinator);
    ``chunks_written`` counts the chunk files this rank wrote in its last ``write_data``.
    ``meta`` (a JSON object) and ``tags`` (strings) are recorded in the manifest (``meta["user"]``,
    ``meta["tags"]``); ``casckpt ls`` shows them and filters by tag.
    """

    def __init__(self, store: Store | str | os.PathLike | None = None, *, snapshot: str | None = None,
                 chunk_size: int | None = None, overwrite: bool = False, sync_files: bool = True,
                 index_path: str | os.PathLike | None = None, meta: dict | None = None,
                 tags: list[str] | tuple[str, ...] = (), delta: bool | None = None) -> None:
        super().__init__()
        self.user_meta = user_meta(meta, tags)  # checked now: a bad value fails before any work
        self.sync_files, self.index_path, self.delta = sync_files, index_path, delta
        self._own = not isinstance(store, Store)
        self._given = None if store is None else store.root if isinstance(store, Store) else os.fspath(store)
        self._path = None if isinstance(store, Store) else self._given
        self._store: Store | None = None if self._own else store
        self.snapshot = snapshot
        if snapshot is not None and ids.is_path(snapshot):
            self._path, self.snapshot = ids.split(snapshot, self._given)
        self.save_id: str | None = None
        self.chunk_size = chunk_size
        self.overwrite = overwrite
        self.is_coordinator = False
        self.stats: SaveStats | None = None
        self.chunks_written = 0
        self._lock_release: weakref.finalize | None = None
        self._started = 0.0
        self._unclaimed: set[bytes] = set()  # chunks this save planned or wrote, until it commits
        self._planned: dict[str, ItemDigests] = {}  # items hashed at planning (coordinator)
        self._packed: dict[bytes, tuple[bytes, int]] = {}  # their small chunks already in packs

    # -- DCP interface --------------------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self.close()
        self.save_id = uuid.uuid4().hex
        if checkpoint_id is not None:
            path, self.snapshot = ids.split(checkpoint_id, self._given)
            if self._own:
                self._path = path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return ids.is_valid(checkpoint_id)

    @property
    def checkpoint_id(self) -> str | None:
        return self.snapshot

    def storage_meta(self) -> StorageMeta | None:
        if self.save_id is None:  # dcp.save without checkpoint_id never calls reset()
            self.save_id = uuid.uuid4().hex
        return CasStorageMeta(checkpoint_id=self.snapshot, save_id=self.save_id,
                              casckpt_chunk_size=self._chunk_size())

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, rank: int = 0,
                              use_collectives: bool = True, **kwargs: Any) -> None:
        # NOTE: **kwargs makes DCP pass rank= and use_collectives=; nothing else is accepted.
        # Without collectives DCP runs every step on every rank for that rank alone, so each rank
        # saves (and commits) a snapshot of its own: give each rank its own checkpoint_id.
        if self.snapshot is None:
            raise CasckptError("no snapshot name: pass checkpoint_id= to dcp.save or snapshot= to CasWriter")
        if self._path is None and self._store is None:
            raise CasckptError(f"no store for snapshot {self.snapshot!r}: pass a store to CasWriter "
                               "or a path checkpoint_id such as '/ckpt/run/step-100'")
        check_name(self.snapshot)
        is_coordinator = is_coordinator or not use_collectives
        self.is_coordinator, self.stats, self._started = is_coordinator, None, time.perf_counter()
        if not is_coordinator:
            return
        store = self._open(create=True)
        self.release()
        if not self.overwrite and store.exists(self.snapshot):
            raise SnapshotExistsError(f"snapshot {self.snapshot!r} already exists in store {store.root} "
                                      "(snapshots are immutable: pass a new checkpoint_id to dcp.save, "
                                      "or CasWriter(overwrite=True) to replace it)")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # NOTE: the shared lock is taken here, not at set-up: from the dedup decision below to the
        # commit in finish() gc must not run, and local planning (which may fail) is not covered.
        store = self._open(create=True)
        self.release()
        lock = store.lock(SHARED).acquire()
        self._lock_release = weakref.finalize(self, lock.release)
        with self._released_on_error(), gcpause.paused():
            if not all(p.usable for p in plans):
                raise CasckptError("CasWriter does not support DCP plan caching (enable_plan_caching)")
            local = [self._local_digests(p, store.config.chunk_size) for p in plans]
            self._planned = {k: it for loc in local if loc for k, it in loc.items()}  # finish() needs no more
            known = {d for loc in local if loc for it in loc.values() for d in it.digests}
            stored = {d.raw for d in store.stored(Digest(d) for d in known)}
            self._packed = packs.known(store, known - stored)  # small items already in a pack
            stored |= self._packed.keys()
            writes = _assign(local, stored)
            self._unclaimed.update(*writes)
            hints = self._latest_hints(store, plans, local)
            bases = _delta_bases(store, local, writes)
            cov = _covers(store, local, writes)
        return [dataclasses.replace(p, storage_data=RankPlan(loc, frozenset(w), hints if loc is None else frozenset(),
                                                             {d: bases[d] for d in w if d in bases},
                                                             {d: cov[d] for d in w if d in cov}))
                for p, loc, w in zip(plans, local, writes)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        with self._released_on_error(), gcpause.paused():
            return self._write_data(plan, planner)

    def _write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        rp = plan.storage_data if isinstance(plan.storage_data, RankPlan) else _NO_PLAN
        # NOTE: the coordinator reclaims every rank's planned chunks; a rank reclaims only what it
        # hashed and wrote itself (DCP's default planner), which the coordinator never saw.
        mine = self._unclaimed if self.is_coordinator or rp.digests is None else set()
        rw = RankWrite(self._open(create=False), rp, self.is_coordinator, mine)
        results = rw.run(plan.items, planner)
        self.chunks_written = len(rw.infos)
        if not self.is_coordinator and rw.store.sync:
            # NOTE: on a shared file system the coordinator's fsync flushes only its own host's
            # cache: each rank makes its own chunk files durable before it reports them.
            rw.store.sync_chunks(Digest(d) for d in rw.infos)
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        try:
            with gcpause.paused():
                self._commit(metadata, results)  # NOTE: its objects are freed before the collector resumes
        finally:
            self.close()  # the lock, threads and index handle of a store this writer opened

    def _commit(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        store = self._open(create=True)
        items, new, packed, covered = collect(results, self._planned, self._packed)
        items = covered_refs(items, covered)
        # NOTE: a rank without the index (DCP's default planner) reports a chunk it found
        # already on disk as handled; the index knows which of those the store had before.
        for d in store.index.has_many(new, synced_only=store.sync):  # as Store.stored() trusts
            del new[d]
        sm = StorageMeta(checkpoint_id=self.snapshot, save_id=self.save_id)
        md = dataclasses.replace(metadata, storage_meta=sm, version=metadata.version or CURRENT_DCP_VERSION)
        meta = {"dcp": metadata_to_text(md), **self.user_meta}  # NOTE: JSON text (manifest.RawJSON)
        m = Manifest(self.snapshot, utc_now(), store.config.chunk_size, items, meta)
        unknown = m.digests() - new.keys()
        for d in unknown - store.stored(unknown):
            new[d] = store.chunks.check(d)  # a file a rank found on disk but not indexed: verify
        self.stats = store.commit(m, new, overwrite=self.overwrite, started=self._started)
        store.index.add_members(packed)  # NOTE: after the packs' entries (commit): dedup from now on
        self._unclaimed = set()  # committed: nothing to reclaim

    # -- helpers --------------------------------------------------------------------------------
    def release(self) -> None:
        """Release the store lock if this writer holds it (after a failed save, for instance)."""
        if self._lock_release is not None:
            self._lock_release()
            self._lock_release = None

    @contextlib.contextmanager
    def _released_on_error(self):
        """Release the lock if this step fails: after a failure DCP calls nothing more of ours,
        and a held shared lock would keep gc waiting for as long as the writer lives."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    def close(self) -> None:
        """Release the lock and close the store if this writer opened it. After a save that did
        not commit, first reclaim the chunks it wrote (:mod:`casckpt.reclaim`): the coordinator
        those of every rank it planned, each rank those it wrote itself."""
        self.release()
        if self._unclaimed and self._store is not None:
            reclaim(self._store, (Digest(d) for d in self._unclaimed))
        self._unclaimed = set()
        self._planned, self._packed = {}, {}  # NOTE: a writer kept after its save holds no plan
        if self._own and self._store is not None:
            self._store.close()
            self._store = None

    def _open(self, *, create: bool) -> Store:
        if self._store is None:
            kw = dict(sync=self.sync_files, index_path=self.index_path, delta=self.delta)
            try:  # NOTE: reading the config tells whether the store exists: no is_store() first
                self._store = Store.open(self._path, **kw)
            except StoreNotFoundError:
                if not create:
                    raise
                self._store = Store.open(self._path, create=True, chunk_size=self.chunk_size, **kw)
        return self._store

    def _chunk_size(self) -> int:
        if self._store is not None:
            return self._store.config.chunk_size
        if self._path is not None:
            try:
                return self._open(create=False).config.chunk_size
            except OSError:  # no store yet (StoreNotFoundError), or none we can read: as is_store()
                pass
        return self.chunk_size or chunking.DEFAULT_CHUNK_SIZE

    @staticmethod
    def _local_digests(plan: SavePlan, chunk_size: int) -> dict[str, ItemDigests] | None:
        sd = plan.storage_data
        if not isinstance(sd, LocalDigests) or sd.chunk_size != chunk_size:
            return None  # default planner (or a stale chunk size): the rank hashes in write_data
        keys = [write_key(i) for i in plan.items]
        if not all(k in sd.items for k in keys):
            return None
        return {k: sd.items[k] for k in keys}

    @staticmethod
    def _latest_hints(store: Store, plans: list[SavePlan], local: list) -> frozenset[bytes]:
        """Digests of the latest snapshot's items that ranks without digests will save, still
        stored: those ranks skip them without touching the store."""
        keys = {write_key(i) for p, loc in zip(plans, local) if loc is None for i in p.items}
        if not keys:
            return frozenset()
        try:
            m = store.manifest("latest")
        except SnapshotNotFoundError:
            return frozenset()
        ds = {c.digest for k in keys & m.items.keys() for c in m.items[k].chunks}
        return frozenset(d.raw for d in store.stored(ds))


def _delta_bases(store: Store, local: list[dict[str, ItemDigests] | None],
                 writes: list[set[bytes]]) -> dict[bytes, tuple[bytes, int]]:
    """Base of each new chunk, from the latest snapshot's chunk at the same item and position."""
    new = set().union(*writes) if writes else set()
    if not new or not store.config.delta.enabled:
        return {}
    try:
        prev = store.manifest("latest")
    except CasckptError:  # no snapshot yet (or a damaged newest one): every chunk goes whole
        return {}
    items = {k: Item(it.layout.dtype, it.layout.shape, tuple(ChunkRef(Digest(d), n) for d, (_, n)
                                                            in zip(it.digests, it.layout.spans)))
             for loc in local if loc for k, it in loc.items()}
    cands = {d: b for d, b in same_place(prev.items, items).items() if d.raw in new}
    return {d.raw: (b.raw, depth) for d, (b, depth) in store.delta_bases(cands).items()}


def _covers(store: Store, local: list[dict[str, ItemDigests] | None],
            writes: list[set[bytes]]) -> dict[bytes, tuple]:
    """Parts of stored chunks of the latest snapshot that may hold each new chunk's bytes (that
    snapshot saved on another world size; see casckpt.dcp.reshard)."""
    new = set().union(*writes) if writes else set()
    if not new:
        return {}
    try:
        prev = store.manifest("latest")
    except CasckptError:  # no snapshot yet (or a damaged newest one): nothing to refer to
        return {}
    items = ((k, it.layout.dtype, it.layout.shape, it.layout.spans, it.digests)
             for loc in local if loc for k, it in loc.items())
    cands = covers(prev.items, items, new)
    parts = {Digest(p[0]) for ps in cands.values() for p in ps}
    ok = {d.raw for d in store.stored(parts)}  # trusted as a save trusts any chunk it refers to
    return {d: ps for d, ps in cands.items() if all(p[0] in ok for p in ps)}


def _assign(local: list[dict[str, ItemDigests] | None], stored: set[bytes]) -> list[set[bytes]]:
    """Give each new digest to one of the ranks holding it: the least loaded so far."""
    holders: dict[bytes, list[int]] = {}
    sizes: dict[bytes, int] = {}
    for rank, loc in enumerate(local):
        for it in (loc or {}).values():
            for d, (_, n) in zip(it.digests, it.layout.spans):
                if d not in stored:
                    holders.setdefault(d, []).append(rank)
                    sizes[d] = n
    load = [0] * len(local)
    writes: list[set[bytes]] = [set() for _ in local]
    for d in sorted(holders, key=lambda d: -sizes[d]):
        rank = min(holders[d], key=lambda r: load[r])
        writes[rank].add(d)
        load[rank] += sizes[d]
    return writes
