"""The LMDB index is a cache: lost, truncated, garbage, outgrown or replaced under a running job,
it never costs a snapshot. Damage gives IndexDamagedError naming ``reindex``; a missing index is
rebuilt on first use; after ``reindex`` the store behaves exactly as before."""

import os
import shutil
import signal

import numpy as np
import pytest

import casckpt
from casckpt import index as index_mod
from storekit import arrays, assert_same, gc_module, new_store, open_store, run_child

SEEDS = {"s1": 1, "s2": 2, "s3": 3}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "store"
    with new_store(root) as s:
        for name, seed in SEEDS.items():
            s.put_arrays(name, arrays(seed))
    return root


def assert_as_before(root) -> None:
    """Every snapshot loads, the registry is right, and a repeated save dedups completely."""
    with open_store(root) as s:
        assert [x.name for x in s.snapshots()] == list(SEEDS)
        for name, seed in SEEDS.items():
            assert_same(arrays(seed), s.get_arrays(name))
        stats = s.put_arrays("again", arrays(1))
        assert stats.new_chunks == 0 and stats.bytes_written == 0
        s.put_arrays("fresh", arrays(7))
        assert_same(arrays(7), s.get_arrays("fresh"))


def test_deleted_index_is_rebuilt_on_first_use(root):
    shutil.rmtree(root / "index")
    assert_as_before(root)


@pytest.mark.parametrize("size", [4096, 8192, 20000, -4096])
def test_truncated_index_says_reindex_never_crashes(root, size):
    """A data file cut short used to kill the process with SIGBUS inside LMDB."""
    data = root / "index" / "data.mdb"
    os.truncate(data, size if size > 0 else data.stat().st_size + size)
    with open_store(root) as s:
        with pytest.raises(casckpt.IndexDamagedError, match="reindex"):
            s.snapshots()
        s.reindex()
    assert_as_before(root)


def test_empty_index_file_is_safe(root):
    """LMDB takes a zero-length data file for a new index: an empty cache, which is safe."""
    os.truncate(root / "index" / "data.mdb", 0)
    assert_as_before(root)


def test_garbage_index_says_reindex(root):
    data = root / "index" / "data.mdb"
    data.write_bytes(np.random.default_rng(0).bytes(data.stat().st_size))
    with open_store(root) as s:
        with pytest.raises(casckpt.IndexDamagedError, match="reindex"):
            s.put_arrays("x", arrays(5))
        assert not s.exists("x")
        assert_same(arrays(1), s.get_arrays("s1"))  # reads need only manifests and chunks
        s.reindex()
    assert_as_before(root)


def test_index_from_another_version_says_reindex(root):
    with open_store(root) as s:
        s.index._write(lambda txn: txn.put(b"version", b"9", db=s.index._meta))
    with open_store(root) as s:
        with pytest.raises(casckpt.IndexDamagedError, match="reindex"):
            s.snapshots()
        s.reindex()
    assert_as_before(root)


def test_index_outgrows_its_initial_map(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "DEFAULT_MAP_SIZE", 64 << 10)  # 16 pages
    root = tmp_path / "store"
    with new_store(root, sync=False) as s:
        want = {f"g{i}": arrays(100 + i, n=24000) for i in range(8)}  # ~2,000 chunk entries
        for name, a in want.items():
            s.put_arrays(name, a)
        assert s.index.env.info()["map_size"] > 64 << 10
        for name, a in want.items():
            assert_same(a, s.get_arrays(name))
        s.reindex()
        assert len(s.snapshots()) == len(want)


def test_map_grown_by_another_process_is_adopted(tmp_path, monkeypatch):
    """A job with the index open keeps working after another process grows the map."""
    monkeypatch.setattr(index_mod, "DEFAULT_MAP_SIZE", 64 << 10)
    root = tmp_path / "store"
    with new_store(root, sync=False) as s:
        s.put_arrays("mine", arrays(1))
        for i in range(3):  # the child opens with the normal map size and writes past ours
            proc = run_child("child.py", {"action": "save", "root": str(root), "name": f"big{i}",
                                          "seed": 200 + i})
            assert proc.returncode == 0, proc.stderr
        monkeypatch.setattr(index_mod, "DEFAULT_MAP_SIZE", 256 << 20)
        big = {f"x{i}": np.random.default_rng(i).standard_normal(30000) for i in range(4)}
        s.put_arrays("after", big)
        assert_same(big, s.get_arrays("after"))
        assert {x.name for x in s.snapshots()} == {"mine", "big0", "big1", "big2", "after"}


def test_reindex_by_another_process_does_not_fool_an_open_store(root):
    """A job holds the store open; an operator runs reindex, deletes a snapshot and gc from a
    shell. The job then saves the deleted state again: it must write the chunks gc removed,
    not trust the index it opened before the reindex replaced it."""
    gc_module()
    with open_store(root) as job:
        job.put_arrays("warm", arrays(9))  # the job's index is open
        proc = run_child("child.py", {"action": "admin", "root": str(root), "reindex": True,
                                      "delete": ["s2"], "gc": True})
        assert proc.returncode == 0, proc.stderr
        job.put_arrays("s2-again", arrays(2))
        assert_same(arrays(2), job.get_arrays("s2-again"))


def test_reindex_after_a_crash_leaves_no_trap(root):
    """reindex indexes the orphan chunks a killed save left; the next save may dedup against
    them, and the snapshot it commits must load."""
    proc = run_child("child.py", {"action": "save", "root": str(root), "name": "crash", "seed": 42,
                                  "crash": ["link", 9, "after"]})
    assert proc.returncode == -signal.SIGKILL
    with open_store(root) as s:
        s.reindex()
        s.put_arrays("crash", arrays(42))
    with open_store(root) as s:
        assert_same(arrays(42), s.get_arrays("crash"))
