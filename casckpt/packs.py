"""Packs: small items stored many to a chunk file, referenced by (pack digest, length, offset).

A chunk file costs a file-system block, an inode and, on a cold save, a create, link and fsync
(~1.5 ms here): 20,000 small tensors made 20,000 files. Through DCP (CasWriter with
DedupSavePlanner) an item smaller than :func:`limit` is still hashed on its own (its *member*
digest, as any chunk), but when it is new the rank that writes it appends its bytes to a pack:
an ordinary chunk (header, codec, BLAKE3 name of its own bytes) of at most one chunk size, one or
a few per rank per save. The manifest refers to the item by a ref into part of the pack
(manifest format 2 ``offsets``, docs/FORMAT.md). The index's ``members`` database maps each
member digest to ``(pack, offset)``, so an unchanged small item in a later save deduplicates
against the pack it already sits in: no new file, the same ref.

gc keeps a pack while any kept manifest references any part of it (refs name the pack), and
drops the ``members`` entries of packs it deletes. ``members`` is a cache: ``reindex`` does not
rebuild it (that would read every pack), so after a reindex unchanged small items are packed
once more, in new packs. Reading a ref into a pack decodes and verifies the whole pack; a small
in-process cache (:class:`PartCache`) keeps decoded packs so a load decodes each pack once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from .digest import Digest

# NOTE: items from 16 KiB up get a chunk file of their own, so the next save can store them as
# deltas (a pack is new bytes whenever any member changed): LoRA adapters of 32 KiB in tools/bench's
# frozen-base run store 1.12 DCP snapshots after 10 saves this way, 1.21 packed (limit 128 KiB),
# for 90 more files a save. Below 16 KiB a file's block and fsync cost more than a delta saves.
PACK_LIMIT = 16 << 10  # items below this (and below chunk_size / 16) are packed
CACHE_BUDGET = 64 << 20  # decoded packs kept for reads of their members


def limit(chunk_size: int) -> int:
    """Items of fewer bytes than this are packed."""
    return min(PACK_LIMIT, chunk_size // 16)


def build(members: list[tuple[bytes, memoryview]], chunk_size: int) -> list[tuple[bytes, dict[bytes, int]]]:
    """Concatenate members ``(digest, bytes)`` into packs of at most ``chunk_size`` bytes:
    ``[(pack bytes, {member digest: offset})]``; a member listed twice is packed once."""
    out: list[tuple[bytes, dict[bytes, int]]] = []
    parts: list[bytes] = []
    offs: dict[bytes, int] = {}
    size = 0
    seen: set[bytes] = set()
    for d, data in members:
        if d in seen:
            continue
        seen.add(d)
        if size and size + data.nbytes > chunk_size:
            out.append((b"".join(parts), offs))
            parts, offs, size = [], {}, 0
        offs[d] = size
        parts.append(bytes(data))
        size += data.nbytes
    if parts:
        out.append((b"".join(parts), offs))
    return out


def known(store, raws: set[bytes]) -> dict[bytes, tuple[bytes, int]]:
    """Those of ``raws`` held in packs the store still has: digest → (pack digest, offset)."""
    found = store.index.get_members(raws)
    if not found:
        return {}
    stored = {d.raw for d in store.stored(Digest(p) for p in {p for p, _ in found.values()})}
    return {r: v for r, v in found.items() if v[0] in stored}


class PartCache:
    """Decoded chunks that partial refs point into, least recently used out first."""

    def __init__(self, budget: int = CACHE_BUDGET) -> None:
        self.budget, self.held = budget, 0
        self._data: OrderedDict[Digest, memoryview] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: Digest, load: Callable[[], memoryview]) -> memoryview:
        with self._lock:
            if digest in self._data:
                self._data.move_to_end(digest)
                return self._data[digest]
        raw = load()  # NOTE: outside the lock: two threads may decode one pack; both are right
        with self._lock:
            if raw.nbytes <= self.budget and digest not in self._data:
                self._data[digest] = raw
                self.held += raw.nbytes
                while self.held > self.budget:
                    self.held -= self._data.popitem(last=False)[1].nbytes
        return raw
