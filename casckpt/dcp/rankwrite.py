"""What one rank does in CasWriter.write_data, and how the coordinator turns the ranks' reports
into manifest items: fetch host bytes of the items that have chunks to write, write them (packed
when small, found inside stored chunks when resharded), and describe every item once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torch.distributed.checkpoint.planner import SavePlanner, WriteItem
from torch.distributed.checkpoint.storage import WriteResult

from .. import packs
from ..chunks import ChunkInfo
from ..digest import Digest, digest_of
from ..errors import CasckptError
from ..manifest import ChunkRef, Item
from ..store import ChunkTask, Store
from .host import Layout, host_batches, layout, write_key
from .planner import ItemDigests, RankPlan
from .reshard import matching


class RankWrite:
    """``write_data`` of one rank: fetch host bytes of items that have chunks to write, write
    them, and describe every item (layout, digests, new chunk infos) for the coordinator."""

    def __init__(self, store: Store, plan: RankPlan, is_coordinator: bool, attempted: set[bytes]) -> None:
        self.store, self.plan, self.is_coordinator = store, plan, is_coordinator
        self.infos: dict[bytes, ChunkInfo] = {}  # chunks this rank wrote (or found unindexed)
        self.covered: dict[bytes, tuple] = {}  # new chunks found inside stored ones: not written
        self.packed: dict[bytes, tuple[bytes, int]] = {}  # new small chunks put in packs: (pack, offset)
        self.attempted = attempted  # every chunk this rank set out to write (the writer's, kept)

    def run(self, items: list[WriteItem], planner: SavePlanner) -> list[WriteResult]:
        """Write what the plan gives this rank; one WriteResult (for the first item) reports it all.

        NOTE: items hashed at planning need no result of their own: the coordinator kept their
        layout and digests from the plans (a WriteResult per item cost more than hashing it).
        """
        known = self.plan.digests or {}
        write = self.plan.write
        need = []
        for item in items:
            it = known.get(write_key(item))
            if it is None or not write.isdisjoint(it.digests):
                need.append(item)
        hashed: list[tuple[Layout, tuple[bytes, ...]]] = []
        for batch in host_batches(need, planner.resolve_data):
            hashed.extend(self._write_batch(batch, known))
        if not items:
            return []
        out = RankOut(hashed, {d: i.to_tuple() for d, i in self.infos.items()}, self.packed, self.covered)
        return [WriteResult(index=items[0].index, size_in_bytes=sum(i.stored_len for i in self.infos.values()),
                            storage_data=out)]

    def _write_batch(self, batch, known) -> list[tuple[Layout, tuple[bytes, ...]]]:
        """Write a batch's new chunks; the layout and digests of the items hashed here."""
        tasks: dict[bytes, ChunkTask] = {}
        described = []
        hashed = []
        for item, data in batch:
            it = known.get(write_key(item))
            if it is not None:
                lay, digs = it.layout, it.digests
                if data.nbytes != lay.nbytes:
                    raise CasckptError(f"{lay.key!r} changed size between planning and writing")
                todo = [d in self.plan.write for d in digs]
            else:
                lay = layout(item, self.store.config.chunk_size, data.nbytes)
                digs = tuple(d.raw for d in self.store.hash_spans(data, list(lay.spans)))
                todo = [d not in self.plan.stored for d in digs]
                hashed.append((lay, digs))
            for d, (o, n), t in zip(digs, lay.spans, todo):
                if t and d not in self.infos and d not in tasks:
                    b = self.plan.bases.get(d)
                    tasks[d] = ChunkTask(Digest(d), data[o:o + n], lay.group, b and (Digest(b[0]), b[1]))
            described.append((item, lay, digs))
        if self.is_coordinator and self.plan.digests is None:
            have = {d.raw for d in self.store.stored(t.digest for t in tasks.values())}
            tasks = {d: t for d, t in tasks.items() if d not in have}
        if self.plan.covers:
            tasks = self._drop_covered(tasks)
        packed = self._pack(tasks, described) if self.plan.digests is not None else {}
        self.attempted.update(tasks)
        written = self.store.write_chunks(list(tasks.values()))
        self.infos.update({d.raw: i for d, i in written.items()})
        self.packed.update(packed)
        return hashed

    def _pack(self, tasks: dict[bytes, ChunkTask], described) -> dict[bytes, tuple[bytes, int]]:
        """Move the new chunks of small items out of ``tasks`` into packs (new tasks in their
        place): member digest → (pack digest, offset)."""
        small = packs.limit(self.store.config.chunk_size)
        # NOTE: one set of packs per byte grouping (element size of floats, else 0), so a pack
        # compresses as its members would have
        groups: dict[int, dict[bytes, memoryview]] = {}
        for _, lay, digs in described:
            if lay.nbytes < small:
                for d in digs:
                    if d in tasks:
                        groups.setdefault(tasks[d].group, {}).setdefault(d, tasks[d].data)
        out: dict[bytes, tuple[bytes, int]] = {}
        seen: set[bytes] = set()
        for group, members in groups.items():
            members = {d: v for d, v in members.items() if d not in seen}  # the same bytes in two groups
            seen.update(members)
            for data, offs in packs.build(list(members.items()), self.store.config.chunk_size):
                if len(offs) < 2:
                    continue  # NOTE: a pack of one would be that chunk itself: store it whole
                pack = digest_of(data)
                tasks[pack.raw] = ChunkTask(pack, memoryview(data), group)
                out.update({d: (pack.raw, o) for d, o in offs.items()})
        for d in out:
            del tasks[d]
        return out

    def _drop_covered(self, tasks: dict[bytes, ChunkTask]) -> dict[bytes, ChunkTask]:
        """``tasks`` less the chunks whose bytes equal the stored parts the plan names for them
        (compared in parallel; each stored chunk decoded and verified once per batch)."""
        cand = [t for d, t in tasks.items() if d in self.plan.covers]
        if not cand:
            return tasks
        decoded: dict[bytes, memoryview] = {}

        def get(d: bytes) -> memoryview:
            if d not in decoded:
                decoded[d] = self.store.chunks.get(Digest(d))
            return decoded[d]

        same = self.store.pipeline.map(lambda t: matching(t.data, self.plan.covers[t.digest.raw], get), cand)
        for t, equal in zip(cand, same):
            if equal:
                self.covered[t.digest.raw] = self.plan.covers[t.digest.raw]
                del tasks[t.digest.raw]
        return tasks


