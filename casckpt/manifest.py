"""Snapshot manifests: versioned JSON (never pickle), the source of truth for what a snapshot holds.

A manifest is written atomically as the last step of a save; that rename is the commit point.
Everything read from a manifest is validated before use: digests must be 32 bytes (64 hex digits
in format 1), dtypes known, shapes non-negative, and every item's chunk lengths must add up to
its size. Format 2 (written) keeps each item's refs columnar, so validation runs in bulk
(hex decoding in C, numpy) instead of per ref; format 1 is still read (docs/FORMAT.md).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np

from . import chunking, dtypes
from .codec import FRAME_MAGIC, compress_doc, decompress_doc
from .digest import DIGEST_SIZE, Digest
from .errors import CasckptError, InvalidNameError, ManifestError, UnsupportedFormatError

FORMAT = "casckpt.manifest"
VERSION = 2  # written; 1 (a [digest, length] list per item) is still read
MAX_NAME = 200
MAX_FILE = 1 << 30  # the JSON a compressed manifest may hold (500k refs take ~50 MB)
COMPRESS_OVER = 256 << 10  # manifests with more JSON than this are written compressed (to_file)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*")
RESERVED = {"latest"}


def check_name(name: object) -> str:
    """Validate a snapshot name: it becomes a file name, so nothing that could leave the store."""
    if not isinstance(name, str):
        raise InvalidNameError(f"snapshot name must be a string, got {type(name).__name__}")
    shown = repr(name[:60]) + ("…" if len(name) > 60 else "")
    if not name or len(name) > MAX_NAME:
        raise InvalidNameError(f"snapshot name {shown} must be 1 to {MAX_NAME} characters")
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"snapshot name {shown} is not allowed: use letters, digits and . _ - + = @, "
            "start with a letter or digit, no '..', no path separators or control characters")
    if name in RESERVED:
        raise InvalidNameError(f"snapshot name {name!r} is reserved")
    return name


def key_fqn(key: str) -> str:
    """The DCP FQN an item key of a DCP snapshot belongs to: the key up to its last '@'.

    The DCP layer keys a whole tensor by its FQN and a shard by ``"{fqn}@{o0},{o1},..."``; an FQN
    that holds '@' itself always gets the '@' form, so this is exact (see docs/FORMAT.md).
    """
    return key.rpartition("@")[0] if "@" in key else key


def key_offsets(key: str, ndim: int) -> tuple[int, ...]:
    """The shard offsets a DCP item key carries (all zero for a whole tensor)."""
    rest = key.rpartition("@")[2] if "@" in key else ""
    return tuple(int(x) for x in rest.split(",")) if rest else (0,) * ndim


def is_valid_name(name: object) -> bool:
    try:
        check_name(name)
    except InvalidNameError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A reference to a stored chunk: the whole chunk (``offset`` None; every ref casckpt writes
    today), or ``length`` bytes of its raw bytes from ``offset`` on (a ref into part of a chunk
    or a pack; see docs/FORMAT.md)."""

    digest: Digest
    length: int
    offset: int | None = None


