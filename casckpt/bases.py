"""The store's side of delta chunks: choosing bases, getting their bytes, keeping the links whole.

:class:`DeltaWrites` is a part of :class:`casckpt.Store` (kept here so store.py stays about the
store): which indexed chunk each new chunk is a delta against (:meth:`delta_bases`), the base
bytes a writer needs (cache or store), what a save remembers for the next one, the bases a commit
must index, and the transitive closure of bases that gc, verify, ls and reindex follow.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Iterable, Mapping

from . import config as config_mod, delta
from .chunks import ChunkInfo
from .codec import CodecConfig
from .delta import DeltaConfig
from .digest import Digest
from .errors import CasckptError, ChunkError, SnapshotNotFoundError

if TYPE_CHECKING:
    from .manifest import Item
    from .saving import ChunkTask

log = logging.getLogger("casckpt")


class DeltaWrites:
    """Delta-chunk methods of :class:`casckpt.Store` (a mixin: it uses the store's config,
    index, chunk directory and root)."""

    def _delta_base(self, t: ChunkTask, cfg: CodecConfig) -> tuple[tuple | None, int | None]:
        """``(base, streak)``: the base (digest, depth, raw bytes) to store ``t`` as a delta
        against, if it pays; and, when no delta was made because none has paid for a while or
        this one was hopeless, the length of that streak (see :class:`casckpt.delta.BaseCache`)."""
        if t.base is None or not self.config.delta.enabled:
            return None, None
        streak = delta.CACHE.skip(self.config.store_id, t.base[0])
        if streak and streak % delta.BaseCache.RETRY:
            return None, streak + 1
        base = self._base_bytes(t)
        if base is None:
            return None, None
        ratio = delta.sample_ratio(t.data, base[2], group=t.group, config=cfg)
        if ratio <= delta.MIN_GAIN:
            return base, None
        return None, (streak or 0) + 1 if ratio >= delta.HOPELESS else None

    def _remember(self, t: ChunkTask, info: ChunkInfo, streak: int | None) -> None:
        """Keep a copy of a new chunk that can be a base of the next save, or note the streak of
        hopeless deltas it continues (see :class:`casckpt.delta.BaseCache`)."""
        if not self.config.delta.enabled:
            return
        if streak is not None and info.base is None:
            delta.CACHE.refuse(self.config.store_id, t.digest, streak)
        elif self.config.delta.max_depth > 1 and info.depth < self.config.delta.max_depth:
            # a chain: this chunk is the next save's base (with max_depth 1, bases are keys,
            # cached when first read back, so a cold save copies nothing)
            delta.CACHE.put(self.config.store_id, t.digest, t.data)

    def _base_bytes(self, t: ChunkTask) -> tuple[Digest, int, bytes] | None:
        """The base of a delta-to-be with its raw bytes: from the process's base cache, else read
        back from the store (verified) and cached. A base that cannot be read is no base: the
        chunk is stored whole and the save goes on."""
        d, depth = t.base
        raw = delta.CACHE.get(self.config.store_id, d)
        if raw is None:
            try:
                raw = self.chunks.get(d)
            except ChunkError as exc:
                log.warning("casckpt: delta base unreadable, storing chunk %s whole: %s", t.digest, exc)
                return None
            delta.CACHE.put(self.config.store_id, d, raw, copy=False)  # a fresh buffer of our own
        return d, depth, raw

    def _upgrade_format(self) -> None:
        config_mod.upgrade(self.backend, sync=self.sync)
        self.config = dataclasses.replace(self.config, version=config_mod.VERSION)

    def delta_bases(self, candidates: Mapping[Digest, Digest]) -> dict[Digest, tuple[Digest, int]]:
        """For new chunks, the base each should be a delta against, from ``candidates`` (new
        digest → the chunk at the same place in the newest earlier snapshot), following the
        store's chain policy (:func:`casckpt.delta.choose_base`). Only indexed, hence durable,
        chunks become bases (coordinator only: it reads the index)."""
        if not self.config.delta.enabled or not candidates:
            return {}
        links = {d: (i.base, i.depth) for d, i in self.index.get_many(set(candidates.values())).items()}

        def lookup(d: Digest):
            if d not in links:
                info = self.index.get(d)
                links[d] = None if info is None else (info.base, info.depth)
            return links[d]

        out = {}
        for new, cand in candidates.items():
            if cand != new:
                chosen = delta.choose_base(cand, lookup, self.config.delta.max_depth)
                # NOTE: object storage trusts its cache (kept coherent with gc): no HEAD per chunk
                if chosen is not None and (self.backend.local_path is None or self.chunks.exists(chosen[0])):
                    out[new] = chosen
        # NOTE: a base must be durable: one a sync=False save left unsynced is no base for a
        # save that syncs (nor, after a reboot, for any save; see Index, ``unsynced``).
        durable = self.index.has_many({b for b, _ in out.values()}, synced_only=self.sync)
        return {n: b for n, b in out.items() if b[0] in durable}

    def _with_bases(self, new: Mapping[Digest, ChunkInfo]) -> dict[Digest, ChunkInfo]:
        """``new`` plus the bases its delta chunks need that the index lacks (a delta found on
        disk, left by a crash, whose base has lost its entry since): verified, then synced and
        indexed with the rest, so an indexed delta always has an indexed base."""
        out = dict(new)
        todo = [i.base for i in new.values() if i.base is not None and i.base not in out]
        while todo:
            have = self.index.has_many(todo, synced_only=self.sync)
            todo = [b for b in todo if b not in have and b not in out]
            for b in todo:
                out[b] = self.chunks.check(b)
            todo = [out[b].base for b in todo if out[b].base is not None]
        return out

    def _with_delta_bases(self, tasks: list[ChunkTask], items: Mapping[str, Item]) -> list[ChunkTask]:
        """``tasks`` with the base each new chunk should be a delta against (see delta_bases)."""
        if not self.config.delta.enabled or not tasks:
            return tasks
        try:
            prev = self.manifest("latest")
        except CasckptError as exc:  # no snapshot yet, or a damaged newest manifest: no bases
            if not isinstance(exc, SnapshotNotFoundError):
                log.warning("casckpt: no delta bases for this save: %s", exc)
            return tasks
        bases = self.delta_bases(delta.same_place(prev.items, items))
        return [dataclasses.replace(t, base=bases.get(t.digest)) for t in tasks]

    def live(self, digests: Iterable[Digest], *, entries: Mapping[Digest, ChunkInfo] | None = None) -> set[Digest]:
        """``digests`` and every base they need, transitively: the chunks that must stay for
        snapshots referencing ``digests`` to load. Links come from the index (``entries``: its
        chunk table, if the caller has it already), or from a chunk file's header when the index
        has no entry (a missing file adds nothing)."""
        index = dict(self.index.chunks()) if entries is None else entries
        return delta.closure(digests, lambda d: index[d].base if d in index else self._header_base(d))

    def _header_base(self, d: Digest) -> Digest | None:
        try:
            return self.chunks.link(d)[0]
        except CasckptError:
            return None


def delta_config(cfg: DeltaConfig, enabled: bool | None, max_depth: int | None) -> DeltaConfig:
    if max_depth is not None and not 1 <= max_depth <= delta.MAX_DEPTH_LIMIT:
        raise CasckptError(f"max_depth must be between 1 and {delta.MAX_DEPTH_LIMIT}, got {max_depth!r}")
    return DeltaConfig(cfg.enabled if enabled is None else bool(enabled),
                       cfg.max_depth if max_depth is None else max_depth)
