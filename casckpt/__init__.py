"""casckpt: a content-addressed, deduplicating checkpoint store for PyTorch DCP."""

from .errors import (CasckptError, CheckpointFailedError, CorruptChunkError, IndexDamagedError,
                     InvalidNameError, LockTimeoutError, ManifestError, MissingChunkError,
                     SnapshotExistsError, SnapshotNotFoundError, StoreIOError, StoreNotFoundError,
                     UnsafePathError, UnsupportedFormatError)
from .store import SaveStats, SnapshotInfo, Store

__version__ = "0.1.0"

__all__ = [
    "Store", "SaveStats", "SnapshotInfo",
    "CasckptError", "CheckpointFailedError", "CorruptChunkError", "IndexDamagedError",
    "InvalidNameError", "LockTimeoutError", "ManifestError", "MissingChunkError",
    "SnapshotExistsError", "SnapshotNotFoundError", "StoreIOError", "StoreNotFoundError",
    "UnsafePathError", "UnsupportedFormatError",
]
