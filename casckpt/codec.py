"""Chunk compression: zstd, optionally after grouping bytes by significance. The only module that
imports zstandard.

Codecs (recorded in every chunk file's header and in the index):

* ``RAW``  (0) the bytes as they are; used when compression does not pay.
* ``ZSTD`` (1) one zstd frame of the bytes.
* ``BG``   (2) byte-grouped ("shuffled") for floating dtypes of element size ``k``: the chunk viewed
  as ``n`` elements of ``k`` bytes is transposed into ``k`` planes (all first bytes, all second
  bytes, ...). Each plane is then stored zstd-compressed or raw, whichever is smaller. The exponent
  plane of trained weights compresses well; mantissa planes are near-random and are stored raw
  without spending zstd time on them (a 16 KiB probe decides). Layout: ``k`` (u8), then per plane
  ``flag`` (u8: 0 raw, 1 zstd) and ``length`` (u32 LE), then the plane payloads in order.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import numpy as np
import zstandard

RAW, ZSTD, BG = 0, 1, 2
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BG: "bg+zstd"}

# NOTE: a chunk is stored raw unless compression saves at least this fraction; below that the
# decompression cost on every load buys almost nothing.
MIN_SAVING = 0.03
_PROBE = 16 * 1024
_PLANE = struct.Struct("<BI")

_local = threading.local()


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """How new chunks are compressed: ``level`` 0 stores everything raw."""

    level: int = 1
    byte_grouping: bool = True

    def to_json(self) -> dict:
        return {"name": "zstd", "level": self.level, "byte_grouping": self.byte_grouping}

    @classmethod
    def from_json(cls, obj: dict) -> "CodecConfig":
        return cls(level=int(obj.get("level", 1)), byte_grouping=bool(obj.get("byte_grouping", True)))


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # NOTE: zstandard (de)compressor objects are not safe to share between threads.
    cache = _local.__dict__.setdefault("c", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    return _local.d


def _worth_it(compressed_len: int, raw_len: int) -> bool:
    return compressed_len <= raw_len * (1.0 - MIN_SAVING)


def encode(raw: memoryview, *, group: int, config: CodecConfig) -> tuple[int, list]:
    """Compress one chunk. ``group`` is the element size to group bytes by (0 or 1: no grouping).

    Returns ``(codec, parts)``: the payload is the concatenation of ``parts`` (bytes-like), so raw
    chunks are written straight from the caller's memory without a copy.
    """
    n = raw.nbytes
    if config.level <= 0 or n == 0:
        return RAW, [raw]
    if config.byte_grouping and group > 1 and n % group == 0:
        return _encode_grouped(raw, group, config.level)
    comp = _compressor(config.level)
    if n > 4 * _PROBE and not _worth_it(len(comp.compress(raw[:_PROBE])), _PROBE):
        return RAW, [raw]
    out = comp.compress(raw)
    return (ZSTD, [out]) if _worth_it(len(out), n) else (RAW, [raw])


def _encode_grouped(raw: memoryview, k: int, level: int) -> tuple[int, list]:
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, k).T.copy()
    comp = _compressor(level)
    header, parts = [struct.pack("<B", k)], []
    for plane in planes:
        flag, data = 0, plane.data
        probe = plane[:_PROBE]
        if plane.nbytes <= _PROBE or _worth_it(len(comp.compress(probe.data)), probe.nbytes):
            out = comp.compress(plane.data)
            if _worth_it(len(out), plane.nbytes):
                flag, data = 1, out
        header.append(_PLANE.pack(flag, len(data)))
        parts.append(data)
    if sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts) >= raw.nbytes * (1 - MIN_SAVING):
        return RAW, [raw]
    return BG, [b"".join(header), *parts]


def decode(codec: int, payload: memoryview, raw_len: int, out: memoryview | None = None) -> memoryview:
    """Decompress a chunk payload into ``out`` (a writable buffer of ``raw_len`` bytes) or a new one.

    Raises ``ValueError`` on a payload that does not decode to exactly ``raw_len`` bytes; the
    caller turns that into a CorruptChunkError naming the chunk.
    """
    if codec != BG:
        flat = decode_flat(codec, payload, raw_len)
        if out is None:
            return memoryview(bytearray(flat))
        out[:] = flat
        return out
    dest = memoryview(bytearray(raw_len)) if out is None else out
    _decode_grouped(payload, dest)
    return dest


def decode_flat(codec: int, payload: memoryview, raw_len: int) -> memoryview:
    """The raw bytes of a RAW or ZSTD payload without copying them into a destination (RAW: the
    payload itself), so a caller can check them before they overwrite anything."""
    if codec == RAW:
        if payload.nbytes != raw_len:
            raise ValueError(f"raw payload is {payload.nbytes} bytes, expected {raw_len}")
        return payload
    if codec == ZSTD:
        return memoryview(_zstd(payload, raw_len))
    raise ValueError(f"unknown codec {codec}")


def _zstd(payload, size: int) -> bytes:
    try:
        data = _decompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(data) != size:
        raise ValueError(f"decompressed to {len(data)} bytes, expected {size}")
    return data


def _decode_grouped(payload: memoryview, dest: memoryview) -> None:
    if payload.nbytes < 1:
        raise ValueError("empty byte-grouped payload")
    k = payload[0]
    n = dest.nbytes
    if k < 2 or n % k or payload.nbytes < 1 + k * _PLANE.size:
        raise ValueError("bad byte-grouped header")
    # NOTE: filling one column at a time is ~5x faster than assigning the transposed planes at once.
    cols = np.frombuffer(dest, dtype=np.uint8).reshape(-1, k)
    pos = 1 + k * _PLANE.size
    for i in range(k):
        flag, length = _PLANE.unpack_from(payload, 1 + i * _PLANE.size)
        body = payload[pos:pos + length]
        if body.nbytes != length:
            raise ValueError("byte-grouped payload is truncated")
        if flag == 1:
            plane = _zstd(body, n // k)
        elif flag == 0 and length == n // k:
            plane = body
        else:
            raise ValueError("bad byte-grouped plane")
        cols[:, i] = np.frombuffer(plane, dtype=np.uint8)
        pos += length
    if pos != payload.nbytes:
        raise ValueError("trailing bytes after byte-grouped planes")
