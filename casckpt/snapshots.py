"""The snapshot directory: committed manifests as blobs ``snapshots/NAME.json`` of the store's
back-end, and the snapshot registry rows the index caches for them.

:class:`Snapshots` is a part of :class:`casckpt.Store` (a mixin, as :class:`casckpt.bases.DeltaWrites`
is): names, "latest", reading and caching manifests, publishing one (the commit point of a save:
``put_if_absent``, or ``replace`` to overwrite) and forgetting them (``rm``, and gc's drops).
The manifests are the source of truth; the registry is a cache rebuilt from them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Hashable, Iterable

from . import objlock
from .backends import Blob, BlobNotFoundError
from .errors import (CasckptError, IndexDamagedError, ManifestError, SnapshotExistsError, SnapshotNotFoundError,
                     StoreIOError)
from .lock import EXCLUSIVE
from .manifest import Manifest, check_name, is_valid_name, resumable, tags_of

log = logging.getLogger("casckpt")

# Seconds of clock skew between hosts that "latest" tolerates (see Snapshots._latest).
LATEST_SKEW = 60.0


class _Heads:
    """What "latest" needs of each manifest this process has parsed, ``(created, resumable)``, by
    ``(store url, name, blob version)``: a committed manifest's bytes never change under one
    version, so resolving "latest" parses each manifest once per process, not once per save (a
    job saving every few seconds has every manifest of the last minute in the skew window)."""

    def __init__(self, most: int = 4096) -> None:
        self._rows: OrderedDict[tuple, tuple[str, bool]] = OrderedDict()
        self._most, self._lock = most, threading.Lock()

    def get(self, key: tuple) -> tuple[str, bool] | None:
        if key[2] is None:  # a listing without versions
            return None
        with self._lock:
            return self._rows.get(key)

    def put(self, key: tuple, row: tuple[str, bool]) -> None:
        with self._lock:
            self._rows[key] = row
            while len(self._rows) > self._most:
                self._rows.popitem(last=False)


_HEADS = _Heads()
SNAPSHOTS = "snapshots/"  # manifests: snapshots/NAME.json


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: str
    logical_bytes: int
    chunks: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(eq=False)
class HoldView:
    """What one hold of the lock on an object store has read of it, so that the operation holding
    it (a save, a load, a verify, a gc) reads each of these once (see :meth:`Snapshots.hold_view`):
    the listing of ``snapshots/``, each manifest's version, and the index that was caught up
    (:func:`casckpt.objcache.catch_up`)."""

    blobs: list[Blob] | None = None  # every blob under snapshots/, as one listing gave them
    named: dict[str, Blob] = field(default_factory=dict)  # the manifests among them, by name
    versions: dict[str, Hashable] = field(default_factory=dict)  # manifests read under the hold
    caught_up: object = None  # the Index object catch_up brought in line under the hold


class Snapshots:
    """Snapshot-directory methods of :class:`casckpt.Store` (a mixin: it uses the store's
    back-end, index, lock and manifest cache)."""

    _views: dict[str, HoldView]
    _views_guard = threading.Lock()

    def hold_view(self) -> HoldView | None:
        """What the calling thread's current hold of the lock on this object store has read, or
        None (no hold; a local store, where these reads are system calls).

        NOTE: within one hold nothing read here can go stale in a way that matters. Under a
        shared hold nobody deletes a manifest or a chunk (rm and gc hold the lock exclusively):
        another host may commit a snapshot, replace one (``overwrite``) or mark a chunk damaged,
        and the operation sees that at its next hold, as if it had started a moment earlier.
        Under an exclusive hold only this process writes, and its own manifest writes
        (:meth:`_publish`, :meth:`unpublish`) drop what the view holds. A view ends with its hold:
        the next operation reads again (never a cache across operations, nor across hosts).
        """
        if self.backend.local_path is not None:
            return None
        key = objlock.current(self.backend.url)
        if key is None:
            return None
        with self._views_guard:
            view = self._views.get(key)
            if view is None:
                view = self._views[key] = HoldView()
                while len(self._views) > 8:  # NOTE: views of ended holds are never asked for again
                    del self._views[next(iter(self._views))]
        return view

    @staticmethod
    def manifest_key(name: str) -> str:
        return f"{SNAPSHOTS}{check_name(name)}.json"

    def manifest_path(self, name: str) -> Path:
        """The manifest's file on a local back-end (tests and tools that look at files)."""
        return self.backend.local_path / self.manifest_key(name)

    @property
    def snap_dir(self) -> Path:
        """The manifests' folder on a local back-end."""
        return self.backend.local_path / SNAPSHOTS

    def resolve(self, name: str) -> str:
        """``"latest"`` → the newest committed snapshot's name; other names are checked and returned."""
        return self._latest().name if name == "latest" else check_name(name)

    def _latest(self, accept: Callable[[Manifest], bool] | None = resumable,
                listed: dict[str, Blob] | None = None) -> Manifest:
        """The manifest, as read, of the committed snapshot with the greatest ``(created, name)``
        (the order of :meth:`snapshots`), found from manifest files alone (``listed``: a listing
        just taken): any rank on any host can resolve it without the LMDB index. Only snapshots
        ``accept`` takes count (by default not imports: see :func:`casckpt.manifest.resumable`)
        unless there are no others.

        A manifest is published after its ``created`` time, so once a manifest created at C is
        seen, files last modified more than ``LATEST_SKEW`` seconds before C cannot be newer and
        are not read (the margin absorbs clock skew between hosts sharing the store).
        """
        # NOTE: a listing without times (None) sorts last and is never skipped.
        listed = self.listed() if listed is None else listed
        paths = [(b.mtime if b.mtime is not None else math.inf, name) for name, b in listed.items()]
        best: tuple[str, str, Manifest | None] | None = None
        for mtime, name in sorted(paths, reverse=True):
            if best is not None and mtime < _timestamp(best[0]) - LATEST_SKEW:
                break
            head = _HEADS.get((self.backend.url, name, listed[name].version)) if accept in (None, resumable) else None
            if head is not None:  # NOTE: parsed before by this process, under this very version
                if (accept is None or head[1]) and (best is None or (head[0], name) > best[:2]):
                    best = (head[0], name, None)
                continue
            try:
                m = self.manifest(name, version=listed[name].version)
            except SnapshotNotFoundError:
                continue
            except CasckptError as exc:  # NOTE: one damaged manifest must not block every resume
                if accept is not None:  # warn once (a second pass without ``accept`` may follow)
                    log.warning("casckpt: 'latest' skips snapshot %s, whose manifest is unreadable: %s", name, exc)
                continue
            if accept is not None and not accept(m):
                continue
            if best is None or (m.created, name) > best[:2]:
                best = (m.created, name, m)
        if best is None and accept is not None:
            return self._latest(None, listed)  # NOTE: the same listing; the parses are kept
        if best is None:
            raise SnapshotNotFoundError(f"store {self.root} has no snapshots (asked for 'latest')")
        if best[2] is None:  # chosen by its head alone: read it now (deleted meanwhile: look again)
            try:
                return self.manifest(best[1], version=listed[best[1]].version)
            except SnapshotNotFoundError:
                return self._latest(accept)
        return best[2]

    def exists(self, name: str) -> bool:
        view = self.hold_view()
        if view is not None and view.blobs is not None and name in view.named:
            return True  # NOTE: listed under this hold, and only an exclusive one deletes it
        return self.backend.exists(self.manifest_key(name))

    def manifest(self, name: str, *, version: Hashable | None = None) -> Manifest:
        """The committed manifest of ``name`` (or ``"latest"``), fully validated.

        A committed manifest never changes in place (overwrite replaces it), so parses are kept for
        the few most recent ones, keyed by the blob's version (:meth:`Backend.version`: a file's
        identity, an object's ETag), or by its bytes where the back-end has none: resolving
        "latest" and then loading it reads and parses the manifest once. ``version``, the blob's
        version as a listing just gave it (:meth:`listed`), lets a kept parse answer without a
        request; without it, the version is asked for (a HEAD on object storage) only when a
        parse of ``name`` is kept, and otherwise comes with the bytes. Under a hold of the lock
        on object storage, a version read under that hold answers instead (see :meth:`hold_view`).
        """
        if name == "latest":
            return self._latest()  # NOTE: the manifest it chose, as read: no second look
        name = check_name(name)
        path = self.manifest_key(name)
        view = self.hold_view()
        try:
            tag = version
            if tag is None and view is not None:
                tag = view.versions.get(name) or (view.named[name].version if name in view.named else None)
            if tag is None and any(n == name for n, _ in self._parsed):  # NOTE: else a HEAD spares nothing
                tag = self.backend.version(path)
            if tag is not None and (name, tag) in self._parsed:
                self._parsed.move_to_end((name, tag))
                return self._parsed[(name, tag)]
            # NOTE: the version read with the bytes: one GET on object storage, or taken before the
            # read, so a manifest replaced meanwhile is kept under the older version, never the reverse
            data, tag = self.backend.get_versioned(path)
        except BlobNotFoundError:
            raise SnapshotNotFoundError(f"no snapshot {name!r} in store {self.root}") from None
        except CasckptError:
            raise  # a symlink planted in the store (UnsafePathError)
        except OSError as exc:  # a folder where the manifest should be, an I/O error
            raise ManifestError(f"manifest of snapshot {name!r} in {self.root} is unreadable: "
                                f"{exc.strerror or exc}") from None
        if view is not None and tag is not None:
            view.versions[name] = tag
        key = (name, data if tag is None else tag)  # NOTE: without a version, equal bytes
        if key in self._parsed:
            self._parsed.move_to_end(key)
            return self._parsed[key]
        try:
            m = Manifest.from_bytes(data, source=f"manifest of snapshot {name!r} in {self.root}")
        except ManifestError as exc:
            if str(exc).startswith("manifest of"):
                raise
            raise ManifestError(f"manifest of snapshot {name!r} in {self.root}: {exc}") from None
        if m.name != name:
            raise ManifestError(f"manifest {self.backend.url}/{path} names snapshot {m.name!r}, not {name!r}")
        self._parsed[key] = m
        while len(self._parsed) > 8:
            self._parsed.popitem(last=False)
        if tag is not None:
            _HEADS.put((self.backend.url, name, tag), (m.created, resumable(m)))
        return m

    def snapshot_names(self) -> list[str]:
        """Names of committed snapshots, from the manifests (the source of truth)."""
        return list(self.listed())

    def listed(self) -> dict[str, Blob]:
        """Every committed snapshot's manifest blob by name (its size and, where the listing
        gives them, its time and version): one listing of ``snapshots/`` (once per hold of the
        lock on object storage: see :meth:`hold_view`)."""
        view = self.hold_view()
        if view is not None and view.blobs is not None:
            return dict(view.named)
        blobs = list(self.backend.list(SNAPSHOTS))
        out = {}
        for blob in blobs:
            f = blob.key[len(SNAPSHOTS):]
            if f.endswith(".json") and is_valid_name(f[:-5]):
                out[f[:-5]] = blob
        if view is not None:
            view.blobs, view.named = blobs, dict(out)
        return out

    def read_manifests(self, progress: Callable[[int, int], None] | None = None, *,
                       listed: dict[str, Blob] | None = None) -> tuple[dict[str, Manifest], dict[str, str]]:
        """Every committed manifest that parses, and ``{name: why}`` for those that do not (a
        snapshot deleted meanwhile is in neither). ``progress(done, total)`` counts manifests;
        ``listed``: a listing the caller has just taken (:meth:`listed`)."""
        good, bad = {}, {}
        listed = self.listed() if listed is None else listed
        for i, name in enumerate(listed, 1):
            try:
                good[name] = self.manifest(name, version=listed[name].version)
            except SnapshotNotFoundError:
                pass  # deleted meanwhile (a reader without the lock)
            except CasckptError as exc:
                bad[name] = str(exc)
            if progress:
                progress(i, len(listed))
        return good, bad

    def snapshots(self) -> list[SnapshotInfo]:
        """Every committed snapshot, oldest first (registry totals; manifests fill any gap).

        A snapshot without a registry row whose manifest cannot be read is left out with a
        warning (``casckpt.usage.ls`` lists it as damaged). Needs no write: on a full disk or a
        read-only store the missing rows are computed and not saved."""
        table = self.index.snapshot_table()
        out = []
        for name in self.snapshot_names():
            row = table.get(name)
            if row is None:  # committed, but the process died before it updated the registry
                try:
                    row = _registry_row(self.manifest(name))
                except SnapshotNotFoundError:
                    continue  # deleted meanwhile
                except CasckptError as exc:
                    log.warning("casckpt: snapshot %s has an unreadable manifest: %s", name, exc)
                    continue
                self._put_row(name, row)
            out.append(SnapshotInfo(name, row["created"], row["logical_bytes"], row["chunks"]))
        return sorted(out, key=lambda s: (s.created, s.name))

    def _put_row(self, name: str, row: dict) -> None:
        """Save a registry row; it is a cache, so a full disk or read-only index only costs a re-read."""
        try:
            self.index.put_snapshot(name, row)
        except (StoreIOError, IndexDamagedError):
            pass

    def stray_files(self) -> list[str]:
        """Names in ``snapshots/`` that are not manifests casckpt could have written (reported by
        verify, never read, never deleted)."""
        view = self.hold_view()
        if view is not None and view.blobs is None:
            self.listed()  # NOTE: fills the view, so the listing serves both
        blobs = view.blobs if view is not None else self.backend.list(SNAPSHOTS)
        names = {b.key[len(SNAPSHOTS):].split("/")[0] for b in blobs}
        return sorted(f for f in names if not (f.endswith(".json") and is_valid_name(f[:-5])))

    def _publish(self, key: str, data: bytes, *, overwrite: bool) -> None:
        self.check_lock()  # NOTE: a save whose lock lapsed must fail before its commit
        self._changed()
        if overwrite:
            self.backend.replace(key, [data], sync=self.sync)
        elif not self.backend.put_if_absent(key, [data], sync=self.sync):  # committed meanwhile
            name = key[len(SNAPSHOTS):-len(".json")]
            raise SnapshotExistsError(f"snapshot {name!r} already exists in store {self.root}")

    def delete(self, name: str) -> None:
        """Forget snapshot ``name`` (its manifest); its chunks stay until ``gc``."""
        self.delete_all([name])

    def delete_all(self, names: Iterable[str]) -> list[str]:
        """Forget every snapshot in ``names``, all or none: under one hold of the exclusive lock,
        each must exist before any goes. A damaged manifest can be deleted. Returns the names."""
        names = list(dict.fromkeys(check_name(n) for n in names))
        with self.lock(EXCLUSIVE):
            missing = [n for n in names if not self.backend.exists(self.manifest_key(n))]
            if missing:
                raise SnapshotNotFoundError(f"no snapshot {', '.join(map(repr, missing))} in store "
                                            f"{self.root}; nothing removed")
            self.forget(names)
        return names

    def unpublish(self, names: Iterable[str]) -> None:
        """Delete manifests, durably (the caller holds the exclusive lock, checked before each
        delete request: batches of the back-end's ``delete_batch``, one request each on S3)."""
        keys = [self.manifest_key(n) for n in names]
        self._changed()
        self.backend.delete_batched(keys, before=self.check_lock)
        if self.sync and keys:
            self.backend.sync(keys)

    def _changed(self) -> None:
        """This process is about to write ``snapshots/``: what the current hold's view holds of it
        would be out of date (the view's caught-up index stays: the commit indexes its own)."""
        view = self.hold_view()
        if view is not None:
            view.blobs, view.named, view.versions = None, {}, {}

    def forget(self, names: Iterable[str]) -> None:
        """Delete manifests durably, then their registry rows (the caller holds the exclusive
        lock; gc and :meth:`delete_all` both forget through here)."""
        names = list(names)
        self.unpublish(names)
        for n in names:
            self.index.remove_snapshot(n)


def _timestamp(created: str) -> float:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return float("-inf")  # an unexpected format: read every manifest


def _registry_row(m: Manifest) -> dict:
    """A snapshot's registry row: its totals, and the labels ``ls`` shows (so ls reads no manifest)."""
    seq, user = m.meta.get("seq"), m.meta.get("user")
    return {"created": m.created, "logical_bytes": m.logical_bytes, "chunks": m.refs,
            **({"seq": seq} if type(seq) is int else {}), "tags": tags_of(m),
            "user": user if isinstance(user, dict) else None, "origin": "save" if resumable(m) else "import"}
