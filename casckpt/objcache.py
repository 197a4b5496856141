"""The LMDB index of a store on object storage: a cache on each host, kept coherent with the
store by the store's *epoch* and its manifests (docs/FORMAT.md, "The index as a local cache").

- **Where.** ``<cache>/casckpt/<store id>/index``, where ``<cache>`` is ``$CASCKPT_CACHE_DIR``,
  else ``$XDG_CACHE_HOME``, else ``~/.cache``. Each host (each simulated host in tests) has its own.
- **Deletes.** The object ``epoch`` holds a random id. A process that deletes chunks (gc, a failed
  save's reclaim) replaces it, holding the exclusive lock, before its first delete. A cache records
  the epoch it agrees with; under the shared lock (no deleter runs), a cache whose epoch differs
  keeps only the entries that current manifests reference (those chunks survive every gc), then
  records the new epoch. So an entry never vouches for a deleted chunk, and a save never needs a
  HEAD per unchanged chunk.
- **Other hosts' snapshots.** The index's snapshot registry names the manifests the cache has
  taken in. Names in ``snapshots/`` that it lacks are read and their chunks added, each from a
  ranged GET of its header (its size comes with the answer), never its body. A cache made from
  nothing is the same walk over every manifest: a new host's first save downloads no chunk.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Iterable

from . import delta
from .backends import Backend, BlobNotFoundError
from .chunks import ChunkInfo
from .digest import Digest
from .errors import CasckptError, ChunkError

log = logging.getLogger("casckpt")

EPOCH = "epoch"
DAMAGED = "damaged/"  # damaged/<64 hex>: a chunk verify found missing or corrupt (see announce_damaged)
STATE = "casckpt-cache.json"  # in the index folder, beside LMDB's files


def cache_root() -> Path:
    base = os.environ.get("CASCKPT_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "casckpt"


def index_path(store_id: str) -> Path:
    """The default index folder of the store ``store_id`` on this host."""
    if not store_id.isalnum():
        raise CasckptError(f"bad store id {store_id!r:.40}")  # never a path out of the cache
    return cache_root() / store_id / "index"


# -- the epoch ----------------------------------------------------------------------------------
def read_epoch(backend: Backend) -> str:
    try:
        doc = json.loads(backend.get(EPOCH))
        return str(doc["id"])
    except BlobNotFoundError:
        return ""  # no chunk was ever deleted
    except (ValueError, KeyError, TypeError):
        return "?"  # unreadable: differs from every recorded epoch, so caches revalidate


def bump_epoch(backend: Backend) -> str:
    """Announce that chunks are about to be deleted (the caller holds the exclusive lock)."""
    new = uuid.uuid4().hex
    backend.replace(EPOCH, [json.dumps({"format": "casckpt.epoch", "version": 1, "id": new}).encode()])
    return new


def announce_deletes(store) -> None:
    """Bump the epoch before deleting chunks (the caller holds the exclusive lock and has already
    dropped the doomed chunks' entries from its own index). If this host's cache agreed with the
    old epoch it agrees with the new one, since only this process deletes now."""
    before = read_epoch(store.backend)
    agreed = _state(store.index_path) == before
    new = bump_epoch(store.backend)
    if agreed:
        _record(store.index_path, new)


def announce_damaged(store, digests: Iterable[Digest]) -> None:
    """Tell every host's cache to forget chunks ``verify`` found missing or corrupt (this host's
    entries are already dropped; the caller holds the shared lock): a marker object per chunk,
    then a new epoch, so each cache revalidates, drops them and its next save writes them again.
    This host records no new epoch: another verify may have marked other chunks meanwhile."""
    for d in digests:
        store.backend.put_if_absent(DAMAGED + d.hex, [json.dumps({"format": "casckpt.damaged", "version": 1}).encode()])
    bump_epoch(store.backend)


def prune_damaged(store, gone: Iterable[Digest]) -> None:
    """Delete the markers of chunks gc deleted (the caller holds the exclusive lock and bumped the
    epoch): every cache drops an unreferenced chunk's entry at its next revalidation anyway."""
    _unmark(store, gone, before=store.check_lock)


