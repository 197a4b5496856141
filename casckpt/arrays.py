"""The numpy API: save and load snapshots of plain arrays (no torch needed).

:class:`Arrays` is a part of :class:`casckpt.Store` (a mixin): ``put_arrays`` plans each array's
chunks and runs the write pipeline (:mod:`casckpt.saving`); ``get_arrays`` and ``read_item``
decode chunks into caller memory, in parallel, every digest checked.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

import numpy as np

from . import chunking, dtypes
from .digest import Digest
from .errors import ChunkError, SnapshotExistsError
from .lock import SHARED
from .manifest import ChunkRef, Item, Manifest, check_name, utc_now
from .pipeline import Tally
from .reclaim import reclaim
from .saving import ChunkTask, SaveStats


class Arrays:
    """numpy-array methods of :class:`casckpt.Store` (a mixin)."""

    def put_arrays(self, name: str, arrays: Mapping[str, np.ndarray], *, meta: dict | None = None,
                   overwrite: bool = False, dtype_names: Mapping[str, str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SaveStats:
        """Save numpy arrays as snapshot ``name``. Only chunks the store lacks are written.

        ``dtype_names`` gives the store dtype of items whose array only holds the bytes of a type
        numpy lacks (``{"w": "bfloat16"}`` with a uint16 array; ``"bytes"`` with uint8).
        ``progress(done, total)`` counts bytes hashed, then bytes of new chunks written.

        If the save fails, the chunk files it wrote are deleted at once when no other save runs
        (:mod:`casckpt.reclaim`), so a failure on a full disk does not keep the disk full."""
        attempted: set[Digest] = set()
        try:
            return self._put_arrays(name, arrays, meta, overwrite, dtype_names, progress, attempted)
        except Exception:
            reclaim(self, attempted)
            raise

    def _put_arrays(self, name: str, arrays: Mapping[str, np.ndarray], meta: dict | None, overwrite: bool,
                    dtype_names: Mapping[str, str] | None, progress: Callable[[int, int], None] | None,
                    attempted: set[Digest]) -> SaveStats:
        started = time.perf_counter()
        check_name(name)
        with self.lock(SHARED):
            if not overwrite and self.exists(name):
                raise SnapshotExistsError(f"snapshot {name!r} already exists in store {self.root}")
            items, tasks = {}, []
            tally = Tally(progress, sum(np.asarray(a).nbytes for a in arrays.values()))
            for key, arr in arrays.items():
                as_dtype = (dtype_names or {}).get(key)
                items[str(key)], item_tasks = self._plan_array(str(key), arr, as_dtype)
                tasks.extend(item_tasks)
                tally.add(items[str(key)].nbytes)
            have = self.stored(t.digest for t in tasks)
            attempted.update(t.digest for t in tasks if t.digest not in have)
            todo = self._with_delta_bases([t for t in tasks if t.digest not in have], items)
            new = self.write_chunks(todo, tally=tally)
            m = Manifest(name, utc_now(), self.config.chunk_size, items, meta or {})
            return self.commit(m, new, overwrite=overwrite, started=started)

    def _plan_array(self, key: str, arr: np.ndarray, as_dtype: str | None = None) -> tuple[Item, list[ChunkTask]]:
        arr = np.asarray(arr)
        dt = dtypes.from_numpy(arr.dtype) if as_dtype is None else dtypes.lookup(as_dtype)
        if as_dtype is not None and arr.dtype.newbyteorder("<") != np.dtype(dt.numpy):
            raise TypeError(f"item {key!r}: {as_dtype} is held as numpy {np.dtype(dt.numpy)}, got {arr.dtype}")
        data = np.require(arr, dtype=np.dtype(dt.numpy), requirements="C")  # keeps 0-d shapes
        view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")
        spans = chunking.spans(data.shape, dt.itemsize, self.config.chunk_size)
        digests = self.hash_spans(view, spans)
        group = dt.itemsize if dt.floating else 0
        item = Item(dt.name, tuple(data.shape), tuple(ChunkRef(d, n) for d, (_, n) in zip(digests, spans)))
        return item, [ChunkTask(d, view[o:o + n], group) for d, (o, n) in zip(digests, spans)]

    def read_item(self, item: Item, out: memoryview, *, key: str = "",
                  select: Iterable[int] | None = None) -> None:
        """Decode ``item``'s chunks (all, or the indices in ``select``) into ``out`` (its full size),
        verifying every digest, in parallel."""
        offsets = item.offsets()
        which = range(len(item.chunks)) if select is None else list(select)

        def read(i: int) -> None:
            c = item.chunks[i]
            self.chunks.get(c.digest, out=out[offsets[i]:offsets[i] + c.length], item=key)

        self.pipeline.map(read, list(which))

    def get_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Every item of snapshot ``name`` (or ``"latest"``) as a numpy array, bit-exact.

        Types numpy lacks (bfloat16, float8) come back as unsigned integers of the same width.
        """
        with self.reading():  # gc waits until every chunk is read
            m = self.manifest(name)
            return {key: self.read_array(m, key) for key in m.items}

    def read_array(self, m: Manifest, key: str) -> np.ndarray:
        """Item ``key`` of manifest ``m`` as a numpy array (as :meth:`get_arrays`), verified."""
        item = m.items[key]
        arr = np.empty(item.shape, dtype=np.dtype(dtypes.lookup(item.dtype).numpy))
        if arr.nbytes:
            try:
                self.read_item(item, memoryview(arr.reshape(-1).view(np.uint8)), key=key)
            except ChunkError as exc:
                raise exc.within(m.name, self.root) from None
        return arr
