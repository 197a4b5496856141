"""DCP checkpoint ids as paths: how ``checkpoint_id="/ckpt/run/step-100"`` names a snapshot.

Training frameworks (torchtitan, Lightning, Accelerate, NeMo) pass DCP a directory path per
checkpoint. casckpt keeps one store for a whole run, so a path id maps to a store and a snapshot:

* a plain name (``"step-100"``, ``"latest"``; no path separator) is a snapshot of the store the
  writer or reader was given;
* a path (``"/ckpt/run/step-100"``, ``"run/step-100"``, any ``os.PathLike``) is snapshot
  ``step-100`` of the store in its parent folder ``/ckpt/run``. A writer or reader given a store
  accepts a path id only inside that store's folder.

The last component must be a valid snapshot name (:func:`casckpt.manifest.check_name`).
"""

from __future__ import annotations

import os

from .errors import InvalidNameError
from .manifest import check_name

LATEST = "latest"


def is_path(checkpoint_id: str | os.PathLike) -> bool:
    """Whether ``checkpoint_id`` is a path (store folder + name) rather than a bare snapshot name."""
    return not isinstance(checkpoint_id, str) or "/" in checkpoint_id or os.sep in checkpoint_id


def split(checkpoint_id: str | os.PathLike, store: str | os.PathLike | None = None, *,
          allow_latest: bool = False) -> tuple[str, str]:
    """``(store folder, snapshot name)`` for a checkpoint id; see the module docstring.

    Raises InvalidNameError when the id has no valid snapshot name, when a bare name comes with no
    store, or when a path lies outside the given store's folder.
    """
    raw = os.fspath(checkpoint_id)
    if not isinstance(raw, str):
        raise InvalidNameError(f"checkpoint id must be a str or path, got {type(raw).__name__}")
    if not is_path(checkpoint_id):
        if store is None:
            raise InvalidNameError(f"checkpoint id {raw!r} is a bare snapshot name and no store was given: "
                                   "pass a store, or an id such as '/ckpt/run/step-100'")
        return os.fspath(store), _name(raw, allow_latest)
    parent, _, last = raw.rstrip("/" + os.sep).rpartition(os.sep if os.sep in raw else "/")
    parent = parent or ("/" if raw.startswith(("/", os.sep)) else ".")
    name = _name(last, allow_latest, shown=raw)
    if store is not None and not _same_folder(parent, os.fspath(store)):
        raise InvalidNameError(f"checkpoint id {raw!r} is outside the store {os.fspath(store)!r}: "
                               f"its parent folder {parent!r} would be the store")
    return parent, name


def is_valid(checkpoint_id: str | os.PathLike, *, allow_latest: bool = False) -> bool:
    try:  # NOTE: a bare name is checked as if a store were given: only the name is in question
        split(checkpoint_id, None if is_path(checkpoint_id) else ".", allow_latest=allow_latest)
    except (InvalidNameError, TypeError):
        return False
    return True


def _name(name: str, allow_latest: bool, *, shown: str | None = None) -> str:
    if allow_latest and name == LATEST:
        return name
    try:
        return check_name(name)
    except InvalidNameError as exc:
        if shown is None:
            raise
        raise InvalidNameError(f"checkpoint id {shown!r}: its last component names the snapshot, and {exc}") from None


def _same_folder(a: str, b: str) -> bool:
    if "://" in a or "://" in b:  # a store on object storage: URLs are compared as written
        return a.rstrip("/") == b.rstrip("/")
    try:
        return os.path.samefile(a, b)
    except OSError:  # not created yet: compare the normalised absolute paths
        return os.path.abspath(a) == os.path.abspath(b)
