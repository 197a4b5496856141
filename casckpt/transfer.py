"""Move snapshots in and out of standard formats: DCP directories, ``.safetensors``, ``torch.save``.

``import_snapshot`` ingests a file or directory as a new snapshot (deduplicated against the store
like any save); ``export_snapshot`` writes one in a format stock tools load. The torch formats
(DCP directories, ``torch.save``) are read and written by :mod:`casckpt.torchio`, imported only
when used, so this module and the rest of casckpt work without torch; safetensors is read and
written natively.

Safety: DCP's ``.metadata`` is a pickle. Importing reads it with a restricted unpickler that
admits only the classes DCP metadata is made of (``torch.distributed.checkpoint.metadata``,
``_StorageInfo``, ``torch.Size``, torch dtypes, paths) and refuses everything else. DCP's
pickled non-tensor items (BYTE_IO) are stored as opaque ``bytes`` items, never unpickled, and
exported byte for byte. ``torch.save`` files are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import nest
from . import safetensors_file as safetensors
from .diff import groups
from .errors import CasckptError
from .store import SaveStats, Store

FORMATS = ("dcp", "safetensors", "torch")
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ExportStats:
    snapshot: str
    format: str
    path: str
    items: int
    bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def detect_format(src: str | os.PathLike) -> str:
    """``dcp`` for a directory with ``.metadata``, ``safetensors`` by suffix, else ``torch``."""
    p = Path(src)
    if p.is_dir():
        if not (p / ".metadata").is_file():
            raise CasckptError(f"{p} is a directory without a DCP .metadata file")
        return "dcp"
    if not p.is_file():
        raise CasckptError(f"{p} does not exist")
    return "safetensors" if p.suffix == ".safetensors" else "torch"


@dataclass(frozen=True)
class Source:
    """A checkpoint read by :func:`read_source`, ready to import: arrays, store dtypes, meta."""

    arrays: dict
    names: dict
    meta: dict


def read_source(src: str | os.PathLike, *, format: str | None = None) -> Source:
    """Read (and so validate) the checkpoint at ``src`` without touching any store: the command
    reads first, so a file it cannot import leaves no store behind."""
    fmt = format or detect_format(src)
    read = {"dcp": _torchio("read_dcp"), "safetensors": _read_safetensors, "torch": _torchio("read_torch")}.get(fmt)
    if read is None:
        raise CasckptError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    arrays, names, meta = read(Path(src))
    return Source(arrays, names, {"import": {"format": fmt, "source": str(Path(src).absolute()), **meta}})


def import_snapshot(store: Store, name: str, src: str | os.PathLike | Source, *, format: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> SaveStats:
    """Store the checkpoint at ``src`` (a path, or a :class:`Source` already read) as snapshot
    ``name``; only chunks the store lacks are written. ``progress(done, total)`` follows the save
    (bytes hashed, then new bytes written)."""
    source = src if isinstance(src, Source) else read_source(src, format=format)
    return store.put_arrays(name, source.arrays, meta=source.meta, overwrite=overwrite, dtype_names=source.names,
                            progress=progress)


def export_snapshot(store: Store, name: str, dst: str | os.PathLike, *, format: str,
                    progress: Progress | None = None) -> ExportStats:
    """Write snapshot ``name`` to ``dst`` (which must not exist) in ``format``."""
    if format not in FORMATS:
        raise CasckptError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    dst = Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise CasckptError(f"{dst} already exists; export writes a new file or directory")
    with store.reading():  # the shared lock: gc cannot delete chunks while they are read
        m = store.manifest(name)
        if format == "safetensors":
            total = safetensors.write(store, m, dst, progress=progress)
        else:
            torchio = _torchio()
            tensors = torchio.assemble(store, m, progress)
            total = (torchio.write_dcp(tensors, dst) if format == "dcp"
                     else torchio.write_torch(tensors, dst, nest.paths_of(m.meta)))
    return ExportStats(m.name, format, str(dst.absolute()), len(groups(m)), total)


# -- reading sources -------------------------------------------------------------------------------
def _read_safetensors(src: Path):
    tensors, meta = safetensors.read(src)
    try:
        raw = set(json.loads(meta.get("casckpt.bytes", "[]")))
    except ValueError:
        raw = set()
    names = {k: ("bytes" if k in raw and t == "uint8" else t) for k, (t, _) in tensors.items()}
    return {k: a for k, (_, a) in tensors.items()}, names, {"metadata": meta}


def _torchio(name: str | None = None):
    """:mod:`casckpt.torchio` (or one of its functions), imported only when a torch format is
    used: importing this module must not import torch."""
    def late(*args):
        from . import torchio
        return getattr(torchio, name)(*args)

    if name is not None:
        return late
    from . import torchio
    return torchio
