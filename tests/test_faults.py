"""Disk full and permission denied mid-save, injected by wrappers at the I/O boundary (the file
writer, the link into place, fsync, the LMDB environment, the lock file). Each save that fails
raises StoreIOError (a CasckptError carrying the errno), commits nothing, leaves earlier snapshots
intact, and leaves no temp file outside tmp/ (and, here, none at all); the next save works."""

import errno
import os
import threading

import lmdb
import pytest

import casckpt
from casckpt import chunks, fsutil
from casckpt.lock import SHARED
from clikit import cli_json
from storekit import (arrays, assert_same, chunk_names, fill_disk, gc_module, new_store, noise, open_store, referenced,
                      small_tmpfs, tmp_files)

NEW_WRITES = 10  # a save of arrays(99) on top of arrays(1): 9 new chunk files and 1 manifest


def failing_after(fn, n: int, err: int, *, partial: bool = False):
    """``fn`` that works ``n`` times, then raises OSError(err) on every call. With ``partial`` the
    failing call writes its first part for real (a torn temp file) before raising."""
    calls = [0]

    def wrapper(path, parts, *args, **kwargs):
        calls[0] += 1
        if calls[0] <= n:
            return fn(path, parts, *args, **kwargs)
        if partial:
            def torn():
                it = iter(parts)
                yield next(it)
                raise OSError(err, os.strerror(err))
            return fn(path, torn(), *args, **kwargs)
        raise OSError(err, os.strerror(err), str(path))

    return wrapper


@pytest.fixture
def store(tmp_path):
    with new_store(tmp_path / "store") as s:
        s.put_arrays("s1", arrays(1))
        yield s


def assert_nothing_committed(store, name="bad"):
    assert not store.exists(name)
    assert [x.name for x in store.snapshots()] == ["s1"]
    assert_same(arrays(1), store.get_arrays("s1"))
    assert tmp_files(store.root) == []
    assert not any(p.name.endswith((".chunk", ".manifest", ".tmp")) for p in store.root.rglob("*")
                   if "tmp" not in p.relative_to(store.root).parts)


def assert_recovers(store, name="bad"):
    store.put_arrays(name, arrays(99))
    assert_same(arrays(99), store.get_arrays(name))


# (errno, successful writes before the failure, torn): the first chunk, mid-way, the manifest
WRITE_FAULTS = [(e, n, torn) for e in (errno.ENOSPC, errno.EACCES) for n in (0, 4, NEW_WRITES - 1)
                for torn in (False, True)] + [(errno.EDQUOT, 4, True), (errno.EROFS, 0, False)]


@pytest.mark.parametrize("err, after, partial", WRITE_FAULTS)
def test_write_fails_mid_save(store, monkeypatch, err, after, partial):
    monkeypatch.setattr(fsutil, "write_parts", failing_after(fsutil.write_parts, after, err, partial=partial))
    with pytest.raises(casckpt.StoreIOError) as info:
        store.put_arrays("bad", arrays(99))
    assert info.value.errno == err and isinstance(info.value, casckpt.CasckptError)
    assert os.strerror(err) in str(info.value) and str(store.root) in str(info.value)
    assert_nothing_committed(store)
    monkeypatch.undo()
    assert_recovers(store)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EMLINK, errno.EACCES])
def test_link_into_place_fails(store, monkeypatch, err):
    real = os.link
    calls = [0]

    def link(src, dst, *a, **k):  # os.link itself: chunk files are linked into place with it
        if "chunks" in dst.parts:
            calls[0] += 1
            if calls[0] > 3:
                raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(casckpt.StoreIOError) as info:
        store.put_arrays("bad", arrays(99))
    assert info.value.errno == err
    assert_nothing_committed(store)
    monkeypatch.undo()
    assert_recovers(store)


