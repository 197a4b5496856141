"""The store lock on object storage, where there is no ``flock``: lock objects with a heartbeat
and an expiry, judged by the server's clock (docs/FORMAT.md, "The lock on object storage").

A holder is one object ``locks/<s|x>-<32 hex>.json`` (``s`` shared: saves and reads; ``x``
exclusive: gc and rm). To take the lock a process

1. creates its lock object (a conditional PUT);
2. lists ``locks/``: the server's *Last-Modified* of its own object is "now" on the server's
   clock, and every other object older than ``expiry`` (+ ``slack``) by that clock is **stale**
   (its holder stopped refreshing it: crashed, killed, cut off) and is deleted;
3. holds the lock if no live object conflicts (any other for ``x``; an ``x`` for ``s``); else it
   deletes its object and tries again after a jittered backoff, until ``timeout``.

Two racing takers both write before they list, and listings are strongly consistent on S3, GCS
and Azure, so at least one of them sees the other: never both hold conflicting locks.

While held, a heartbeat thread rewrites the object every ``refresh`` seconds. A holder counts its
protection from the local (monotonic) time at which it *started* its last successful write, and
a write started at ``t`` lands before ``t + deadline`` (the back-end's bound on one operation,
retries included). Nothing is written under the lock (a refresh, a manifest, a delete) unless it
would land before ``expiry - slack`` after that start: past that point the holder has **lapsed**
for good (:meth:`ObjectLock.check` raises :class:`LockLostError`; the heartbeat stops), because
another process may already have judged its object stale. So any write a holder makes lands
before any other process can judge its lock stale.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from .backends import Backend
from .errors import CasckptError, LockLostError, LockTimeoutError
from .lock import EXCLUSIVE, SHARED

log = logging.getLogger("casckpt")

PREFIX = "locks/"
_KEY = re.compile(r"locks/([sx])-([0-9a-f]{32})\.json")
_local = threading.local()


@dataclass(frozen=True)
class Timing:
    """How lock objects age, in seconds. ``expiry`` must exceed ``refresh`` plus the back-end's
    deadline plus ``slack`` (server timestamps have 1-second resolution on S3; clock rates drift)."""

    expiry: float = 600.0
    refresh: float = 60.0
    slack: float = 2.0
    poll: float = 0.25


def _timing_from_env() -> Timing:
    """``CASCKPT_LOCK_TIMING=expiry:refresh:slack`` (seconds) changes the defaults: tests use
    seconds instead of minutes; an operator may lengthen them for a slow link."""
    spec = os.environ.get("CASCKPT_LOCK_TIMING")
    if not spec:
        return Timing()
    try:
        expiry, refresh, slack = (float(x) for x in spec.split(":"))
    except ValueError:
        raise CasckptError(f"CASCKPT_LOCK_TIMING={spec!r}: give expiry:refresh:slack in seconds") from None
    return Timing(expiry, refresh, slack, poll=min(0.25, refresh))


TIMING = _timing_from_env()


def _holds() -> dict[str, list["ObjectLock"]]:
    """The calling thread's holds, by store URL, oldest first."""
    return _local.__dict__.setdefault("holds", {})


def held_by_this_thread(url: str) -> bool:
    """Whether the calling thread holds a lock object on the store at ``url``."""
    return bool(_holds().get(url))


def current(url: str) -> str | None:
    """The key of the calling thread's newest hold on the store at ``url`` (unique to that hold),
    or None, also once that hold has lapsed: what a Store read under it is remembered by until it
    ends (Snapshots.hold_view)."""
    holds = _holds().get(url)
    return holds[-1].key if holds and not holds[-1].lapsed else None


_held: dict[str, set["ObjectLock"]] = {}  # url -> every lock this process holds on it
_held_guard = threading.Lock()


def check_held(url: str) -> None:
    """Raise :class:`LockLostError` if any lock this process holds on ``url`` has lapsed: call
    right before a write that others rely on the lock for (a manifest, a chunk deletion)."""
    with _held_guard:
        locks = list(_held.get(url, ()))
    for lk in locks:
        lk.check()


