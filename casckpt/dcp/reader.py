"""CasReader: DCP StorageReader over a casckpt store; reads only the chunks a request overlaps."""

from __future__ import annotations

import io
import os
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from .. import checkpoint_id as ids, dtypes
from ..errors import CasckptError, ManifestError
from ..lock import SHARED
from ..manifest import Item, Manifest
from ..store import Store
from .meta import metadata_from_items, metadata_from_json, storage_key, torch_dtype

READ_BATCH_BYTES = 256 << 20


class CasReader(StorageReader):
    """Load a DCP checkpoint from snapshot ``snapshot`` (default ``"latest"``) of a casckpt store.

    ``store`` is a path or an open :class:`casckpt.Store`. The snapshot name comes from
    ``checkpoint_id`` when DCP passes one, else from ``snapshot=``; ``"latest"`` is the newest
    committed snapshot. Either may be a path as frameworks pass it (``/ckpt/run/step-100``:
    snapshot ``step-100`` of the store ``/ckpt/run``; ``store`` may then be omitted). Snapshots saved without DCP (``Store.put_arrays``) load too, each item as
    a whole tensor under its key.

    DCP's call order, and which ranks make each call:

    0. all ranks: ``reset(checkpoint_id)``, only when ``dcp.load`` got a ``checkpoint_id``.
    1. all ranks: ``read_metadata()``: reads the manifest and rebuilds DCP's Metadata from its
       JSON. "latest" is resolved from the snapshot files, without the LMDB index.
    2. all ranks: ``set_up_storage_reader(metadata, is_coordinator)``, ``prepare_local_plan``.
    3. coordinator: ``prepare_global_plan(plans)``: nothing to change.
    4. all ranks: ``read_data(plan, planner)``: for each ReadItem, reads and verifies only the
       chunks overlapping the requested region, copies it into ``planner.resolve_tensor`` and
       calls ``planner.commit_tensor``; byte items go to ``planner.load_bytes``.

    Each rank holds the store's shared lock from step 1 to the end of step 4 (restic's readers
    do the same), so a gc cannot delete the snapshot's chunks while they load; a failure, or
    ``reset``/``close``, releases it. A thread that already holds the lock (``casckpt.load``)
    takes it no second time.

    No rank opens the LMDB index: loading needs only manifests and chunk files. Nothing read
    from the store is unpickled by the reader (byte items are handed to the planner; use
    :class:`SafeLoadPlanner` or ``casckpt.load`` to keep those from unpickling arbitrary objects).
    """

    def __init__(self, store: Store | str | os.PathLike | None = None, *, snapshot: str = "latest") -> None:
        super().__init__()
        self._own = not isinstance(store, Store)
        self._given = None if store is None else store.root if isinstance(store, Store) else os.fspath(store)
        self._path = None if isinstance(store, Store) else self._given
        self._store: Store | None = None if self._own else store
        self.snapshot = snapshot
        if ids.is_path(snapshot):
            self._path, self.snapshot = ids.split(snapshot, self._given, allow_latest=True)
        self.load_id: str | None = None
        self.resolved: str | None = None
        self.metadata_error: BaseException | None = None
        self._manifest: Manifest | None = None
        self._metadata: Metadata | None = None
        self._lock_release: weakref.finalize | None = None

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self.release()
        if checkpoint_id is not None:
            path, self.snapshot = ids.split(checkpoint_id, self._given, allow_latest=True)
            if self._own and path != self._path:
                self.close()
                self._path = path
        self.load_id = uuid.uuid4().hex
        self.resolved = self._manifest = self._metadata = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return ids.is_valid(checkpoint_id, allow_latest=True)

    @property
    def checkpoint_id(self) -> str:
        return self.snapshot

    def read_metadata(self) -> Metadata:
        # NOTE: no **kwargs here: DCP would then retry with rank= and turn collectives off.
        try:
            store = self.store
            self._hold(store)
            self.resolved = store.resolve(self.snapshot)
            m = store.manifest(self.resolved)
            source = f"snapshot {m.name!r} in {store.root}"
            md = metadata_from_json(m.meta["dcp"], source) if "dcp" in m.meta else metadata_from_items(m.items)
            md.storage_meta = md.storage_meta or StorageMeta(checkpoint_id=m.name)
            md.storage_meta.load_id = self.load_id or uuid.uuid4().hex
        except BaseException as exc:
            self.metadata_error = exc  # DCP turns this into a plain AssertionError; casckpt.load re-raises it
            self.release()
            raise
        self._manifest, self._metadata = m, md
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self._metadata = metadata

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        plan.storage_data = self.resolved  # each rank resolved "latest" on its own: compare them
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        names = {p.storage_data for p in plans}
        if len(names) > 1:
            raise CasckptError(f"ranks resolved snapshot {self.snapshot!r} to different snapshots "
                               f"({', '.join(sorted(map(str, names)))}): a save committed during the "
                               "load; pass an explicit snapshot name")
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        try:
            self._hold(self.store)  # NOTE: a no-op after read_metadata; DCP may skip that on reuse
            return self._read_data(plan, planner)
        finally:
            self.release()  # the last call DCP makes on a reader

    def _read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        tensors = []
        for ri in plan.items:
            if ri.type == LoadItemType.BYTE_IO:
                key, item = self._item(ri)
                buf = bytearray(item.nbytes)
                self.store.read_item(item, memoryview(buf), key=key)
                planner.load_bytes(ri, io.BytesIO(buf))
            else:
                tensors.append(_Region.plan(ri, *self._item(ri)))
        for batch in _batches(tensors):
            self._read_batch(batch, planner)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    # -- helpers --------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            if self._path is None:
                raise CasckptError(f"no store for snapshot {self.snapshot!r}: pass a store to CasReader "
                                   "or a path checkpoint_id such as '/ckpt/run/step-100'")
            self._store = Store.open(self._path)
        return self._store

    def _hold(self, store: Store) -> None:
        if self._lock_release is None and not store.holds_lock:
            lock = store.lock(SHARED).acquire()
            self._lock_release = weakref.finalize(self, lock.release)

    def release(self) -> None:
        """Release the store's shared lock if this reader holds it."""
        if self._lock_release is not None:
            self._lock_release()
            self._lock_release = None

    def close(self) -> None:
        self.release()
        if self._own and self._store is not None:
            self._store.close()
            self._store = None

    def _item(self, ri: ReadItem) -> tuple[str, Item]:
        fqn = ri.storage_index.fqn
        md = self._metadata.state_dict_metadata.get(fqn)
        key = storage_key(fqn, ri.storage_index.offset, md) if md is not None else fqn
        item = self._manifest.items.get(key) if self._manifest else None
        if item is None:
            raise ManifestError(f"snapshot {self.resolved!r} has no item {key!r}")
        return key, item

    def _read_batch(self, batch: list["_Region"], planner: LoadPlanner) -> None:
        targets = [planner.resolve_tensor(r.ri).detach() for r in batch]
        # NOTE: a whole item loading into a contiguous CPU tensor of its dtype (the usual case
        # when the sharding has not changed) decodes straight into the target: no staging copy.
        direct = [r.use_target(t) for r, t in zip(batch, targets)]
        for r, d in zip(batch, direct):
            if not d:
                r.alloc()
        jobs = [(r, i) for r in batch for i in r.select]
        self.store.pipeline.map(lambda j: j[0].decode(self.store, j[1]), jobs)
        for r, target, d in zip(batch, targets, direct):
            if not d:
                src = r.view()
                if tuple(target.shape) != tuple(src.shape):
                    raise CasckptError(f"{r.key!r}: the planner's target has shape {tuple(target.shape)}, "
                                       f"the request {tuple(src.shape)}")
                target.copy_(src)
            planner.commit_tensor(r.ri, target)
            r.buf = None


