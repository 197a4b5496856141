"""The ``.safetensors`` file format, read and written natively (no safetensors or torch needed).

Layout: an 8-byte little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, padded with spaces to a multiple
of 8), then the tensors' bytes, contiguous, little-endian, C order, offsets relative to the data.
"""

from __future__ import annotations

import json
import math
import os
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
MAX_HEADER = 100 << 20


def read(path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str]]:
    """``({name: (store dtype, array)}, metadata)``: each array a read-only memory-mapped view of
    the tensor's bytes (types numpy lacks as same-width unsigned ints)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise CasckptError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CasckptError(f"{path} is not a safetensors file (header is not JSON)") from None
    meta = header.pop("__metadata__", None) or {}
    data = np.memmap(path, mode="r", dtype=np.uint8, offset=8 + n) if size > 8 + n else np.empty(0, np.uint8)
    arrays = {}
    for name, spec in header.items():
        arrays[name] = _tensor(path, name, spec, data)
    return arrays, {str(k): str(v) for k, v in meta.items()}


def _tensor(path: Path, name: str, spec: dict, data: np.ndarray) -> tuple[str, np.ndarray]:
    try:
        dt = dtypes.lookup(CODES[spec["dtype"]])
        shape = tuple(int(d) for d in spec["shape"])
        begin, end = (int(x) for x in spec["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise CasckptError(f"{path}: tensor {name!r} has an unsupported or malformed entry: {spec!r:.200}") from None
    if not 0 <= begin <= end <= data.size or end - begin != math.prod(shape) * dt.itemsize:
        raise CasckptError(f"{path}: tensor {name!r} has data offsets that do not fit its shape or the file")
    arr = data[begin:end].view(np.dtype(dt.numpy)).reshape(shape)
    arr.flags.writeable = False
    return dt.name, arr


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
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
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
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        fsutil.unlink_quiet(tmp)
    return dst.stat().st_size
