"""What a store holds and what it costs: ``ls`` (per snapshot), ``du`` (whole store), ``show`` (per item).

Sizes come from the manifests and the LMDB index (stored sizes per chunk); nothing here reads a
chunk file. ``stored_bytes`` are bytes on disk in chunk files, headers included.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from . import refcache
from .store import Store


@dataclass(frozen=True, slots=True)
class SnapshotUsage:
    """One row of ``ls``: ``unique_bytes`` are stored bytes of chunks no other snapshot references
    (what deleting this snapshot alone and running gc would free)."""

    name: str
    created: str
    logical_bytes: int
    chunks: int
    unique_bytes: int
    tags: tuple[str, ...] = ()
    meta: dict | None = None  # the user metadata of casckpt.save(meta=...)
    origin: str = "save"  # "import" for snapshots `casckpt import` made (never "latest" then)
    damaged: str | None = None  # why the manifest cannot be read (sizes then from the registry, or 0)

    def to_json(self) -> dict:
        return {**asdict(self), "tags": list(self.tags)}


@dataclass(frozen=True, slots=True)
class Usage:
    """The whole store (``du``). ``raw_bytes``: uncompressed bytes of the distinct chunks.

    ``dedup_ratio = logical / raw``, ``compression_ratio = raw / stored``, and their product
    ``ratio = logical / stored`` (``None`` when the denominator is 0).
    """

    snapshots: int
    logical_bytes: int
    raw_bytes: int
    stored_bytes: int
    chunks: int
    disk: "DiskUsage | None" = None  # what ``du -sh`` would see; only when asked (it stats every file)

    @property
    def dedup_ratio(self) -> float | None:
        return _ratio(self.logical_bytes, self.raw_bytes)

    @property
    def compression_ratio(self) -> float | None:
        return _ratio(self.raw_bytes, self.stored_bytes)

    @property
    def ratio(self) -> float | None:
        return _ratio(self.logical_bytes, self.stored_bytes)

    def to_json(self) -> dict:
        return {**asdict(self), "disk": self.disk.to_json() if self.disk else None, "dedup_ratio": self.dedup_ratio,
                "compression_ratio": self.compression_ratio, "ratio": self.ratio}


@dataclass(frozen=True, slots=True)
class ItemUsage:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: int
    logical_bytes: int
    stored_bytes: int

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class SnapshotDetail:
    """``show``: a snapshot's items. An item's ``stored_bytes`` counts each distinct chunk once,
    including chunks it shares with other items or snapshots; an item that is part of a chunk (a
    member of a pack) is charged its share of that chunk, in proportion to its length;
    ``stored_bytes`` of the snapshot counts each distinct chunk of the snapshot once."""

    name: str
    created: str
    logical_bytes: int
    stored_bytes: int
    items: tuple[ItemUsage, ...]
    meta_keys: tuple[str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "created": self.created, "logical_bytes": self.logical_bytes,
                "stored_bytes": self.stored_bytes, "meta_keys": list(self.meta_keys),
                "items": [i.to_json() for i in self.items]}


def ls(store: Store) -> list[SnapshotUsage]:
    """Every snapshot, oldest first, with the stored bytes only it holds. A snapshot whose manifest
    cannot be read is listed with ``damaged`` set (and 0 unique bytes: its chunks are unknown).

    Rows and reference keys come from the index (:mod:`casckpt.refcache`): only manifests that
    are new or changed since the last ``ls`` or gc are parsed."""
    cat = refcache.catalog(store)
    uni = refcache.Universe(store, files=False)
    # NOTE: a snapshot holds the bases its delta chunks need too: deleting it frees a base only
    # when no other snapshot's chunks are built on it. Marks are kept packed (1 bit per chunk).
    marks, owners = {}, np.zeros(len(uni.keys), np.int32)
    for name, keys in cat.keys.items():
        m = uni.mark([keys])
        owners += m
        marks[name] = np.packbits(m)
    only = owners == 1
    rows = [SnapshotUsage(n, r["created"], r["logical_bytes"], r["chunks"],
                          int(uni.stored[np.unpackbits(marks[n], count=len(only)).view(bool) & only].sum()),
                          tuple(r.get("tags") or ()), r.get("user"), r.get("origin", "save"))
            for n, r in cat.rows.items()]
    table = store.index.snapshot_table() if cat.damaged else {}
    for name, why in cat.damaged.items():
        s = table.get(name) or {}
        rows.append(SnapshotUsage(name, s.get("created", ""), s.get("logical_bytes", 0),
                                  s.get("chunks", 0), 0, damaged=why))
    return sorted(rows, key=lambda r: (r.created, r.name))


def latest(rows: list[SnapshotUsage]) -> str | None:
    """The snapshot ``"latest"`` names, from :func:`ls`'s rows (the rule of
    :meth:`casckpt.Store.resolve`: the greatest ``(created, name)`` among readable snapshots a
    save made, else among all readable ones), so ``ls`` reads no manifest to show it."""
    ok = [r for r in rows if not r.damaged]
    pool = [r for r in ok if r.origin == "save"] or ok
    return max(pool, key=lambda r: (r.created, r.name)).name if pool else None


def du(store: Store, *, disk: bool = False, rows: list[SnapshotUsage] | None = None) -> Usage:
    """Totals for the whole store, from the snapshot registry and the chunk index; with ``disk``,
    also the file-system blocks the store's files take (:func:`disk_usage`; a store on a local
    file system only). ``rows``: :func:`ls`'s, just made, to count snapshots from instead of
    listing them again (a request on object storage); damaged ones count as :func:`ls` shows them."""
    snaps = store.snapshots() if rows is None else rows
    n, raw, stored = store.index.totals()
    return Usage(len(snaps), sum(s.logical_bytes for s in snaps), raw, stored, n,
                 disk_usage(store) if disk and store.backend.local_path else None)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes of file-system blocks (``st_blocks × 512``, what ``du`` counts) per part of the store.
    ``chunk_files`` can far exceed ``Usage.stored_bytes``: a chunk of a few hundred bytes still
    takes a whole block (4 KiB on most file systems), and each file an inode."""

    chunks: int
    chunk_files: int
    manifests: int
    index: int
    other: int  # config, lock, temp files

    @property
    def total(self) -> int:
        return self.chunks + self.manifests + self.index + self.other

    def to_json(self) -> dict:
        return {**asdict(self), "total": self.total}


