"""Planners: DedupSavePlanner hashes chunks during local planning; SafeLoadPlanner loads byte
items without unpickling arbitrary objects. Also the plan payloads the writer exchanges."""

from __future__ import annotations

import dataclasses
import io
from collections import ChainMap
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.default_planner import (DefaultLoadPlanner, DefaultSavePlanner,
                                                          _validate_global_plan, create_default_global_save_plan)
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, Metadata, MetadataIndex, StorageMeta,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import ReadItem, SavePlan, WriteItem, WriteItemType
from torch.distributed.checkpoint._nested_dict import FLATTEN_MAPPING
from torch.distributed.checkpoint._traverse import set_element

from .. import gcpause
from ..digest import digest_of, raw_digest
from ..pipeline import Pipeline
from .host import Layout, host_batches, layout


INLINE_HASH = 64 << 10  # spans smaller than this are hashed in the planning thread


@dataclass
class CasStorageMeta(StorageMeta):
    """StorageMeta from :class:`CasWriter`: tells :class:`DedupSavePlanner` the store's chunk size."""

    casckpt_chunk_size: int = 0


@dataclass(frozen=True, slots=True)
class ItemDigests:
    """One write item's layout and the digest (raw 32 bytes) of each of its spans."""

    layout: Layout
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LocalDigests:
    """``SavePlan.storage_data`` of a local plan from DedupSavePlanner, keyed by item key."""

    chunk_size: int
    items: dict[str, ItemDigests]


@dataclass(frozen=True, slots=True)
class RankPlan:
    """``SavePlan.storage_data`` of a global plan, from CasWriter.prepare_global_plan.

    ``digests``: this rank's item digests from planning (None: hash in write_data).
    ``write``: new digests this rank writes (each new digest goes to exactly one rank).
    ``stored``: digests known to be stored (hints for ranks that hash in write_data).
    ``bases``: new digest → ``(base digest, base depth)``: write that chunk as a delta against
    the base (an indexed chunk at the same place in the latest snapshot; see docs/FORMAT.md).
    ``covers``: new digest → parts of stored chunks that may hold the same bytes (the latest
    snapshot saved on another shard layout): if they do, refer to them instead of writing it
    (see :mod:`casckpt.dcp.reshard`).
    """

    digests: dict[str, ItemDigests] | None
    write: frozenset[bytes]
    stored: frozenset[bytes]
    bases: dict[bytes, tuple[bytes, int]] = dataclasses.field(default_factory=dict)
    covers: dict[bytes, tuple] = dataclasses.field(default_factory=dict)


class DedupSavePlanner(DefaultSavePlanner):
    """DefaultSavePlanner that also hashes every item's chunks while planning locally.

    The digests travel in the local plan to the coordinator, where :class:`CasWriter` drops
    chunks the store already holds and gives each new chunk to exactly one rank. With any
    storage writer other than CasWriter it behaves exactly like DefaultSavePlanner. Plan
    caching is not supported (a cached plan would carry stale digests).
    """

    def __init__(self, *, flatten_state_dict: bool = True, flatten_sharded_tensors: bool = True,
                 dedup_save_to_lowest_rank: bool = False, workers: int | None = None) -> None:
        super().__init__(flatten_state_dict=flatten_state_dict, flatten_sharded_tensors=flatten_sharded_tensors,
                         dedup_save_to_lowest_rank=dedup_save_to_lowest_rank, enable_plan_caching=False)
        self.workers = workers
        self._chunk_size = 0

    def set_up_planner(self, state_dict, storage_meta: StorageMeta | None = None,
                       is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, storage_meta, is_coordinator)
        self._chunk_size = getattr(storage_meta, "casckpt_chunk_size", 0) or 0

    def create_local_plan(self) -> SavePlan:
        with gcpause.paused():
            plan = super().create_local_plan()
            if not self._chunk_size:
                return plan
            return dataclasses.replace(plan, storage_data=LocalDigests(self._chunk_size, self._hash(plan)))

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        with gcpause.paused():
            return super().create_global_plan(all_plans)

    def _create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        # NOTE: DefaultSavePlanner's, with the metadata and index hints built by global_save_plan
        # (DCP's copies every write item twice with dataclasses.replace: ~10 µs per item)
        plans, metadata = global_save_plan(self._dedup_save_plans(all_plans))
        if self.flatten_state_dict:
            metadata = dataclasses.replace(metadata, planner_data=dict(ChainMap(*(p.planner_data for p in plans))))
        errors = _validate_global_plan(plans, metadata)
        if errors:
            raise ValueError(f"Failed to validate global plan: {'; '.join(errors)[:500]}")
        return plans, metadata

    def _dedup_save_plans(self, all_plans: list[SavePlan]) -> list[SavePlan]:
        # NOTE: DCP's dedup drops items that several plans hold; one plan holds nothing twice, and
        # DCP builds index sets and a new plan for it anyway (a tenth of a second per 20k items).
        if len(all_plans) == 1:
            return all_plans
        return super()._dedup_save_plans(all_plans)

    def _hash(self, plan: SavePlan) -> dict[str, ItemDigests]:
        pipe = Pipeline(workers=self.workers)
        out: dict[str, ItemDigests] = {}
        try:
            for batch in host_batches(plan.items, self.resolve_data):
                lays = [(layout(item, self._chunk_size, data.nbytes), data) for item, data in batch]
                out.update(_digests(pipe, lays))
        finally:
            pipe.close()
        return out


