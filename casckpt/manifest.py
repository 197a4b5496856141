"""Snapshot manifests: versioned JSON (never pickle), the source of truth for what a snapshot holds.

A manifest is written atomically as the last step of a save; that rename is the commit point.
Everything read from a manifest is validated before use: digests must be 64 hex digits, dtypes
known, shapes non-negative, and every item's chunk lengths must add up to its size.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import chunking, dtypes
from .digest import Digest
from .errors import CasckptError, InvalidNameError, ManifestError, UnsupportedFormatError

FORMAT = "casckpt.manifest"
VERSION = 1
MAX_NAME = 200
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
    digest: Digest
    length: int


@dataclass(frozen=True, slots=True)
class Item:
    """One stored item: its dtype, shape and ordered chunks (concatenated: C-order bytes)."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[ChunkRef, ...]

    @property
    def nbytes(self) -> int:
        return sum(c.length for c in self.chunks)

    def offsets(self) -> list[int]:
        """Start offset of each chunk in the item's bytes."""
        out, pos = [], 0
        for c in self.chunks:
            out.append(pos)
            pos += c.length
        return out

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape),
                "chunks": [[c.digest.hex, c.length] for c in self.chunks]}

    @classmethod
    def from_json(cls, key: str, obj: Any) -> "Item":
        if not isinstance(obj, dict):
            raise ManifestError(f"item {key!r} is not an object")
        dt = dtypes.lookup(obj.get("dtype"))
        shape = obj.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ManifestError(f"item {key!r} has a bad shape")
        chunks = obj.get("chunks")
        if not isinstance(chunks, list):
            raise ManifestError(f"item {key!r} has no chunk list")
        refs = tuple(_chunk_ref(key, c) for c in chunks)
        item = cls(dt.name, tuple(shape), refs)
        if item.nbytes != math.prod(shape) * dt.itemsize:
            raise ManifestError(f"item {key!r}: chunk lengths add up to {item.nbytes} bytes, "
                                f"its shape and dtype need {math.prod(shape) * dt.itemsize}")
        if any(c.length % dt.itemsize for c in refs):
            raise ManifestError(f"item {key!r} has a chunk boundary inside a {dt.name} element")
        return item


def _chunk_ref(key: str, obj: Any) -> ChunkRef:
    # NOTE: the length cap stops a hostile manifest from making a reader allocate petabytes.
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[1]) is int
            and 0 < obj[1] <= chunking.MAX_CHUNK_SIZE):
        raise ManifestError(f"item {key!r} has a bad chunk reference {str(obj)[:100]}")
    return ChunkRef(Digest.from_hex(obj[0]), obj[1])


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

    def digests(self) -> set[Digest]:
        return {c.digest for i in self.items.values() for c in i.chunks}

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "name": self.name, "created": self.created,
               "chunk_size": self.chunk_size,
               "items": {k: v.to_json() for k, v in self.items.items()}, "meta": self.meta}
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest") -> "Manifest":
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
                   {str(k): Item.from_json(str(k), v) for k, v in items.items()}, doc.get("meta", {}))


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
