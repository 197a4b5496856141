"""Dedup across world sizes: a new chunk that lies inside chunks stored under another shard layout.

Chunks are cut on each tensor's global row grid (casckpt.chunking), so a row shard whose edges
fall on grid lines cuts the same chunks on any number of ranks. FSDP2's shards rarely do (1032
rows over 3 ranks: 344 each, on a grid of 512), and every chunk a shard edge cuts hashes
differently from the whole grid chunk the other layout stored: without help, an unchanged
re-save after a world-size change rewrites almost everything.

So at global planning the coordinator lays the latest snapshot's chunk refs out on each tensor's
global byte line and, for every new chunk of a row shard, looks for refs of the latest snapshot
that cover the same global bytes (:func:`covers`). The rank that would write the chunk first
compares its bytes with those parts (decoded and verified from the store,
:func:`matching`); if they are equal it writes nothing and the manifest refers to the parts
instead (refs with an offset into a stored chunk, docs/FORMAT.md). Bytes are compared, never
assumed: a changed chunk is written as usual.

Items are comparable when they share the FQN, dtype and everything but the first dimension
(offsets and sizes), so row ranges of the two layouts address the same bytes. A new chunk whose
global range is exactly one whole chunk of the latest snapshot is skipped without reading: its
digest differs, so its bytes do.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable, Mapping

import numpy as np

from ..manifest import Item, key_fqn, key_offsets

# (raw digest of a stored chunk, offset in its raw bytes or None for the whole chunk, length)
Piece = tuple[bytes, int | None, int]


def _line(key: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> tuple[tuple, int] | None:
    """``(group, start)``: the group of items whose rows share one byte line, and where this
    item's bytes start on it; None for items that have no rows (0-d, empty, bytes)."""
    if not shape or shape[0] == 0 or dtype == "bytes":
        return None
    offs = key_offsets(key, len(shape))
    if len(offs) != len(shape):
        return None
    return (key_fqn(key), dtype, offs[1:], shape[1:]), offs[0] * (nbytes // shape[0])


class Extents:
    """The latest snapshot's refs on each group's byte line: ``(start, end, digest, chunk
    offset, whole)``, sorted by start."""

    def __init__(self, items: Mapping[str, Item], groups: set[tuple] | None = None) -> None:
        lines: dict[tuple, list] = {}
        for key, item in items.items():
            at = _line(key, item.dtype, item.shape, item.nbytes)
            if at is None or groups is not None and at[0] not in groups:
                continue
            group, base = at
            for ref, off in zip(item.chunks, item.offsets()):
                start = base + off
                lines.setdefault(group, []).append((start, start + ref.length, ref.digest.raw,
                                                    ref.offset or 0, ref.offset is None))
        self.lines = {g: sorted(v) for g, v in lines.items()}
        self.starts = {g: [e[0] for e in v] for g, v in self.lines.items()}

    def cover(self, group: tuple, a: int, b: int) -> tuple[Piece, ...] | None:
        """Parts of stored chunks that hold global bytes ``[a, b)`` of ``group``, or None if
        the latest snapshot does not hold all of them (or holds them as one whole chunk)."""
        line = self.lines.get(group)
        if not line:
            return None
        i = bisect.bisect_right(self.starts[group], a) - 1
        pieces, pos = [], a
        while pos < b:
            if i < 0 or i >= len(line) or not line[i][0] <= pos < line[i][1]:
                return None  # a gap: these bytes were not in the latest snapshot
            start, end, digest, coff, whole = line[i]
            if start == a and end == b and whole:
                return None  # exactly a stored whole chunk, whose digest differs
            n = min(end, b) - pos
            entire = whole and pos == start and pos + n == end
            pieces.append((digest, None if entire else coff + pos - start, n))
            pos, i = pos + n, i + 1
        return tuple(pieces)


def covers(prev: Mapping[str, Item], items: Iterable[tuple[str, str, tuple[int, ...], list, list]],
           new: set[bytes]) -> dict[bytes, tuple[Piece, ...]]:
    """Candidate parts for each new digest: ``items`` yields ``(key, dtype, shape, spans,
    digests)`` of the items being saved; ``prev`` is the latest snapshot's items."""
    todo = []
    for key, dtype, shape, spans, digests in items:
        at = _line(key, dtype, shape, sum(n for _, n in spans))
        if at is not None and not _same_grid(prev.get(key), dtype, shape, spans):
            todo.append((at, spans, digests))
    if not todo:  # NOTE: the common case, a save on the latest snapshot's layout: no line is laid
        return {}
    ext = Extents(prev, {group for (group, _), _, _ in todo})
    out: dict[bytes, tuple[Piece, ...]] = {}
    for (group, base), spans, digests in todo:
        for d, (o, n) in zip(digests, spans):
            if d in new and d not in out:
                pieces = ext.cover(group, base + o, base + o + n)
                if pieces is not None:
                    out[d] = pieces
    return out


def _same_grid(old: Item | None, dtype: str, shape: tuple[int, ...], spans) -> bool:
    """Whether the latest snapshot stored this item whole-chunk by whole-chunk on the same spans:
    then every new chunk's range is one stored whole chunk, which :meth:`Extents.cover` refuses."""
    return (old is not None and old.dtype == dtype and tuple(old.shape) == tuple(shape)
            and old.ref_offsets is None and old.lengths.tolist() == [n for _, n in spans])


def matching(data: memoryview, pieces: tuple[Piece, ...], get: Callable[[bytes], memoryview]) -> bool:
    """Whether ``data`` equals the concatenation of ``pieces`` (``get`` returns a stored chunk's
    raw bytes, verified)."""
    have = np.frombuffer(data, np.uint8)
    pos = 0
    for digest, off, n in pieces:
        raw = np.frombuffer(get(digest), np.uint8)
        off = off or 0
        if off + n > raw.size or not np.array_equal(have[pos:pos + n], raw[off:off + n]):
            return False
        pos += n
    return pos == have.size
