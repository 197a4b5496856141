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
  Written by stores whose config predates codec 3; always readable.
* ``BGX``  (3) byte-grouped with whole-byte exponents: in every ``w``-byte word of an element the
  sign bit moves below the 8 bits that follow it, so the word's top byte holds exactly the
  exponent of a float32 / bfloat16 and the random sign joins a mantissa plane; then the bytes are
  grouped into planes as in ``BG``, and every plane is coded by zstd tuned to emit almost only
  Huffman-coded literals (``_HUFF``) or stored raw. Layout: ``k`` (u8), ``w`` (u8; 0: no bits
  move, as for 8-byte floats), then the plane table and planes as in ``BG``. The default for 8-
  and 16-byte floating chunks; for all of them before codec 4 (store format version 2).
* ``BGR``  (4) for 2- and 4-byte floats: the top 16 bits of each element rotated left by ``r``
  (chosen per chunk from a sample, :func:`casckpt.planes.rotation`), then grouped and coded as in
  ``BGX``. Layout: ``k`` (u8), ``r`` (u8), then the plane table and planes. The default for those
  floats (store format version 3).

The bit layouts themselves, their inverses and the XOR of planes live in :mod:`casckpt.planes`;
docs/FORMAT.md has every payload byte for byte.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import zstandard

from . import planes as pl  # the numpy side: bit layouts, interleaving, XOR of planes

RAW, ZSTD, BG, BGX, BGR = 0, 1, 2, 3, 4
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BG: "bg+zstd", BGX: "bgx+zstd", BGR: "bgr+zstd"}
GROUPED = frozenset({BG, BGX, BGR})  # decoded plane by plane straight into the caller's buffer
KNOWN = frozenset({RAW, ZSTD}) | GROUPED  # every codec this casckpt reads (ChunkDir.head_info checks headers against it)

# NOTE: a chunk is stored raw unless compression saves at least this fraction; below that the
# decompression cost on every load buys almost nothing.
MIN_SAVING = 0.03
_PROBE = 16 * 1024
_PLANE = struct.Struct("<BI")
# NOTE: zstd parameters that code a plane almost only as Huffman literals (zstd's huff0): the
# longest minimum match and a 64-entry hash table leave few matches, and short matches on
# low-entropy bytes cost more than the literals they replace. On MiniLM's float32 exponent plane
# level 1 keeps 0.367 at 0.28 GB/s, these 0.330 at 0.78 GB/s; on every other plane measured
# (mantissas, XORed steps) they tie or win too. 128 KiB blocks, each with its own table.
_HUFF = zstandard.ZstdCompressionParameters(window_log=17, hash_log=6, chain_log=6, search_log=1, min_match=7,
                                            target_length=0, strategy=zstandard.STRATEGY_FAST)
# NOTE: element size -> word whose top byte becomes the exponent. 0: no bits move, for 8-byte
# float64/complex128, whose 11-bit exponent fits no byte: moving the sign costs them 1.3 %.
_WORDS = {2: 2, 4: 4, 8: 0, 16: 0}

_local = threading.local()


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """How new chunks are compressed: ``level`` 0 stores everything raw; other levels apply to
    non-floating chunks and to codec 2. ``exponent`` writes floating chunks as codec 3 (``BGX``,
    one zstd setting, as higher levels code float planes worse); a store config that predates it
    reads as ``False``, so an older casckpt never meets a codec it does not know in such a store."""

    level: int = 1
    byte_grouping: bool = True
    exponent: bool = True

    def to_json(self) -> dict:
        return {"name": "zstd", "level": self.level, "byte_grouping": self.byte_grouping,
                "exponent": self.exponent}

    @classmethod
    def from_json(cls, obj: dict) -> "CodecConfig":
        return cls(level=int(obj.get("level", 1)), byte_grouping=bool(obj.get("byte_grouping", True)),
                   exponent=bool(obj.get("exponent", False)))


