"""Delta chunks: a chunk stored as its raw bytes XOR a *base* chunk's raw bytes, then compressed.

Between two checkpoints most bytes of a tensor keep their value or move in their low mantissa
bits, so the XOR of a chunk with the chunk at the same place in the previous snapshot is mostly
zero bytes, which compress far better than the chunk itself. A chunk keeps its name (the BLAKE3
of its raw bytes); only its file says how to rebuild it (docs/FORMAT.md, "Delta chunks").

This module holds what the chunk directory and the store share: the XOR, the "does a delta pay"
test, the base policy (chain depth), and the bounded cache of raw bytes of chunks saved last.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from . import codec, planes as pl
from .digest import Digest

# NOTE: measured with tools/bench --delta-depths (README, Performance): depth 1 ("every delta
# against a full key chunk") keeps loads at two decodes per chunk, deeper chains store less for
# dense training but every extra link is another decode on load and on save.
DEFAULT_MAX_DEPTH = 1
MAX_DEPTH_LIMIT = 64  # a reader refuses longer chains: a hostile cycle of bases cannot loop
# A delta is kept only if its sample compresses to at most this fraction of the full chunk's
# sample: below ~10 % gain the extra base decode on every load costs more than it saves.
MIN_GAIN = 0.90
# A delta this close to the full chunk's size is hopeless (new noise each step, like Adam's first
# moment): the chunks after it are stored whole without trying (see BaseCache). Between the two,
# the next save tries again: such chunks (Adam's second moment) often pay one step later.
HOPELESS = 0.97
_SAMPLE = 16 * 1024
DEFAULT_CACHE_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class DeltaConfig:
    """Whether new chunks may be stored as deltas, and how long a chain of bases may grow."""

    enabled: bool = True
    max_depth: int = DEFAULT_MAX_DEPTH

    def to_json(self) -> dict:
        return {"enabled": self.enabled, "max_depth": self.max_depth}

    @classmethod
    def from_json(cls, obj: dict) -> "DeltaConfig":
        depth = obj.get("max_depth", DEFAULT_MAX_DEPTH)
        if type(depth) is not int or not 1 <= depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be 1..{MAX_DEPTH_LIMIT}")
        return cls(enabled=bool(obj.get("enabled", True)), max_depth=depth)


def xor(a, b) -> memoryview:
    """A new buffer holding ``a ^ b`` (one pass over each)."""
    n = memoryview(a).nbytes
    wide = np.uint64 if n % 8 == 0 else np.uint8
    out = np.empty(n // np.dtype(wide).itemsize, dtype=wide)
    np.bitwise_xor(np.frombuffer(a, dtype=wide), np.frombuffer(b, dtype=wide), out=out)
    return memoryview(out).cast("B")


XOR = 0  # a delta's op: its bytes XOR its base's; else the element width of a zigzag difference
SUB_WIDTHS = (2, 4, 8)


def op_for(group: int) -> int:
    """How a delta of a chunk grouped by ``group`` (its float element size, 0: not a float) is
    made: floats as the zigzag of the difference of their bit patterns read as integers (a weight
    that moved a few units in its last place costs a few bits, where XOR costs every bit up to
    the highest one a carry reached: 3-10 % smaller on MiniLM steps, README Performance); other
    bytes as XOR."""
    return group if group in SUB_WIDTHS else XOR


def make(raw, base, op: int) -> memoryview:
    """The bytes a delta chunk codes: ``raw XOR base`` (``op`` 0) or ``zigzag(raw - base)``."""
    return xor(raw, base) if op == XOR else pl.zigzag_sub(raw, base, op)


def encode(raw, base, *, group: int, config: codec.CodecConfig) -> tuple[int, int, list]:
    """``(op, codec, payload parts)`` of ``raw`` as a delta against ``base`` (same length): the
    one place that picks how a delta is made and coded, for the chunk written and its samples."""
    op = op_for(group) if memoryview(raw).nbytes % max(group, 1) == 0 else XOR
    kind, parts = codec.encode(make(raw, base, op), group=group, config=config, zigzag=op != XOR)
    return op, kind, parts


def sample_ratio(raw: memoryview, base, *, group: int, config: codec.CodecConfig) -> float:
    """Compressed size of ``raw`` as a delta against ``base`` over that of ``raw``, estimated on four element-aligned
    samples spread over the chunk (about 6 % of a 2 MiB chunk's compression work): whether a
    delta is worth a base decode on every load (``<= MIN_GAIN``) is decided before any
    whole-chunk XOR or second compression."""
    base = memoryview(base)
    n = raw.nbytes
    if n <= 4 * _SAMPLE:
        picks = [(0, n)]
    else:
        step = (n - _SAMPLE) // 3
        align = max(group, 1)
        picks = [((i * step) // align * align, _SAMPLE) for i in range(4)]
    # NOTE: the samples are joined and coded once each way: four small encodes per side cost
    # ~3x as much (per-call and per-plane overhead on 4 KiB planes).
    mine = b"".join(raw[o:o + k] for o, k in picks)
    theirs = b"".join(base[o:o + k] for o, k in picks)
    full = _nbytes(codec.encode(memoryview(mine), group=group, config=config)[1])
    return _nbytes(encode(mine, theirs, group=group, config=config)[2]) / max(full, 1)


def _nbytes(parts: list) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def choose_base(candidate: Digest, lookup: Callable[[Digest], tuple | None],
                max_depth: int) -> tuple[Digest, int] | None:
    """The base a new chunk should be a delta against, and that base's depth, or None.

    ``candidate`` is the chunk at the same place in the newest earlier snapshot; ``lookup(d)``
    gives ``(base or None, depth)`` of an indexed chunk, None if it is not indexed (then it is
    not known to be durable and cannot be a base). Against the candidate while its depth is below
    ``max_depth``; else against its chain's full root, so no chain grows past ``max_depth``.
    """
    d = candidate
    for _ in range(MAX_DEPTH_LIMIT):
        info = lookup(d)
        if info is None:
            return None
        base, depth = info
        if depth < max_depth:
            return d, depth
        if base is None:
            return None
        d = base  # one link towards the root: depths fall by one per link
    return None


def closure(digests: Iterable[Digest], base_of: Callable[[Digest], Digest | None]) -> set[Digest]:
    """``digests`` and, transitively, the bases ``base_of`` names for them (None: a full chunk)."""
    out = set(digests)
    todo = list(out)
    while todo:
        base = base_of(todo.pop())
        if base is not None and base not in out:
            out.add(base)
            todo.append(base)
    return out


def same_place(prev: Mapping, items: Mapping) -> dict[Digest, Digest]:
    """New digest → the digest at the same item key and chunk position in ``prev`` (manifest
    items with the same dtype, shape and chunk length): each new chunk's candidate base."""
    out = {}
    for key, item in items.items():
        old = prev.get(key)
        if old is None or old.dtype != item.dtype or old.shape != item.shape or len(old.chunks) != len(item.chunks):
            continue
        for a, b in zip(old.chunks, item.chunks):
            if a.length == b.length and a.digest != b.digest:
                out.setdefault(b.digest, a.digest)
    return out


class BaseCache:
    """Raw bytes of delta bases, keyed by (store id, digest), within a budget; least recently
    used entries go first.

    With ``max_depth`` 1 every delta's base is a full key chunk that many saves share, so a base
    read back from the store once is kept for the saves after it. With longer chains the next
    save's bases are the chunks this save writes, so those are kept (a copy: the caller's tensor
    memory changes after the save). Either way decoding bases back from the store is spared.

    It also remembers chunks stored whole because a delta did not pay (Adam's first moment is
    new noise every step): their successors are stored whole without trying, except every
    ``RETRY``-th time in a row, and they take no cache room from bases that do pay.
    """

    RETRY = 8
    _MAX_REFUSED = 1 << 18

    def __init__(self, budget: int = DEFAULT_CACHE_BYTES) -> None:
        self.budget = budget
        self._data: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._refused: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def skip(self, store_id: str, base: Digest) -> int | None:
        """How many times in a row the chunks before ``base`` were refused as deltas (None:
        never); the caller skips trying unless it is a multiple of ``RETRY``."""
        with self._lock:
            return self._refused.get((store_id, base.raw))

    def refuse(self, store_id: str, digest: Digest, streak: int) -> None:
        with self._lock:
            self._refused[(store_id, digest.raw)] = streak
            while len(self._refused) > self._MAX_REFUSED:
                self._refused.popitem(last=False)

    def get(self, store_id: str, digest: Digest) -> bytes | None:
        with self._lock:
            data = self._data.get((store_id, digest.raw))
            if data is not None:
                self._data.move_to_end((store_id, digest.raw))
            return data

    def put(self, store_id: str, digest: Digest, raw, *, copy: bool = True) -> None:
        """Keep ``raw`` (``copy=False``: a buffer nobody else will change) under the budget."""
        n = memoryview(raw).nbytes
        if self.budget <= 0 or n > self.budget:
            return
        data = bytes(raw) if copy else raw
        with self._lock:
            key = (store_id, digest.raw)
            if key in self._data:
                return
            self._data[key] = data
            self._held += n
            while self._held > self.budget:
                _, old = self._data.popitem(last=False)
                self._held -= memoryview(old).nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._refused.clear()
            self._held = 0


# One per process: a DCP save opens a fresh Store per call, and the bases of step N+1 are the
# chunks of step N that the same rank wrote.
CACHE = BaseCache()
