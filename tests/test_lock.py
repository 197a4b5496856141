"""The store lock on its own: shared holds coexist, exclusive excludes (across processes too),
a thread never waits on itself, a dead holder's lock is released by the kernel; and `rm A B` is
all-or-none even when a snapshot goes while it waits for the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import casckpt
from casckpt import cli
from casckpt.lock import EXCLUSIVE, SHARED, StoreLock, held_by_this_thread
from storekit import arrays, in_thread, lock_busy_event, new_store


@pytest.fixture
def lockfile(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    return path


def test_shared_holds_coexist_and_exclude_an_exclusive_one(lockfile):
    with StoreLock(lockfile, SHARED):
        assert in_thread(lambda: StoreLock(lockfile, SHARED, timeout=0).acquire().release()) == {"value": None}
        got = in_thread(lambda: StoreLock(lockfile, EXCLUSIVE, timeout=0).acquire())
        assert isinstance(got.get("error"), casckpt.LockTimeoutError)
        got = in_thread(lambda: StoreLock(lockfile, EXCLUSIVE, timeout=0.2).acquire())
        assert isinstance(got.get("error"), casckpt.LockTimeoutError)  # waited, then gave up
    with StoreLock(lockfile, EXCLUSIVE):
        got = in_thread(lambda: StoreLock(lockfile, SHARED, timeout=0).acquire())
        assert isinstance(got.get("error"), casckpt.LockTimeoutError)
    assert in_thread(lambda: StoreLock(lockfile, EXCLUSIVE, timeout=0).acquire().release()) == {"value": None}


def test_a_thread_never_waits_on_itself(lockfile):
    with StoreLock(lockfile, SHARED):
        assert held_by_this_thread(lockfile)
        with pytest.raises(casckpt.CasckptError, match="wait forever"):
            StoreLock(lockfile, EXCLUSIVE).acquire()  # would deadlock; fails at once instead
    assert not held_by_this_thread(lockfile)


CHILD = """
import sys, time
from pathlib import Path
from casckpt.lock import EXCLUSIVE, StoreLock
StoreLock(Path(sys.argv[1]), EXCLUSIVE).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_another_process_excludes_and_its_death_releases_the_lock(lockfile):
    from storekit import child_env

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(lockfile)], env=child_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(casckpt.LockTimeoutError):
            StoreLock(lockfile, SHARED, timeout=0).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    with StoreLock(lockfile, EXCLUSIVE, timeout=30):  # the kernel dropped the dead holder's lock
        pass


def test_an_unusable_lock_file_is_a_typed_error(tmp_path):
    (tmp_path / "lock").mkdir()
    with pytest.raises(casckpt.StoreIOError, match="lock"):
        StoreLock(tmp_path / "lock", SHARED).acquire()


def test_rm_is_all_or_none_when_a_snapshot_goes_while_it_waits(tmp_path, monkeypatch):
    """`rm a b` waits for the lock (a gc holds it); meanwhile b goes. Nothing may be removed."""
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("a", arrays(1))
        s.put_arrays("b", arrays(2))
    waiting = lock_busy_event(monkeypatch, "rm")
    gc_lock = StoreLock(root / "lock", EXCLUSIVE).acquire()  # as a gc in another process holds it
    rc = []
    t = threading.Thread(target=lambda: rc.append(cli.main(["rm", str(root), "a", "b"])), name="rm")
    t.start()
    try:
        assert waiting.wait(60)
        os.unlink(root / "snapshots" / "b.json")  # the gc drops b
    finally:
        gc_lock.release()
    t.join(60)
    assert rc == [2]
    assert (root / "snapshots" / "a.json").exists()
