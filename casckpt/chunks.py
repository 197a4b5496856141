"""The chunk directory: one file per chunk, named by the BLAKE3 digest of its uncompressed bytes.

Layout: ``chunks/<first two hex digits>/<64 hex digits>``. Each file is a 16-byte header followed
by the payload (see :mod:`casckpt.codec`)::

    magic  b"CCK1" | version u8 = 1 | codec u8 | reserved u16 = 0 | raw_len u64 LE

Files are written under a temp name and hard-linked into place, so a chunk that is already present
is never rewritten (a concurrent writer of the same chunk loses the race harmlessly). Every read
decodes the payload and checks its digest: wrong bytes are never returned.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import codec, fsutil
from .digest import Digest, digest_of
from .errors import CorruptChunkError, MissingChunkError, UnsafePathError

MAGIC = b"CCK1"
VERSION = 1
HEADER = struct.Struct("<4sBBHQ")
_FANOUT = [f"{i:02x}" for i in range(256)]


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """What the index records per chunk: sizes and codec (stored_len includes the header)."""

    raw_len: int
    stored_len: int
    codec: int


class ChunkDir:
    """Put, get, check and delete chunk files under ``root`` (the store's ``chunks`` folder)."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root, self.tmp_dir = root, tmp_dir

    def path(self, digest: Digest) -> Path:
        # NOTE: the hex form is validated by Digest, so this path cannot leave the chunk directory.
        h = digest.hex
        return self.root / h[:2] / h

    def exists(self, digest: Digest) -> bool:
        return os.path.lexists(self.path(digest))

    def put(self, digest: Digest, raw: memoryview, *, group: int, config: codec.CodecConfig) -> ChunkInfo:
        """Store one chunk unless a good copy is already there. Returns its info either way.

        The file is not fsynced here; the caller makes a batch durable with :meth:`sync` before it
        commits anything that references the batch. A file already present that the index does
        not vouch for (left by a crash) is read and verified; a bad one is replaced atomically.
        """
        final = self.path(digest)
        replace = False
        if os.path.lexists(final):
            try:
                return self.check(digest)
            except (CorruptChunkError, UnsafePathError):
                replace = True  # a torn file from a crash, or a planted link: replace it
        kind, parts = codec.encode(raw, group=group, config=config)
        header = HEADER.pack(MAGIC, VERSION, kind, 0, raw.nbytes)
        tmp = fsutil.temp_path(self.tmp_dir, ".chunk")
        try:
            size = fsutil.write_parts(tmp, [header, *parts], sync=False)
            if replace:
                os.replace(tmp, final)
            else:
                _link_into_place(tmp, final)
        finally:
            fsutil.unlink_quiet(tmp)
        return ChunkInfo(raw.nbytes, size, kind)

    def sync(self, digests, *, map=map) -> None:
        """fsync the given chunk files, then their fan-out directories (``map`` may be parallel)."""
        paths = [self.path(d) for d in digests]
        list(map(fsutil.fsync_file, paths))
        list(map(fsutil.fsync_dir, sorted({p.parent for p in paths})))
        if paths:
            fsutil.fsync_dir(self.root)  # a fan-out folder made by this batch

    def read_payload(self, digest: Digest, *, item: str = "") -> tuple[int, int, memoryview]:
        """``(codec, raw_len, payload)`` of a chunk file, header checked, payload not yet verified."""
        path = self.path(digest)
        try:
            data = fsutil.read_file(path)
        except FileNotFoundError:
            raise MissingChunkError(f"chunk {digest} is missing: {path}{_where(item)}",
                                    digest=digest.hex, path=str(path), item=item) from None
        except UnsafePathError as exc:
            raise CorruptChunkError(f"{exc}{_where(item)}", digest=digest.hex, path=str(path), item=item) from None
        if len(data) < HEADER.size:
            raise self._corrupt(digest, item, "file is shorter than its header")
        magic, version, kind, _, raw_len = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise self._corrupt(digest, item, "bad chunk header")
        return kind, raw_len, memoryview(data)[HEADER.size:]

    def get(self, digest: Digest, *, out: memoryview | None = None, item: str = "") -> memoryview:
        """The chunk's raw bytes, decoded into ``out`` if given, after checking the digest."""
        return self._read(digest, out, item)[0]

    def check(self, digest: Digest) -> ChunkInfo:
        """Read and verify a chunk (CorruptChunkError / MissingChunkError if it is not good) and
        return its sizes and codec: how a file the index does not vouch for earns an entry."""
        return self._read(digest, None, "")[1]

    def _read(self, digest: Digest, out: memoryview | None, item: str) -> tuple[memoryview, ChunkInfo]:
        kind, raw_len, payload = self.read_payload(digest, item=item)
        if out is not None and out.nbytes != raw_len:
            raise self._corrupt(digest, item, f"holds {raw_len} bytes where {out.nbytes} are expected")
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

    def delete(self, digest: Digest) -> None:
        fsutil.unlink_quiet(self.path(digest))

    def __iter__(self) -> Iterator[Digest]:
        """Every well-named chunk file present (other names are ignored)."""
        for sub in _FANOUT:
            try:
                names = os.listdir(self.root / sub)
            except FileNotFoundError:
                continue
            for name in names:
                if len(name) == 64 and name.startswith(sub):
                    try:
                        yield Digest(bytes.fromhex(name))
                    except ValueError:
                        continue

    def _corrupt(self, digest: Digest, item: str, why: str) -> CorruptChunkError:
        path = self.path(digest)
        return CorruptChunkError(f"chunk {digest} is corrupt{_where(item)}: {why}: {path}",
                                 digest=digest.hex, path=str(path), item=item)


def _where(item: str) -> str:
    return f" (item {item!r})" if item else ""


def _link_into_place(tmp: Path, final: Path) -> None:
    """Publish ``tmp`` as ``final`` unless ``final`` exists (then a concurrent writer won)."""
    try:
        try:
            os.link(tmp, final)
        except FileNotFoundError:  # the fan-out folder's first chunk: folders are made on first
            # use, as 256 mkdirs at creation cost a cold save ~0.2 s here
            final.parent.mkdir(exist_ok=True)
            os.link(tmp, final)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.replace(tmp, final)  # a file system without hard links
