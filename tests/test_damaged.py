"""One damaged manifest blocks only what needs it: "latest", ls, gc, rm, show and verify go on."""

from __future__ import annotations

import logging
import os

import pytest

import casckpt
from casckpt.gc import gc, plan_gc
from casckpt.usage import ls
from casckpt.verify import verify
from clikit import cli, cli_json
from storekit import arrays, assert_same, chunk_names, new_store


@pytest.fixture
def root(tmp_path):
    """step-10, step-11 (newest), then step-10's manifest truncated as a crash or a disk might."""
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("step-9", arrays(9))
        s.put_arrays("step-10", arrays(10))
        s.put_arrays("step-11", arrays(11))
    os.truncate(root / "snapshots" / "step-10.json", 20)
    return root


def test_latest_skips_the_damaged_manifest_with_a_warning(root, caplog):
    with new_store(root) as s, caplog.at_level(logging.WARNING, "casckpt"):
        os.utime(root / "snapshots" / "step-10.json")  # the damaged one looks newest on disk
        assert s.resolve("latest") == "step-11"
        assert_same(arrays(11), s.get_arrays("latest"))
    assert "step-10" in caplog.text


def test_ls_lists_the_damaged_snapshot(root):
    with new_store(root) as s:
        rows = {r.name: r for r in ls(s)}
    assert set(rows) == {"step-9", "step-10", "step-11"}
    assert rows["step-10"].damaged and "JSON" in rows["step-10"].damaged
    assert rows["step-11"].damaged is None and rows["step-11"].unique_bytes > 0
    out = cli("ls", root)
    assert out.returncode == 0 and "DAMAGED step-10" in out.stdout
    assert [r["damaged"] is not None for r in cli_json("ls", root)] == [False, True, False]
    assert cli_json("show", root, "latest")["name"] == "step-11"
    assert cli("show", root, "step-10").returncode == 2


def test_gc_keeps_every_chunk_while_a_manifest_is_damaged(root):
    with new_store(root) as s:
        orphan = casckpt.digest.digest_of(b"orphan")
        s.chunks.put(orphan, memoryview(b"orphan"), group=0, config=s.config.codec)
        before = chunk_names(root)
        plan = gc(s, keep_last=1)
        assert plan.executed and plan.damaged == ("step-10",)
        assert plan.keep == ("step-11",) and plan.drop == ("step-9",) and plan.chunks == ()
        assert chunk_names(root) == before  # step-10 may reference any of them
        assert s.snapshot_names() and sorted(s.snapshot_names()) == ["step-10", "step-11"]
        assert_same(arrays(11), s.get_arrays("step-11"))
        s.delete("step-10")  # rm removes the damaged one; then gc reclaims as usual
        plan = gc(s)
        assert plan.damaged == () and orphan in plan.chunks
        assert chunk_names(root) == {d.hex for d in s.manifest("step-11").digests()}


def test_gc_command_says_why_it_deletes_no_chunk(root):
    r = cli("gc", root, "--dry-run")
    assert r.returncode == 0 and "DAMAGED step-10" in r.stdout and "chunks to delete: 0" in r.stdout


def test_rm_removes_a_damaged_snapshot(root):
    assert cli_json("rm", root, "step-10") == {"removed": ["step-10"]}
    assert [r["name"] for r in cli_json("ls", root)] == ["step-9", "step-11"]


def test_verify_still_reports_it(root):
    with new_store(root) as s:
        r = verify(s)
        assert not r.ok and list(r.bad_manifests) == ["step-10"] and r.broken_snapshots == ["step-10"]
        assert plan_gc(s).damaged == ("step-10",)
    assert cli("verify", root).returncode == 1


def test_load_resumes_from_the_newest_readable_snapshot(root):
    torch = pytest.importorskip("torch")  # the DCP layer is optional; the store is not
    root2 = root.parent / "dcp"
    casckpt.save({"w": torch.ones(4)}, root2, "step-1")
    casckpt.save({"w": torch.full((4,), 2.0)}, root2, "step-2")
    (root2 / "snapshots" / "step-1.json").write_bytes(b"{not json")
    os.utime(root2 / "snapshots" / "step-1.json")
    out = {"w": torch.zeros(4)}
    assert casckpt.load(out, root2) == "step-2" and out["w"].tolist() == [2.0] * 4
