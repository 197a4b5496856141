"""The ``.safetensors`` file format, read and written natively (no safetensors or torch needed).

Layout: an 8-byte little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, padded with spaces to a multiple
of 8), then the tensors' bytes, contiguous, little-endian, C order, offsets relative to the data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from . import dtypes, fsutil
from .errors import CasckptError
from .manifest import Manifest

CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
         "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
         "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
         "C64": "complex64"}
NAMES = {v: k for k, v in CODES.items()}
MAX_HEADER = 100_000_000  # the safetensors library's limit


def read(path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str]]:
    """``({name: (store dtype, array)}, metadata)``: each array a read-only memory-mapped view of
    the tensor's bytes (types numpy lacks as same-width unsigned ints).

    Validated as the ``safetensors`` library does: a JSON object header, ``__metadata__`` a map of
    strings, and tensors whose byte ranges tile the data exactly (no gap, no overlap, nothing
    past the end or left over). Anything else is a CasckptError naming the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise CasckptError(f"{path} is not a safetensors file (bad header length)")
        header = _header(path, f.read(n))
    meta = _metadata(path, header.pop("__metadata__", None))
    specs = {name: _spec(path, name, spec) for name, spec in header.items()}
    _check_tiling(path, specs, size - 8 - n)
    data = np.memmap(path, mode="r", dtype=np.uint8, offset=8 + n) if size > 8 + n else np.empty(0, np.uint8)
    arrays = {}
    for name, (dt, shape, begin, end) in specs.items():
        arr = data[begin:end].view(np.dtype(dt.numpy)).reshape(shape)
        arr.flags.writeable = False
        arrays[name] = (dt.name, arr)
    return arrays, meta


def _header(path: Path, text: bytes) -> dict:
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise CasckptError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CasckptError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header


def _metadata(path: Path, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CasckptError(f"{path}: __metadata__ must map names to strings, got {str(meta)[:100]!r}")
    return meta


def _spec(path: Path, name: str, spec: object) -> tuple[dtypes.DType, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one tensor entry, each checked."""
    try:
        dt = dtypes.lookup(CODES[spec["dtype"]])
        shape, offsets = spec["shape"], spec["data_offsets"]
        if not (isinstance(shape, list) and all(_count(d) for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_count(x) for x in offsets)):
            raise TypeError
    except (KeyError, TypeError):
        raise CasckptError(f"{path}: tensor {name!r} has an unsupported or malformed entry: {spec!r:.200}") from None
    begin, end = offsets
    if end < begin or end - begin != math.prod(shape) * dt.itemsize:
        raise CasckptError(f"{path}: tensor {name!r} has data offsets that do not fit its shape")
    return dt, tuple(shape), begin, end


def _count(x: object) -> bool:
    return type(x) is int and x >= 0


def _check_tiling(path: Path, specs: dict, data_len: int) -> None:
    """Tensor byte ranges must cover the data exactly once, in some order (the safetensors rule)."""
    pos = 0
    for name, (_, _, begin, end) in sorted(specs.items(), key=lambda kv: kv[1][2:]):
        if begin != pos:
            raise CasckptError(f"{path}: tensor {name!r} starts at byte {begin} of the data, where "
                               f"{pos} is expected (tensors overlap or leave a gap)")
        pos = end
    if pos != data_len:
        raise CasckptError(f"{path}: tensors cover {pos} bytes of data, the file holds {data_len}")


def write(store, m: Manifest, dst: Path, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Write snapshot manifest ``m``'s items to ``dst`` atomically; returns the file size.

    ``bytes`` items (opaque DCP payloads) are written as U8 and listed in ``__metadata__``
    under ``casckpt.bytes`` so an import restores them.
    """
    header, pos, raw = {}, 0, []
    for key, item in m.items.items():
        code = "U8" if item.dtype == "bytes" else NAMES.get(item.dtype)
        if code is None:
            raise CasckptError(f"safetensors has no dtype for {item.dtype} (item {key!r}); "
                               "export with --format torch or dcp instead")
        header[key] = {"dtype": code, "shape": list(item.shape), "data_offsets": [pos, pos + item.nbytes]}
        pos += item.nbytes
        if item.dtype == "bytes":
            raw.append(key)
    if raw:
        header["__metadata__"] = {"casckpt.bytes": json.dumps(raw)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with fsutil.atomic_file(dst, tmp_dir=dst.parent) as f:
        f.write(struct.pack("<Q", len(text)) + text)
        done = 0
        for key, item in m.items.items():
            buf = bytearray(item.nbytes)
            if item.nbytes:
                store.read_item(item, memoryview(buf), key=key)
            f.write(buf)
            done += item.nbytes
            if progress:
                progress(done, pos)
    return dst.stat().st_size
