"""casckpt.save / casckpt.load: DCP save and load with casckpt's writer, planners and typed errors."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from .. import checkpoint_id as ids
from ..nest import optimizer_states
from ..errors import CasckptError, CheckpointFailedError, InvalidNameError, LoadWarning, StoreNotFoundError
from ..manifest import check_name
from ..store import SaveStats, Store
from .planner import DedupSavePlanner, SafeLoadPlanner
from .reader import CasReader
from .writer import CasWriter


def save(state_dict: dict[str, Any], store: Store | str | os.PathLike, name: str | None = None, *,
         overwrite: bool = False, chunk_size: int | None = None, sync_files: bool = True,
         process_group: dist.ProcessGroup | None = None, meta: dict | None = None,
         tags: list[str] | tuple[str, ...] = (), delta: bool | None = None) -> SaveStats:
    """Save ``state_dict`` as snapshot ``name`` with :class:`CasWriter` and :class:`DedupSavePlanner`.

    Call it on every rank (like ``dcp.save``). Without ``name``, ``store`` is a checkpoint path
    as frameworks pass it: ``save(sd, "/ckpt/run/step-100")`` saves snapshot ``step-100`` into
    the store ``/ckpt/run``. ``delta=False`` stores new chunks whole rather than as deltas
    against the latest snapshot (default: the store's setting; applies when ``store`` is a path).
    Returns the save's statistics on every rank. Raises casckpt's typed errors
    (InvalidNameError, SnapshotExistsError, CorruptChunkError...) rather than DCP's
    CheckpointException; other failures become CheckpointFailedError.

    ``meta`` (a JSON object: loss, config, git commit...) and ``tags`` are recorded in the
    snapshot's manifest (the coordinator's are kept) and shown by ``casckpt ls``.
    """
    if name is None:
        if isinstance(store, Store):
            raise InvalidNameError("casckpt.save needs a snapshot name with an open Store")
        store, name = ids.split(store)
    check_name(name)
    # NOTE: a name taken already fails at the writer's set-up (the coordinator looks, once) and
    # comes back from DCP as SnapshotExistsError on every rank: no look of our own first.
    writer = CasWriter(store, snapshot=name, overwrite=overwrite, chunk_size=chunk_size, sync_files=sync_files,
                       meta=meta, tags=tags, delta=delta)
    try:
        with _quiet():
            dcp.save(state_dict, storage_writer=writer, planner=DedupSavePlanner(), process_group=process_group)
        stats = writer.stats
    except CheckpointException as exc:
        _reraise(exc)
    finally:
        writer.close()
    return _from_coordinator(stats, process_group)


def load(state_dict: dict[str, Any], store: Store | str | os.PathLike, name: str = "latest", *,
         allow_pickle: bool = False, allow_partial_load: bool = False,
         process_group: dist.ProcessGroup | None = None) -> "LoadResult":
    """Load snapshot ``name`` (default the newest) into ``state_dict`` in place, on every rank.

    Byte items (non-tensor state) load with ``torch.load(weights_only=True)``; pass
    ``allow_pickle=True`` only for stores you trust. Returns the snapshot name loaded (a
    :class:`LoadResult`, a ``str``). Checks that the snapshot exists before DCP starts and raises
    casckpt's typed errors. ``store`` may also be a checkpoint path (``/ckpt/run/step-100``, a
    folder that is not itself a store, in a store ``/ckpt/run``): that snapshot is loaded.

    DCP loads only what ``state_dict`` has a place for and casts to its dtypes, silently; this
    says so. Saved items the template lacks (a fresh optimizer's ``state_dict()`` has an empty
    ``state``) are listed in ``LoadResult.not_loaded`` and tensors loaded into another dtype in
    ``LoadResult.cast``, each with a :class:`casckpt.errors.LoadWarning`.
    """
    # NOTE: the shared lock is held from resolving "latest" to the last chunk read: gc waits.
    with _opened(store, name) as (st, name), st.reading():
        resolved = st.resolve(name)
        resolved = _from_coordinator(resolved, process_group)
        st.manifest(resolved)  # missing or damaged: a typed error now, not DCP's AssertionError
        reader = CasReader(st, snapshot=resolved)
        planner = SafeLoadPlanner(allow_pickle=allow_pickle, allow_partial_load=allow_partial_load)
        try:
            with _quiet():
                dcp.load(state_dict, storage_reader=reader, planner=planner, process_group=process_group)
        except CheckpointException as exc:
            _reraise(exc, reader.metadata_error)
    return _report(resolved, planner)


class LoadResult(str):
    """The name of the snapshot :func:`load` loaded (a ``str``, so existing callers are served),
    with ``not_loaded``: saved FQNs the template had no place for, and ``cast``:
    ``{fqn: (saved dtype, loaded dtype)}`` for tensors DCP cast on the way in."""

    not_loaded: tuple[str, ...]
    cast: dict[str, tuple[str, str]]

    def __new__(cls, name: str, not_loaded: tuple[str, ...] = (), cast: dict | None = None) -> "LoadResult":
        self = super().__new__(cls, name)
        self.not_loaded, self.cast = tuple(not_loaded), dict(cast or {})
        return self


def _report(name: str, planner: SafeLoadPlanner) -> LoadResult:
    """Warn about, and return, what the load left out or cast."""
    out = LoadResult(name, getattr(planner, "not_loaded", ()), getattr(planner, "casts", {}))
    if out.not_loaded:
        shown = ", ".join(out.not_loaded[:8]) + (f", … ({len(out.not_loaded) - 8} more)" if len(out.not_loaded) > 8 else "")
        hint = (" (a fresh optimizer's state_dict() has an empty 'state': load into one that has "
                "stepped, or its saved state is lost)" if any(".state." in f for f in out.not_loaded) else "")
        warnings.warn(f"casckpt.load: {len(out.not_loaded)} items saved in snapshot {name!r} were not loaded: "
                      f"the state dict given has no place for them: {shown}{hint}", LoadWarning, stacklevel=3)
    if out.cast:
        shown = ", ".join(f"{k} {a}->{b}" for k, (a, b) in list(out.cast.items())[:8])
        warnings.warn(f"casckpt.load: {len(out.cast)} tensors of snapshot {name!r} were cast to the "
                      f"template's dtype: {shown}", LoadWarning, stacklevel=3)
    return out


def read_state(store: Store | str | os.PathLike, name: str = "latest", *,
               allow_pickle: bool = False) -> dict[str, Any]:
    """The whole state dict of a snapshot, nested as it was saved, without a template to load into.

    For one process (it holds the whole state in memory): exporters, and framework plugins whose
    load API returns a dict (Lightning's ``CheckpointIO.load_checkpoint``). ``store`` may be a
    checkpoint path, as for :func:`load`. Byte items load with ``torch.load(weights_only=True)``
    unless ``allow_pickle=True`` (trusted stores only).
    """
    with _opened(store, name) as (st, name), st.reading():
        reader = CasReader(st, snapshot=st.resolve(name))
        sd: dict[str, Any] = {}
        try:
            with _quiet():
                # NOTE: dcp.load copies the caller's dict before planning, so the rebuilt state
                # would not reach it; torch's own dcp_to_torch_save calls _load_state_dict too.
                _load_state_dict(sd, storage_reader=reader, planner=_RebuildPlanner(allow_pickle=allow_pickle),
                                 no_dist=True)
        except CheckpointException as exc:
            _reraise(exc, reader.metadata_error)
    return optimizer_states(sd)


class _RebuildPlanner(SafeLoadPlanner, _EmptyStateDictLoadPlanner):
    """Rebuilds the nested state dict from the snapshot's DCP metadata; byte items load safely."""


@contextlib.contextmanager
def _opened(store: Store | str | os.PathLike, name: str):
    """``(Store, name)`` for a load: an open Store as it is; a path opened here and closed after,
    where a checkpoint path ``STORE/NAME`` (with ``name`` left at "latest") names that snapshot."""
    if isinstance(store, Store):
        yield store, name
        return
    st, name = _store_and_name(os.fspath(store), name)
    try:
        yield st, name
    finally:
        st.close()


def _store_and_name(path: str, name: str) -> tuple[Store, str]:
    """The store at ``path``, or (``name`` left at "latest") at the parent of a checkpoint path
    ``STORE/NAME``, opened; reading the config tells which (no is_store() look first)."""
    try:
        return Store.open(path), name
    except StoreNotFoundError:
        if name != "latest" or not ids.is_path(path):
            raise
        parent, name = ids.split(path, allow_latest=True)
        try:
            return Store.open(parent), name
        except StoreNotFoundError:
            pass
        raise  # NOTE: neither is a store: the error names the path given


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _from_coordinator(value: Any, group: dist.ProcessGroup | None) -> Any:
    """``value`` as the coordinator (rank 0 of ``group``) has it, on every rank."""
    if not _distributed() or dist.get_world_size(group) == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group or dist.group.WORLD, 0), group=group)
    return box[0]


@contextlib.contextmanager
def _quiet():
    """Silence DCP's warning that a process without a process group checkpoints alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _reraise(exc: CheckpointException, extra: BaseException | None = None) -> None:
    cause = _cause(exc, extra)
    if cause is exc:
        raise exc
    raise cause from exc


def _cause(exc: CheckpointException, extra: BaseException | None = None) -> BaseException:
    """The error to raise instead of DCP's CheckpointException (a BaseException): a
    KeyboardInterrupt, SystemExit or other non-Exception from the lowest failing rank unchanged
    (``except KeyboardInterrupt`` must still work), else our typed cause from the lowest failing
    rank if there is one, else CheckpointFailedError."""
    causes = [e for _, (e, _tb) in sorted(exc.failures.items())]
    if extra is not None:
        causes.append(extra)
    for e in causes:
        if not isinstance(e, Exception):
            return e
    for e in causes:
        if isinstance(e, CasckptError):
            return e
    first = causes[0] if causes else exc
    return CheckpointFailedError(f"DCP checkpoint failed: {type(first).__name__}: {first}")
