"""Check that snapshots are whole: every referenced chunk exists and (unless quick) hashes to its name.

A delta chunk is checked by decoding it from its base, so a missing or corrupt base shows as a
problem of every referenced chunk built on it (``base`` names the damaged base). Problems are
reported with the snapshots and items they break, and their chunks are dropped
from the index so that the next save of the same data writes them again. Chunk files that no snapshot
references (orphans, reclaimed by ``gc``) are counted but are not a problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import delta, objcache
from .digest import Digest
from .errors import (CasckptError, ChunkError, IndexDamagedError, MissingChunkError, SnapshotNotFoundError,
                     StoreIOError)
from .pipeline import Tally
from .store import Store

log = logging.getLogger("casckpt")

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ChunkProblem:
    """A missing or corrupt chunk and every (snapshot, item) that references it."""

    digest: str
    kind: str  # "missing" | "corrupt"
    reason: str
    path: str
    refs: tuple[tuple[str, str], ...]
    base: str = ""  # a delta chunk whose base (this digest) is missing or corrupt

    @property
    def snapshots(self) -> list[str]:
        return sorted({s for s, _ in self.refs})

    def to_json(self) -> dict:
        return {"digest": self.digest, "kind": self.kind, "reason": self.reason, "path": self.path,
                "base": self.base or None,
                "snapshots": self.snapshots, "items": [{"snapshot": s, "item": i} for s, i in self.refs]}


@dataclass(frozen=True)
class VerifyReport:
    snapshots: tuple[str, ...]
    chunks_checked: int
    quick: bool
    problems: tuple[ChunkProblem, ...] = ()
    bad_manifests: dict[str, str] = field(default_factory=dict)
    orphans: int | None = None  # counted only when every snapshot was checked
    stray_files: tuple[str, ...] = ()  # names in snapshots/ that are not manifests: left alone

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_manifests

    @property
    def broken_snapshots(self) -> list[str]:
        return sorted({s for p in self.problems for s in p.snapshots} | set(self.bad_manifests))

    def to_json(self) -> dict:
        return {"ok": self.ok, "quick": self.quick, "snapshots": list(self.snapshots),
                "chunks_checked": self.chunks_checked, "broken_snapshots": self.broken_snapshots,
                "missing": [p.to_json() for p in self.problems if p.kind == "missing"],
                "corrupt": [p.to_json() for p in self.problems if p.kind == "corrupt"],
                "bad_manifests": dict(self.bad_manifests), "orphans": self.orphans,
                "stray_files": list(self.stray_files)}


def verify(store: Store, names: Iterable[str] | None = None, *, quick: bool = False,
           progress: Progress | None = None) -> VerifyReport:
    """Check the snapshots ``names`` (default: all). ``quick`` checks only that chunk files exist;
    otherwise each distinct chunk is read once and its content hashed. Reads nothing it need not.

    Holds the store's shared lock throughout, so a gc cannot delete chunks under it (which
    would look like missing chunks) and the index is only changed while no gc runs.
    ``progress`` is called from one thread at a time."""
    with store.reading():
        return _verify(store, names, quick, progress)


def _verify(store: Store, names: Iterable[str] | None, quick: bool, progress: Progress | None) -> VerifyReport:
    every = names is None
    names = sorted(store.snapshot_names()) if every else [store.resolve(n) for n in names]
    for name in names:
        if not store.exists(name):
            raise SnapshotNotFoundError(f"no snapshot {name!r} in store {store.root}")
    refs: dict[Digest, list[tuple[str, str]]] = {}
    bad = {}
    for name in names:
        try:
            m = store.manifest(name)
        except CasckptError as exc:
            bad[name] = str(exc)
            continue
        for key, item in m.items.items():
            for c in item.chunks:
                refs.setdefault(c.digest, []).append((name, key))
    digests = sorted(refs, key=lambda d: d.raw)  # NOTE: digest order ~ directory order: kinder to disks
    tally = Tally(progress, len(digests))  # NOTE: called from the pool's threads

    def check(d: Digest) -> ChunkProblem | None:
        problem = _check(store, d, refs[d], quick)
        tally.add(1)
        return problem

    problems = tuple(p for p in store.pipeline.map(check, digests) if p is not None)
    if problems:
        _unvouch(store, problems)
    if not quick and store.backend.local_path is None:  # NOTE: a chunk healed since it was marked
        try:
            objcache.clear_healed(store, set(digests) - {Digest(bytes.fromhex(p.digest)) for p in problems})
        except CasckptError as exc:  # read-only credentials: the markers only cost a check later
            log.warning("casckpt: verify could not clear the markers of healed chunks: %s", exc)
    if every and not bad:
        live = store.live(refs)  # bases of delta chunks are not orphans
        orphans = sum(1 for d in store.chunks if d not in live)
    else:
        orphans = None
    return VerifyReport(tuple(names), len(digests), quick, problems, bad, orphans,
                        tuple(store.stray_files()) if every else ())


def _unvouch(store: Store, problems: tuple[ChunkProblem, ...]) -> None:
    # NOTE: an index entry vouches for a good file; dropped, the next save of that data
    # writes the chunk again instead of reusing the bad one (and so heals these snapshots);
    # a damaged base loses its entry too.
    bad = {Digest(bytes.fromhex(h)) for p in problems for h in (p.digest, p.base) if h}
    try:
        store.index.remove_chunks(bad)
    except (StoreIOError, IndexDamagedError) as exc:  # a read-only store: report, change nothing
        log.warning("casckpt: verify could not drop the bad chunks' index entries: %s", exc)
    if store.backend.local_path is None:  # NOTE: every host's cache, not only this one
        try:
            objcache.announce_damaged(store, sorted(bad, key=lambda d: d.raw))
        except CasckptError as exc:
            log.warning("casckpt: verify could not tell other hosts' caches about the bad chunks: %s", exc)


def _check(store: Store, d: Digest, refs: list[tuple[str, str]], quick: bool) -> ChunkProblem | None:
    path = store.chunks.where(d)
    try:
        if quick:
            if not store.chunks.exists(d):
                raise MissingChunkError(f"chunk {d} is missing: {path}", digest=d.hex, path=path)
            _bases_exist(store, d)
        else:
            store.chunks.get(d)
    except ChunkError as exc:
        kind = "missing" if isinstance(exc, MissingChunkError) else "corrupt"
        return ChunkProblem(d.hex, kind, str(exc), str(path), tuple(sorted(set(refs))), exc.base)
    except OSError as exc:
        return ChunkProblem(d.hex, "corrupt", f"unreadable: {exc}", str(path), tuple(sorted(set(refs))))
    return None


def _bases_exist(store: Store, d: Digest) -> None:
    """Quick check of a delta chunk: its chain of bases is present (headers read, not contents)."""
    cur = d
    for _ in range(delta.MAX_DEPTH_LIMIT):
        base = store.chunks.link(cur)[0]
        if base is None:
            return
        if not store.chunks.exists(base):
            raise MissingChunkError(f"chunk {d} cannot be decoded: its base {base} is missing: "
                                    f"{store.chunks.where(base)}", digest=d.hex,
                                    path=store.chunks.where(d), base=base.hex)
        cur = base
