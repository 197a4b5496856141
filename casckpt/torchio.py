"""torch's side of import and export (the one torch-only module outside :mod:`casckpt.dcp`):
reading ``torch.save`` files and DCP directories into arrays, and writing snapshots back as
either; the store's names of torch dtypes. :mod:`casckpt.transfer` imports it only when a torch
format is used.

Safety: DCP's ``.metadata`` is a pickle. Importing reads it with a restricted unpickler that
admits only the classes DCP metadata is made of (``torch.distributed.checkpoint.metadata``,
``_StorageInfo``, ``torch.Size``, torch dtypes, paths) and refuses everything else. DCP's
pickled non-tensor items (BYTE_IO) are stored as opaque ``bytes`` items, never unpickled, and
exported byte for byte. ``torch.save`` files are loaded with ``weights_only=True``; exports are
written through :func:`casckpt.fsutil.atomic_file` (fsynced, then renamed into place).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import dtypes, fsutil, nest
from .diff import groups
from .errors import CasckptError, ManifestError
from .manifest import Manifest, key_offsets
from .store import Store

Progress = Callable[[int, int], None]


# -- reading sources -------------------------------------------------------------------------------
def read_torch(src: Path):
    try:
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CasckptError(_torch_load_failure(src, exc)) from None
    if not isinstance(obj, dict):
        raise CasckptError(f"{src} holds a {type(obj).__name__}, not a state dict")
    arrays, names, paths = {}, {}, {}
    for key, path, value in nest.flatten(obj):
        paths[key] = path
        if isinstance(value, torch.Tensor):
            arrays[key], names[key] = _from_torch(value)
        else:
            buf = io.BytesIO()
            torch.save(value, buf)
            arrays[key], names[key] = np.frombuffer(buf.getvalue(), np.uint8), "bytes"
    # NOTE: the nesting, so that export rebuilds it (a dotted name alone is ambiguous: "model.0.w")
    return arrays, names, {"paths": paths} if any(p != [k] for k, p in paths.items()) else {}


def _torch_load_failure(src: Path, exc: BaseException) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused ``src`` (torch's own message is
    a page long, with the reason near its end)."""
    with open(src, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither a zip archive nor a pickle
        return (f"{src} is not a torch.save file (it is neither a zip archive nor a pickle); "
                "import reads DCP directories, .safetensors and torch.save files")
    text = str(exc)
    why = text.partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0] or text
    return f"{src} cannot be loaded with torch.load(weights_only=True): {' '.join(why.split())[:300]}"


def load_value(key: str, data: bytes):
    """A non-tensor value stored as ``torch.save`` bytes, loaded without running code."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CasckptError(f"item {key!r} cannot be loaded with weights_only=True: {str(exc)[:300]}") from None


def read_dcp(src: Path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    reader = _reader_class()(str(src))
    md = reader.read_metadata()
    state = {fqn: (b"" if isinstance(t, BytesStorageMetadata) else torch.empty(tuple(t.size), dtype=t.properties.dtype))
             for fqn, t in md.state_dict_metadata.items()}
    planner = _planners()[1]()
    try:
        with _quiet():
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=True)
    except CheckpointException as exc:  # a BaseException: the command's handler would miss it
        first = next(iter(exc.failures.values()), (exc, None))[0]
        raise CasckptError(f"cannot read the DCP checkpoint {src}: {type(first).__name__}: {first}") from None
    arrays, names = {}, {}
    for fqn, value in state.items():
        if isinstance(value, torch.Tensor):
            arrays[fqn], names[fqn] = _from_torch(value)
        else:
            arrays[fqn], names[fqn] = np.frombuffer(planner.raw[fqn], np.uint8), "bytes"
    return arrays, names, {}


def assemble(store: Store, m: Manifest, progress: Progress | None) -> dict:
    """FQN → torch tensor (shards of a DCP snapshot put together) or :class:`RawBytes`."""
    total, done = m.logical_bytes, 0
    out = {}
    for fqn, keys in groups(m).items():
        arrays = {k: store.read_array(m, k) for k in keys}
        whole = arrays[keys[0]] if keys == [fqn] else _join(fqn, keys, arrays)
        out[fqn] = _to_torch(m.items[keys[0]].dtype, whole)
        done += sum(m.items[k].nbytes for k in keys)
        if progress:
            progress(done, total)
    return out


def _join(fqn: str, keys: list[str], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Put a tensor's shards (``fqn@o0,o1,...``) back together; the global shape is their extent."""
    offsets = {k: key_offsets(k, arrays[k].ndim) for k in keys}
    ndim = {len(o) for o in offsets.values()} | {a.ndim for a in arrays.values()}
    if len(ndim) != 1 or len({a.dtype for a in arrays.values()}) != 1:
        raise CasckptError(f"shards of {fqn!r} disagree on rank or dtype")
    shape = tuple(max(o[d] + arrays[k].shape[d] for k, o in offsets.items()) for d in range(ndim.pop()))
    first = arrays[keys[0]]
    full = np.empty(shape, dtype=first.dtype)
    for k, o in offsets.items():
        full[tuple(slice(a, a + n) for a, n in zip(o, arrays[k].shape))] = arrays[k]
    return full


