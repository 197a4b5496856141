"""Garbage collection: apply a retention policy, then delete every chunk no kept snapshot references.

Plan, then execute. :func:`plan_gc` decides what goes (snapshots, chunks, temp files) and what
that frees; :func:`gc` takes the store's exclusive lock, plans again under it, and executes.

Mark and sweep without reading chunk contents: the live set is the union of the kept manifests'
digests and, transitively, the bases their delta chunks need (links from the index; a chunk
without an entry has its 48-byte header read); the sweep lists the chunk directory and the index.
What each snapshot references comes from the index's per-snapshot key cache
(:mod:`casckpt.refcache`): a manifest is parsed only when it is new or changed. The cost grows
with the references of kept snapshots (a sorted search per reference, in numpy), the chunks in
the store (one listing, which gives their sizes) and what is deleted (one ``unlink`` per chunk;
on S3 one DeleteObjects request per 1,000 chunks).

Execution order is the crash-safety argument; a crash at any point leaves a store whose committed
snapshots are whole, and the next ``gc`` finishes the job:

0. rewrite the manifests of thinned snapshots (atomic: temp, fsync, rename, fsync the folder);
1. unlink the manifests of dropped snapshots, fsync ``snapshots/`` (they are gone: the commit point);
2. remove their registry rows and the doomed chunks' index entries (an index entry must never
   outlive its file: it means "safely stored", and a save would skip writing the chunk);
3. unlink the chunk files, fsync their fan-out directories;
4. delete casckpt's temp files in ``tmp/`` (by name; nothing else there is ours): with the
   exclusive lock held no save is running, so every one is garbage.

A manifest that cannot be read may reference any chunk: while one exists no chunk is deleted
(see :func:`plan_gc`).

A save holds the shared lock from its first chunk write to its manifest, so gc (exclusive) never
runs while a save is in progress and never deletes a chunk that save will reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from . import fsutil, reclaim, refcache, retention, thin
from .digest import Digest
from .lock import EXCLUSIVE
from .store import Store

log = logging.getLogger("casckpt")

Progress = Callable[[int, int], None]
TMP = "tmp/"


@dataclass(frozen=True)
class GcPlan:
    """What a gc run removes (or, with ``dry_run``, would remove) and what that frees.

    ``chunks`` are the chunk files to delete: those only dropped snapshots referenced, plus
    ``orphans`` (files no snapshot references at all, e.g. left by a crashed save).
    ``index_only`` are index entries whose chunk file is already gone; ``lost`` are entries of
    chunks a kept snapshot references whose file is gone (see :mod:`casckpt.spotcheck`): dropped
    too, so the next save of that data writes the chunk again and heals those snapshots.
    """

    keep: tuple[str, ...]
    drop: tuple[str, ...]
    chunks: tuple[Digest, ...]
    orphans: int
    chunk_bytes: int
    index_only: tuple[Digest, ...] = ()
    lost: tuple[Digest, ...] = ()
    tmp_files: tuple[str, ...] = ()
    tmp_bytes: int = 0
    executed: bool = False
    thinned: dict = field(default_factory=dict)  # name -> its manifest without the dropped items
    reasons: dict = field(default_factory=dict)  # kept name -> why the policy keeps it
    damaged: tuple[str, ...] = ()  # unreadable manifests: kept, and no chunk is deleted (see plan_gc)

    @property
    def bytes_freed(self) -> int:
        return self.chunk_bytes + self.tmp_bytes

    def to_json(self) -> dict:
        return {"keep": list(self.keep), "drop": list(self.drop), "chunks": len(self.chunks),
                "orphans": self.orphans, "chunk_bytes": self.chunk_bytes,
                "index_only": len(self.index_only), "lost": len(self.lost), "tmp_files": len(self.tmp_files),
                "tmp_bytes": self.tmp_bytes, "bytes_freed": self.bytes_freed,
                "executed": self.executed, "thinned": sorted(self.thinned),
                "reasons": {k: list(v) for k, v in self.reasons.items()}, "damaged": list(self.damaged)}


def retained(names: list[str], *, keep_last: int | None = None, keep_every: int | None = None,
             keep: Iterable[str] = ()) -> set[str]:
    """Which of ``names`` (oldest first, numbered by position) the policy keeps; no policy at all
    keeps every one. See :mod:`casckpt.retention` for the rules on real snapshots."""
    policy = retention.Policy(last=keep_last, every=keep_every, keep=tuple(keep))
    return set(retention.select(retention.from_names(names), policy))


def plan_gc(store: Store, *, keep_last: int | None = None, keep_every: int | None = None,
            keep: Iterable[str] = (), policy: retention.Policy | None = None,
            thin_older_than: int | None = None, drop_items: Iterable[str] = (),
            progress: Progress | None = None) -> GcPlan:
    """Plan a gc without deleting anything or taking the lock (a preview while saves may run:
    chunks of a save in progress show up as orphans here; :func:`gc` re-plans under the lock).

    ``policy`` (a :class:`casckpt.retention.Policy`) replaces ``keep_last``/``keep_every``/``keep``.
    With ``thin_older_than=N`` and ``drop_items`` patterns, kept snapshots but the newest N lose
    the matching items (see :mod:`casckpt.thin`). ``progress(done, total)`` counts snapshots looked at.

    A snapshot whose manifest cannot be read (truncated, not JSON, a newer format) is neither kept
    nor dropped by the policy: it is listed in ``damaged`` and left alone. Since it may reference
    any chunk, no chunk file and no index entry is deleted while one exists (manifests the
    policy drops and temp files still go); ``casckpt rm`` of the damaged snapshot, or restoring
    its manifest, lets the next gc reclaim chunks again.
    """
    cat = refcache.catalog(store, progress)  # NOTE: keys cached in the index; no manifest parsed twice
    damaged = cat.damaged
    names = sorted(cat.rows, key=lambda n: (cat.rows[n]["created"], n))
    policy = policy or retention.Policy(last=keep_last, every=keep_every, keep=tuple(keep))
    snaps = [retention.Snap(n, retention.parse_created(cat.rows[n]["created"]), _seq(cat.rows[n])) for n in names]
    reasons = retention.select(snaps, policy)
    kept = set(reasons)
    thinned = _thin(store, snaps, [n for n in names if n in kept], thin_older_than, tuple(drop_items))
    uni = refcache.Universe(store)
    live = uni.mark((thinned[n].digest_keys() if n in thinned else cat.keys[n]) for n in names if n in kept)
    referenced = uni.mark(cat.keys[n] for n in names if n not in kept or n in thinned)
    gone = np.zeros(0, bool) if damaged else ~live[uni.fpos]  # per chunk file: not needed
    doomed = [uni.files[i] for i in np.flatnonzero(gone)]
    index_only, lost = uni.stale_entries(live)
    tmp = _tmp_files(store)
    return GcPlan(keep=tuple(n for n in names if n in kept), drop=tuple(n for n in names if n not in kept),
                  chunks=tuple(doomed), orphans=int(np.count_nonzero(gone & ~referenced[uni.fpos[:len(gone)]])),
                  chunk_bytes=int(uni.file_sizes[np.flatnonzero(gone)].sum()),  # NOTE: listed sizes: no stat per chunk
                  index_only=() if damaged else tuple(index_only), lost=tuple(lost),
                  tmp_files=tuple(tmp), tmp_bytes=sum(tmp.values()),
                  thinned=thinned, reasons=reasons, damaged=tuple(sorted(damaged)))


def _seq(row: dict) -> int | None:
    return row["seq"] if type(row.get("seq")) is int else None


def _thin(store: Store, snaps, kept: list[str], older_than: int | None, patterns: tuple[str, ...]) -> dict:
    if older_than is None or not patterns:
        return {}
    seq = dict(zip((s.name for s in snaps), retention.seqs(snaps)))
    out = {n: thin.thinned(store.manifest(n), patterns, seq[n]) for n in thin.targets(kept, older_than)}
    return {n: m for n, m in out.items() if m is not None}


def gc(store: Store, *, keep_last: int | None = None, keep_every: int | None = None,
       keep: Iterable[str] = (), dry_run: bool = False, wait: bool = True,
       policy: retention.Policy | None = None, thin_older_than: int | None = None,
       drop_items: Iterable[str] = (), on_plan: Callable[[GcPlan], None] | None = None,
       progress: Progress | None = None, plan_progress: Progress | None = None) -> GcPlan:
    """Apply the retention policy and delete unreferenced chunks and temp files.

    Takes the exclusive store lock (waits for saves to finish; ``wait=False`` raises
    LockTimeoutError at once instead). ``dry_run`` plans only, without the lock. Returns the plan,
    with ``executed=True`` when it was carried out. ``on_plan(plan)`` is called once the plan is
    made, before anything is deleted; ``progress(done, total)`` as chunk files are deleted and
    ``plan_progress(done, total)`` as manifests are read for the plan.
    """
    kw = dict(keep_last=keep_last, keep_every=keep_every, keep=tuple(keep), policy=policy,
              thin_older_than=thin_older_than, drop_items=tuple(drop_items), progress=plan_progress)
    if dry_run:
        return plan_gc(store, **kw)
    with store.lock(EXCLUSIVE, timeout=... if wait else 0):
        plan = plan_gc(store, **kw)
        if on_plan:
            on_plan(plan)
        execute(store, plan, progress=progress)
    return replace(plan, executed=True)


def execute(store: Store, plan: GcPlan, *, progress: Progress | None = None) -> None:
    """Carry out ``plan`` in crash-safe order. The caller holds the exclusive lock."""
    for m in plan.thinned.values():  # NOTE: atomic rewrites first: their freed chunks go below
        store.commit(m, {}, overwrite=True)
    store.forget(plan.drop)  # manifests (the commit point), then registry rows
    if plan.lost:
        log.warning("casckpt: %d chunks that kept snapshots reference are missing from %s; their index "
                    "entries are dropped so the next save writes them again (`casckpt verify` names "
                    "the snapshots)", len(plan.lost), store.root)
    store.index.remove_chunks([*plan.chunks, *plan.index_only, *plan.lost])
    store.index.remove_members_in({d.raw for d in (*plan.chunks, *plan.index_only, *plan.lost)})  # packs
    # NOTE: in batches (one request each on S3); a gc whose lock lapsed stops before the next one
    reclaim.delete_chunks(store, plan.chunks, progress)
    for f in plan.tmp_files:
        store.backend.delete(TMP + f)


def _tmp_files(store: Store) -> dict[str, int]:
    """Temp files casckpt made (by name) with their sizes; anything else in ``tmp/`` is not ours
    to delete (folders are never listed)."""
    out = {}
    if store.backend.local_path is None:
        return out  # NOTE: object storage writes no temp files (docs/FORMAT.md): no listing to pay for
    for blob in store.backend.list(TMP):
        name = blob.key[len(TMP):]
        if fsutil.is_temp_name(name):
            out[name] = blob.size
    return dict(sorted(out.items()))
