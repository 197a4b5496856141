"""Lock objects on object storage (casckpt.objlock), against moto's S3 server on 127.0.0.1: shared
and exclusive holds, mutual exclusion across real processes, the heartbeat, a holder killed with
SIGKILL (its lock expires), and a paused holder that lapses and must not write afterwards."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

pytest.importorskip("obstore")

from casckpt.backends.object import ObjectBackend
from casckpt.errors import CasckptError, LockLostError, LockTimeoutError
from casckpt.lock import EXCLUSIVE, SHARED
from casckpt.objlock import ObjectLock, Timing, held_by_this_thread
from s3kit import Fault
from storekit import in_thread
from s3kit import moto, proxy, proxy_server, s3_url  # noqa: F401 (fixtures)

# Short times so each test takes seconds: a lock not refreshed for 3.5 s (+1.5 s slack for S3's
# 1-second timestamps) is stale; one operation takes at most 0.75 s, retries included.
FAST = {"timeout": "0.5s", "retry_timeout": 0.25, "max_retries": 3, "init_backoff": 0.01, "max_backoff": 0.05}
TIMING = Timing(expiry=3.5, refresh=0.25, slack=1.5, poll=0.05)


def backend_at(url: str, **extra) -> ObjectBackend:
    return ObjectBackend(url, options={**FAST, **extra})


def lock(url_or_backend, mode=SHARED, timeout=0.0, **kw) -> ObjectLock:
    b = backend_at(url_or_backend) if isinstance(url_or_backend, str) else url_or_backend
    return ObjectLock(b, mode, timeout=timeout, timing=TIMING, **kw)


def elsewhere(fn):
    """Run ``fn`` in another thread (as another process would: a thread may not wait on a lock it
    holds itself) and return its result or raise its exception."""
    out = in_thread(fn, timeout=120)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def take(url, mode, timeout):
    """Take and release the lock in another thread."""
    def go():
        with lock(url, mode, timeout=timeout):
            return True
    return elsewhere(go)


def lock_keys(url: str) -> list[str]:
    return sorted(b.key for b in backend_at(url).list("locks/"))


def test_shared_holds_coexist_and_exclude_an_exclusive(s3_url):
    with lock(s3_url), lock(s3_url, purpose="load step-3"):
        assert len(lock_keys(s3_url)) == 2
        with pytest.raises(LockTimeoutError, match="load step-3"):
            take(s3_url, EXCLUSIVE, timeout=0.3)
        assert len(lock_keys(s3_url)) == 2  # the refused taker left nothing behind
    with lock(s3_url, EXCLUSIVE) as x:
        assert held_by_this_thread(x.backend.url)
        with pytest.raises(LockTimeoutError):
            take(s3_url, SHARED, timeout=0.2)
        with pytest.raises(LockTimeoutError):
            take(s3_url, EXCLUSIVE, timeout=0.0)
    assert lock_keys(s3_url) == []


def test_exclusive_in_the_same_thread_is_refused(s3_url):
    with lock(s3_url):
        with pytest.raises(CasckptError, match="already holds"):
            lock(s3_url, EXCLUSIVE).acquire()


def test_timing_must_leave_room_to_refresh(s3_url):
    with pytest.raises(CasckptError, match="no time to refresh"):
        ObjectLock(backend_at(s3_url), timing=Timing(expiry=2.0, refresh=1.0, slack=1.0))


def test_foreign_objects_under_locks_are_ignored(s3_url):
    b = backend_at(s3_url)
    b.replace("locks/README", [b"not a lock"])
    b.replace("locks/x-nothex.json", [b"{}"])
    with lock(s3_url, EXCLUSIVE):
        pass
    assert lock_keys(s3_url) == ["locks/README", "locks/x-nothex.json"]


# -- real processes -----------------------------------------------------------------------------
def _increment(url: str, times: int, start) -> None:
    b = backend_at(url)
    start.wait()
    for _ in range(times):
        with ObjectLock(b, EXCLUSIVE, timeout=60, timing=TIMING):
            n = int(b.get("counter"))
            time.sleep(0.01)  # widen the read-modify-write window
            b.replace("counter", [str(n + 1).encode()])


def test_exclusive_holds_exclude_each_other_across_processes(s3_url):
    backend_at(s3_url).replace("counter", [b"0"])
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_increment, args=(s3_url, 4, start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert backend_at(s3_url).get("counter") == b"12"  # no lost update
    assert lock_keys(s3_url) == []


def _hold(url: str, mode: int, ready, go, result) -> None:
    b = backend_at(url)
    lk = ObjectLock(b, mode, timeout=30, timing=TIMING)
    lk.acquire()
    ready.put(lk.key)
    go.get(timeout=120)
    try:
        lk.check()  # the save's last step before its commit
        b.put_if_absent("committed", [b"yes"])
        result.put("committed")
    except LockLostError as exc:
        result.put(f"lost: {exc}")
    finally:
        lk.release()


def _start_holder(url: str, mode: int = SHARED):
    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Queue(), ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_hold, args=(url, mode, ready, go, result))
    p.start()
    return p, ready.get(timeout=60), go, result


def test_heartbeat_keeps_a_held_lock_alive(s3_url):
    p, key, go, result = _start_holder(s3_url)
    try:
        time.sleep(TIMING.expiry + TIMING.slack + 1.5)  # well past expiry: refreshed meanwhile
        with pytest.raises(LockTimeoutError):
            lock(s3_url, EXCLUSIVE, timeout=0.0).acquire()
        go.put(1)
        assert result.get(timeout=30) == "committed"
    finally:
        p.join(timeout=30)
    assert lock_keys(s3_url) == []


def test_a_killed_holders_lock_expires(s3_url):
    p, key, go, result = _start_holder(s3_url, SHARED)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    assert lock_keys(s3_url) == [key]
    with pytest.raises(LockTimeoutError):  # not stale yet
        lock(s3_url, EXCLUSIVE, timeout=0.0).acquire()
    with lock(s3_url, EXCLUSIVE, timeout=30):  # waits until it is
        assert key not in lock_keys(s3_url)  # removed as stale


def test_a_paused_holder_lapses_and_writes_nothing(s3_url):
    """SIGSTOP a save holding the shared lock past expiry: gc takes the exclusive lock meanwhile;
    when the save resumes it must fail before its commit, not after."""
    p, key, go, result = _start_holder(s3_url, SHARED)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        with lock(s3_url, EXCLUSIVE, timeout=30):
            pass  # gc ran here
    finally:
        os.kill(p.pid, signal.SIGCONT)
    go.put(1)
    said = result.get(timeout=30)
    p.join(timeout=30)
    assert said.startswith("lost: ") and "not refreshed" in said
    assert not backend_at(s3_url).exists("committed")


def test_failing_refreshes_lapse_the_lock(s3_url, proxy):
    b = backend_at(s3_url, endpoint=proxy.endpoint)
    lk = lock(b, SHARED).acquire()
    try:
        lk.check()
        proxy.plan(Fault("503", count=10_000, method="PUT", path="/locks/"))
        deadline = time.monotonic() + 30
        while not lk.lapsed and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(LockLostError):
            lk.check()
        proxy.clear()
        time.sleep(3 * TIMING.refresh)
        with pytest.raises(LockLostError):  # a lapse is final, even once writes work again
            lk.check()
        assert take(s3_url, EXCLUSIVE, timeout=30)  # and others take the lock once it is stale
    finally:
        proxy.clear()
        lk.release()
