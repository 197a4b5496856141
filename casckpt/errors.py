"""Every exception casckpt raises, rooted at :class:`CasckptError`.

Leaf errors also derive from the builtin they resemble, so callers that already catch
``KeyError`` or ``FileNotFoundError`` keep working. Messages name the store, snapshot and item
where they are known.
"""

from __future__ import annotations


class CasckptError(Exception):
    """Root of every error casckpt raises on purpose."""


class StoreNotFoundError(CasckptError, FileNotFoundError):
    """The path is not a casckpt store (and ``create=False``)."""


class StoreNotEmptyError(CasckptError, FileExistsError):
    """``create=True`` on a folder that holds files but no store: casckpt creates a store only in a
    missing or empty folder, so it never adopts (and gc never deletes) someone else's files."""


class UnsupportedFormatError(CasckptError, ValueError):
    """The store, manifest or chunk was written by a newer or unknown format version."""


class InvalidNameError(CasckptError, ValueError):
    """A snapshot name that could escape the store or is otherwise unsafe."""


class SnapshotNotFoundError(CasckptError, KeyError):
    """No committed snapshot of that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence.
        return str(self.args[0]) if self.args else ""


class SnapshotExistsError(CasckptError, FileExistsError):
    """A committed snapshot of that name already exists; snapshots are immutable."""


class ChunkError(CasckptError):
    """A chunk could not be returned; carries the digest, path and (if known) item, and for a
    delta chunk whose base is missing or corrupt, ``base``: the digest of the damaged base."""

    def __init__(self, message: str, *, digest: str = "", path: str = "", item: str = "",
                 base: str = "") -> None:
        super().__init__(message)
        self.digest, self.path, self.item, self.base = digest, path, item, base

    def within(self, snapshot: str, store: object) -> "ChunkError":
        """The same error, its message also naming the snapshot and store it breaks."""
        return type(self)(f"{self.args[0]} (snapshot {snapshot!r} in store {store})",
                          digest=self.digest, path=self.path, item=self.item, base=self.base)


class MissingChunkError(ChunkError, FileNotFoundError):
    """A chunk that a manifest references is not in the chunk directory."""


class CorruptChunkError(ChunkError, ValueError):
    """A chunk's bytes do not decode or do not hash to its name. Wrong bytes are never returned."""


class ManifestError(CasckptError, ValueError):
    """A manifest is truncated, not JSON, or holds values that are not allowed."""


class IndexDamagedError(CasckptError, RuntimeError):
    """The LMDB index is missing or damaged; ``casckpt reindex STORE`` rebuilds it."""



class LockTimeoutError(CasckptError, TimeoutError):
    """The store lock could not be taken in time (another process holds it)."""


class LockLostError(LockTimeoutError):
    """A lock object on object storage went unrefreshed for so long that another process may
    have judged it stale (a paused process, a network outage): the work it protected stops
    before committing anything (see casckpt.objlock)."""


class UnsafePathError(CasckptError, PermissionError):
    """A path inside the store is a symlink or otherwise points outside the store root."""


class StoreIOError(CasckptError, OSError):
    """An operating-system error (disk full, permission denied) during a store operation.

    Nothing was committed; temp files left behind are reclaimed by ``gc``.
    """


class CheckpointFailedError(CasckptError, RuntimeError):
    """A DCP save or load failed for a reason that is not one of casckpt's typed errors."""


class LoadWarning(UserWarning):
    """``casckpt.load`` left saved items out (the template had no place for them) or cast tensors."""
