"""The chunk directory: one file per chunk, named by the BLAKE3 digest of its uncompressed bytes.

Layout: ``chunks/<first two hex digits>/<64 hex digits>``. Each file is a header followed by the
payload (see :mod:`casckpt.codec`). A full chunk has a 16-byte version 1 header; a delta chunk
(its raw bytes combined with its base's by ``op``, see :mod:`casckpt.delta`) a 48-byte version 2
header::

    v1: magic b"CCK1" | version u8 = 1 | codec u8 | reserved u16 = 0 | raw_len u64 LE
    v2: magic b"CCK1" | version u8 = 2 | codec u8 | depth u8 | op u8 | raw_len u64 LE
        | base digest (32 bytes)

``op`` 0: the payload codes ``raw XOR base``; 2, 4 or 8: the zigzag of ``raw - base`` as integers
of that many bytes (store format version 4; before it the byte was 0).

Chunks are blobs of the store's back-end (:mod:`casckpt.backends`) under the keys above, written
with ``put_if_absent``, so a chunk that is already present is never rewritten (a concurrent writer
of the same chunk loses the race harmlessly). Every read
decodes the payload (a delta: its base first, then XOR or add) and checks the digest of the bytes it
returns: wrong bytes are never returned, whatever the base holds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import chunking, codec, delta
from .backends import Backend, BlobNotFoundError
from .digest import Digest, digest_of
from .errors import CorruptChunkError, MissingChunkError, UnsafePathError

MAGIC = b"CCK1"
VERSION = 1  # a full chunk
DELTA_VERSION = 2  # a delta chunk: the header also names its base
HEADER = struct.Struct("<4sBBHQ")
HEADER2 = struct.Struct("<4sBBBBQ32s")
PREFIX = "chunks/"


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """What the index records per chunk: sizes and codec (stored_len includes the header), and
    for a delta chunk its base and depth (links to the full chunk its chain starts from)."""

    raw_len: int
    stored_len: int
    codec: int
    base: Digest | None = None
    depth: int = 0

    def to_tuple(self) -> tuple:
        """Plain values (the base as raw bytes) for DCP's gather of write results."""
        return (self.raw_len, self.stored_len, self.codec, self.base.raw if self.base else None, self.depth)

    @classmethod
    def from_tuple(cls, t) -> "ChunkInfo":
        raw_len, stored_len, kind, base, depth = t
        return cls(raw_len, stored_len, kind, Digest(base) if base else None, depth)