class Item:
    """One stored item: its dtype, shape and ordered chunk refs (concatenated: C-order bytes).

    Held columnar (the refs' raw digests as one ``bytes``, their lengths and offsets as numpy
    arrays), as manifest format 2 stores them, so that parsing a manifest of 500k refs makes no
    object per ref; ``chunks`` builds the :class:`ChunkRef` tuple on first use. Immutable."""

    __slots__ = ("dtype", "shape", "_raw", "_lengths", "_offsets", "_chunks")

    def __init__(self, dtype: str, shape: tuple[int, ...], chunks: Iterable[ChunkRef] = ()) -> None:
        chunks = tuple(chunks)
        partial = any(c.offset is not None for c in chunks)
        self._init(dtype, shape, b"".join(c.digest.raw for c in chunks),
                   np.fromiter((c.length for c in chunks), np.int64, len(chunks)),
                   np.fromiter((c.offset or 0 for c in chunks), np.int64, len(chunks)) if partial else None)
        object.__setattr__(self, "_chunks", chunks)

    @classmethod
    def columnar(cls, dtype: str, shape: tuple[int, ...], raw: bytes, lengths: np.ndarray,
                 offsets: np.ndarray | None = None) -> "Item":
        """An item from concatenated raw digests and per-ref lengths (and offsets, or ``None``)."""
        item = cls.__new__(cls)
        item._init(dtype, shape, raw, lengths, offsets)
        object.__setattr__(item, "_chunks", None)
        return item

    @classmethod
    def single(cls, dtype: str, shape: tuple[int, ...], digest: bytes, length: int,
               offset: int | None = None) -> "Item":
        """An item of one ref (most items of a DCP save: every small one), its length array shared
        with every other one-ref item of that length (read-only, as every item's arrays are)."""
        return cls.columnar(dtype, shape, digest, _one(length), None if offset is None else np.array((offset,), np.int64))

    def _init(self, dtype, shape, raw, lengths, offsets) -> None:
        setattr_ = object.__setattr__  # NOTE: unrolled: 20k small items of a save call this
        setattr_(self, "dtype", dtype)
        setattr_(self, "shape", tuple(shape))
        setattr_(self, "_raw", bytes(raw))
        setattr_(self, "_lengths", lengths)
        setattr_(self, "_offsets", offsets)
        lengths.setflags(write=False)
        if offsets is not None:
            offsets.setflags(write=False)

    def __setattr__(self, name, value):
        raise AttributeError(f"Item is immutable (setting {name!r})")

    @property
    def chunks(self) -> tuple[ChunkRef, ...]:
        if self._chunks is None:
            raw, offs = self._raw, self._offsets
            lens = self._lengths.tolist()
            offs = [None] * len(lens) if offs is None else offs.tolist()
            refs = tuple(ChunkRef(Digest(raw[32 * i:32 * i + 32]), n, o)
                         for i, (n, o) in enumerate(zip(lens, offs)))
            object.__setattr__(self, "_chunks", refs)
        return self._chunks

    @property
    def raw_digests(self) -> bytes:
        """The refs' digests, 32 raw bytes each, concatenated in order."""
        return self._raw

    @property
    def lengths(self) -> np.ndarray:
        """Each ref's length in bytes (int64, read-only)."""
        return self._lengths

    @property
    def ref_offsets(self) -> np.ndarray | None:
        """Each ref's start within its chunk, or ``None`` when every ref is a whole chunk."""
        return self._offsets

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def nbytes(self) -> int:
        n = self._lengths
        return sum(n.tolist()) if len(n) <= FEW_REFS else int(n.sum())

    def offsets(self) -> list[int]:
        """Start offset of each chunk in the item's bytes."""
        out = np.zeros(len(self._lengths), np.int64)
        np.cumsum(self._lengths[:-1], out=out[1:])
        return out.tolist()

    def _key(self) -> tuple:
        offs = None if self._offsets is None else self._offsets.tobytes()
        return self.dtype, self.shape, self._raw, self._lengths.tobytes(), offs

    def __eq__(self, other) -> bool:
        return isinstance(other, Item) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.dtype, self.shape, self._raw))

    def __repr__(self) -> str:
        return f"Item({self.dtype!r}, {self.shape!r}, {len(self)} chunks)"

    def to_json(self, version: int = VERSION) -> dict:
        if version == 1:
            if self._offsets is not None:
                raise UnsupportedFormatError("manifest format 1 cannot hold refs into part of a chunk")
            return {"dtype": self.dtype, "shape": list(self.shape),
                    "chunks": [[c.digest.hex, c.length] for c in self.chunks]}
        out = {"dtype": self.dtype, "shape": list(self.shape),
               "digests": self._raw.hex(), "lengths": _runs(self._lengths)}
        if self._offsets is not None:
            out["offsets"] = self._offsets.tolist()
        return out

    def to_text(self) -> str:
        """``to_json()`` (the newest format) as compact JSON text, written directly: the same
        bytes as ``json.dumps`` of it, at a fifth of the cost (a save of 20k small items feels it)."""
        lens = self._lengths
        runs = f"[{int(lens[0])},1]" if len(lens) == 1 else ",".join(f"[{n},{c}]" for n, c in _runs(lens))
        offs = "" if self._offsets is None else f',"offsets":[{",".join(map(str, self._offsets.tolist()))}]'
        return (f'{{"dtype":{json_str(self.dtype)},"shape":[{",".join(map(str, self.shape))}],'
                f'"digests":"{self._raw.hex()}","lengths":[{runs}]{offs}}}')

    @classmethod
    def from_json(cls, key: str, obj: Any, version: int = VERSION) -> "Item":
        if not isinstance(obj, dict):
            raise ManifestError(f"item {key!r} is not an object")
        dt = dtypes.lookup(obj.get("dtype"))
        shape = obj.get("shape")
        if not isinstance(shape, list) or not _sizes(shape, math.inf):
            raise ManifestError(f"item {key!r} has a bad shape")
        item = (_columns if version >= 2 else _refs_v1)(key, obj, dt.name, tuple(shape))
        need = math.prod(shape) * dt.itemsize
        if item.nbytes != need:
            raise ManifestError(f"item {key!r}: chunk lengths add up to {item.nbytes} bytes, "
                                f"its shape and dtype need {need}")
        lens = item.lengths
        if any(x % dt.itemsize for x in lens.tolist()) if len(lens) <= FEW_REFS else np.any(lens % dt.itemsize):
            raise ManifestError(f"item {key!r} has a chunk boundary inside a {dt.name} element")
        return item


