"""Rebuild the LMDB index from the manifests and the **headers** of the chunk files they reference.

A chunk file's 16- or 48-byte header (docs/FORMAT.md) gives everything an index entry holds but
the stored length, which is the file's size: so a rebuild reads ``48 bytes + fstat`` per chunk,
in parallel (the store's Pipeline), never a chunk body, never a decompression or a hash. A
rebuild costs O(chunks), not O(store bytes): fast enough for the implicit rebuild a missing
index triggers, even inside a DCP collective.

What a header cannot show is a body that rotted or was torn by a power loss after a
``sync=False`` save: the entry would vouch for it and a later save would skip the chunk. So
header checks are as strict as a header allows (magic, version, codec, depth, lengths; a raw
chunk's size is exact), ``verify`` finds such damage later and drops the entry (the next save
heals it), and ``reindex(verify=True)`` (``casckpt reindex --verify``) reads and hashes every
chunk first, for a store that lost power after unsynced saves.

Unreferenced (orphan) chunks stay out, as before: one may be torn, and gc deletes them. An
indexed delta always has an indexed base: a delta whose base is missing or bad stays out.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from . import objcache, refcache
from .chunks import ChunkInfo
from .digest import Digest
from .errors import CasckptError
from .index import Index
from .lock import EXCLUSIVE
from .snapshots import _registry_row

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("casckpt")

Progress = Callable[[int, int], None]
_BATCH = 256  # chunk headers per task


def reindex(store: Store, *, progress: Progress | None = None, verify: bool = False) -> dict:
    """Replace the store's LMDB index with one rebuilt from the store, under the exclusive lock."""
    with store.lock(EXCLUSIVE):
        return rebuild(store, store.reset_index(), verify=verify, progress=progress)


def rebuild(store: Store, index: Index, *, verify: bool = False, progress: Progress | None = None) -> dict:
    """Fill the empty ``index`` from ``store``'s manifests and chunk headers (each chunk read and
    hashed instead when ``verify``). Returns counts and ``seconds``. ``progress(done, total)``
    counts chunk files checked."""
    started = time.perf_counter()
    if store.backend.local_path is None:  # a per-host cache of an object store (casckpt.objcache)
        if verify:
            raise CasckptError(f"reindex --verify is for stores on a file system; on {store.backend.url} the "
                               "index is a cache rebuilt from chunk headers: run `casckpt verify` to read every chunk")
        return {**objcache.rebuild(store, progress), "verified": False,
                "seconds": round(time.perf_counter() - started, 3)}
    names = store.snapshot_names()
    referenced = _manifests(store, index, names)
    files = list(store.chunks)
    todo = [d for d in files if d.raw in referenced]
    check = store.chunks.check if verify else store.chunks.head_info
    infos = _check_all(store, check, todo, progress)
    _add_bases(store, check, infos)
    good = _chained(infos)
    index.add_chunks(good)
    bad = sum(1 for d in todo if d not in good)
    orphans = sum(1 for d in files if d not in infos)  # bases of referenced chunks are not orphans
    return {"chunks": len(good), "unreadable_chunks": bad, "orphan_chunks": orphans,
            "snapshots": len(names), "verified": verify, "seconds": round(time.perf_counter() - started, 3)}


def _manifests(store, index, names: list[str]) -> set[bytes]:
    """Raw digests the readable manifests reference; fills the registry and the key cache."""
    referenced: set[bytes] = set()
    for name in names:
        try:
            ident = refcache._ident(name, store)
            m = store.manifest(name)
        except CasckptError as exc:
            log.warning("casckpt: reindex skipped snapshot %s: %s", name, exc)
            continue
        referenced |= m.raw_digest_set()
        index.put_snapshot(name, _registry_row(m))
        index.put_refs(name, ident + m.digest_keys().tobytes())
    return referenced


def _check_all(store, check, digests: list[Digest], progress: Progress | None) -> dict[Digest, ChunkInfo | None]:
    done = [0]

    def one(d: Digest) -> ChunkInfo | None:
        try:
            return check(d)
        except CasckptError:
            return None  # not indexed, so the next save of its data writes it again

    def batch(ds: list[Digest]) -> list[ChunkInfo | None]:
        out = [one(d) for d in ds]
        done[0] += len(ds)  # NOTE: a progress count; a lost increment between threads is harmless
        if progress:
            progress(min(done[0], len(digests)), len(digests))
        return out
    # NOTE: batches, as a header read (~20 µs) costs less than handing a task to a thread
    batches = [digests[i:i + _BATCH] for i in range(0, len(digests), _BATCH)]
    return dict(zip(digests, (i for b in store.pipeline.map(batch, batches) for i in b)))


def _add_bases(store, check, infos: dict[Digest, ChunkInfo | None]) -> None:
    """Add the bases delta chunks name (read the same way), transitively, in parallel rounds."""
    while True:
        need = list({i.base for i in infos.values() if i is not None and i.base is not None} - infos.keys())
        if not need:
            return
        infos.update(_check_all(store, check, need, None))


def _chained(infos: dict[Digest, ChunkInfo | None]) -> dict[Digest, ChunkInfo]:
    """The good chunks whose chain of bases is good all the way down."""
    ok: dict[Digest, bool] = {}

    def good(d: Digest, depth: int = 0) -> bool:
        if d not in ok:
            i = infos.get(d)
            ok[d] = i is not None and (i.base is None or depth < 64 and good(i.base, depth + 1))
        return ok[d]
    return {d: i for d, i in infos.items() if good(d)}


