"""The store's config file and folder layout (docs/FORMAT.md, "The store root")."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import chunking, fsutil
from .backends import Backend, BlobNotFoundError
from .codec import CodecConfig
from .delta import DeltaConfig
from .errors import CasckptError, StoreNotEmptyError, UnsafePathError, UnsupportedFormatError

CONFIG = "casckpt.json"
FORMAT = "casckpt.store"
# 2: the store may hold delta chunks (chunk header version 2) and index entries with bases.
# 3: it may hold codec 4 chunks (casckpt.codec.BGR).
# 4: delta chunks may be zigzag differences (chunk header op 2, 4, 8; casckpt.delta.make).
# 5: large manifests may be zstd frames of their JSON (casckpt.manifest.Manifest.to_file).
# An older store is upgraded in place the first time this casckpt writes a chunk (or a
# compressed manifest) into it.
VERSION = 5


@dataclass(frozen=True, slots=True)
class StoreConfig:
    chunk_size: int = chunking.DEFAULT_CHUNK_SIZE
    codec: CodecConfig = CodecConfig()
    store_id: str = ""  # random, made at creation: ties an index kept elsewhere to its store
    delta: DeltaConfig = DeltaConfig()
    version: int = VERSION  # of the file as read; new stores are made at VERSION

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "version": self.version, "id": self.store_id, "chunk_size": self.chunk_size,
               "codec": self.codec.to_json(), "delta": self.delta.to_json()}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "StoreConfig":
        try:
            doc = json.loads(data)
        except ValueError:
            raise CasckptError(f"{source} is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CasckptError(f"{source} is not a casckpt store config")
        if type(doc.get("version")) is not int or doc["version"] > VERSION:
            raise UnsupportedFormatError(f"store format version {doc.get('version')!r} in {source} is "
                                         f"newer than this casckpt supports ({VERSION}): upgrade casckpt")
        store_id = doc.get("id", "")
        if not isinstance(store_id, str) or len(store_id) > 64:
            raise CasckptError(f"{source} has a bad store id")
        return cls(check_chunk_size(doc.get("chunk_size")), _codec_config(doc.get("codec", {}), source), store_id,
                   _delta_config(doc.get("delta", {}), source), max(1, doc["version"]))


def _delta_config(obj: object, source: str) -> DeltaConfig:
    try:
        if not isinstance(obj, dict):
            raise TypeError(obj)
        return DeltaConfig.from_json(obj)
    except (TypeError, ValueError):
        raise CasckptError(f"{source} has a bad delta setting {str(obj)[:80]!r}") from None


def read(backend: Backend) -> StoreConfig | None:
    """The store's config, or None if there is no config blob (not a store)."""
    try:
        data = backend.get(CONFIG)
    except BlobNotFoundError:
        return None
    return StoreConfig.from_bytes(data, f"{backend.url}/{CONFIG}")


def upgrade(backend: Backend, *, sync: bool = True) -> None:
    """Raise the store's format version to :data:`VERSION` before the first chunk of the newer
    format is written: one atomic replace of the config, every other field kept as it is on disk.
    From then on an older casckpt refuses the store (UnsupportedFormatError) instead of misreading
    a delta chunk. Concurrent upgrades write the same bytes."""
    doc = json.loads(backend.get(CONFIG))
    if doc.get("version", VERSION) >= VERSION:
        return
    doc["version"] = VERSION
    backend.replace(CONFIG, [(json.dumps(doc, indent=2) + "\n").encode()], sync=sync)


def _codec_config(obj: object, source: str) -> CodecConfig:
    try:
        if not isinstance(obj, dict):
            raise TypeError(obj)
        return CodecConfig.from_json(obj)
    except (TypeError, ValueError, OverflowError):
        raise CasckptError(f"{source} has a bad codec setting {str(obj)[:80]!r}") from None


def check_chunk_size(n: object) -> int:
    """The chunk size if it is allowed (a multiple of 4096 within bounds), else CasckptError."""
    if type(n) is not int or not chunking.MIN_CHUNK_SIZE <= n <= chunking.MAX_CHUNK_SIZE or n % 4096:
        raise CasckptError(f"chunk size must be a multiple of 4096 between {chunking.MIN_CHUNK_SIZE} "
                           f"and {chunking.MAX_CHUNK_SIZE}, got {n!r}")
    return n


def create_layout(backend: Backend, config: StoreConfig) -> bool:
    """Make the folders and files of a new store; the config last, so a half-made store is none.
    Folders and the lock file exist only on a local back-end (object storage has no folders).
    Returns whether ``config`` is the store's: False when a racing creator's came first."""
    root = backend.local_path
    try:
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            for sub in ("tmp", "snapshots", "chunks"):
                (root / sub).mkdir(exist_ok=True)
            (root / "lock").touch()
        if root is None:  # NOTE: object storage: of racing creators, the first one's config wins
            return backend.put_if_absent(CONFIG, [config.to_bytes()])
        backend.replace(CONFIG, [config.to_bytes()])
        return True
    except OSError as exc:  # the path is a file, a read-only or full file system
        if isinstance(exc, CasckptError):
            raise
        raise fsutil.io_error(exc, f"cannot create a store at {backend.url}") from None


def check_layout(backend: Backend) -> None:
    """Refuse a store whose folders are symlinks: saves, and gc's deletions, would land outside
    the root (O_NOFOLLOW guards only the last component of a path). Checked once at open, where
    the local back-end would find it key by key; object storage has no folders."""
    root = backend.local_path
    if root is None:
        return
    subs = [root / s for s in ("tmp", "snapshots", "chunks")]
    if not os.path.islink(root / "chunks") and (root / "chunks").is_dir():
        # NOTE: one directory read (d_type) instead of an lstat per fan-out folder.
        subs += [Path(e.path) for e in os.scandir(root / "chunks") if e.is_symlink()]
    for sub in subs:
        if os.path.islink(sub):
            raise UnsafePathError(f"{sub} is a symlink; casckpt never follows links in a store")


def check_empty(backend: Backend) -> None:
    """Refuse to create a store in a folder that holds anything but a half-made store's layout."""
    root = backend.local_path
    if root is None:
        if next(iter(backend.list("")), None) is not None:
            raise StoreNotEmptyError(f"{backend.url} is not empty and is not a casckpt store (no {CONFIG})")
        return
    try:
        entries = set(os.listdir(root))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise StoreNotEmptyError(f"{root} is a file; casckpt creates a store only in a missing or "
                                 "empty folder") from None
    if entries and not _half_made(root, entries):
        shown = ", ".join(sorted(entries)[:5]) + (", …" if len(entries) > 5 else "")
        raise StoreNotEmptyError(f"{root} is not empty ({shown}) and is not a casckpt store (no {CONFIG}); "
                                 "casckpt creates a store only in a missing or empty folder")


def _half_made(root: Path, entries: set[str]) -> bool:
    """What a store creation that died before writing its config leaves (a retry finishes it):
    the lock file and empty folders, ``tmp/`` holding only casckpt's temp files."""
    if not entries <= {"tmp", "snapshots", "chunks", "lock"}:
        return False
    for d in entries - {"lock"}:
        p = root / d
        if p.is_symlink() or not p.is_dir():
            return False
        if any(not (d == "tmp" and fsutil.is_temp_name(f)) for f in os.listdir(p)):
            return False
    return True
