"""Host bytes of DCP write items: any tensor (CUDA, non-contiguous, conjugate views, 0-d) or a
BYTE_IO buffer, as a read-only memoryview of C-order little-endian bytes, plus its chunk spans.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from .. import chunking, dtypes
from ..errors import CasckptError
from .meta import dtype_name, item_key

# NOTE: copies of CUDA (or non-contiguous) tensors are made this many bytes at a time, so the
# extra host memory of a save stays bounded whatever the size of the state.
HOST_BATCH_BYTES = 256 << 20

if sys.byteorder != "little":  # the store format is little-endian; torch CPU memory is native
    raise ImportError("casckpt's DCP layer needs a little-endian host")


@dataclass(frozen=True, slots=True)
class Layout:
    """What a write item stores: manifest key, dtype name, shape, and chunk spans of its bytes."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]

    @property
    def group(self) -> int:
        dt = dtypes.lookup(self.dtype)
        return dt.itemsize if dt.floating else 0

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.spans)


def write_key(item: WriteItem) -> str:
    fqn = item.index.fqn
    if item.type == WriteItemType.BYTE_IO:
        return item_key(fqn)
    td = item.tensor_data
    chunk = td.chunk
    if chunk.sizes == td.size and "@" not in fqn and not any(chunk.offsets):  # NOTE: item_key's rule, fast
        return fqn
    return item_key(fqn, chunk.offsets, chunk.sizes, td.size)


def layout(item: WriteItem, chunk_size: int, nbytes: int | None = None) -> Layout:
    """Chunk spans of an item. Row shards that span every trailing dimension are cut on the
    tensor's global row grid (``row0`` = the shard's first global row); see docs/FORMAT.md."""
    key = write_key(item)
    if item.type == WriteItemType.BYTE_IO:
        shape = (nbytes,)
        return Layout(key, "bytes", shape, tuple(chunking.spans(shape, 1, chunk_size)))
    td = item.tensor_data
    name, itemsize = _dtype(td.properties.dtype)
    shape = tuple(map(int, td.chunk.sizes))
    full_rows = len(shape) >= 1 and shape[1:] == tuple(map(int, td.size[1:]))
    row0 = int(td.chunk.offsets[0]) if full_rows else 0
    return Layout(key, name, shape, tuple(chunking.spans(shape, itemsize, chunk_size, row0=row0)))


_DTYPES: dict[torch.dtype, tuple[str, int]] = {}


def _dtype(dt: torch.dtype) -> tuple[str, int]:
    """The store's name and item size of a torch dtype (a dict look-up after the first time)."""
    out = _DTYPES.get(dt)
    if out is None:
        name = dtype_name(dt)
        out = _DTYPES[dt] = (name, dtypes.lookup(name).itemsize)
    return out


# dtypes whose tensors numpy can view (it has no bfloat16 or float8)
_NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.complex64, torch.complex128,
                           torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool})


def host_bytes(data: torch.Tensor | io.BytesIO, item: WriteItem) -> memoryview:
    """C-order bytes of ``data`` on the host, without a copy when it is already a contiguous CPU
    tensor. CUDA tensors should go through :func:`host_batches` so copies stay bounded."""
    if type(data) is torch.Tensor and data.dtype in _NUMPY_DTYPES:
        # NOTE: most tensors, in one call: numpy() refuses a tensor that is not on the CPU, not
        # dense, requires grad or has a lazy conj/neg bit, and the cast one not C-contiguous;
        # those take the checks below, which copy or say what is wrong.
        try:
            view = memoryview(data.numpy()).cast("B")
        except (RuntimeError, TypeError):
            pass
        else:
            _check_shape(data, item)
            return view.toreadonly()
    if isinstance(data, io.BytesIO):
        return data.getbuffer().toreadonly()
    if isinstance(data, torch.Tensor) and data.is_quantized:
        raise CasckptError(f"casckpt cannot store {item.index.fqn!r}: quantized tensors ({data.dtype}) are "
                           "not supported; save t.int_repr() with t.q_scale() and t.q_zero_point(), "
                           "or t.dequantize()")
    if not isinstance(data, torch.Tensor) or data.layout != torch.strided:
        raise CasckptError(f"casckpt cannot store {item.index.fqn!r}: a {type(data).__name__} "
                           f"({getattr(data, 'layout', '')}) is not a dense tensor")
    _check_shape(data, item)
    # NOTE: each check costs a fraction of the no-op call it saves (many small tensors feel it)
    t = data.detach() if data.requires_grad else data
    if not t.is_cpu:
        t = t.to("cpu")
    if t.is_conj() or t.is_neg() or not t.is_contiguous():
        t = t.resolve_conj().resolve_neg().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    if t.dim() != 1:
        t = t.view(-1)
    return memoryview(t.view(torch.uint8).numpy()).toreadonly()


def _check_shape(data: torch.Tensor, item: WriteItem) -> None:
    expect = item.tensor_data.chunk.sizes
    if data.shape != expect and tuple(data.shape) != tuple(expect):  # NOTE: both torch.Size, mostly
        raise CasckptError(f"{item.index.fqn!r}: the planner resolved a tensor of shape "
                           f"{tuple(data.shape)} for a chunk of shape {tuple(expect)}")


def host_batches(items: Iterable[WriteItem], resolve: Callable[[WriteItem], object], *,
                 budget: int = HOST_BATCH_BYTES) -> Iterator[list[tuple[WriteItem, memoryview]]]:
    """Yield items with their host bytes in batches whose copies add up to about ``budget``.

    CUDA tensors of a batch are copied with ``non_blocking`` and one synchronise, so transfers
    overlap; a batch's copies are dropped once the consumer moves on to the next batch.
    """
    batch: list[tuple[WriteItem, object]] = []
    devices: set[torch.device] = set()
    held = 0
    for item in items:
        data = resolve(item)
        if isinstance(data, torch.Tensor) and data.is_cuda:  # NOTE: .device makes an object per call
            devices.add(data.device)
            data = data.detach().to("cpu", non_blocking=True)
            held += data.numel() * data.element_size()
        elif isinstance(data, torch.Tensor) and not data.is_contiguous():
            held += data.numel() * data.element_size()
        batch.append((item, data))
        if held >= budget:
            yield _materialise(batch, devices)
            batch, devices, held = [], set(), 0
    if batch:
        yield _materialise(batch, devices)


def _materialise(batch: list[tuple[WriteItem, object]],
                 devices: set[torch.device]) -> list[tuple[WriteItem, memoryview]]:
    # NOTE: the non_blocking copies must land before their bytes are read, on every device the
    # batch came from: a bare synchronize() waits for the current device only.
    for dev in devices:
        torch.cuda.synchronize(dev)
    return [(item, host_bytes(data, item)) for item, data in batch]
