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
from .chunks import HEADER2, ChunkInfo
from .digest import Digest
from .errors import CasckptError

log = logging.getLogger("casckpt")

EPOCH = "epoch"
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


def _state(path: Path) -> str | None:
    try:
        return str(json.loads((path / STATE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record(path: Path, epoch: str) -> None:
    tmp = path / f".{STATE}.{os.getpid()}"
    tmp.write_text(json.dumps({"format": "casckpt.cache", "version": 1, "epoch": epoch}))
    os.replace(tmp, path / STATE)


# -- catching up --------------------------------------------------------------------------------
def catch_up(store, *, progress: Callable[[int, int], None] | None = None) -> dict:
    """Bring ``store``'s cache in line with the store. The caller holds the shared lock (or the
    exclusive one). Returns counts: entries dropped, snapshots and chunks taken in."""
    backend, _ = store.backend, store.index  # NOTE: opens (or rebuilds) the cache first
    epoch = read_epoch(backend)
    dropped = 0
    if _state(store.index_path) != epoch:
        dropped = _revalidate(store)
    snaps, chunks = _ingest(store, progress)
    _record(store.index_path, epoch)
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


def _revalidate(store) -> int:
    """Keep only entries that current manifests reference (with their bases)."""
    index = store.index
    manifests, _ = store.read_manifests()
    referenced: set[Digest] = set()
    for m in manifests.values():
        referenced |= m.digests()
    have = dict(index.chunks())
    referenced = delta.closure(referenced, lambda d: have[d].base if d in have else None)
    gone = [d for d in have if d not in referenced]
    if gone:
        index.remove_chunks(gone)
    for name in set(index.snapshot_table()) - set(manifests):
        index.remove_snapshot(name)
    return len(gone)


def _ingest(store, progress) -> tuple[int, int]:
    """Take in the snapshots the registry lacks; returns (snapshots, chunks) added."""
    index = store.index
    known = set(index.snapshot_table())
    listed = store.listed()
    new = [n for n in listed if n not in known]
    added = 0
    for i, name in enumerate(new, 1):
        try:
            m = store.manifest(name, version=listed[name].version)
        except CasckptError as exc:  # deleted meanwhile, or damaged: nothing to vouch for
            log.warning("casckpt: cache skips snapshot %s: %s", name, exc)
            continue
        added += add_referenced(store, m.digests())
        index.put_snapshot(name, _row(m))
        if progress:
            progress(i, len(new))
    return len(new), added


def add_referenced(store, digests: Iterable[Digest]) -> int:
    """Index chunks a committed manifest references (and their bases), from their headers."""
    index, todo, infos = store.index, set(digests), {}
    while todo:
        todo -= index.has_many(todo) | set(infos)
        found = store.pipeline.map(lambda d: (d, header_info(store, d)), sorted(todo, key=lambda d: d.raw))
        infos.update(found)
        todo = {i.base for _, i in found if i.base is not None}
    # NOTE: bases first is not needed inside one transaction; an indexed delta has an indexed base
    index.add_chunks(infos)
    return len(infos)


def header_info(store, d: Digest) -> ChunkInfo:
    """A chunk's index entry from its header and size: one ranged GET, no body."""
    head, size = store.backend.get_head(store.chunks.key(d), HEADER2.size)
    return store.chunks.info_from_header(d, head, size)


def _row(m) -> dict:
    seq = m.meta.get("seq")
    return {"created": m.created, "logical_bytes": m.logical_bytes,
            "chunks": sum(len(i.chunks) for i in m.items.values()),
            **({"seq": seq} if type(seq) is int else {})}
