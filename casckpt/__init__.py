"""casckpt: a content-addressed, deduplicating checkpoint store for PyTorch DCP."""

from .errors import (CasckptError, CheckpointFailedError, CorruptChunkError, IndexDamagedError,
                     InvalidNameError, LoadWarning, LockLostError, LockTimeoutError, ManifestError,
                     MissingChunkError, SnapshotExistsError, SnapshotNotFoundError, StoreIOError, StoreNotEmptyError, StoreNotFoundError,
                     UnsafePathError, UnsupportedFormatError)
from .store import SaveStats, SnapshotInfo, Store

__version__ = "0.1.0"

__all__ = [
    "Store", "SaveStats", "SnapshotInfo",
    "CasckptError", "CheckpointFailedError", "CorruptChunkError", "IndexDamagedError",
    "InvalidNameError", "LoadWarning", "LockLostError", "LockTimeoutError", "ManifestError", "MissingChunkError",
    "SnapshotExistsError", "SnapshotNotFoundError", "StoreIOError", "StoreNotEmptyError", "StoreNotFoundError",
    "UnsafePathError", "UnsupportedFormatError",
]

# NOTE: the DCP layer imports torch, so it loads on first use: `import casckpt` stays torch-free.
_DCP_NAMES = {"CasWriter", "CasReader", "DedupSavePlanner", "SafeLoadPlanner", "save", "load", "read_state"}


def __getattr__(name: str):
    if name in _DCP_NAMES:
        from . import dcp
        return getattr(dcp, name)
    raise AttributeError(f"module 'casckpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _DCP_NAMES)