_WRITE_ITEM_FIELDS = {"index", "type", "bytes_io_data", "tensor_data"}


def global_save_plan(plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
    """DCP's ``create_default_global_save_plan`` (the metadata of every item, and each shard
    item's index hint: its chunk's position in that metadata), equal in result, building each
    new write item directly. A WriteItem with fields this does not know goes to DCP's.

    A whole tensor's item is kept as planned: DCP would give it the hint 0, which nothing reads
    (only a ShardedTensor's shard is looked up by hint; hints are outside equality), and a new
    write item per tensor is most of this step for 20k small tensors."""
    if {f.name for f in dataclasses.fields(WriteItem)} != _WRITE_ITEM_FIELDS:
        return create_default_global_save_plan(plans)
    md: dict = {}
    out = []
    for plan in plans:
        items = []
        for item in plan.items:
            fqn = item.index.fqn
            if item.type != WriteItemType.SHARD and fqn in md:
                raise AssertionError(f"{fqn!r} is planned twice")
            if item.type == WriteItemType.BYTE_IO:
                md[fqn] = BytesStorageMetadata()
                items.append(item)
                continue
            td = item.tensor_data
            if td is None or td.chunk is None:
                raise AssertionError(f"tensor write item {fqn!r} has no tensor data or bounds")
            tmd = md.get(fqn)
            if tmd is None:
                tmd = md[fqn] = TensorStorageMetadata(properties=td.properties, size=td.size, chunks=[])
            if item.type == WriteItemType.SHARD:
                item = WriteItem(index=MetadataIndex(fqn, item.index.offset, len(tmd.chunks)), type=item.type,
                                 bytes_io_data=item.bytes_io_data, tensor_data=td)
            items.append(item)
            tmd.chunks.append(td.chunk)
        out.append(dataclasses.replace(plan, items=items))
    return out, Metadata(md)


def _digests(pipe: Pipeline, lays: list[tuple[Layout, memoryview]]) -> dict[str, ItemDigests]:
    """Digest of every span of a batch: spans of at least INLINE_HASH bytes in one parallel map
    (per-item maps of a few chunks each left the threads waiting on each other), smaller ones in
    this thread (handing a few KiB to a thread costs more than hashing them)."""
    jobs = [(data, o, n) for lay, data in lays for o, n in lay.spans if n >= INLINE_HASH]
    big = iter(pipe.map(lambda j: digest_of(j[0][j[1]:j[1] + j[2]]).raw, jobs))
    out = {}
    for lay, data in lays:
        spans = lay.spans
        if len(spans) == 1 and spans[0][1] < INLINE_HASH:  # NOTE: most items: the span is the item
            out[lay.key] = ItemDigests(lay, (raw_digest(data),))
        else:
            out[lay.key] = ItemDigests(lay, tuple(next(big) if n >= INLINE_HASH else raw_digest(data[o:o + n])
                                                  for o, n in spans))
    return out


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose byte items load with ``torch.load(weights_only=True)``.

    ``allow_pickle=True`` restores DCP's default (full unpickling: only for trusted stores).
    """

    def __init__(self, *, allow_pickle: bool = False, flatten_state_dict: bool = True,
                 flatten_sharded_tensors: bool = True, allow_partial_load: bool = False) -> None:
        super().__init__(flatten_state_dict=flatten_state_dict, flatten_sharded_tensors=flatten_sharded_tensors,
                         allow_partial_load=allow_partial_load)
        self.allow_pickle = allow_pickle

    def set_up_planner(self, state_dict, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self.not_loaded, self.casts = _mismatch(self.state_dict, metadata)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=not self.allow_pickle)
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:
            mappings: FLATTEN_MAPPING = self.mappings
            set_element(self.original_state_dict, mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _mismatch(flat: dict, metadata: Metadata | None) -> tuple[tuple[str, ...], dict[str, tuple[str, str]]]:
    """What a load into ``flat`` (a flattened template) leaves behind: saved FQNs the template has
    no place for (DCP skips them silently), and tensors whose dtype differs from the saved one
    (DCP casts them silently): ``{fqn: (saved dtype, template dtype)}``."""
    if metadata is None:
        return (), {}
    saved = metadata.state_dict_metadata
    casts = {}
    for fqn, value in flat.items():
        md = saved.get(fqn)
        if isinstance(md, TensorStorageMetadata) and isinstance(value, torch.Tensor) \
                and md.properties.dtype != value.dtype:
            casts[fqn] = (str(md.properties.dtype).removeprefix("torch."), str(value.dtype).removeprefix("torch."))
    return tuple(sorted(set(saved) - set(flat))), casts
