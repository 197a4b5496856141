"""kill -9 mid-save: a real child process dies by SIGKILL at a chosen call at the I/O boundary.

Whatever the crash point: every snapshot committed earlier loads bit-exactly; the interrupted save
is invisible (or, once its manifest is in place, whole); gc reclaims what it left; the next save
of the same data works.
"""

import signal

import pytest

from casckpt import fsutil

from storekit import (arrays, assert_same, chunk_names, gc_module, new_store, nudged, open_store, referenced,
                      run_child, tmp_files, verify_module)

EARLIER = {"s1": 1, "s2": 2}
CRASH_SEED = 99  # 9 new chunks (w, b) and 6 already stored (shared): 9 chunk writes, 1 manifest

# (target, n, when, committed): committed = the manifest was in place before the process died.
POINTS = [
    ("write_parts", 1, "before", False),   # before the first chunk file
    ("write_parts", 1, "after", False),    # one temp chunk written, not linked
    ("link", 1, "after", False),           # one chunk linked into place, its temp left behind
    ("link", 9, "after", False),           # every chunk linked, nothing synced or indexed
    ("fsync_dir", 1, "before", False),     # while making the chunks durable
    ("index_chunks", 1, "before", False),  # chunks durable, index not updated
    ("index_chunks", 1, "after", False),   # index commit done, no manifest
    ("write_parts", 10, "after", False),   # manifest temp written, not renamed
    ("publish", 1, "before", False),
    ("publish", 1, "after", True),         # manifest in place, registry row not written
    ("index_registry", 1, "before", True),  # the registry row's LMDB commit
]


@pytest.fixture
def crashed(tmp_path, request):
    target, n, when, committed = request.param
    root = tmp_path / "store"
    with new_store(root) as s:
        for name, seed in EARLIER.items():
            s.put_arrays(name, arrays(seed))
    proc = run_child("child.py", {"action": "save", "root": str(root), "name": "crash",
                                  "seed": CRASH_SEED, "crash": [target, n, when]})
    assert proc.returncode == -signal.SIGKILL, f"child did not die at {request.param}: {proc.stderr}"
    return root, committed


@pytest.mark.parametrize("crashed", POINTS, indirect=True, ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}")
def test_kill9_mid_save_loses_nothing(crashed):
    root, committed = crashed
    expected = {name: arrays(seed) for name, seed in EARLIER.items()}
    if committed:
        expected["crash"] = arrays(CRASH_SEED)
    with open_store(root) as s:
        assert sorted(x.name for x in s.snapshots()) == sorted(expected)
        for name, want in expected.items():
            assert_same(want, s.get_arrays(name))
        assert {p.name for p in (root / "snapshots").iterdir()} == {f"{n}.json" for n in expected}
        report = verify_module().verify(s)  # orphans are garbage, not errors
        assert report.ok and report.chunks_checked == len(referenced(s)), report.to_json()
        # the next save of the very same data works, on top of whatever the crash left
        s.put_arrays("next", arrays(CRASH_SEED))
        assert_same(arrays(CRASH_SEED), s.get_arrays("next"))


GC_POINTS = [POINTS[i] for i in (1, 3, 6, 7)]  # temp only; linked, unindexed; indexed; manifest temp


@pytest.mark.parametrize("crashed", GC_POINTS, indirect=True,
                         ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}")
def test_gc_reclaims_what_a_killed_save_left(crashed):
    gc = gc_module()
    root, _ = crashed
    with open_store(root) as s:
        gc.gc(s)
        assert tmp_files(root) == []
        assert chunk_names(root) == referenced(s)
        assert {d.hex for d, _ in s.index.chunks()} == referenced(s)
        for name, seed in EARLIER.items():
            assert_same(arrays(seed), s.get_arrays(name))
        s.put_arrays("crash", arrays(CRASH_SEED))
        assert_same(arrays(CRASH_SEED), s.get_arrays("crash"))


def test_leftovers_before_gc_are_only_in_tmp_and_chunks(tmp_path):
    """What a killed save leaves is garbage in tmp/ and unreferenced chunk files, nothing else."""
    root = tmp_path / "store"
    with new_store(root) as s:
        s.put_arrays("s1", arrays(1))
    before = {p.relative_to(root) for p in root.rglob("*") if "index" not in p.parts}
    proc = run_child("child.py", {"action": "save", "root": str(root), "name": "crash", "seed": CRASH_SEED,
                                  "crash": ["link", 5, "after"]})
    assert proc.returncode == -signal.SIGKILL
    after = {p.relative_to(root) for p in root.rglob("*") if "index" not in p.parts}
    assert {p.parts[0] for p in after - before} <= {"tmp", "chunks"}
    left = tmp_files(root)  # the fifth chunk's temp (linked, not yet removed), maybe one in flight
    assert 1 <= len(left) <= 2 and all(fsutil.is_temp_name(f) for f in left)


# A delta save: "d1" is nudged(1, 1), saved on top of s1 = nudged(1, 0): its w and b chunks are
# written as deltas against s1's (6 + 3 chunks; "shared" is unchanged).
DELTA_POINTS = [
    ("write_parts", 1, "before", False),   # before the first delta chunk
    ("link", 1, "after", False),           # one delta linked, its temp left behind
    ("link", 9, "after", False),           # every delta linked, nothing synced or indexed
    ("fsync_dir", 1, "before", False),
    ("index_chunks", 1, "before", False),  # deltas durable, not indexed
    ("index_chunks", 1, "after", False),   # deltas indexed (after their bases), no manifest
    ("publish", 1, "after", True),         # manifest in place
]


@pytest.mark.parametrize("point", DELTA_POINTS, ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}")
def test_kill9_mid_delta_save_loses_nothing(tmp_path, point):
    target, n, when, committed = point
    root = tmp_path / "store"
    with new_store(root) as s:
        s.put_arrays("s1", nudged(1, 0))
    proc = run_child("child.py", {"action": "save", "root": str(root), "name": "d1", "seed": 1, "step": 1,
                                  "crash": [target, n, when]})
    assert proc.returncode == -signal.SIGKILL, f"child did not die at {point}: {proc.stderr}"
    expected = {"s1": nudged(1, 0), **({"d1": nudged(1, 1)} if committed else {})}
    with open_store(root) as s:
        assert sorted(s.snapshot_names()) == sorted(expected)
        for name, want in expected.items():
            assert_same(want, s.get_arrays(name))
        report = verify_module().verify(s)
        assert report.ok, report.to_json()
        s.put_arrays("next", nudged(1, 1))  # on top of whatever the crash left
        assert any(i.base is not None for _, i in s.index.chunks())
        gc_module().gc(s)
        assert chunk_names(root) == referenced(s) and tmp_files(root) == []
        for name, want in {**expected, "next": nudged(1, 1)}.items():
            assert_same(want, s.get_arrays(name))