def _compressor(level: int | None) -> zstandard.ZstdCompressor:
    """A thread's compressor for ``level``; ``None`` is the Huffman-literal setting ``_HUFF``."""
    # NOTE: zstandard (de)compressor objects are not safe to share between threads.
    cache = _local.__dict__.setdefault("c", {})
    if level not in cache:
        cache[level] = (zstandard.ZstdCompressor(compression_params=_HUFF) if level is None
                        else zstandard.ZstdCompressor(level=level))
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    return _local.d


def _worth_it(compressed_len: int, raw_len: int) -> bool:
    return compressed_len <= raw_len * (1.0 - MIN_SAVING)


def _nbytes(parts: list) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def encode(raw: memoryview, *, group: int, config: CodecConfig, zigzag: bool = False) -> tuple[int, list]:
    """Compress one chunk. ``group`` is the element size to group bytes by (0 or 1: no grouping).
    ``zigzag``: the elements are zigzag differences (a delta chunk of floats), whose top bit is no
    sign, so codec 3 moves no bits (``w`` 0): the same bytes as moving it, decoded ~15 % faster.

    Returns ``(codec, parts)``: the payload is the concatenation of ``parts`` (bytes-like), so raw
    chunks are written straight from the caller's memory without a copy.
    """
    n = raw.nbytes
    if config.level <= 0 or n == 0:
        return RAW, [raw]
    if config.byte_grouping and group > 1 and n % group == 0:
        if config.exponent and group == 2:
            return _encode_rotated(raw, group)
        if config.exponent and group in _WORDS:
            return _encode_exponent(raw, group, 0 if zigzag else _WORDS[group])
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
        flag, data = _pack_plane(comp, plane, _head(plane))
        header.append(_PLANE.pack(flag, len(data)))
        parts.append(data)
    if _nbytes(parts) >= raw.nbytes * (1 - MIN_SAVING):
        return RAW, [raw]
    return BG, [b"".join(header), *parts]


def _pack_plane(comp: zstandard.ZstdCompressor, plane: np.ndarray, probe: np.ndarray | None) -> tuple[int, object]:
    """``(flag, data)`` of one plane: zstd (flag 1) if it saves ``MIN_SAVING``, else raw (flag 0).
    A ``probe`` (a sample of the plane) is tried first so near-random mantissa bytes cost no
    zstd time on the whole plane."""
    if probe is None or _worth_it(len(comp.compress(probe.data)), probe.nbytes):
        out = comp.compress(plane.data)
        if _worth_it(len(out), plane.nbytes):
            return 1, out
    return 0, plane.data


def _head(plane: np.ndarray) -> np.ndarray | None:
    return None if plane.nbytes <= _PROBE else plane[:_PROBE]


def _spread(plane: np.ndarray, pieces: int = 8) -> np.ndarray | None:
    """``_PROBE`` bytes sampled from ``pieces`` places: a head alone misjudges chunks that span
    tensors (MiniLM fp32 mantissa planes: 0.988 of raw kept instead of 0.982)."""
    if plane.nbytes <= _PROBE:
        return None
    step, size = plane.nbytes // pieces, _PROBE // pieces
    return np.concatenate([plane[i * step:i * step + size] for i in range(pieces)])


# -- codec 3: whole-byte exponents -----------------------------------------------------------------
def _encode_exponent(raw: memoryview, k: int, w: int) -> tuple[int, list]:
    # NOTE: the top plane of each word (the exponent) is not probed: it nearly always pays.
    span = w or min(k, 8)
    return _planes_payload(BGX, raw, struct.pack("<BB", k, w), pl.exponent_planes(raw, k, w),
                           lambda i: i % span == span - 1)


