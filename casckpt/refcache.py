"""What every snapshot references, without parsing every manifest each time: for ``ls`` and gc.

Per snapshot the index caches (database ``refs``, see docs/FORMAT.md) the identity of its manifest
blob (a hash of its version: a file's inode, size, modification and change times; an object's
ETag and size: casckpt replaces a manifest, never edits it, so a new manifest is a new identity)
and the sorted distinct **keys** of the digests it references: a key is a digest's first 8 bytes
as a little-endian uint64. A cache entry whose identity differs from the blob's (or that is
missing) is rebuilt by parsing the manifest once. The versions come with the one listing of
``snapshots/``, so a catalog whose cache is current reads no manifest, not even its metadata (on
object storage: one LIST, no HEAD or GET per snapshot).

Keys, not whole digests, keep the cache at 8 bytes per distinct chunk of a snapshot, and let
numpy mark a store's chunks with sorted searches instead of one Python object per reference.
Two digests can share a key (chance about n²/2⁶⁵: 3·10⁻⁸ for a million chunks); then both
count as referenced when either is. That errs one way only: gc keeps a chunk it could have
deleted, never the reverse, and ``ls`` may count such a chunk as shared instead of unique.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from . import delta
from .backends import BlobNotFoundError
from .digest import DIGEST_SIZE, Digest, digest_of
from .errors import CasckptError, IndexDamagedError, SnapshotNotFoundError, StoreIOError
from .snapshots import _registry_row

KEY = np.dtype("<u8")
IDENT_SIZE = 32  # a hash of the manifest blob's version (see _ident)
_FULL = struct.Struct("<QQB")  # index entries (casckpt.index): raw_len, stored_len, codec
_DELTA = struct.Struct("<QQBB32s")  # ... depth, base digest

Progress = Callable[[int, int], None]


def keys_of(raw: bytes) -> np.ndarray:
    """The keys of concatenated 32-byte digests, in order."""
    if not raw:
        return np.zeros(0, KEY)
    return np.frombuffer(raw, KEY).reshape(-1, DIGEST_SIZE // 8)[:, 0]


@dataclass
class Catalog:
    """Readable snapshots' registry rows and reference keys; unreadable ones with why."""

    rows: dict[str, dict] = field(default_factory=dict)
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)


def catalog(store, progress: Progress | None = None) -> Catalog:
    """Every committed snapshot's row and keys, from the index where its cache is current.
    ``progress(done, total)`` counts snapshots. A snapshot deleted meanwhile is left out."""
    out = Catalog()
    table = store.index.snapshot_table()
    listed = store.listed()
    for i, name in enumerate(listed, 1):
        try:
            out.rows[name], out.keys[name] = _entry(store, name, table.get(name), listed[name].version)
        except SnapshotNotFoundError:
            pass
        except CasckptError as exc:
            out.damaged[name] = str(exc)
        if progress:
            progress(i, len(listed))
    return out


def _entry(store, name: str, row: dict | None, version: Hashable | None) -> tuple[dict, np.ndarray]:
    # NOTE: the version is taken (listed) before parsing: a manifest replaced in between is
    # cached under the old identity, which no longer matches, so the worst case is one more parse.
    ident = _ident(name, store, version)
    cached = store.index.get_refs(name)
    if cached is not None and cached[:IDENT_SIZE] == ident and row and "origin" in row:
        return row, np.frombuffer(cached, KEY, offset=IDENT_SIZE)
    m = store.manifest(name, version=version)
    row, keys = _registry_row(m), m.digest_keys()
    try:  # a cache: a read-only or full index only costs a parse next time
        store.index.put_snapshot(name, row)
        store.index.put_refs(name, ident + keys.tobytes())
    except (StoreIOError, IndexDamagedError):
        pass
    return row, keys


def _ident(name: str, store, version: Hashable | None = None) -> bytes:
    """32 bytes that change whenever snapshot ``name``'s manifest is written: a hash of the
    back-end's version of the blob (``version`` where a listing gave it; a file's inode, size and
    times; an object's ETag and size), or of its bytes where the back-end has no version."""
    key = store.manifest_key(name)
    try:
        tag = version if version is not None else store.backend.version(key)
        if tag is None:
            return digest_of(store.backend.get(key)).raw
    except BlobNotFoundError:
        raise SnapshotNotFoundError(f"no snapshot {name!r} in store {store.root}") from None
    except OSError as exc:
        raise CasckptError(f"manifest of snapshot {name!r} is unreadable: {exc.strerror or exc}") from None
    return digest_of(repr(tag).encode()).raw