def clear_healed(store, good: Iterable[Digest]) -> None:
    """Delete the markers of chunks ``verify`` just read and found whole (a save wrote them again
    since they were marked): a cache that still vouches for one is right again."""
    _unmark(store, good, before=None)


def _unmark(store, digests: Iterable[Digest], *, before) -> None:
    wanted = {d.hex for d in digests}
    keys = [b.key for b in store.backend.list(DAMAGED) if b.key[len(DAMAGED):] in wanted]
    store.backend.delete_batched(keys, before=before)


def _listed_damaged(backend: Backend) -> set[Digest]:
    out = set()
    for blob in backend.list(DAMAGED):
        try:
            out.add(Digest(bytes.fromhex(blob.key[len(DAMAGED):])))
        except ValueError:
            continue  # not a marker casckpt writes
    return out


def _state(path: Path) -> str | None:
    try:
        return str(json.loads((path / STATE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _damaged(path: Path) -> set[Digest]:
    """The marked chunks as of this cache's last revalidation (kept out of it until then)."""
    try:
        return {Digest(bytes.fromhex(h)) for h in json.loads((path / STATE).read_text()).get("damaged", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _record(path: Path, epoch: str, damaged: set[Digest] | None = None) -> None:
    """Record the epoch the cache agrees with and the marked chunks it keeps out (``None``: as
    recorded before)."""
    damaged = _damaged(path) if damaged is None else damaged
    tmp = path / f".{STATE}.{os.getpid()}"
    tmp.write_text(json.dumps({"format": "casckpt.cache", "version": 1, "epoch": epoch,
                               "damaged": sorted(d.hex for d in damaged)}))
    os.replace(tmp, path / STATE)


# -- catching up --------------------------------------------------------------------------------
def catch_up(store, *, progress: Callable[[int, int], None] | None = None) -> dict:
    """Bring ``store``'s cache in line with the store. The caller holds the shared lock (or the
    exclusive one). Returns counts: entries dropped, snapshots and chunks taken in.

    Once per hold of the lock: a save asks at planning, for packs, for covering chunks and at its
    commit, and the first answer stands for the hold. Nobody deletes a chunk while it lasts (rule
    1 holds throughout); snapshots other hosts commit meanwhile only cost dedup; a chunk a verify
    marks damaged meanwhile is dropped at the next hold, as one marked just after the commit
    would be (docs/FORMAT.md, "The index as a local cache")."""
    backend, index = store.backend, store.index  # NOTE: opens (or rebuilds) the cache first
    view = store.hold_view()
    if view is not None and view.caught_up is index:
        return {"dropped": 0, "snapshots": 0, "chunks": 0}
    epoch = read_epoch(backend)
    listed = store.listed()  # NOTE: after the epoch; one listing for both steps below
    dropped, damaged = 0, None
    if _state(store.index_path) != epoch:
        damaged = _listed_damaged(backend)  # NOTE: after the epoch: a verify marks, then bumps
        dropped = _revalidate(store, damaged, listed)
    snaps, chunks = _ingest(store, progress, damaged if damaged is not None else _damaged(store.index_path), listed)
    _record(store.index_path, epoch, damaged)
    if view is not None:
        view.caught_up = index
    if dropped or snaps:
        log.info("casckpt: cache %s: %d entries dropped, %d snapshots (%d chunks) taken in",
                 store.index_path, dropped, snaps, chunks)
    return {"dropped": dropped, "snapshots": snaps, "chunks": chunks}


def rebuild(store, progress=None) -> dict:
    """Fill a new, empty cache from the manifests and chunk headers (``Store.reindex`` and a
    missing cache on object storage): no chunk body is downloaded."""
    counts = catch_up(store, progress=progress)
    return {"chunks": counts["chunks"], "unreadable_chunks": 0, "orphan_chunks": 0,
            "snapshots": counts["snapshots"]}


def _revalidate(store, damaged: set[Digest], listed: dict) -> int:
    """Keep only entries that current manifests reference (with their bases), less the chunks
    marked damaged (and the deltas built on them). ``listed``: the manifests (Store.listed)."""
    index = store.index
    manifests, _ = store.read_manifests(listed=listed)
    referenced: set[Digest] = set()
    for m in manifests.values():
        referenced |= m.digests()
    have = dict(index.chunks())
    referenced = delta.closure(referenced, lambda d: have[d].base if d in have else None)
    gone = [d for d in have if d not in referenced or damaged and _on_damaged(d, have, damaged)]
    if gone:
        index.remove_chunks(gone)
    for name in set(index.snapshot_table()) - set(manifests):
        index.remove_snapshot(name)
    return len(gone)


def _on_damaged(d: Digest, have: dict, damaged: set[Digest]) -> bool:
    for _ in range(delta.MAX_DEPTH_LIMIT + 1):  # NOTE: bounded even if hostile headers form a cycle
        if d in damaged:
            return True
        d = have[d].base if d in have else None
        if d is None:
            return False
    return True


def _ingest(store, progress, damaged: set[Digest], listed: dict) -> tuple[int, int]:
    """Take in the snapshots the registry lacks (of those ``listed``); returns (snapshots, chunks) added."""
    index = store.index
    known = set(index.snapshot_table())
    new = [n for n in listed if n not in known]
    added = 0
    for i, name in enumerate(new, 1):
        try:
            m = store.manifest(name, version=listed[name].version)
        except CasckptError as exc:  # deleted meanwhile, or damaged: nothing to vouch for
            log.warning("casckpt: cache skips snapshot %s: %s", name, exc)
            continue
        added += add_referenced(store, m.digests(), skip=damaged)
        index.put_snapshot(name, _row(m))
        if progress:
            progress(i, len(new))
    return len(new), added


def add_referenced(store, digests: Iterable[Digest], *, skip: set[Digest] = frozenset()) -> int:
    """Index chunks a committed manifest references (and their bases), from their headers. A
    chunk that is missing, has a bad header or is in ``skip`` (marked damaged) stays out, and so
    does a delta built on one: the next save of its data writes it again."""
    index, todo, infos = store.index, set(digests), {}
    while todo:
        todo -= index.has_many(todo) | set(infos)
        found = store.pipeline.map(lambda d: (d, None if d in skip else _header_or_none(store, d)),
                                   sorted(todo, key=lambda d: d.raw))
        infos.update(found)
        todo = {i.base for _, i in found if i is not None and i.base is not None}
    good = {d: i for d, i in infos.items() if _chain_ok(d, infos)}
    # NOTE: bases first is not needed inside one transaction; an indexed delta has an indexed base
    index.add_chunks(good)
    return len(good)


def _header_or_none(store, d: Digest) -> ChunkInfo | None:
    try:
        return store.chunks.head_info(d)
    except (BlobNotFoundError, ChunkError) as exc:
        log.warning("casckpt: cache leaves out chunk %s: %s", d, exc)
        return None


def _chain_ok(d: Digest, infos: dict) -> bool:
    """Whether ``d``'s chain of bases is readable down to an indexed chunk or a full one."""
    for _ in range(delta.MAX_DEPTH_LIMIT + 1):
        if d not in infos:
            return True  # indexed before
        i = infos[d]
        if i is None:
            return False
        if i.base is None:
            return True
        d = i.base
    return False




def _row(m) -> dict:
    seq = m.meta.get("seq")
    return {"created": m.created, "logical_bytes": m.logical_bytes,
            "chunks": sum(len(i.chunks) for i in m.items.values()),
            **({"seq": seq} if type(seq) is int else {})}
