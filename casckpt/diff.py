"""Compare two snapshots item by item, by chunk digests; optionally measure how far values moved.

Names are DCP FQNs: in a snapshot whose manifest ``meta`` has ``"dcp"``, shard items
``fqn@o0,o1,...`` are grouped under their FQN. An item whose chunk digests all match is unchanged,
known without reading a byte. With ``values=True`` only the chunks whose digests differ are read
(one from each side) and decoded to float64, bfloat16 and float8 included, without torch.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import dtypes
from .manifest import Item, Manifest, key_fqn
from .pipeline import Tally
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
    norm_diff: float | None = None  # ‖b−a‖₂ and ‖a‖₂ over the differing chunks (``values``)
    norm_a: float | None = None
    value_a: str | None = None  # small items (step, lr, ...): the values as text
    value_b: str | None = None

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
    renamed: tuple[tuple[str, str], ...] = ()  # (name in A, name in B): the same chunks, moved

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.renamed)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "identical": self.identical, "added": list(self.added),
                "removed": list(self.removed), "renamed": [list(r) for r in self.renamed],
                "changed": list(self.changed),
                "unchanged": list(self.unchanged), "chunks_read": self.chunks_read,
                "changes": {k: v.to_json() for k, v in self.changes.items()}}


def diff(store: Store, a: str, b: str, *, values: bool = False, small_values: bool = True,
         progress: Progress | None = None) -> DiffResult:
    """Compare snapshots ``a`` and ``b`` (either may be ``"latest"``). ``progress(done, total)`` is
    called as differing chunks are read (``values`` only), from one thread at a time. Names come
    in natural order (``state.2`` before ``state.10``). An item only in B whose chunks are exactly
    those of an item only in A is reported as renamed, not as added and removed. ``small_values``
    reads changed small items (see :mod:`casckpt.values`) and reports their values as text.
    When chunks are read (``values``, ``small_values``) the store's shared lock is held, so gc
    cannot delete them meanwhile."""
    with store.reading() if values or small_values else contextlib.nullcontext():
        return _diff(store, a, b, values, small_values, progress)


def _diff(store: Store, a: str, b: str, values: bool, small_values: bool, progress: Progress | None) -> DiffResult:
    ma, mb = store.manifest(a), store.manifest(b)
    ga, gb = groups(ma), groups(mb)
    changes = {}
    for fqn in sorted(ga.keys() & gb.keys(), key=natural_key):
        change = _compare([ma.items[k] for k in ga[fqn]], [mb.items[k] for k in gb[fqn]], ga[fqn] == gb[fqn])
        if change is not None:
            changes[fqn] = change
    read = 0
    if values:
        changes, read = _measure(store, ma, mb, ga, changes, progress)
    if small_values:
        changes = _small_values(store, ma, mb, ga, gb, changes)
    renamed = _renames(ma, mb, ga, gb)
    moved_from, moved_to = {r[0] for r in renamed}, {r[1] for r in renamed}
    return DiffResult(ma.name, mb.name, _sorted(gb.keys() - ga.keys() - moved_to),
                      _sorted(ga.keys() - gb.keys() - moved_from), tuple(changes),
                      _sorted(f for f in ga.keys() & gb.keys() if f not in changes), changes, read, renamed)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``state.2`` before ``state.10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _sorted(names) -> tuple[str, ...]:
    return tuple(sorted(names, key=natural_key))


def _signature(m: Manifest, fqn: str, keys: list[str]) -> tuple:
    """What an FQN holds, its name aside: shard suffixes, dtypes, shapes and chunk digests."""
    return tuple((k[len(fqn):], m.items[k]) for k in keys)  # an Item compares dtype, shape, refs


def _renames(ma: Manifest, mb: Manifest, ga: dict, gb: dict) -> tuple[tuple[str, str], ...]:
    """Pairs (old, new) of FQNs only in A and only in B that hold the same chunks. Items without
    chunks (empty tensors) say nothing about identity and are never paired."""
    gone: dict[tuple, list[str]] = {}
    for f in _sorted(ga.keys() - gb.keys()):
        sig = _signature(ma, f, ga[f])
        if any(len(part[1]) for part in sig):
            gone.setdefault(sig, []).append(f)
    out = []
    for f in _sorted(gb.keys() - ga.keys()):
        olds = gone.get(_signature(mb, f, gb[f]))
        if olds:
            # NOTE: equal contents under several names (zeros, copies): pair the most alike names
            old = max(olds, key=lambda o: _common_suffix(o, f))
            olds.remove(old)
            out.append((old, f))
    return tuple(out)


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _small_values(store: Store, ma: Manifest, mb: Manifest, ga: dict, gb: dict,
                  changes: dict[str, ItemChange]) -> dict[str, ItemChange]:
    from .values import is_small, text

    out = dict(changes)
    for f, ch in changes.items():
        if len(ga[f]) == 1 and len(gb[f]) == 1 and is_small(ma.items[ga[f][0]]) and is_small(mb.items[gb[f][0]]):
            out[f] = _replace(ch, value_a=text(store, ma, ga[f][0]), value_b=text(store, mb, gb[f][0]))
    return out


@dataclass(frozen=True, slots=True)
class ModuleStat:
    """``diff --stat``: one module's changed items (``+added -removed ~changed``), the bytes of
    its changed items that differ, and its relative L2 change over them (with ``values``; 0-d
    items such as step counters are left out of it)."""

    module: str
    added: int
    removed: int
    changed: int
    bytes_differ: int
    rel_l2: float | None

    def to_json(self) -> dict:
        return asdict(self)


def stat(r: DiffResult, *, depth: int | None = None) -> list[ModuleStat]:
    """Per-module summary of ``r``: a name's module is its first ``depth`` dotted parts, or
    (default) the name without its last part. Rows in natural order of module."""
    rows: dict[str, list] = {}

    def row(name: str) -> list:
        parts = name.split(".")
        mod = ".".join(parts[:depth] if depth else parts[:-1]) or name
        return rows.setdefault(mod, [0, 0, 0, 0, 0.0, 0.0, False])

    for n in r.added:
        row(n)[0] += 1
    for n in r.removed:
        row(n)[1] += 1
    for n, c in r.changes.items():
        x = row(n)
        x[2] += 1
        x[3] += c.bytes_differ
        # NOTE: scalars (step counters) would swamp a module's tensors; their values show in diff
        if c.norm_diff is not None and c.norm_a is not None and c.shape != ():
            x[4] += c.norm_diff ** 2
            x[5] += c.norm_a ** 2
            x[6] = True
    return [ModuleStat(m, a, d, c, nb, _finite(math.sqrt(sd) / math.sqrt(sa)) if has and sa else None)
            for m, (a, d, c, nb, sd, sa, has) in sorted(rows.items(), key=lambda kv: natural_key(kv[0]))]


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
    diffs = [cb for x, y in zip(ia, ib) for ca, cb in zip(x.chunks, y.chunks) if ca != cb]
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
                if ca != cb:  # NOTE: refs, not digests: two parts of one chunk differ
                    tasks.append((f, ch.dtype, ca, cb))
    tally = Tally(progress, len(tasks))  # NOTE: workers report from their threads

    def one(t):
        f, name, da, db = t
        xa, xb = _decode(store, name, da, f), _decode(store, name, db, f)
        with np.errstate(all="ignore"):
            same = (xa == xb) | (np.isnan(xa) & np.isnan(xb))
            d = np.where(same, 0.0, xb - xa)
            out = float(np.max(np.abs(d))) if d.size else 0.0, float(np.sum(d * d)), float(np.sum(xa * xa))
        tally.add(1)
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
        out[f] = _replace(changes[f], max_abs_diff=_finite(mx), rel_l2=_finite(rel),
                          norm_diff=_finite(math.sqrt(ssd)), norm_a=_finite(math.sqrt(ssa)))
    return out, 2 * len(tasks)


def _decode(store: Store, name: str, ref, item: str) -> np.ndarray:
    dt = dtypes.lookup(name)
    raw = bytearray(ref.length)
    store.read_ref(ref, memoryview(raw), item=item)
    return dtypes.to_float64(name, np.frombuffer(raw, dtype=np.dtype(dt.numpy)))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _replace(c: ItemChange, **kw) -> ItemChange:
    return ItemChange(**{**asdict(c), **kw})