@pytest.mark.parametrize("target", ["fsync_file", "fsync_dir"])
def test_fsync_fails_before_commit(store, monkeypatch, target):
    def fail(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(fsutil, target, fail)
    with pytest.raises(casckpt.StoreIOError) as info:
        store.put_arrays("bad", arrays(99))
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert_nothing_committed(store)
    assert_recovers(store)


class FailingEnv:
    """The LMDB environment, with write transactions failing as on a full disk."""

    def __init__(self, env):
        self._env = env

    def begin(self, *, write=False, **kw):
        if write:
            raise lmdb.DiskError("mdb_txn_begin: No space left on device")
        return self._env.begin(write=write, **kw)

    def __getattr__(self, name):
        return getattr(self._env, name)


def test_index_write_fails(store, monkeypatch):
    monkeypatch.setattr(store.index, "env", FailingEnv(store.index.env))
    with pytest.raises(casckpt.CasckptError, match="index"):
        store.put_arrays("bad", arrays(99))
    monkeypatch.undo()
    assert not store.exists("bad")
    assert_same(arrays(1), store.get_arrays("s1"))
    assert_recovers(store)


def test_lock_file_unusable(store):
    lock = store.root / "lock"
    lock.unlink()
    lock.mkdir()  # a real fault: the lock cannot be opened for writing
    try:
        with pytest.raises(casckpt.StoreIOError, match="lock"):
            store.put_arrays("bad", arrays(99))
    finally:
        lock.rmdir()
        lock.touch()
    assert_recovers(store)


@pytest.mark.parametrize("after", [0, 4, NEW_WRITES - 1])
def test_a_failed_save_reclaims_its_own_chunks(store, monkeypatch, after):
    """Alone on the store, a failed save deletes the chunk files it wrote (after the index commit
    too): the disk it filled is free again for the next save."""
    before = chunk_names(store.root)
    monkeypatch.setattr(fsutil, "write_parts", failing_after(fsutil.write_parts, after, errno.ENOSPC))
    with pytest.raises(casckpt.StoreIOError):
        store.put_arrays("bad", arrays(99))
    monkeypatch.undo()
    assert chunk_names(store.root) == before == referenced(store) == {d.hex for d, _ in store.index.chunks()}
    assert_recovers(store)


def test_gc_reclaims_after_a_failed_save(store, monkeypatch):
    """While another save holds the store, a failed save leaves its chunks (indexed, unreferenced:
    that save might be using them); gc removes them later."""
    gc = gc_module()
    monkeypatch.setattr(fsutil, "write_parts", failing_after(fsutil.write_parts, NEW_WRITES - 1, errno.ENOSPC))
    holding, done = threading.Event(), threading.Event()

    def other_save():
        with store.lock(SHARED):
            holding.set()
            done.wait(60)
    t = threading.Thread(target=other_save)
    t.start()
    assert holding.wait(60)
    try:
        with pytest.raises(casckpt.StoreIOError):
            store.put_arrays("bad", arrays(99))
    finally:
        done.set()
        t.join()
    monkeypatch.undo()
    assert chunk_names(store.root) > referenced(store)
    gc.gc(store)
    assert chunk_names(store.root) == referenced(store) == {d.hex for d, _ in store.index.chunks()}
    assert_same(arrays(1), store.get_arrays("s1"))
    assert_recovers(store)


def test_disk_full_for_real_then_a_save_that_fits_succeeds(tmp_path):
    """A real 24 MiB tmpfs: a 40 MiB save fails with ENOSPC, reclaims what it wrote, and a 4 MiB
    save right after succeeds; with the disk then full to the last byte, reading commands work
    and index writes report ENOSPC (not LMDB's EIO)."""
    with small_tmpfs(tmp_path / "disk", 24) as disk:
        root = disk / "store"
        with open_store(root, create=True, chunk_size=1 << 20) as s:
            s.put_arrays("s1", {"w": noise(1, 1)})
            with pytest.raises(casckpt.StoreIOError) as info:
                s.put_arrays("big", {"w": noise(40, 2)})
            assert info.value.errno == errno.ENOSPC and str(info.value).endswith("No space left on device")
            assert s.snapshot_names() == ["s1"] and tmp_files(root) == []
            s.put_arrays("next", {"w": noise(4, 3)})
            assert_same({"w": noise(4, 3)}, s.get_arrays("next"))
            s.index.remove_snapshot("next")  # as if its registry row had not been written
            fill_disk(disk / "filler")
            assert [x.name for x in s.snapshots()] == ["s1", "next"]
            fake = {casckpt.digest.digest_of(i.to_bytes(4, "little")): chunks.ChunkInfo(1, 1, 0) for i in range(5000)}
            with pytest.raises(casckpt.StoreIOError) as info:
                s.index.add_chunks(fake)
            assert info.value.errno == errno.ENOSPC
        assert [r["name"] for r in cli_json("ls", root)] == ["s1", "next"]
        assert cli_json("du", root)["snapshots"] == 2
        assert cli_json("verify", root)["ok"]
        assert cli_json("show", root, "latest")["name"] == "next"
        with open_store(root) as s:  # a save that deduplicates entirely, on the full disk
            try:
                s.put_arrays("again", {"w": noise(1, 1)})
            except casckpt.StoreIOError as exc:
                assert exc.errno == errno.ENOSPC and not s.exists("again")
            (disk / "filler").unlink()
            s.put_arrays("after", {"w": noise(1, 4)})
            assert_same({"w": noise(1, 1)}, s.get_arrays("s1"))


class RegistryFullEnv(FailingEnv):
    """Only the registry's write fails, as when a full disk has room for the manifest but not for
    LMDB's pages: chunk entries (none, for a save that deduplicated entirely) commit as nothing."""

    def __init__(self, env, registry):
        super().__init__(env)
        self._registry = registry

    def begin(self, *, write=False, **kw):
        txn = self._env.begin(write=write, **kw)
        if not write:
            return txn
        registry = self._registry

        class Txn:
            def __enter__(self):
                txn.__enter__()
                return self

            def __exit__(self, *exc):
                return txn.__exit__(*exc)

            def put(self, key, value, *, db=None, **k):
                if db is registry:
                    raise lmdb.DiskError("mdb_page_new: No space left on device")
                return txn.put(key, value, db=db, **k)

            def __getattr__(self, name):
                return getattr(txn, name)
        return Txn()


def test_a_fully_deduplicated_save_on_a_full_disk_commits_and_says_what_the_warning_means(store, monkeypatch, caplog):
    monkeypatch.setattr(store.index, "env", RegistryFullEnv(store.index.env, store.index._snaps))
    with caplog.at_level("WARNING", "casckpt"):
        stats = store.put_arrays("again", arrays(1))
    assert stats.new_chunks == 0 and store.exists("again")
    assert "committed and whole" in caplog.text and "ls/du read its manifest" in caplog.text
    assert [x.name for x in store.snapshots()] == ["s1", "again"]  # the row is not needed, nor written
    monkeypatch.undo()
    assert_same(arrays(1), store.get_arrays("again"))



def test_every_new_chunk_file_is_fsynced_once_then_its_folder(tmp_path, monkeypatch):
    """Chunk files are fsynced as they are written (off the workers) and not again at the
    commit, which then fsyncs their folders: each file once, and its fan-out folder after it
    (recorded at the I/O boundary)."""
    events, lock = [], threading.Lock()

    def record(kind, real):
        def call(path):
            with lock:
                events.append((kind, path.name))
            return real(path)
        return call

    monkeypatch.setattr(fsutil, "fsync_file", record("file", fsutil.fsync_file))
    monkeypatch.setattr(fsutil, "fsync_dir", record("dir", fsutil.fsync_dir))
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("s1", arrays(1))
        s.put_arrays("s2", {"n": noise(5, 3)})
    names = chunk_names(root)
    files = [n for kind, n in events if kind == "file"]
    assert len(names) > 3 and sorted(files) == sorted(names)
    for i, (kind, name) in enumerate(events):
        if kind == "file":
            assert ("dir", name[:2]) in events[i + 1:], f"folder of {name} not fsynced after it"