@dataclass
class _Region:
    """The part of a stored item one ReadItem asks for, and the chunks that overlap it."""

    ri: ReadItem
    key: str
    item: Item
    select: list[int]
    base: int      # byte offset in the item of the first selected chunk
    nbytes: int    # bytes from ``base`` to the end of the last selected chunk
    start: int     # element offset (from ``base``) of the region's first element
    offs: list[int]
    buf: torch.Tensor | None = None

    @classmethod
    def plan(cls, ri: ReadItem, key: str, item: Item) -> "_Region":
        isz = dtypes.lookup(item.dtype).itemsize
        shape, so, ln = item.shape, list(ri.storage_offsets), list(ri.lengths)
        if len(so) != len(shape) or any(o + n > s for o, n, s in zip(so, ln, shape)):
            raise ManifestError(f"item {key!r} of shape {shape} cannot hold the region at {so} of {ln}")
        strides = _c_strides(shape)
        if any(n == 0 for n in ln):
            return cls(ri, key, item, [], 0, 0, 0, [])
        lo = sum(o * st for o, st in zip(so, strides)) * isz
        hi = (sum((o + n - 1) * st for o, n, st in zip(so, ln, strides)) + 1) * isz
        offs = item.offsets()
        sel = [i for i, c in enumerate(item.chunks) if offs[i] < hi and offs[i] + c.length > lo]
        base = offs[sel[0]]
        if base % isz:
            raise ManifestError(f"item {key!r} has a chunk boundary inside an element")
        nbytes = offs[sel[-1]] + item.chunks[sel[-1]].length - base
        return cls(ri, key, item, sel, base, nbytes, lo // isz - base // isz, offs)

    def use_target(self, target: torch.Tensor) -> bool:
        """Decode into ``target`` itself if it is exactly this whole item, contiguous, in memory."""
        whole = (self.select == list(range(len(self.item.chunks))) and self.start == 0
                 and tuple(self.ri.lengths) == tuple(self.item.shape))
        if not (whole and self.select and target.device.type == "cpu" and target.is_contiguous()
                and target.dtype == torch_dtype(self.item.dtype)
                and tuple(target.shape) == tuple(self.item.shape)):
            return False
        self.buf = target.reshape(-1)  # a view: target is contiguous
        return True

    def alloc(self) -> None:
        isz = dtypes.lookup(self.item.dtype).itemsize
        self.buf = torch.empty(-(-self.nbytes // isz), dtype=torch_dtype(self.item.dtype))

    def decode(self, store: Store, i: int) -> None:
        raw = memoryview(self.buf.view(torch.uint8).numpy())
        c, off = self.item.chunks[i], self.offs[i] - self.base
        store.read_ref(c, raw[off:off + c.length], item=self.key)

    def view(self) -> torch.Tensor:
        ln = tuple(self.ri.lengths)
        if not self.select:
            return torch.empty(ln, dtype=torch_dtype(self.item.dtype))
        return self.buf.as_strided(ln, _c_strides(self.item.shape), self.start)


def _c_strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def _batches(regions: list[_Region]):
    batch, held = [], 0
    for r in regions:
        batch.append(r)
        held += r.nbytes
        if held >= READ_BATCH_BYTES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch
