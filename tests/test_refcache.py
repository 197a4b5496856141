"""ls and gc planning read what each snapshot references from the index's per-snapshot cache
(casckpt.refcache): a manifest is parsed once, again only when its file is replaced, and a
replaced manifest is never judged by its stale cache."""

import os
import shutil

import numpy as np

from casckpt import fsutil
from casckpt.gc import gc, plan_gc
from casckpt.manifest import Manifest
from casckpt.usage import ls
from storekit import arrays, assert_same, chunk_names, new_store, open_store


def count_manifest_reads(monkeypatch) -> list:
    """Manifest files read, counted at the I/O boundary (fsutil.read_file)."""
    reads, real = [], fsutil.read_file

    def read_file(path, *a, **kw):
        if "snapshots" in str(path):
            reads.append(os.path.basename(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(fsutil, "read_file", read_file)
    return reads


def test_ls_and_gc_planning_parse_each_manifest_once(tmp_path, monkeypatch):
    root = tmp_path / "s"
    with new_store(root) as s:
        for i in range(3):
            s.put_arrays(f"s{i}", arrays(i))
    reads = count_manifest_reads(monkeypatch)
    with open_store(root) as s:  # a fresh Store: no parse cached in memory
        first = ls(s)
    assert sorted(reads) == ["s0.json", "s1.json", "s2.json"]
    for call in (ls, plan_gc, lambda s: plan_gc(s, keep_last=1)):
        reads.clear()
        with open_store(root) as s:
            call(s)
        assert reads == []
    with open_store(root) as s:
        assert ls(s) == first


def test_a_replaced_manifest_is_parsed_again(tmp_path, monkeypatch):
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("s0", arrays(0))
        s.put_arrays("s1", arrays(1))
        plan_gc(s)  # caches both
        only_s1 = chunk_names(root) - {d.hex for d in s.manifest("s0").digests()}
        # s1's manifest replaced by one naming s0's items (as a thinning rewrite replaces it)
        m = s.manifest("s1")
        new = Manifest("s1", m.created, m.chunk_size, s.manifest("s0").items, m.meta)
        tmp = s.root / "tmp" / "x.tmp"
        tmp.write_bytes(new.to_bytes())
        os.replace(tmp, s.manifest_path("s1"))
    reads = count_manifest_reads(monkeypatch)
    with open_store(root) as s:
        plan = gc(s)
        assert reads == ["s1.json"]
        assert {d.hex for d in plan.chunks} == only_s1 and only_s1
        assert_same(arrays(0), s.get_arrays("s1"))
        assert [r.unique_bytes for r in ls(s)] == [0, 0]  # both hold the same chunks now


def test_ls_unique_bytes_match_a_count_from_the_manifests(tmp_path):
    with new_store(tmp_path / "s") as s:
        for i in range(3):
            s.put_arrays(f"s{i}", {**arrays(i), "same": np.ones(9000, np.float32)})
        refs = {n: s.manifest(n).digests() for n in s.snapshot_names()}
        size = {d: i.stored_len for d, i in s.index.chunks()}
        for row in ls(s):
            others = set().union(*(v for k, v in refs.items() if k != row.name))
            assert row.unique_bytes == sum(size[d] for d in refs[row.name] - others) > 0


def test_a_store_copied_elsewhere_rebuilds_its_cache(tmp_path, monkeypatch):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("s0", arrays(0))
        before = ls(s)
    shutil.copytree(tmp_path / "s", tmp_path / "copy")  # new inodes: every identity differs
    reads = count_manifest_reads(monkeypatch)
    with open_store(tmp_path / "copy") as s:
        assert ls(s) == before and reads == ["s0.json"]


def test_ls_names_the_latest_snapshot_as_resolve_does(tmp_path):
    from casckpt.usage import latest

    with new_store(tmp_path / "s") as s:
        assert latest(ls(s)) is None
        s.put_arrays("imp", arrays(0), meta={"import": {"from": "x"}})
        assert latest(ls(s)) == s.resolve("latest") == "imp"  # only imports: the newest of them
        s.put_arrays("a", arrays(1))
        s.put_arrays("b", arrays(2))
        s.put_arrays("imp2", arrays(3), meta={"import": {"from": "y"}})
        assert latest(ls(s)) == s.resolve("latest") == "b"  # imports never are, next to saves
        s.manifest_path("b").write_bytes(b"{not json")  # a damaged manifest is skipped
        assert latest(ls(s)) == s.resolve("latest") == "a"
