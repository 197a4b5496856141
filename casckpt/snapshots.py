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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Hashable, Iterable

from .backends import Blob, BlobNotFoundError
from .errors import (CasckptError, IndexDamagedError, ManifestError, SnapshotExistsError, SnapshotNotFoundError,
                     StoreIOError)
from .lock import EXCLUSIVE
from .manifest import Manifest, check_name, is_valid_name, resumable, tags_of

log = logging.getLogger("casckpt")

# Seconds of clock skew between hosts that "latest" tolerates (see Snapshots._latest).
LATEST_SKEW = 60.0
SNAPSHOTS = "snapshots/"  # manifests: snapshots/NAME.json


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: str
    logical_bytes: int
    chunks: int

    def to_json(self) -> dict:
        return asdict(self)


class Snapshots:
    """Snapshot-directory methods of :class:`casckpt.Store` (a mixin: it uses the store's
    back-end, index, lock and manifest cache)."""

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
        return self._latest() if name == "latest" else check_name(name)

    def _latest(self, accept: Callable[[Manifest], bool] | None = resumable) -> str:
        """The committed snapshot with the greatest ``(created, name)`` (the order of
        :meth:`snapshots`), found from manifest files alone: any rank on any host can resolve it
        without the LMDB index. Only snapshots ``accept`` takes count (by default not imports:
        see :func:`casckpt.manifest.resumable`) unless there are no others.

        A manifest is published after its ``created`` time, so once a manifest created at C is
        seen, files last modified more than ``LATEST_SKEW`` seconds before C cannot be newer and
        are not read (the margin absorbs clock skew between hosts sharing the store).
        """
        # NOTE: a listing without times (None) sorts last and is never skipped.
        listed = self.listed()
        paths = [(b.mtime if b.mtime is not None else math.inf, name) for name, b in listed.items()]
        best: tuple[str, str] | None = None
        for mtime, name in sorted(paths, reverse=True):
            if best is not None and mtime < _timestamp(best[0]) - LATEST_SKEW:
                break
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
            best = max(best or (m.created, name), (m.created, name))
        if best is None and accept is not None:
            return self._latest(None)
        if best is None:
            raise SnapshotNotFoundError(f"store {self.root} has no snapshots (asked for 'latest')")
        return best[1]

    def exists(self, name: str) -> bool:
        return self.backend.exists(self.manifest_key(name))

    def manifest(self, name: str, *, version: Hashable | None = None) -> Manifest:
        """The committed manifest of ``name`` (or ``"latest"``), fully validated.

        A committed manifest never changes in place (overwrite replaces it), so parses are kept for
        the few most recent ones, keyed by the blob's version (:meth:`Backend.version`: a file's
        identity, an object's ETag), or by its bytes where the back-end has none: resolving
        "latest" and then loading it reads and parses the manifest once. ``version``, the blob's
        version as a listing just gave it (:meth:`listed`), lets a kept parse answer without a
        request; without it, the version is asked for (a HEAD on object storage) only when a
        parse of ``name`` is kept, and otherwise comes with the bytes.
        """
        name = self.resolve(name)
        path = self.manifest_key(name)
        try:
            tag = version
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
        return m

    def snapshot_names(self) -> list[str]:
        """Names of committed snapshots, from the manifests (the source of truth)."""
        return list(self.listed())

    def listed(self) -> dict[str, Blob]:
        """Every committed snapshot's manifest blob by name (its size and, where the listing
        gives them, its time and version): one listing of ``snapshots/``."""
        out = {}
        for blob in self.backend.list(SNAPSHOTS):
            f = blob.key[len(SNAPSHOTS):]
            if f.endswith(".json") and is_valid_name(f[:-5]):
                out[f[:-5]] = blob
        return out

    def read_manifests(self, progress: Callable[[int, int], None] | None = None
                       ) -> tuple[dict[str, Manifest], dict[str, str]]:
        """Every committed manifest that parses, and ``{name: why}`` for those that do not (a
        snapshot deleted meanwhile is in neither). ``progress(done, total)`` counts manifests."""
        good, bad = {}, {}
        listed = self.listed()
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
        names = {b.key[len(SNAPSHOTS):].split("/")[0] for b in self.backend.list(SNAPSHOTS)}
        return sorted(f for f in names if not (f.endswith(".json") and is_valid_name(f[:-5])))

    def _publish(self, key: str, data: bytes, *, overwrite: bool) -> None:
        self.check_lock()  # NOTE: a save whose lock lapsed must fail before its commit
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
        self.backend.delete_batched(keys, before=self.check_lock)
        if self.sync and keys:
            self.backend.sync(keys)

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
