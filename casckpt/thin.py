"""Item-level thinning: old snapshots keep their model weights and lose, say, their optimizer state.

``gc --thin-older-than N --drop-items 'optim.*'`` rewrites the manifest of every kept snapshot
but the newest N without the items whose name (the FQN, for DCP snapshots) matches a pattern
(``fnmatch``: ``*`` matches dots too). In a DCP snapshot the entries of DCP's metadata go with
them, so the result loads with a state dict of the remaining keys (the model alone). The chunks
only the dropped items referenced are then unreferenced, and the same gc deletes them.

A rewrite is atomic (temp file, fsync, rename over the old manifest, fsync the folder: the
publish step of a save) and keeps the name, ``created`` and ``seq``; ``meta["thinned"]`` records
the patterns and how many items went. See docs/FORMAT.md, "Thinned snapshots".
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from .errors import CasckptError
from .manifest import Manifest, key_fqn


def targets(kept: list[str], older_than: int | None) -> list[str]:
    """The kept snapshots (oldest first) that thinning applies to: all but the newest ``older_than``."""
    if older_than is None:
        return []
    if older_than < 1:
        raise CasckptError("thin_older_than must be >= 1: the newest snapshot is never thinned")
    return kept[:-older_than]


def thinned(m: Manifest, patterns: tuple[str, ...], seq: int | None = None) -> Manifest | None:
    """``m`` without the items matching ``patterns``; ``None`` when none match."""
    dcp = "dcp" in m.meta
    name = (lambda k: key_fqn(k)) if dcp else (lambda k: k)
    gone = {k for k in m.items if any(fnmatch.fnmatchcase(name(k), p) for p in patterns)}
    if not gone:
        return None
    meta = dict(m.meta)
    if dcp:
        fqns = {name(k) for k in gone}
        d = dict(meta["dcp"])
        d["state_dict_metadata"] = {f: v for f, v in d.get("state_dict_metadata", {}).items() if f not in fqns}
        if d.get("planner_data") is not None:
            d["planner_data"] = {f: v for f, v in d["planner_data"].items() if f not in fqns}
        meta["dcp"] = d
    before = meta.get("thinned") if isinstance(meta.get("thinned"), dict) else {}
    old = [p for p in before.get("patterns", []) if isinstance(p, str)] if isinstance(before.get("patterns"), list) else []
    meta["thinned"] = {"patterns": sorted(set(old) | set(patterns)),
                       "items": (before.get("items") if type(before.get("items")) is int else 0) + len(gone)}
    if "seq" not in meta and seq is not None:
        meta["seq"] = seq  # NOTE: freeze the number retention gave it, so keep-every stays stable
    return replace(m, items={k: v for k, v in m.items.items() if k not in gone}, meta=meta)
