"""The storage seam: the few operations casckpt needs on named blobs, whatever holds them.

Everything a store keeps (config, chunks, manifests, temp files) is a *blob* under a *key*: a
relative, ``/``-separated name such as ``chunks/ab/ab12…`` or ``snapshots/step-1.json``. A
:class:`Backend` stores blobs under one root: a folder (:mod:`casckpt.backends.local`) or a
bucket prefix (object storage). Nothing above this module knows which.

The contract, which ``tests/test_backend_conformance.py`` checks for every back-end:

- ``get`` returns a whole blob; ``get_range`` the bytes ``[start, end)``, cut at the blob's end
  (a range past the end is empty). A missing key raises :class:`BlobNotFoundError`.
- ``put_if_absent`` creates a blob only if the key is free, and says whether this call created
  it. When several writers race on one key (threads, processes, hosts), exactly one wins, and
  nobody ever sees a partly written blob under the key.
- ``replace`` writes a blob whether or not the key exists; readers see the old blob or the whole
  new one, never a mix.
- ``delete`` removes a blob (a missing key is not an error) and says whether it was there;
  ``delete_many`` removes several (at most :attr:`Backend.delete_batch` per call: one request,
  or one wave of concurrent requests, where the medium has a batch delete); ``delete_batched``
  feeds it any number of keys.
- ``list`` yields the blobs whose key starts with a prefix, with their sizes (and, where the
  listing has them for free, their modification times and versions).
- ``version`` (optional) is a value that changes whenever a blob is written; ``get_versioned``
  returns a blob with its version, and ``get_head`` a blob's first bytes with its size, each in
  one request where the medium can.
- ``sync`` makes earlier writes made with ``sync=False``, and earlier deletes, durable, where the
  medium has such a step (fsync on a file system; nothing on object storage, where a completed
  PUT or DELETE is durable).

The store never uses a key that is also the folder of another (``a`` next to ``a/b``); a
file system cannot hold both, so back-ends need not support it.

Keys are checked by :func:`check_key` before any back-end sees them, so a hostile name (``..``,
an absolute path, a NUL byte, a very long name) is refused with :class:`UnsafePathError` and can
never reach outside the root.

Locking is not part of the seam: a file system has ``flock``; object storage needs lock objects
(see the store's lock module for each).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Hashable, Iterable, Iterator, Sequence

from ..errors import CasckptError, UnsafePathError

# A component: letters, digits and . _ - + = @ (the snapshot-name alphabet; hex digests fit; '.'
# and '..' alone are refused below). 255 bytes per component and 1024 per key are what file systems and
# S3 allow.
_PART = re.compile(r"[A-Za-z0-9._+=@-]{1,255}")
MAX_KEY = 1024


class BlobNotFoundError(CasckptError, FileNotFoundError):
    """No blob under that key."""


@dataclass(frozen=True, slots=True)
class Blob:
    """One listed blob: its key and size in bytes, and, where the listing gives them for free
    (None where it does not), when it was last written (seconds since the epoch) and its
    version: what :meth:`Backend.version` said of the blob when it was listed."""

    key: str
    size: int
    mtime: float | None = field(default=None, compare=False)
    version: Hashable | None = field(default=None, compare=False)


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`UnsafePathError`."""
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY:
        raise UnsafePathError(f"blob key {key!r:.80} is empty, not a string or longer than {MAX_KEY} bytes")
    for part in key.split("/"):
        if part in (".", "..") or not _PART.fullmatch(part):
            raise UnsafePathError(f"blob key {key!r:.80} has an unsafe component {part!r:.40}; keys are "
                                  "relative names of letters, digits and . _ - + = @ joined by '/'")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key optionally ending in ``/``."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Backend(ABC):
    """Blobs under one root. Subclasses implement the ``_``-free abstract methods; callers pass
    keys already checked with :func:`check_key` (the methods of this class check them again where
    it is cheap; implementations must not rely on callers alone).

    ``parts`` arguments are iterables of bytes-like objects (``bytes``, ``memoryview``), written
    in order, so a header and a payload need not be joined in memory first.
    """

    #: Where the medium is a local file system, its root folder (the default home of the LMDB
    #: index and the flock target); None for object storage.
    local_path: Path | None = None
    #: The most keys one :meth:`delete_many` call takes. On object storage a call is one request
    #: (or one wave of concurrent requests), so it ends within the back-end's bound on one
    #: operation (``deadline``), which the lock's safety argument needs (casckpt.objlock).
    delete_batch: int = 1000

    @property
    @abstractmethod
    def url(self) -> str:
        """A printable name of the root for messages (``/data/ckpt``, ``s3://bucket/prefix``).
        Never holds a secret."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole blob. Raises BlobNotFoundError."""

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob, cut at its end. Raises BlobNotFoundError."""

    @abstractmethod
    def put_if_absent(self, key: str, parts: Iterable, *, sync: bool = True) -> bool:
        """Create the blob if ``key`` is free: True if this call created it, False if a blob was
        there already (left untouched). With ``sync=False`` the write may not be durable until
        :meth:`sync` names the key."""

    @abstractmethod
    def replace(self, key: str, parts: Iterable, *, sync: bool = True) -> None:
        """Write the blob atomically, replacing any blob under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the blob; True if it was there."""

    def delete_many(self, keys: Sequence[str], *, before: Callable[[], None] | None = None) -> None:
        """Remove the blobs under ``keys`` (at most :attr:`delete_batch`; a missing key is not an
        error). ``before()`` is called right before each request that deletes (the store's lock
        check: a delete must start only while the lock is sure to hold when it lands).
        Back-ends with a batch delete override this; by default, one :meth:`delete` each."""
        if len(keys) > self.delete_batch:
            raise ValueError(f"{len(keys)} keys in one delete_many; at most {self.delete_batch}")
        for key in keys:
            if before:
                before()
            self.delete(key)

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[Blob]:
        """Every blob whose key starts with ``prefix``, in no particular order."""

    def size(self, key: str) -> int | None:
        """The blob's size, or None if there is none under ``key``. Back-ends override this
        with a cheaper call (``lstat``, ``HEAD``)."""
        try:
            return len(self.get(key))
        except BlobNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete_batched(self, keys: Sequence[str], *, before: Callable[[], None] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> None:
        """:meth:`delete_many` over any number of keys, :attr:`delete_batch` at a time
        (``progress(done, total)`` after each batch)."""
        for i in range(0, len(keys), self.delete_batch):
            batch = keys[i:i + self.delete_batch]
            self.delete_many(batch, before=before)
            if progress:
                progress(i + len(batch), len(keys))

    def get_versioned(self, key: str) -> tuple[bytes, Hashable | None]:
        """The whole blob and its :meth:`version`. Raises BlobNotFoundError. By default the
        version is taken first, so a blob replaced in between comes with the older version, never
        the reverse; object storage overrides this with one GET, whose answer has the ETag."""
        tag = self.version(key)
        return self.get(key), tag

    def get_head(self, key: str, n: int) -> tuple[bytes, int]:
        """The first ``n`` bytes of the blob (fewer if it is shorter) and its whole size.
        Raises BlobNotFoundError. Back-ends override this with one request (a ranged GET)."""
        head, size = self.get_range(key, 0, n), self.size(key)
        if size is None:
            raise BlobNotFoundError(f"no blob {key!r} in {self.url}")
        return head, size

    def version(self, key: str) -> Hashable | None:
        """Optional: a cheap value that changes whenever the blob under ``key`` is written (a
        file's inode and times, an object's ETag); None if there is no blob or no cheap way to
        tell. The store uses it to keep parsed manifests without reading them again."""
        return None

    def sync(self, keys: Iterable[str], *, map=map, data_synced: Collection[str] = ()) -> None:
        """Make earlier ``sync=False`` writes of ``keys``, and deletes of ``keys``, durable
        (``map`` may run the work in parallel); for keys in ``data_synced`` only their names are
        left to make durable (:meth:`sync_data` did the rest). Nothing to do by default."""

    def sync_data(self, key: str) -> None:
        """Make the bytes of an earlier ``sync=False`` write durable, not yet its name (a later
        :meth:`sync` naming the key in ``data_synced`` does that): a head start that a writer takes
        while it goes on writing. Nothing to do by default."""

    def close(self) -> None:
        """Release connections or handles."""


def open_backend(location: str | os.PathLike | Backend, *, options: dict | None = None) -> Backend:
    """The back-end for a store location: a back-end given is used as it is; a URL (``s3://``,
    ``gs://``, ``az://``) is object storage (``options`` override its environment settings);
    anything else a local path."""
    if isinstance(location, Backend):
        return location
    from .local import LocalBackend  # NOTE: late: local imports this module

    if isinstance(location, str) and "://" in location:
        try:
            from .object import ObjectBackend  # NOTE: late: obstore is the optional "cloud" extra
        except ImportError as exc:
            raise CasckptError(f"a store at {location.partition('://')[0]}:// needs obstore: "
                               f"pip install 'casckpt[cloud]' ({exc})") from None
        return ObjectBackend(location, options=options)
    if options:
        raise CasckptError("storage options apply only to a store on object storage (s3://, gs://, az://)")
    return LocalBackend(location)