def write_dcp(tensors: dict, dst: Path) -> int:
    import torch.distributed.checkpoint as dcp

    with _quiet():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(dst)), planner=_planners()[0](), no_dist=True)
    return sum(f.stat().st_size for f in dst.iterdir())


def write_torch(tensors: dict, dst: Path, paths: dict | None) -> int:
    """``torch.save`` of the state dict, nested again as it was saved when the snapshot says how."""
    obj = {k: (load_value(k, v.data) if isinstance(v, RawBytes) else v)
           for k, v in tensors.items()}
    if paths:
        obj = nest.nest(obj, paths)
    with fsutil.atomic_file(dst, tmp_dir=dst.parent) as f:
        torch.save(obj, f)
    return dst.stat().st_size


@contextlib.contextmanager
def _quiet():
    """Silence DCP's warning that it runs in one process: that is what import/export asks for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


# -- torch <-> numpy, without copies where possible -------------------------------------------------
@dataclass(frozen=True, slots=True)
class RawBytes:
    """An opaque DCP BYTE_IO payload (``torch.save`` bytes), carried without unpickling."""

    data: bytes


def dtype_name(dt: torch.dtype) -> str:
    """The store's name of a torch dtype (the one such function: :mod:`casckpt.dcp` uses it too)."""
    name = str(dt).removeprefix("torch.")
    if name not in dtypes.DTYPES or name == "bytes":
        raise CasckptError(f"casckpt cannot store tensors of dtype {dt}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a store dtype name (ManifestError if this torch lacks it)."""
    dtypes.lookup(name)
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ManifestError(f"dtype {name!r} is not available in this torch")
    return dt


def _from_torch(t) -> tuple[np.ndarray, str]:
    name = dtype_name(t.dtype)
    t = t.detach().cpu().contiguous()
    flat = t.reshape(-1).view(torch.uint8).numpy()
    return flat.view(np.dtype(dtypes.lookup(name).numpy)).reshape(tuple(t.shape)), name


def _to_torch(name: str, arr: np.ndarray):
    if name == "bytes":
        return RawBytes(arr.tobytes())
    flat = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return flat.view(getattr(torch, name)).reshape(arr.shape)


# -- DCP plumbing: safe metadata, raw BYTE_IO --------------------------------------------------------
_DCP_MODULES = {"torch.distributed.checkpoint.metadata"}
_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
            ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
            ("torch.distributed.checkpoint.filesystem", "SerializationFormat"),
            ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath")}


class SafeMetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP ``.metadata`` and nothing else: any other global is refused."""

    def find_class(self, module: str, name: str):
        # NOTE: a dotted name walks attributes ("os.system" through a module that imports os),
        # so only plain names pass, and in DCP's module only the classes it defines itself.
        if "." not in name:
            if (module, name) in _ALLOWED:
                return super().find_class(module, name)
            if module in _DCP_MODULES and not name.startswith("__"):
                cls = super().find_class(module, name)
                if isinstance(cls, type) and cls.__module__ == module:
                    return cls
            if module == "torch" and isinstance(getattr(torch, name, None),
                                                (torch.dtype, torch.memory_format, torch.layout)):
                return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which casckpt does not allow")


def _check_data_file(name: object, source: Path) -> None:
    """A data file DCP metadata names must sit in the checkpoint folder itself: FileSystemReader
    joins the name to the folder as it is, so "../x" or "/etc/x" would read outside it."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name):
        raise CasckptError(f"{source} names a data file outside its folder: {str(name)[:80]!r}")


def _reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs) -> Metadata:
            path = Path(self.path) / ".metadata"
            try:
                md = SafeMetadataUnpickler(io.BytesIO(path.read_bytes())).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
                raise CasckptError(f"{path} is not DCP metadata casckpt can read safely: {exc}") from None
            if not isinstance(md, Metadata):
                raise CasckptError(f"{path} does not hold DCP Metadata")
            for info in (md.storage_data or {}).values():
                _check_data_file(getattr(info, "relative_path", None), path)
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return SafeFileSystemReader


def _planners():
    from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    class RawSavePlanner(DefaultSavePlanner):
        def transform_object(self, write_item, object):
            if write_item.type == WriteItemType.BYTE_IO and isinstance(object, RawBytes):
                return io.BytesIO(object.data)
            return super().transform_object(write_item, object)

    class RawLoadPlanner(DefaultLoadPlanner):
        def __init__(self) -> None:
            super().__init__()
            self.raw: dict[str, bytes] = {}

        def load_bytes(self, read_item, value) -> None:
            self.raw[read_item.dest_index.fqn] = value.read()

    return RawSavePlanner, RawLoadPlanner