@dataclass(frozen=True, slots=True)
class RankOut:
    """``WriteResult.storage_data`` from CasWriter, one per rank: the layout and digests of the
    items it hashed itself (without digests from planning), chunk infos of the files it wrote (or
    found unindexed), member digest → (pack, offset) of the small chunks it packed, and new
    chunks it found inside stored ones (see covered_refs)."""

    hashed: list[tuple[Layout, tuple[bytes, ...]]]
    new: dict[bytes, tuple]
    packed: dict[bytes, tuple[bytes, int]]
    covered: dict[bytes, tuple]


def collect(results: list[list[WriteResult]], planned: dict[str, ItemDigests],
             known: dict[bytes, tuple[bytes, int]]) -> tuple[dict[str, Item], dict[Digest, ChunkInfo], dict, dict]:
    """The manifest items (those ``planned`` and those the ranks hashed), refs into packs for
    members of packs (those ``known`` at planning and those the ranks packed now); the new
    chunks' infos; the members packed now; and new chunks found inside stored ones."""
    outs = [wr.storage_data for rank_results in results for wr in rank_results]
    new: dict[Digest, ChunkInfo] = {}
    packed: dict[bytes, tuple[bytes, int]] = {}
    covered: dict[bytes, tuple] = {}  # see covered_refs
    for out in outs:
        new.update({Digest(d): ChunkInfo.from_tuple(info) for d, info in out.new.items()})
        packed.update(out.packed)
        covered.update(out.covered)
    members = {**known, **packed} if packed else known
    items = {k: _item(it.layout, it.digests, members) for k, it in planned.items()}
    items.update({lay.key: _item(lay, digs, members) for out in outs for lay, digs in out.hashed})
    return items, new, packed, covered


def _item(lay: Layout, digests: tuple[bytes, ...], packed: dict[bytes, tuple[bytes, int]]) -> Item:
    """An item's manifest entry; refs to members of packs point into the packs (casckpt.packs)."""
    if len(digests) == 1:  # NOTE: most items, every packed one: no per-ref lists
        ref = packed.get(digests[0])
        if ref is None:
            return Item.single(lay.dtype, lay.shape, digests[0], lay.spans[0][1])
        return Item.single(lay.dtype, lay.shape, ref[0], lay.spans[0][1], ref[1])
    lengths = np.array([n for _, n in lay.spans], np.int64)
    if not packed or packed.keys().isdisjoint(digests):
        return Item.columnar(lay.dtype, lay.shape, b"".join(digests), lengths)
    refs = [packed.get(d, (d, 0)) for d in digests]  # NOTE: a whole chunk is its own part from 0
    return Item.columnar(lay.dtype, lay.shape, b"".join(p for p, _ in refs), lengths,
                         np.array([o for _, o in refs], np.int64))


def covered_refs(items: dict[str, Item], covered: dict[bytes, tuple]) -> dict[str, Item]:
    """Items whose new chunks a rank found inside stored ones (casckpt.dcp.reshard), each such
    ref replaced by refs to those parts. A chunk may sit in several ranks' items (a replicated
    tensor): every item that holds it refers to the parts."""
    if not covered:
        return items
    out = dict(items)
    for key, it in items.items():
        if not any(c.digest.raw in covered for c in it.chunks):
            continue
        refs = []
        for c in it.chunks:
            parts = covered.get(c.digest.raw)  # NOTE: never a stored chunk: it was not written
            refs.extend([ChunkRef(Digest(d), n, o) for d, o, n in parts] if parts else [c])
        out[key] = Item(it.dtype, it.shape, tuple(refs))
    return out