class Universe:
    """Every chunk the store knows of (index entries, and chunk files when ``files``), by key:
    sorted keys, stored sizes, base links, which are files and which are indexed. Marks a set of
    snapshots' chunks, bases included, with numpy over these arrays."""

    def __init__(self, store, *, files: bool = True) -> None:
        self.store = store
        ekeys, evals = store.index.chunk_table()
        self.entries = ekeys  # raw digests of index entries, sorted
        listed = list(store.chunks.sizes()) if files else []  # NOTE: one listing, sizes included
        fdigs = [d for d, _ in listed]
        self.files = fdigs
        self.file_sizes = np.fromiter((n for _, n in listed), np.int64, len(listed))  # stored bytes, per file
        eraw, fraw = b"".join(ekeys), b"".join(d.raw for d in fdigs)
        ek, fk = keys_of(eraw), keys_of(fraw)
        self.keys = np.unique(np.concatenate([ek, fk]))
        self.epos, self.fpos = self.pos(ek), self.pos(fk)
        n = len(self.keys)
        self.stored = np.zeros(n, np.int64)
        self.base = np.full(n, -1, np.int64)
        self.indexed = np.zeros(n, bool)
        self.indexed[self.epos] = True
        self.is_file = np.zeros(n, bool)
        self.is_file[self.fpos] = True
        self._links(evals)
        # files without an entry: base links come from their headers, read when first live
        self._unread = {int(p): d for p, d in zip(self.fpos, fdigs) if not self.indexed[p]}

    def pos(self, keys: np.ndarray) -> np.ndarray:
        """Positions of ``keys``, which must all be in the universe."""
        return np.searchsorted(self.keys, keys)

    def _links(self, vals: list[bytes]) -> None:
        sizes = np.fromiter((_FULL.unpack_from(v)[1] for v in vals), np.int64, len(vals))
        np.add.at(self.stored, self.epos, sizes)
        deltas = [(i, v[-DIGEST_SIZE:]) for i, v in enumerate(vals) if len(v) == _DELTA.size]
        if deltas:
            self._link(self.epos[[i for i, _ in deltas]], keys_of(b"".join(b for _, b in deltas)))

    def _link(self, at: np.ndarray, base_keys: np.ndarray) -> None:
        p = np.minimum(np.searchsorted(self.keys, base_keys), len(self.keys) - 1)
        known = self.keys[p] == base_keys  # a base the store has no trace of links nowhere
        self.base[at[known]] = p[known]

    def mark(self, key_arrays) -> np.ndarray:
        """Which chunks the given reference keys (one array per snapshot) need, bases included."""
        live = np.zeros(len(self.keys), bool)
        if not len(self.keys):
            return live
        for k in key_arrays:
            p = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
            live[p[self.keys[p] == k]] = True
        return self.close(live)

    def close(self, live: np.ndarray) -> np.ndarray:
        """``live`` plus, transitively, the bases of its delta chunks (in place)."""
        for _ in range(len(self.keys) + 1):  # NOTE: bounded even if hostile headers form a cycle
            for _ in range(delta.MAX_DEPTH_LIMIT + 1):
                b = self.base[live & (self.base >= 0)]
                fresh = b[~live[b]]
                if not len(fresh):
                    break
                live[fresh] = True
            todo = [p for p in self._unread if live[p]]
            if not todo:
                return live
            for p in todo:
                self._read_header(p)
        return live

    def _read_header(self, p: int) -> None:
        d = self._unread.pop(p)
        try:
            base = self.store.chunks.link(d)[0]
        except CasckptError:
            return  # unreadable: no base to keep
        if base is not None:
            self._link(np.array([p]), keys_of(base.raw))

    def marked(self, live: np.ndarray, d: Digest) -> bool:
        """Whether ``live`` marks ``d`` (False for a digest the store has no trace of)."""
        k = keys_of(d.raw)
        p = int(np.searchsorted(self.keys, k)[0])
        return p < len(self.keys) and self.keys[p] == k[0] and bool(live[p])

    def stale_entries(self, live: np.ndarray) -> tuple[list[Digest], list[Digest]]:
        """Index entries without a chunk file: (not referenced, referenced). Both are dropped:
        the second kind is a lost file (see casckpt.spotcheck), which the next save rewrites."""
        gone = ~self.is_file[self.epos]
        idx = np.flatnonzero(gone)
        unref = [Digest(self.entries[i]) for i in idx if not live[self.epos[i]]]
        lost = [Digest(self.entries[i]) for i in idx if live[self.epos[i]]]
        return unref, lost
