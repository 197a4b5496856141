"""Reclaim at once what a failed save wrote, when that is safe; otherwise leave it to ``gc``.

A save that fails (a full disk, most often) leaves chunk files no snapshot references. Left in
place they keep the disk full, so the next, smaller save fails too. The failed save knows which
chunks it meant to write; after releasing its shared lock it tries the exclusive lock *without
waiting*. Holding it, no other save is in progress (every save holds the shared lock from its
first chunk write to its commit), so a chunk file no committed manifest references is garbage
even if another save wrote or reused it: that save has finished, committed (then the chunk is
referenced and stays) or failed. If another save holds the lock, or a manifest cannot be read
(it may reference anything: the rule gc follows), nothing is deleted and ``gc`` reclaims later.
The order is gc's: index entries first (an entry must never outlive its file), then files.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

from . import objcache
from .digest import Digest
from .errors import CasckptError, IndexDamagedError, LockTimeoutError, StoreIOError
from .lock import EXCLUSIVE

log = logging.getLogger("casckpt")

Progress = Callable[[int, int], None]


def reclaim(store, digests: Iterable[Digest]) -> int:
    """Delete those of ``digests`` (chunks a failed save meant to write) that no snapshot references,
    if no other save is running. Returns how many chunk files went. Never raises a CasckptError."""
    digests = set(digests)
    if not digests or store.holds_lock:
        return 0
    try:
        with store.lock(EXCLUSIVE, timeout=0):
            return _sweep(store, digests)
    except LockTimeoutError:
        reason = "another save holds the store"
    except (CasckptError, OSError) as exc:
        reason = str(exc)
    log.warning("casckpt: chunks written by the failed save stay until `casckpt gc` (%s)", reason)
    return 0


def _sweep(store, digests: set[Digest]) -> int:
    from . import refcache  # NOTE: here, as refcache imports the store module, which imports this
    cat = refcache.catalog(store)  # what snapshots reference, from the index's cache
    if cat.damaged:
        return 0  # a damaged manifest may reference any chunk
    uni = refcache.Universe(store)
    live = uni.mark(cat.keys.values())  # with their bases
    present = set(uni.files)  # NOTE: the chunk listing, not a stat (a HEAD) per chunk
    doomed = [d for d in digests if d in present and not uni.marked(live, d)]
    try:
        store.index.remove_chunks(doomed)
    except (StoreIOError, IndexDamagedError):  # a full disk can refuse even this write
        indexed = store.index.has_many(doomed)
        doomed = [d for d in doomed if d not in indexed]
    delete_chunks(store, doomed)
    return len(doomed)


def delete_chunks(store, digests: Sequence[Digest], progress: Progress | None = None) -> None:
    """Delete chunk files (gc's and a failed save's), their index entries already gone; the
    caller holds the exclusive lock. Every host's cache is told first (the epoch, on object
    storage); then batches of the back-end's ``delete_batch`` (one DeleteObjects request each on
    S3), the lock checked right before each request (docs/FORMAT.md, "The lock on object
    storage"); then the deletes are made durable. ``progress(done, total)`` after each batch."""
    if not digests:
        return
    store.before_chunk_deletes()
    store.backend.delete_batched([store.chunks.key(d) for d in digests], before=store.check_lock, progress=progress)
    if store.sync:
        store.chunks.sync(digests)  # NOTE: on a file system, one fsync per fan-out folder
    if store.backend.local_path is None:
        objcache.prune_damaged(store, digests)  # NOTE: markers of chunks verify found damaged