class ChunkDir:
    """Put, get, check and delete chunks: blobs of ``backend`` under ``chunks/``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @staticmethod
    def key(digest: Digest) -> str:
        # NOTE: the hex form is validated by Digest, so this key cannot leave the chunk folder.
        h = digest.hex
        return f"{PREFIX}{h[:2]}/{h}"

    def where(self, digest: Digest) -> str:
        """Where the chunk lives, for messages (a file path on a local back-end)."""
        return str(self.path(digest)) if self.backend.local_path else f"{self.backend.url}/{self.key(digest)}"

    def path(self, digest: Digest) -> Path:
        """The chunk's file on a local back-end (tests and tools that look at files)."""
        return self.backend.local_path / self.key(digest)

    def exists(self, digest: Digest) -> bool:
        return self.backend.exists(self.key(digest))

    def size(self, digest: Digest) -> int:
        """The stored size in bytes, 0 if the chunk is gone."""
        return self.backend.size(self.key(digest)) or 0

    def put(self, digest: Digest, raw: memoryview, *, group: int, config: codec.CodecConfig,
            base: tuple[Digest, int, bytes] | None = None) -> ChunkInfo:
        """Store one chunk unless a good copy is already there. Returns its info either way.

        ``base`` is ``(digest, depth, raw bytes)`` of a durable chunk of the same length: the
        chunk is then stored as a delta against it (whether that pays is the caller's choice).

        The chunk is written with ``sync=False``; the caller makes a batch durable with
        :meth:`sync` before it commits anything that references the batch. A chunk already present
        that the index does not vouch for (left by a crash) is read and verified; a bad one is
        replaced atomically.
        """
        key = self.key(digest)
        replace = False
        # NOTE: on object storage the conditional PUT below finds a chunk already there, which
        # saves a HEAD per new chunk; a file system checks first and spares the temp file.
        local = self.backend.local_path is not None
        if local and self.backend.exists(key):
            try:
                return self.check(digest)
            except (CorruptChunkError, UnsafePathError):
                replace = True  # a torn file from a crash, or a planted link: replace it
        header, kind, parts, link = self._encode(raw, group, config, base)
        parts = [header, *parts]
        if replace:
            self.backend.replace(key, parts, sync=False)
        elif not self.backend.put_if_absent(key, parts, sync=False) and not local:
            try:  # there already (a concurrent or killed save): verify it as the local path does
                return self.check(digest)
            except CorruptChunkError:
                self.backend.replace(key, parts, sync=False)
        size = sum(memoryview(p).nbytes for p in parts)
        return ChunkInfo(raw.nbytes, size, kind, *link)

    @staticmethod
    def _encode(raw: memoryview, group: int, config: codec.CodecConfig, base) -> tuple:
        """``(header, codec, payload parts, (base, depth))`` of a new chunk file: a delta when a
        base of the same length is given, else a full chunk."""
        if base is not None and len(base[2]) == raw.nbytes and raw.nbytes:
            op, kind, parts = delta.encode(raw, base[2], group=group, config=config)
            depth = base[1] + 1
            head = HEADER2.pack(MAGIC, DELTA_VERSION, kind, depth, op, raw.nbytes, base[0].raw)
            return head, kind, parts, (base[0], depth)
        kind, parts = codec.encode(raw, group=group, config=config)
        return HEADER.pack(MAGIC, VERSION, kind, 0, raw.nbytes), kind, parts, (None, 0)

    def sync(self, digests, *, map=map, data_synced=()) -> None:
        """Make the given chunks (written, or deleted) durable (``map`` may run it in parallel);
        of those in ``data_synced`` (:meth:`sync_data`) only the names are left to make durable."""
        self.backend.sync([self.key(d) for d in digests], map=map,
                          data_synced={self.key(d) for d in data_synced})

    def sync_data(self, digest: Digest) -> None:
        """Make a chunk's bytes durable, not yet its name (see ``Backend.sync_data``)."""
        self.backend.sync_data(self.key(digest))

    def read_payload(self, digest: Digest, *, item: str = "") -> tuple[int, int, memoryview, Digest | None, int, int]:
        """``(codec, raw_len, payload, base, depth, op)`` of a chunk file (``base`` None and
        ``op`` 0 for a full chunk), header checked, payload not yet verified."""
        path = self.where(digest)
        try:
            data = self.backend.get(self.key(digest))
        except BlobNotFoundError:
            raise MissingChunkError(f"chunk {digest} is missing: {path}{_where(item)}",
                                    digest=digest.hex, path=str(path), item=item) from None
        except UnsafePathError as exc:
            raise CorruptChunkError(f"{exc}{_where(item)}", digest=digest.hex, path=str(path), item=item) from None
        base, depth, size = self._parse_header(digest, item, data)
        kind, raw_len = data[5], HEADER.unpack_from(data)[4]  # same offsets in both versions
        op = data[7] if base is not None else delta.XOR  # checked by _parse_header
        return kind, raw_len, memoryview(data)[size:], base, depth, op

    def head_info(self, digest: Digest) -> ChunkInfo:
        """A chunk's index entry from its header and stored size alone, without its payload: one
        open (one ranged GET). MissingChunkError, or CorruptChunkError if the header is not one
        casckpt writes (reindex without --verify, and a host's cache taking in a manifest)."""
        where = self.where(digest)
        try:
            head, size = self.backend.get_head(self.key(digest), HEADER2.size)
        except BlobNotFoundError:
            raise MissingChunkError(f"chunk {digest} is missing: {where}", digest=digest.hex, path=where) from None
        except OSError as exc:
            raise CorruptChunkError(f"chunk {digest} is unreadable: {exc.strerror or exc}: {where}",
                                    digest=digest.hex, path=where) from None
        base, depth, hsize = self._parse_header(digest, "", head)
        kind, raw_len = head[5], HEADER.unpack_from(head)[4]
        if (kind not in codec.KNOWN or not 0 < raw_len <= chunking.MAX_CHUNK_SIZE or size <= hsize
                or kind == codec.RAW and size != hsize + raw_len):
            raise CorruptChunkError(f"chunk {digest} has a bad header or size: {where}", digest=digest.hex, path=where)
        return ChunkInfo(raw_len, size, kind, base, depth)

    def _parse_header(self, digest: Digest, item: str, data: bytes) -> tuple[Digest | None, int, int]:
        """``(base, depth, header size)`` from the first bytes of a chunk file (a delta's ``op``
        is checked here and read by :meth:`read_payload`)."""
        if len(data) < HEADER.size:
            raise self._corrupt(digest, item, "file is shorter than its header")
        magic, version, _, reserved, _ = HEADER.unpack_from(data)
        if magic == MAGIC and version == VERSION:
            return None, 0, HEADER.size
        if magic != MAGIC or version != DELTA_VERSION or len(data) < HEADER2.size:
            raise self._corrupt(digest, item, "bad chunk header")
        _, _, _, depth, op, raw_len, base = HEADER2.unpack_from(data)
        if (not 1 <= depth <= delta.MAX_DEPTH_LIMIT or base == digest.raw
                or op not in (delta.XOR, *delta.SUB_WIDTHS) or (op and raw_len % op)):
            raise self._corrupt(digest, item, "bad delta chunk header")
        return Digest(base), depth, HEADER2.size

    def link(self, digest: Digest) -> tuple[Digest | None, int]:
        """``(base, depth)`` from the chunk file's header alone (MissingChunkError, CorruptChunkError)."""
        try:
            head = self.backend.get_range(self.key(digest), 0, HEADER2.size)
        except BlobNotFoundError:
            path = self.where(digest)
            raise MissingChunkError(f"chunk {digest} is missing: {path}", digest=digest.hex, path=path) from None
        except OSError as exc:  # a planted link (UnsafePathError), an I/O error
            raise self._corrupt(digest, "", f"unreadable: {exc.strerror or exc}") from None
        return self._parse_header(digest, "", head)[:2]

    def get(self, digest: Digest, *, out: memoryview | None = None, item: str = "") -> memoryview:
        """The chunk's raw bytes, decoded into ``out`` if given, after checking the digest."""
        return self._read(digest, out, item)[0]

    def check(self, digest: Digest) -> ChunkInfo:
        """Read and verify a chunk (CorruptChunkError / MissingChunkError if it is not good) and
        return its sizes and codec: how a file the index does not vouch for earns an entry."""
        return self._read(digest, None, "")[1]

    def _read(self, digest: Digest, out: memoryview | None, item: str) -> tuple[memoryview, ChunkInfo]:
        parsed = self.read_payload(digest, item=item)
        kind, raw_len, payload, base, depth, _ = parsed
        if out is not None and out.nbytes != raw_len:
            raise self._corrupt(digest, item, f"holds {raw_len} bytes where {out.nbytes} are expected")
        if base is not None:
            return self._read_delta(digest, out, item, parsed)
        try:
            # NOTE: raw and zstd chunks are checked before they touch ``out``; a byte-grouped
            # chunk is decoded into ``out`` column by column and checked there (a failed load
            # leaves its target partly written, as a failed load always may).
            raw = (codec.decode(kind, payload, raw_len, out) if kind in codec.GROUPED
                   else codec.decode_flat(kind, payload, raw_len))
        except ValueError as exc:
            raise self._corrupt(digest, item, str(exc)) from None
        if digest_of(raw) != digest:
            raise self._corrupt(digest, item, "content does not hash to its name")
        if out is not None and kind not in codec.GROUPED:
            out[:] = raw
            raw = out
        return raw, ChunkInfo(raw_len, payload.nbytes + HEADER.size, kind)

    def _read_delta(self, digest: Digest, out: memoryview | None, item: str, parsed) -> tuple[memoryview, ChunkInfo]:
        """Decode the chain (this chunk's payload and its bases') into the destination at once
        (:func:`casckpt.codec.decode_chain`), check the digest once at the end; if it fails, find
        out whether a base is to blame. No base is hashed on the way: the final check catches
        any wrong base (docs/FORMAT.md, "Delta chunks")."""
        kind, raw_len, payload, base, depth, _ = parsed
        dest = memoryview(bytearray(raw_len)) if out is None else out
        chain = self._chain(digest, item, parsed)
        try:
            codec.decode_chain([(c[1], c[3], c[6]) for c in chain], dest)
        except codec.LayerError as exc:
            bad = self._corrupt(chain[exc.index][0], item, str(exc))
            raise (bad if exc.index == 0 else self._base_error(digest, base, item, bad)) from None
        if digest_of(dest) != digest:
            self._blame_base(digest, base, item)
            raise self._corrupt(digest, item, "content does not hash to its name")
        return dest, ChunkInfo(raw_len, payload.nbytes + HEADER2.size, kind, base, depth)

    def _chain(self, digest: Digest, item: str, parsed) -> list[tuple]:
        """``[(digest, codec, raw_len, payload, base, depth, op), ...]`` from ``digest`` down to the
        full chunk its chain starts from, headers checked, payloads not yet decoded."""
        chain = [(digest, *parsed)]
        while chain[-1][4] is not None:
            below = chain[-1][4]
            if len(chain) > delta.MAX_DEPTH_LIMIT:
                raise self._corrupt(digest, item, f"its chain of bases is longer than {delta.MAX_DEPTH_LIMIT}")
            try:
                link = (below, *self.read_payload(below, item=item))
                if link[2] != parsed[1]:
                    raise self._corrupt(below, item, f"holds {link[2]} bytes where {parsed[1]} are expected")
            except (MissingChunkError, CorruptChunkError) as exc:
                raise self._base_error(digest, below, item, exc) from None
            chain.append(link)
        return chain

    def _blame_base(self, digest: Digest, base: Digest, item: str) -> None:
        """Raise the base's own error if the base chain does not verify (the delta is then fine
        as far as anyone can tell, and the message names the chunk actually damaged)."""
        try:
            self.check(base)
        except (MissingChunkError, CorruptChunkError) as exc:
            raise self._base_error(digest, base, item, exc) from None

    def _base_error(self, digest: Digest, base: Digest, item: str, exc) -> MissingChunkError | CorruptChunkError:
        kind = MissingChunkError if isinstance(exc, MissingChunkError) else CorruptChunkError
        what = "missing" if kind is MissingChunkError else "corrupt"
        path = self.where(digest)
        why = str(exc.args[0]) if exc.args else ""
        return kind(f"chunk {digest} cannot be decoded{_where(item)}: its base is {what} ({why}): {path}",
                    digest=digest.hex, path=str(path), item=item, base=exc.base or exc.digest)

    def delete(self, digest: Digest) -> None:
        """Remove a chunk (not durable until :meth:`sync` names it)."""
        self.backend.delete(self.key(digest))

    def __iter__(self) -> Iterator[Digest]:
        """Every well-named chunk present (other names are ignored)."""
        for d, _ in self.sizes():
            yield d

    def sizes(self) -> Iterator[tuple[Digest, int]]:
        """``(digest, stored size)`` of every well-named chunk present: one listing."""
        for blob in self.backend.list(PREFIX):
            sub, _, name = blob.key[len(PREFIX):].partition("/")
            if len(name) == 64 and name.startswith(sub) and len(sub) == 2:
                try:
                    yield Digest(bytes.fromhex(name)), blob.size
                except ValueError:
                    continue

    def _corrupt(self, digest: Digest, item: str, why: str) -> CorruptChunkError:
        path = self.where(digest)
        return CorruptChunkError(f"chunk {digest} is corrupt{_where(item)}: {why}: {path}",
                                 digest=digest.hex, path=path, item=item)


def _where(item: str) -> str:
    return f" (item {item!r})" if item else ""