def disk_usage(store: Store) -> DiskUsage:
    """Walk the store (one ``lstat`` per file, as ``du`` does) and the index folder if elsewhere."""
    chunks, files = _blocks(store.root / "chunks")
    index = _blocks(store.index_path)[0]
    inside = store.index_path.is_relative_to(store.root)
    everything = _blocks(store.root)[0]
    other = everything - chunks - _blocks(store.snap_dir)[0] - (index if inside else 0)
    return DiskUsage(chunks, files, _blocks(store.snap_dir)[0], index, other)


def _blocks(path) -> tuple[int, int]:
    """(bytes in blocks, files) under ``path``, folders included, links not followed."""
    try:
        total = os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0, 0
    files, todo = 0, [str(path)]
    while todo:
        try:
            it = os.scandir(todo.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                else:
                    files += 1
    return total, files


def show(store: Store, name: str) -> SnapshotDetail:
    """The items of snapshot ``name`` (or ``"latest"``) with their stored sizes."""
    m = store.manifest(name)
    infos = {d: store.index.get(d) for d in m.digests()}
    items = tuple(ItemUsage(k, it.dtype, it.shape, len(it.chunks), it.nbytes, _charged(it, infos))
                  for k, it in m.items.items())
    total = sum(i.stored_len for i in infos.values() if i)
    return SnapshotDetail(m.name, m.created, m.logical_bytes, total, items, tuple(m.meta))


def _charged(it, infos: dict) -> int:
    """An item's stored bytes: each distinct whole chunk it refers to, and for each ref into part
    of a chunk (a member of a pack) that part's share of the chunk's stored bytes."""
    whole = {c.digest for c in it.chunks if c.offset is None}
    parts = {(c.digest, c.offset): c.length for c in it.chunks if c.offset is not None}
    total = sum(infos[d].stored_len for d in whole if infos[d])
    for (d, _), n in parts.items():
        info = infos[d]
        total += round(info.stored_len * n / info.raw_len) if info and info.raw_len else 0
    return total


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None
