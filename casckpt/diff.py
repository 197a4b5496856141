"""Compare two snapshots item by item, by chunk digests; optionally measure how far values moved.

Names are DCP FQNs: in a snapshot whose manifest ``meta`` has ``"dcp"``, shard items
``fqn@o0,o1,...`` are grouped under their FQN. An item whose chunk digests all match is unchanged,
known without reading a byte. With ``values=True`` only the chunks whose digests differ are read
(one from each side) and decoded to float64, bfloat16 and float8 included, without torch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import dtypes
from .manifest import Item, Manifest, key_fqn
from .pipeline import Ticker
from .store import Store

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ItemChange:
    """How a changed item differs. Counts are of B's chunks; when dtype, shape or sharding
    differ (``layout_changed``) every chunk counts as differing and values are not compared.

    ``max_abs_diff`` is max |a−b| and ``rel_l2`` is ‖b−a‖₂ / ‖a‖₂ over the differing chunks
    (unchanged chunks add nothing to ‖b−a‖ and are not read); both ``None`` unless ``values``
    was asked for and the dtype is numeric, and ``None`` when not finite or undefined.
    """

    dtype: str
    shape: tuple[int, ...] | None  # None for a sharded item (several shards)
    chunks: int
    chunks_differ: int
    bytes: int
    bytes_differ: int
    layout_changed: bool = False
    max_abs_diff: float | None = None
    rel_l2: float | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class DiffResult:
    a: str
    b: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    changes: dict[str, ItemChange] = field(default_factory=dict)
    chunks_read: int = 0

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "identical": self.identical, "added": list(self.added),
                "removed": list(self.removed), "changed": list(self.changed),
                "unchanged": list(self.unchanged), "chunks_read": self.chunks_read,
                "changes": {k: v.to_json() for k, v in self.changes.items()}}


def diff(store: Store, a: str, b: str, *, values: bool = False, progress: Progress | None = None) -> DiffResult:
    """Compare snapshots ``a`` and ``b`` (either may be ``"latest"``). ``progress(done, total)`` is
    called as differing chunks are read (``values`` only), from one thread at a time. With
    ``values`` the store's shared lock is held, so gc cannot delete chunks being read."""
    with store.reading() if values else contextlib.nullcontext():
        return _diff(store, a, b, values, progress)


def _diff(store: Store, a: str, b: str, values: bool, progress: Progress | None) -> DiffResult:
    ma, mb = store.manifest(a), store.manifest(b)
    ga, gb = groups(ma), groups(mb)
    changes = {}
    for fqn in sorted(ga.keys() & gb.keys()):
        change = _compare([ma.items[k] for k in ga[fqn]], [mb.items[k] for k in gb[fqn]], ga[fqn] == gb[fqn])
        if change is not None:
            changes[fqn] = change
    read = 0
    if values:
        changes, read = _measure(store, ma, mb, ga, changes, progress)
    return DiffResult(ma.name, mb.name, tuple(sorted(gb.keys() - ga.keys())), tuple(sorted(ga.keys() - gb.keys())),
                      tuple(changes), tuple(sorted(f for f in ga.keys() & gb.keys() if f not in changes)),
                      changes, read)


def fqn(key: str, manifest: Manifest) -> str:
    """The FQN of an item key: the shard suffix ``@o0,o1,...`` stripped in DCP snapshots."""
    return key_fqn(key) if "dcp" in manifest.meta else key


def groups(manifest: Manifest) -> dict[str, list[str]]:
    """Item keys by FQN, each list sorted."""
    out: dict[str, list[str]] = {}
    for key in manifest.items:
        out.setdefault(fqn(key, manifest), []).append(key)
    return {f: sorted(ks) for f, ks in out.items()}


def _compare(ia: list[Item], ib: list[Item], same_keys: bool) -> ItemChange | None:
    """``None`` when every chunk digest matches; else what differs."""
    head = ib[0]
    shape = head.shape if len(ib) == 1 else None
    n, nbytes = sum(len(i.chunks) for i in ib), sum(i.nbytes for i in ib)
    same_layout = same_keys and all(x.dtype == y.dtype and x.shape == y.shape and len(x.chunks) == len(y.chunks)
                                    for x, y in zip(ia, ib))
    if not same_layout:
        return ItemChange(head.dtype, shape, n, n, nbytes, nbytes, layout_changed=True)
    diffs = [cb for x, y in zip(ia, ib) for ca, cb in zip(x.chunks, y.chunks) if ca.digest != cb.digest]
    if not diffs:
        return None
    return ItemChange(head.dtype, shape, n, len(diffs), nbytes, sum(c.length for c in diffs))


def _numeric(dtype: str) -> bool:
    return dtype not in ("bool", "bytes") and not dtype.startswith("complex")


def _measure(store: Store, ma: Manifest, mb: Manifest, ga: dict[str, list[str]],
             changes: dict[str, ItemChange], progress: Progress | None) -> tuple[dict[str, ItemChange], int]:
    """Read only the differing chunk pairs and fill in max |a−b| and relative L2 change."""
    tasks = []
    for f, ch in changes.items():
        if ch.layout_changed or not _numeric(ch.dtype):
            continue
        for key in ga[f]:
            for ca, cb in zip(ma.items[key].chunks, mb.items[key].chunks):
                if ca.digest != cb.digest:
                    tasks.append((f, ch.dtype, ca.digest, cb.digest))
    ticker = Ticker(progress, len(tasks))

    def one(t):
        f, name, da, db = t
        xa, xb = _decode(store, name, da, f), _decode(store, name, db, f)
        with np.errstate(all="ignore"):
            same = (xa == xb) | (np.isnan(xa) & np.isnan(xb))
            d = np.where(same, 0.0, xb - xa)
            out = float(np.max(np.abs(d))) if d.size else 0.0, float(np.sum(d * d)), float(np.sum(xa * xa))
        ticker.tick()
        return (f, *out)

    acc: dict[str, list[float]] = {}
    for f, mx, ssd, ssa in store.pipeline.map(one, tasks):
        r = acc.setdefault(f, [0.0, 0.0, 0.0])
        r[0] = mx if math.isnan(mx) else max(r[0], mx)
        r[1] += ssd
        r[2] += ssa
    out = dict(changes)
    for f, (mx, ssd, ssa) in acc.items():
        rel = math.sqrt(ssd) / math.sqrt(ssa) if ssa else None
        out[f] = _replace(changes[f], max_abs_diff=_finite(mx), rel_l2=_finite(rel))
    return out, 2 * len(tasks)


def _decode(store: Store, name: str, digest, item: str) -> np.ndarray:
    dt = dtypes.lookup(name)
    raw = store.chunks.get(digest, item=item)
    return dtypes.to_float64(name, np.frombuffer(raw, dtype=np.dtype(dt.numpy)))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _replace(c: ItemChange, **kw) -> ItemChange:
    return ItemChange(**{**asdict(c), **kw})