class ObjectLock:
    """One hold on the lock of the store in ``backend`` (``mode``: :data:`SHARED` or
    :data:`EXCLUSIVE`). ``timeout=None`` waits forever; ``0`` tries once."""

    def __init__(self, backend: Backend, mode: int = SHARED, *, timeout: float | None = None,
                 timing: Timing = TIMING, purpose: str = "") -> None:
        self.backend, self.mode, self.timeout, self.timing = backend, mode, timeout, timing
        self.purpose = purpose
        # A write started this long after the last good one might land after expiry.
        self.lapse_after = timing.expiry - timing.slack - float(getattr(backend, "deadline", 0.0))
        if self.lapse_after <= timing.refresh:
            raise CasckptError(f"lock timing {timing} leaves no time to refresh with a back-end "
                               f"deadline of {getattr(backend, 'deadline', 0.0)} s")
        self.key: str | None = None
        self._last_good = 0.0
        self._lapsed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counted: list[ObjectLock] | None = None  # the taking thread's holds on the store

    # -- taking and releasing ---------------------------------------------------------------------
    def acquire(self) -> "ObjectLock":
        if self.mode == EXCLUSIVE and held_by_this_thread(self.backend.url):
            raise CasckptError(f"this thread already holds the lock on {self.backend.url}; taking it "
                               "exclusively would wait forever")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for attempt in range(1 << 30):
            key = f"{PREFIX}{'x' if self.mode == EXCLUSIVE else 's'}-{uuid.uuid4().hex}.json"
            started = time.monotonic()
            self.backend.put_if_absent(key, [self._body()])
            try:
                blockers = self._survey(key)
            except BaseException:
                self._delete_quietly(key)
                raise
            if not blockers and time.monotonic() - started < self.lapse_after:
                self._hold(key, started)
                return self
            self._delete_quietly(key)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LockTimeoutError(self._refusal(blockers))
            wait = min(self.timing.poll * 2 ** min(attempt, 5), 5.0) * random.uniform(0.5, 1.5)
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - now)))
        raise AssertionError("unreachable")

    def _hold(self, key: str, started: float) -> None:
        self.key, self._last_good, self._lapsed = key, started, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"casckpt-lock-{key[8:16]}", daemon=True)
        self._thread.start()
        self._counted = _holds().setdefault(self.backend.url, [])
        self._counted.append(self)
        with _held_guard:
            _held.setdefault(self.backend.url, set()).add(self)

    def release(self) -> None:
        if self.key is None:
            return
        key, self.key = self.key, None
        if self._counted is not None:
            self._counted.remove(self)  # NOTE: the taking thread's list, whichever thread releases
            self._counted = None
        with _held_guard:
            _held.get(self.backend.url, set()).discard(self)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timing.refresh + 1)
        self._delete_quietly(key)

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- protection -------------------------------------------------------------------------------
    @property
    def lapsed(self) -> bool:
        if not self._lapsed and time.monotonic() - self._last_good >= self.lapse_after:
            self._lapsed = True
        return self._lapsed

    def check(self) -> None:
        """Raise :class:`LockLostError` unless a write started now (a manifest, a delete) is sure
        to land while this lock still protects it. Call right before each such write."""
        if self.key is None:
            raise LockLostError(f"the lock on {self.backend.url} is not held")
        if self.lapsed:
            raise LockLostError(
                f"the {self._mode_name()} lock on {self.backend.url} was not refreshed for "
                f"{time.monotonic() - self._last_good:.0f} s (expiry {self.timing.expiry:.0f} s): another "
                "process may have judged it stale, so nothing more is written under it; try again")

    def _beat(self) -> None:
        while not self._stop.wait(self.timing.refresh):
            started = time.monotonic()
            if started - self._last_good >= self.lapse_after:
                self._lapsed = True
                log.warning("casckpt: lock %s on %s lapsed; no longer refreshing it", self.key, self.backend.url)
                return
            try:
                self.backend.replace(self.key, [self._body()])
                self._last_good = max(self._last_good, started)
            except Exception as exc:  # NOTE: keep trying; check() stops the work if it lasts
                log.warning("casckpt: could not refresh lock %s on %s: %s", self.key, self.backend.url, exc)

    # -- looking at the others --------------------------------------------------------------------
    def _survey(self, mine: str) -> list[tuple[str, float]]:
        """Live locks that conflict with ours, as ``(key, age)``; stale ones are deleted."""
        blobs = {b.key: b for b in self.backend.list(PREFIX) if _KEY.fullmatch(b.key)}
        if mine not in blobs:
            raise CasckptError(f"lock object {mine} is missing from the listing of {self.backend.url} "
                               "right after it was written; this storage lists inconsistently")
        now = getattr(blobs[mine], "mtime", None)
        blockers = []
        for key, blob in blobs.items():
            if key == mine:
                continue
            stamp = getattr(blob, "mtime", None)
            age = now - stamp if now is not None and stamp is not None else 0.0
            if age > self.timing.expiry + self.timing.slack:
                log.warning("casckpt: removing stale lock %s on %s (not refreshed for %.0f s)", key,
                            self.backend.url, age)
                self._delete_quietly(key)
            elif self.mode == EXCLUSIVE or _KEY.fullmatch(key).group(1) == "x":
                blockers.append((key, age))
        return blockers

    def _refusal(self, blockers: list[tuple[str, float]]) -> str:
        who = []
        for key, _ in blockers[:3]:
            try:
                info = json.loads(self.backend.get(key))
                who.append(f"{info.get('mode')} lock of pid {info.get('pid')} on {info.get('host')} "
                           f"({info.get('purpose') or 'no purpose given'})")
            except Exception:  # gone meanwhile, or not ours to parse
                who.append(key)
        return (f"could not take the {self._mode_name()} lock on {self.backend.url}: held by "
                f"{'; '.join(who) or 'another process'} (a save or read holds it shared, gc/rm "
                f"exclusive; a crashed holder's lock expires after {self.timing.expiry:.0f} s)")

    def _body(self) -> bytes:
        return json.dumps({"format": "casckpt.lock", "version": 1, "mode": self._mode_name(),
                           "host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                           "written": datetime.now(timezone.utc).isoformat()}).encode()

    def _mode_name(self) -> str:
        return "exclusive" if self.mode == EXCLUSIVE else "shared"

    def _delete_quietly(self, key: str) -> None:
        try:
            self.backend.delete_many([key])  # NOTE: no HEAD first, as delete() makes to say if it was there
        except Exception as exc:  # NOTE: an undeleted lock object goes stale and is removed later
            log.warning("casckpt: could not delete lock %s on %s: %s", key, self.backend.url, exc)