# -- codec 4: the top 16 bits rotated --------------------------------------------------------------
def _encode_rotated(raw: memoryview, k: int) -> tuple[int, list]:
    x = np.frombuffer(raw, dtype=f"<u{k}")
    r = pl.rotation(x if k == 2 else (x[::max(1, x.size // pl.SAMPLE)] >> 16).astype(np.uint16))
    # NOTE: the top byte nearly always pays; so does the one below it once near-constant
    # exponent bits were rotated into it (r >= 2). Other planes are sampled first.
    return _planes_payload(BGR, raw, struct.pack("<BB", k, r), pl.rotated_planes(raw, k, r),
                           lambda i: i == k - 1 or (i == k - 2 and r >= 2))


def _planes_payload(kind: int, raw: memoryview, head: bytes, planes, pays: Callable[[int], bool]) -> tuple[int, list]:
    """Codec 3 and 4's payload: ``head``, a flag and length per plane, then the planes, each
    entropy-coded or raw; plane ``i`` is coded without a probe when ``pays(i)``. Raw if that saves
    too little."""
    comp = _compressor(None)
    header, parts = [head], []
    for i, plane in enumerate(planes):
        flag, data = _pack_plane(comp, plane, None if pays(i) else _spread(plane))
        header.append(_PLANE.pack(flag, len(data)))
        parts.append(data)
    if _nbytes(parts) >= raw.nbytes * (1 - MIN_SAVING):
        return RAW, [raw]
    return kind, [b"".join(header), *parts]


# -- decoding --------------------------------------------------------------------------------------
def decode(codec: int, payload: memoryview, raw_len: int, out: memoryview | None = None) -> memoryview:
    """Decompress a chunk payload into ``out`` (a writable buffer of ``raw_len`` bytes) or a new one.

    Raises ``ValueError`` on a payload that does not decode to exactly ``raw_len`` bytes; the
    caller turns that into a CorruptChunkError naming the chunk.
    """
    if codec not in GROUPED:
        flat = decode_flat(codec, payload, raw_len)
        if out is None:
            return memoryview(bytearray(flat))
        out[:] = flat
        return out
    dest = memoryview(bytearray(raw_len)) if out is None else out
    _assemble(*_planes(codec, payload, raw_len), dest)
    return dest


def decode_flat(codec: int, payload: memoryview, raw_len: int) -> memoryview:
    """The raw bytes of a payload without copying them into a destination (RAW: the payload
    itself), so a caller can check them before they overwrite anything. Byte-grouped codecs
    (``GROUPED``) decode into a new buffer; :func:`decode` can decode them in place."""
    if codec == RAW:
        if payload.nbytes != raw_len:
            raise ValueError(f"raw payload is {payload.nbytes} bytes, expected {raw_len}")
        return payload
    if codec == ZSTD:
        return memoryview(_zstd(payload, raw_len))
    if codec in GROUPED:
        return decode(codec, payload, raw_len)
    raise ValueError(f"unknown codec {codec}")


def _zstd(payload, size: int) -> bytes:
    try:
        data = _decompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(data) != size:
        raise ValueError(f"decompressed to {len(data)} bytes, expected {size}")
    return data


def _zstd_into(payload, out: np.ndarray) -> np.ndarray:
    """:func:`_zstd` into ``out`` (a writable byte array of the expected size)."""
    size, done = out.nbytes, 0
    try:
        with _decompressor().stream_reader(payload, read_size=max(1, len(payload))) as reader:
            view = memoryview(out)
            while done < size:
                got = reader.readinto(view[done:])
                if not got:
                    break
                done += got
            more = reader.read(1) if done == size else b""
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if done != size or more:
        raise ValueError(f"decompressed to {done + len(more)}{'+' if more else ''} bytes, expected {size}")
    return out


def _read_planes(payload: memoryview, start: int, k: int, size: int, layer: int | None = None):
    """Yield each plane's bytes (``size`` of them) from the plane table at ``start``; zstd planes
    of ``layer`` 0 or 1 (see decode_xor) are decoded into the thread's scratch buffers, writable."""
    pos = start + k * _PLANE.size
    if payload.nbytes < pos:
        raise ValueError("byte-grouped payload is truncated")
    for i in range(k):
        flag, length = _PLANE.unpack_from(payload, start + i * _PLANE.size)
        body = payload[pos:pos + length]
        if body.nbytes != length:
            raise ValueError("byte-grouped payload is truncated")
        if flag == 1:
            yield _zstd(body, size) if layer is None or layer > 1 else _zstd_into(body, pl.scratch(("p", layer, i), size))
        elif flag == 0 and length == size:
            yield body
        else:
            raise ValueError("bad byte-grouped plane")
        pos += length
    if pos != payload.nbytes:
        raise ValueError("trailing bytes after byte-grouped planes")


def _layout(codec: int, payload: memoryview, size: int) -> tuple | None:
    """``(codec, k, w)`` of a valid byte-grouped payload header for ``size`` raw bytes, else None
    (not grouped, or a bad header, which decoding then reports); for codec 4 ``w`` is the
    rotation ``r``."""
    if codec == BG and payload.nbytes >= 1:
        k, w = payload[0], 0
    elif codec == BGX and payload.nbytes >= 2:
        k, w = payload[0], payload[1]
        if w not in (0, 2, 4, 8) or (w and (k < w or k % w)):
            return None
    elif codec == BGR and payload.nbytes >= 2:
        k, w = payload[0], payload[1]  # w: the rotation r
        if k not in (2, 4) or w > 15:
            return None
    else:
        return None
    return (codec, k, w) if k >= 2 and size % k == 0 else None


def _planes(codec: int, payload: memoryview, size: int, layer: int = 0) -> tuple[tuple, list[np.ndarray]]:
    """The layout and the decoded planes of a byte-grouped payload (arrays, writable where they
    are scratch buffers of ``layer``, read-only where they are the payload's own bytes)."""
    layout = _layout(codec, payload, size)
    if layout is None:
        empty = payload.nbytes < (1 if codec == BG else 2)
        raise ValueError("empty byte-grouped payload" if empty else "bad byte-grouped header")
    k = layout[1]
    start = 1 if codec == BG else 2
    return layout, [np.frombuffer(p, dtype=np.uint8) if not isinstance(p, np.ndarray) else p
                    for p in _read_planes(payload, start, k, size // k, layer)]


def _assemble(layout: tuple, planes: list[np.ndarray], dest: memoryview) -> None:
    """Interleave planes back into elements in ``dest`` (codec 3: moving each sign back too)."""
    codec, k, w = layout
    if codec == BGR:
        pl.join_rotated(planes[:k - 2], {w: planes[k - 2:]}, dest)
        return
    if codec == BGX and k in (2, 4, 8) and w in (0, k):
        pl.join_words(planes, np.frombuffer(dest, dtype=f"<u{k}"), moved=w > 0)
        return
    # NOTE: filling one column at a time is ~5x faster than assigning the transposed planes at once.
    cols = np.frombuffer(dest, dtype=np.uint8).reshape(-1, k)
    for i, p in enumerate(planes):
        cols[:, i] = p
    for top in range(w - 1, k, w) if w else ():
        exp, low = planes[top], planes[top - 1]
        cols[:, top] = (exp >> 1) | (low & 0x80)
        cols[:, top - 1] = (exp << 7) | (low & 0x7F)


# -- decoding a chain of deltas --------------------------------------------------------------------
class LayerError(ValueError):
    """A payload given to :func:`decode_xor` does not decode; ``index`` says which one."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index = index


def decode_xor(layers: list[tuple[int, memoryview]], out: memoryview) -> None:
    """Decode into ``out`` the XOR of the raw bytes of several ``(codec, payload)`` layers, each
    of ``out.nbytes`` bytes: a delta chunk's payload and its bases' (the last one full).

    Byte grouping and codec 3's sign move only permute bits, so the XOR of two chunks' planes is
    the planes of their XOR: layers of one layout (codec, ``k``, ``w``) are XORed plane by plane
    and interleaved once. The interleave, not the entropy decoding, is most of a decode's time, so
    a delta chunk then costs one decode plus its own planes' entropy decoding, not two decodes.
    Other mixes decode the last layer into ``out`` and XOR the others in.
    Raises :class:`LayerError` (a ``ValueError``) naming the layer that does not decode.
    """
    size = out.nbytes
    layouts = [_layout(c, p, size) for c, p in layers]
    first = layouts[0]
    if first is not None and all(x is not None and x[:2] == first[:2] for x in layouts):
        if first[0] == BGR:  # rotations may differ: XOR planes per rotation, then the top words
            _decode_rotated_xor(layers, layouts, out)
            return
        if all(x == first for x in layouts):
            acc: list[np.ndarray] | None = None
            for i, (kind, payload) in enumerate(layers):
                planes = _layer(i, lambda: _planes(kind, payload, size, i)[1])
                acc = planes if acc is None else pl.xor_planes(acc, planes)
            _assemble(first, acc, out)
            return
    last = len(layers) - 1
    _layer(last, lambda: decode(layers[last][0], layers[last][1], size, out))
    for i in range(last - 1, -1, -1):
        flat = _layer(i, lambda: decode_flat(layers[i][0], layers[i][1], size))
        pl.xor_into(np.frombuffer(out, dtype=np.uint8), np.frombuffer(flat, dtype=np.uint8))


def decode_chain(layers: list[tuple[int, memoryview, int]], out: memoryview) -> None:
    """Decode a chain of delta layers ``(codec, payload, op)`` into ``out``: the chunk's own
    first, its full root last (whose ``op`` is not used). ``op`` says how a layer's decoded bytes
    combine with the value of the layers below it: 0 XOR, ``w`` (2, 4, 8) add as the zigzag
    of a difference of ``w``-byte integers (:func:`casckpt.planes.zigzag_sub`). All-XOR chains
    take :func:`decode_xor`'s one-pass path. Raises :class:`LayerError`."""
    size, last = out.nbytes, len(layers) - 1
    if not any(op for _, _, op in layers[:last]):
        decode_xor([(kind, payload) for kind, payload, _ in layers], out)
        return
    _layer(last, lambda: decode(layers[last][0], layers[last][1], size, out))
    for i in range(last - 1, -1, -1):
        kind, payload, op = layers[i]
        if op:
            buf = pl.scratch("zd", size, limit=pl.ZIGZAG_MAX)
            _layer(i, lambda: decode(kind, payload, size, memoryview(buf)))
            pl.add_unzigzag(np.frombuffer(out, dtype=np.uint8), buf, op)
        else:
            flat = _layer(i, lambda: decode_flat(kind, payload, size))
            pl.xor_into(np.frombuffer(out, dtype=np.uint8), np.frombuffer(flat, dtype=np.uint8))


def _decode_rotated_xor(layers: list, layouts: list[tuple], out: memoryview) -> None:
    """decode_xor for codec-4 layers of one ``k``: the planes below the top 16 bits XORed across
    all layers, the top planes across layers of one rotation, then each rotation's top words."""
    k, size = layouts[0][1], out.nbytes
    low: list[np.ndarray] | None = None
    tops: dict[int, list[np.ndarray]] = {}
    for i, ((kind, payload), layout) in enumerate(zip(layers, layouts)):
        planes = _layer(i, lambda: _planes(kind, payload, size, i)[1])
        low = planes[:k - 2] if low is None else pl.xor_planes(low, planes[:k - 2], slot=i)
        pair = tops.get(layout[2])
        tops[layout[2]] = planes[k - 2:] if pair is None else pl.xor_planes(pair, planes[k - 2:], slot=i, first=k - 2)
    pl.join_rotated(low, tops, out)


def _layer(index: int, fn):
    try:
        return fn()
    except ValueError as exc:
        raise LayerError(index, str(exc)) from None



# -- whole documents (manifests) ----------------------------------------------------------------
FRAME_MAGIC = b"\x28\xb5\x2f\xfd"  # how a zstd frame begins (a JSON document begins with "{")
_DOC_LEVEL = 3  # a 20k-item manifest: 8 MB of JSON -> 0.45 MB in ~12 ms; level 1 is as fast, larger


def compress_doc(data: bytes) -> bytes:
    """``data`` as one zstd frame that records its size (a manifest; see docs/FORMAT.md)."""
    return _compressor(_DOC_LEVEL).compress(data)


def decompress_doc(frame: bytes, limit: int) -> bytes:
    """The bytes of a :func:`compress_doc` frame; ValueError when it is not one, or when it says
    or turns out to hold more than ``limit`` bytes (a hostile frame cannot make a reader allocate
    more than that)."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame: {exc}") from None
    if size < 0 or size > limit:
        raise ValueError(f"a zstd frame of {'unknown' if size < 0 else size} bytes (at most {limit} are read)")
    return _zstd(frame, size)
