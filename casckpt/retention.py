"""Retention policies: which snapshots a gc keeps, decided from things that do not shift between runs.

* ``last=N``: the newest N snapshots.
* ``every=K``: snapshots whose save number ``seq`` is a multiple of K. ``seq`` is recorded in
  the manifest when the snapshot is committed (one more than the newest snapshot's), so
  deleting snapshots never renumbers the others and a second gc with the same K keeps the same
  set. Snapshots saved before casckpt recorded ``seq`` are numbered by their position among
  themselves, oldest first.
* ``hourly/daily/weekly/monthly=N`` (as restic): for the newest N hours/days/ISO weeks/months that
  hold a snapshot, the newest snapshot of each. Calendar units are in local time (``TZ``) unless
  a ``tz`` is given.
* ``within=seconds``: every snapshot created within that long before the newest one.
* ``keep``: these names (each must exist).

The union is kept; a policy with no rule keeps every snapshot. :func:`select` says why each kept
snapshot is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Iterable

from .errors import CasckptError, SnapshotNotFoundError

BUCKETS = {"hourly": "%Y-%m-%d %H", "daily": "%Y-%m-%d", "weekly": "%G-W%V", "monthly": "%Y-%m"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class Policy:
    last: int | None = None
    every: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    within: float | None = None
    keep: tuple[str, ...] = ()
    utc: bool = False  # calendar units in UTC rather than local time

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("last", "every", "hourly", "daily", "weekly",
                                                        "monthly", "within")) and not self.keep

    def check(self) -> None:
        if self.every is not None and self.every < 1:
            raise CasckptError("keep_every must be >= 1")
        for f in ("last", "hourly", "daily", "weekly", "monthly", "within"):
            if (getattr(self, f) or 0) < 0:
                raise CasckptError(f"keep_{f} must be >= 0")


@dataclass(frozen=True, slots=True)
class Snap:
    """What retention needs of a snapshot: its name, creation time (UTC) and save number."""

    name: str
    created: datetime | None
    seq: int | None


def select(snaps: list[Snap], policy: Policy, *, tz: tzinfo | None = None) -> dict[str, list[str]]:
    """The kept snapshots of ``snaps`` (oldest first) and, for each, the rules that keep it."""
    policy.check()
    tz = timezone.utc if policy.utc and tz is None else tz
    names = [s.name for s in snaps]
    missing = [k for k in policy.keep if k not in names]
    if missing:
        raise SnapshotNotFoundError(f"--keep names snapshots that do not exist: {', '.join(missing)}")
    if policy.empty:
        return {n: ["no policy"] for n in names}
    why: dict[str, list[str]] = {}

    def mark(s: Snap, reason: str) -> None:
        why.setdefault(s.name, []).append(reason)

    for s in snaps:
        if s.name in policy.keep:
            mark(s, "named")
    for s in snaps[max(0, len(snaps) - policy.last):] if policy.last else ():
        mark(s, "last")
    if policy.every:
        for s, seq in zip(snaps, seqs(snaps)):
            if seq % policy.every == 0:
                mark(s, f"every {policy.every} (seq {seq})")
    for rule, pattern in BUCKETS.items():
        _buckets(snaps, getattr(policy, rule), pattern, rule, tz, mark)
    if policy.within is not None:
        _within(snaps, policy.within, mark)
    return {n: why[n] for n in names if n in why}


def seqs(snaps: list[Snap]) -> list[int]:
    """Each snapshot's save number; those without one are numbered by position among themselves."""
    pos = iter(range(len(snaps)))
    return [s.seq if s.seq is not None else next(pos) for s in snaps]


def _buckets(snaps, n, pattern, rule, tz, mark) -> None:
    if not n:
        return
    seen: list[str] = []
    for s in reversed(snaps):  # newest first: the first of each bucket is its newest
        if s.created is None:
            continue
        key = s.created.astimezone(tz).strftime(pattern)
        if key not in seen:
            if len(seen) == n:
                return
            seen.append(key)
            mark(s, f"{rule} {key}")


def _within(snaps, seconds, mark) -> None:
    times = [s.created for s in snaps if s.created is not None]
    if not times:
        return
    since = max(times) - timedelta(seconds=seconds)
    for s in snaps:
        if s.created is not None and s.created >= since:
            mark(s, "within")


def parse_duration(text: str) -> float:
    """``2d``, ``12h``, ``1w3d``, ``90m``, ``30s`` as seconds (a bare number is days)."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 86400
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise CasckptError(f"bad duration {text!r}: use a number and a unit s, m, h, d or w, e.g. 2d or 1d12h")
    return sum(float(a) * _UNITS[u] for a, u in parts)


def parse_created(created: str) -> datetime | None:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def from_names(names: Iterable[str]) -> list[Snap]:
    return [Snap(n, None, None) for n in names]


def of_manifests(infos, manifests) -> list[Snap]:
    """``Snap`` of each of ``infos`` (:class:`casckpt.SnapshotInfo`, oldest first); the save number
    comes from its manifest in ``manifests`` (name -> Manifest), ``None`` if it has none."""
    out = []
    for s in infos:
        seq = manifests[s.name].meta.get("seq")
        out.append(Snap(s.name, parse_created(s.created), seq if type(seq) is int else None))
    return out


def of_store(store, infos) -> list[Snap]:
    """As :func:`of_manifests`, reading each manifest from ``store``."""
    return of_manifests(infos, {s.name: store.manifest(s.name) for s in infos})
