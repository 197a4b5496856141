"""Rebuild the LMDB index from the store: chunk headers and contents, and committed manifests.

The index is a cache; the chunks and manifests are the truth. :func:`reindex` replaces it under
the exclusive lock; :func:`rebuild` fills an empty one (also run when a store finds its index
missing).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from . import delta, objcache
from .digest import Digest
from .errors import CasckptError
from .index import Index
from .lock import EXCLUSIVE
from .snapshots import _registry_row

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("casckpt")


def reindex(store: Store, *, progress: Callable[[int, int], None] | None = None) -> dict:
    """Rebuild the LMDB index from chunk files and manifests. Returns counts.
    ``progress(done, total)`` counts chunk files checked."""
    with store.lock(EXCLUSIVE):
        return rebuild(store, store.reset_index(), progress)


def rebuild(store: Store, index: Index, progress: Callable[[int, int], None] | None = None) -> dict:
    """Index the chunks that committed manifests reference, each read and verified first.

    A chunk that fails (bit rot, a torn file) stays out, so the next save of its data writes
    it again. Orphans stay out too: one may be torn by a power loss, and an index entry would
    let a later save skip writing it. A save that needs an orphan verifies it first; gc
    deletes the rest.

    On object storage the index is a per-host cache, filled from manifests and chunk headers
    without downloading a chunk (:func:`casckpt.objcache.rebuild`).
    """
    if store.backend.local_path is None:
        return objcache.rebuild(store, progress)
    referenced: set[Digest] = set()
    names = store.snapshot_names()
    for name in names:
        try:
            m = store.manifest(name)
        except CasckptError as exc:
            log.warning("casckpt: reindex skipped snapshot %s: %s", name, exc)
            continue
        referenced |= m.digests()
        index.put_snapshot(name, _registry_row(m))
    referenced = delta.closure(referenced, store._header_base)  # with bases, from headers
    infos, bad, orphans = {}, 0, 0
    files = list(store.chunks)
    for i, d in enumerate(files, 1):
        if progress:
            progress(i, len(files))
        if d not in referenced:
            orphans += 1
            continue
        try:
            infos[d] = store.chunks.check(d)
        except CasckptError:
            bad += 1  # unreadable chunk: not indexed, so the next save rewrites it
    index.add_chunks(infos)
    return {"chunks": len(infos), "unreadable_chunks": bad, "orphan_chunks": orphans,
            "snapshots": len(names)}