def _sizes(xs: list, most: float) -> bool:
    """Whether every element is an int from 0 to ``most`` (a loop: a generator in all() costs
    more than the check for the few elements most items have)."""
    for x in xs:
        if type(x) is not int or x < 0 or x > most:
            return False
    return True


# NOTE: up to this many refs, plain Python over ``tolist()`` beats numpy's per-call cost
FEW_REFS = 16


@functools.lru_cache(maxsize=4096)
def _one(n: int) -> np.ndarray:
    out = np.array((n,), np.int64)
    out.setflags(write=False)
    return out


json_str = json.encoder.encode_basestring_ascii  # a str as JSON text, as json.dumps writes it


def compact_json(doc: Any) -> str:
    """``doc`` as the compact JSON text store metadata is written in (no spaces, no NaN); text
    written directly (Item.to_text, casckpt.dcp.meta) must give the same bytes."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


class RawJSON(str):
    """JSON text already encoded by its writer (DCP's metadata: ``casckpt.dcp.meta``), a value
    of a manifest's ``meta`` that :meth:`Manifest.to_bytes` writes as it is. Only a writer's
    manifest holds one; a manifest read back holds the parsed value."""


def _meta_text(meta: dict) -> str:
    """``compact_json(meta)``, with :class:`RawJSON` values written as they are."""
    if not any(isinstance(v, RawJSON) for v in meta.values()):
        return compact_json(meta)
    return "{" + ",".join(f"{json_str(k)}:{v if isinstance(v, RawJSON) else compact_json(v)}" for k, v in meta.items()) + "}"


def _runs(lengths: np.ndarray) -> list[list[int]]:
    """``[[length, count], ...]``: run-length coded lengths (an item's chunks are mostly equal)."""
    if len(lengths) <= FEW_REFS:  # NOTE: most items
        out: list[list[int]] = []
        for n in lengths.tolist():
            if out and out[-1][0] == n:
                out[-1][1] += 1
            else:
                out.append([n, 1])
        return out
    starts = np.flatnonzero(np.diff(lengths)) + 1
    edges = np.concatenate(([0], starts, [len(lengths)]))
    return [[int(lengths[a]), int(b - a)] for a, b in zip(edges[:-1], edges[1:])]


def _refs_v1(key: str, obj: dict, dtype: str, shape: tuple[int, ...]) -> Item:
    chunks = obj.get("chunks")
    if not isinstance(chunks, list):
        raise ManifestError(f"item {key!r} has no chunk list")
    return Item(dtype, shape, (_chunk_ref(key, c) for c in chunks))


def _chunk_ref(key: str, obj: Any) -> ChunkRef:
    # NOTE: the length cap stops a hostile manifest from making a reader allocate petabytes.
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[1]) is int
            and 0 < obj[1] <= chunking.MAX_CHUNK_SIZE):
        raise ManifestError(f"item {key!r} has a bad chunk reference {str(obj)[:100]}")
    return ChunkRef(Digest.from_hex(obj[0]), obj[1])


def _columns(key: str, obj: dict, dtype: str, shape: tuple[int, ...]) -> Item:
    """A format 2 item, validated in bulk: no Python object per ref."""
    text, runs = obj.get("digests"), obj.get("lengths")
    # NOTE: bytes.fromhex decodes ~3x faster than base64 does; it skips whitespace, which the
    # length check then refuses (each digest must be exactly 64 hex digits).
    try:
        raw = bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:  # not hex digits, or an odd count
        raw = None
    if raw is None or len(text) != 2 * len(raw):
        raise ManifestError(f"item {key!r} has no valid digest string (hex)")
    if len(raw) % DIGEST_SIZE:
        raise ManifestError(f"item {key!r}: its digests are {len(raw)} bytes, not a multiple of {DIGEST_SIZE}")
    n = len(raw) // DIGEST_SIZE
    # NOTE: the length cap stops a hostile manifest from making a reader allocate petabytes.
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and type(r[0]) is int and type(r[1]) is int
            and 0 < r[0] <= chunking.MAX_CHUNK_SIZE and 0 < r[1] <= n for r in runs):
        raise ManifestError(f"item {key!r} has a bad length list {str(runs)[:100]}")
    if sum(r[1] for r in runs) != n:
        raise ManifestError(f"item {key!r} has {n} digests but lengths for {sum(r[1] for r in runs)}")
    if n == 1:  # NOTE: most items (every small one): a shared array, no numpy call
        lengths = _one(runs[0][0])
    else:
        lengths = np.repeat(np.array([r[0] for r in runs], np.int64), [r[1] for r in runs]) if runs \
            else np.zeros(0, np.int64)
    return Item.columnar(dtype, shape, raw, lengths, _ref_offsets(key, obj.get("offsets", None), lengths))


def _ref_offsets(key: str, offs: Any, lengths: np.ndarray) -> np.ndarray | None:
    """Optional starts within each chunk; a ref must end inside the largest chunk there can be."""
    if offs is None:
        return None
    if not (isinstance(offs, list) and len(offs) == len(lengths) and _sizes(offs, chunking.MAX_CHUNK_SIZE - 1)):
        raise ManifestError(f"item {key!r} has a bad offset list {str(offs)[:100]}")
    out = np.array(offs, np.int64)
    if len(out) == 1:  # NOTE: a packed small item; no numpy reduction for one ref
        bad = offs[0] + int(lengths[0]) > chunking.MAX_CHUNK_SIZE
    else:
        bad = len(out) and np.any(out + lengths > chunking.MAX_CHUNK_SIZE)
    if bad:
        raise ManifestError(f"item {key!r} has a ref past the end of any chunk")
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Manifest:
    """A committed snapshot: name, creation time, items, and opaque JSON ``meta`` for layers above
    (the DCP layer keeps DCP's Metadata there)."""

    name: str
    created: str
    chunk_size: int
    items: dict[str, Item]
    meta: dict = field(default_factory=dict)

    @property
    def logical_bytes(self) -> int:
        return sum(i.nbytes for i in self.items.values())

    @property
    def refs(self) -> int:
        """How many chunk refs the items hold (a chunk referenced twice counts twice)."""
        return sum(len(i) for i in self.items.values())

    def digests(self) -> set[Digest]:
        return {Digest(r) for r in self.raw_digest_set()}

    def raw_digest_set(self) -> set[bytes]:
        """The distinct digests referenced, as 32-byte strings (no Digest object per ref)."""
        out: set[bytes] = set()
        for i in self.items.values():
            raw = i.raw_digests
            out.update(raw[k:k + DIGEST_SIZE] for k in range(0, len(raw), DIGEST_SIZE))
        return out

    def digest_keys(self) -> np.ndarray:
        """The distinct digests' first 8 bytes as sorted unique uint64 (see casckpt.refcache)."""
        raw = b"".join(i.raw_digests for i in self.items.values())
        keys = np.frombuffer(raw, dtype="<u8").reshape(-1, DIGEST_SIZE // 8)[:, 0] if raw else np.zeros(0, "<u8")
        return np.unique(keys)

    def to_bytes(self, version: int = VERSION) -> bytes:
        """The manifest file's bytes, in format ``version`` (default: the newest; 1 for readers
        older than format 2, which cannot hold refs into part of a chunk)."""
        head = {"format": FORMAT, "version": version, "name": self.name, "created": self.created,
                "chunk_size": self.chunk_size}
        if version != VERSION:
            items = compact_json({k: v.to_json(version) for k, v in self.items.items()})
        else:  # NOTE: the same bytes as _dumps of the item table, each item written by Item.to_text
            items = "{" + ",".join(f"{json_str(k)}:{v.to_text()}" for k, v in self.items.items()) + "}"
        return f'{compact_json(head)[:-1]},"items":{items},"meta":{_meta_text(self.meta)}}}'.encode()

    def to_file(self) -> bytes:
        """The manifest file's bytes as saves write them: :meth:`to_bytes`, and since store format
        5, when that is over ``COMPRESS_OVER`` bytes, the same in one zstd frame (the JSON of 20k
        small items shrinks ~18x: digests, keys and DCP's metadata repeat; a manifest of a few
        items stays plain JSON to read by eye). :meth:`from_bytes` reads either form."""
        data = self.to_bytes()
        return compress_doc(data) if len(data) > COMPRESS_OVER else data

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest") -> "Manifest":
        if data[:len(FRAME_MAGIC)] == FRAME_MAGIC:
            try:
                data = decompress_doc(data, MAX_FILE)
            except ValueError as exc:
                raise ManifestError(f"{source} is not a readable zstd frame (truncated?): {exc}") from None
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{source} is not valid JSON (truncated?): {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ManifestError(f"{source} is not a casckpt manifest")
        version = doc.get("version")
        if type(version) is not int or version > VERSION or version < 1:
            raise UnsupportedFormatError(f"{source} has format version {version!r}; this casckpt "
                                         f"reads up to {VERSION}: upgrade casckpt")
        items = doc.get("items")
        if not isinstance(items, dict) or not isinstance(doc.get("meta", {}), dict):
            raise ManifestError(f"{source} has no item table")
        try:
            name = check_name(doc.get("name"))
        except InvalidNameError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        chunk_size = doc.get("chunk_size")
        if type(chunk_size) is not int or chunk_size <= 0 or not isinstance(doc.get("created"), str):
            raise ManifestError(f"{source} has a bad chunk_size or created field")
        return cls(name, doc["created"], chunk_size,
                   {str(k): Item.from_json(str(k), v, version) for k, v in items.items()}, doc.get("meta", {}))


def resumable(m: "Manifest") -> bool:
    """Whether snapshot ``m`` counts for "latest", the point a training job resumes from: every
    snapshot except imports (``meta["import"]``, written by ``casckpt import``), so importing a
    checkpoint, or exporting one and importing it back, never becomes a job's resume point by
    surprise. When a store holds only imports, "latest" is the newest of them."""
    return "import" not in m.meta


def user_meta(meta: Any, tags: Any) -> dict:
    """The manifest ``meta`` entries for a save's user metadata and tags: ``{"user": {...},
    "tags": [...]}`` (each only when given). ``meta`` must be a JSON object (keys strings, no NaN);
    ``tags`` strings of 1 to 100 printable characters without commas or spaces."""
    out: dict = {}
    if meta:
        if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
            raise CasckptError("meta must be a dict with string keys")
        try:
            out["user"] = json.loads(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise CasckptError(f"meta must be plain JSON (str, int, float, bool, None, list, dict): {exc}") from None
    if tags:
        if isinstance(tags, str) or not all(isinstance(t, str) and 0 < len(t) <= 100 and t.isprintable()
                                            and "," not in t and " " not in t for t in tags):
            raise CasckptError("tags must be a list of short strings without spaces or commas")
        out["tags"] = sorted(set(tags))
    return out


def tags_of(m: "Manifest") -> list[str]:
    t = m.meta.get("tags")
    return [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
