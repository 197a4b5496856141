"""gc: retention, mark and sweep, crash leftovers, the lock, and --dry-run — mostly through the CLI."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

import casckpt
from casckpt import fsutil
from casckpt.gc import gc, plan_gc, retained
from casckpt.lock import SHARED
from clikit import REPO, cli, cli_json, disk_bytes, state
from storekit import assert_same, chunk_names, lock_busy_event, new_store, referenced


def fill(store, n: int) -> dict[str, dict]:
    saved = {}
    for s in range(n):
        saved[f"step-{s:03d}"] = state(s)
        store.put_arrays(f"step-{s:03d}", saved[f"step-{s:03d}"])
    return saved


def test_keep_last_3_of_20_keeps_loadable_snapshots_and_nothing_else(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        saved = fill(store, 20)
    plan = cli_json("gc", root, "--keep-last", "3")
    assert plan["executed"] and plan["keep"] == ["step-017", "step-018", "step-019"]
    assert len(plan["drop"]) == 17 and plan["chunks"] > 0 and plan["bytes_freed"] > 0
    with new_store(root) as store:
        assert store.snapshot_names() and sorted(store.snapshot_names()) == plan["keep"]
        for name in plan["keep"]:
            assert_same(saved[name], store.get_arrays(name))
        assert chunk_names(root) == referenced(store)  # no chunk that no kept snapshot references
        assert {d.hex for d, _ in store.index.chunks()} == chunk_names(root)
    du = cli_json("du", root)
    assert du["stored_bytes"] == disk_bytes(root) and du["chunks"] == len(chunk_names(root))
    assert cli("verify", root).returncode == 0


def test_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        fill(store, 5)
        store.chunks.put(casckpt.digest.digest_of(b"orphan"), memoryview(b"orphan"), group=0,
                         config=store.config.codec)
    fsutil.temp_path(root / "tmp", ".chunk").write_bytes(b"x" * 100)  # left by a killed save
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
                    if p.is_file() and p.parent.name != "index")
    plan = cli_json("gc", root, "--keep-last", "1", "--dry-run")
    assert plan["dry_run"] and not plan["executed"]
    assert len(plan["drop"]) == 4 and plan["orphans"] == 1 and plan["tmp_files"] == 1
    after = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
                   if p.is_file() and p.parent.name != "index")
    assert before == after
    with new_store(root) as store:
        assert len(store.snapshots()) == 5


@pytest.mark.parametrize("policy", [dict(keep_last=2), dict(keep_every=2), dict(keep=["step-001"]),
                                    dict(keep_last=1, keep_every=3, keep=["step-002"]), dict(keep_last=0), {}])
def test_gc_never_removes_a_referenced_chunk(tmp_path, policy):
    with new_store(tmp_path / "s") as store:
        saved = fill(store, 7)
        plan = gc(store, **policy)
        names = [f"step-{s:03d}" for s in range(7)]
        assert list(plan.keep) == sorted(retained(names, **policy))
        assert sorted(store.snapshot_names()) == list(plan.keep)
        for name in plan.keep:
            assert_same(saved[name], store.get_arrays(name))  # reads verify every digest
        assert chunk_names(tmp_path / "s") == referenced(store)


def test_retention_policy():
    names = [f"s{i}" for i in range(10)]
    assert retained(names) == set(names)
    assert retained(names, keep_last=3) == {"s7", "s8", "s9"}
    assert retained(names, keep_every=4) == {"s0", "s4", "s8"}
    assert retained(names, keep_last=1, keep=["s2"]) == {"s2", "s9"}
    assert retained(names, keep_last=0) == set()
    with pytest.raises(casckpt.SnapshotNotFoundError):
        retained(names, keep=["nope"])
    with pytest.raises(casckpt.CasckptError):
        retained(names, keep_every=0)


def test_gc_reclaims_orphans_and_temp_files_and_keeps_all_snapshots(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        saved = fill(store, 3)
        orphan = casckpt.digest.digest_of(b"left by a crashed save")
        store.chunks.put(orphan, memoryview(b"left by a crashed save"), group=0, config=store.config.codec)
        fsutil.temp_path(root / "tmp", ".chunk").write_bytes(b"x" * 1000)
        plan = gc(store)
        assert plan.executed and plan.drop == () and plan.orphans == 1 and list(plan.chunks) == [orphan]
        assert plan.tmp_bytes == 1000 and os.listdir(root / "tmp") == []
        assert not store.chunks.exists(orphan)
        for name, arrays in saved.items():
            assert_same(arrays, store.get_arrays(name))


def test_gc_reads_no_chunk_contents(tmp_path, monkeypatch):
    """Mark from manifests, sweep by listing: a read of any chunk file would raise here."""
    with new_store(tmp_path / "s") as store:
        fill(store, 6)
        real_read, real_open = fsutil.read_file, os.open

        def read(path):  # the file reader every chunk read goes through
            assert path.parent.parent.name != "chunks", "gc read a chunk"
            return real_read(path)

        def open_(path, flags, *a, **k):  # and os.open, for any other way in
            assert "chunks" not in str(path) or flags & os.O_DIRECTORY, f"gc opened {path}"
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(fsutil, "read_file", read)
        monkeypatch.setattr(os, "open", open_)
        plan = gc(store, keep_last=2)
        assert plan.executed and len(plan.drop) == 4 and plan.chunks


def test_gc_no_wait_exits_3_while_a_save_holds_the_lock_and_waits_otherwise(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        fill(store, 3)
        names = chunk_names(root)
        with store.lock(SHARED):  # what a save in progress holds
            r = cli("gc", root, "--keep-last", "1", "--no-wait")
            assert r.returncode == 3, r.stderr
            assert "lock" in r.stderr and chunk_names(root) == names
            assert cli("rm", root, "step-000", "--no-wait").returncode == 3


def test_gc_waits_for_a_save_then_runs(tmp_path, monkeypatch):
    """gc (in another thread, its own lock) finds the lock busy, waits, and runs once it is free."""
    root = tmp_path / "s"
    with new_store(root) as store:
        fill(store, 3)
        names = chunk_names(root)
        busy = lock_busy_event(monkeypatch, "gc")
        out = []
        with store.lock(SHARED):  # what a save in progress holds
            t = threading.Thread(target=lambda: out.append(gc(store, keep_last=1)), name="gc")
            t.start()
            assert busy.wait(60)  # gc reached the lock and is waiting on it
            assert t.is_alive() and chunk_names(root) == names and not out
        t.join(60)
        assert out and out[0].executed and store.snapshot_names() == ["step-002"]


def test_plan_matches_execution(tmp_path):
    with new_store(tmp_path / "s") as store:
        fill(store, 6)
        plan = plan_gc(store, keep_every=2)
        size = sum(store.chunks.path(d).stat().st_size for d in plan.chunks)
        done = gc(store, keep_every=2)
        assert (done.keep, done.drop, set(done.chunks)) == (plan.keep, plan.drop, set(plan.chunks))
        assert done.chunk_bytes == size


def test_gc_usage_errors(tmp_path):
    with new_store(tmp_path / "s") as store:
        fill(store, 2)
    assert cli("gc", tmp_path / "s", "--keep", "nope").returncode == 2
    assert cli("gc", tmp_path / "s", "--keep-every", "0").returncode == 2
    assert cli("gc", tmp_path / "nostore").returncode == 2
    assert cli("gc", tmp_path / "s", "--keep-last", "x").returncode == 2
    r = subprocess.run([str(REPO / "tools" / "gc"), str(tmp_path / "s"), "--dry-run", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"executed": false' in r.stdout
