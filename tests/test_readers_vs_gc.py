"""Reads hold the shared lock, so a gc (in another process) that drops the snapshot being read
waits: a load, a verify, an export and diff --values all finish with the right answer.

Each read is paused at the I/O boundary (the chunk-file read) while a real `casckpt gc` process
tries to run: with --no-wait it must exit 3 (busy); a waiting gc finishes after the read."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")

from casckpt import fsutil
from casckpt.diff import diff
from casckpt.transfer import export_snapshot
from casckpt.verify import verify
from clikit import REPO, cli
from storekit import arrays, assert_same, new_store


@pytest.fixture
def paused(monkeypatch):
    """Chunk reads block until ``go`` is set; ``started`` tells that one has begun."""
    real = fsutil.read_file
    started, go = threading.Event(), threading.Event()

    def read(path):
        if path.parent.parent.name == "chunks":
            started.set()
            assert go.wait(60)
        return real(path)
    monkeypatch.setattr(fsutil, "read_file", read)
    yield started, go
    go.set()


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("old", arrays(1))
        s.put_arrays("new", arrays(2))
    return root


def race(root, paused, read, dropped="old"):
    """Run ``read`` in a thread, paused mid-way; gc --keep-last 1 (which drops ``dropped``) meanwhile."""
    started, go = paused
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", read()), daemon=True)
    t.start()
    assert started.wait(60)
    busy = cli("gc", root, "--keep-last", "1", "--no-wait")
    assert busy.returncode == 3, (busy.stdout, busy.stderr)
    waiting = subprocess.Popen([sys.executable, "-m", "casckpt", "gc", str(root), "--keep-last", "1"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    go.set()
    t.join(60)
    assert not t.is_alive() and "v" in out, "the read failed"
    assert waiting.wait(60) == 0, waiting.stderr.read()
    assert not (root / "snapshots" / f"{dropped}.json").exists()  # gc ran once the read was done
    return out["v"]


def test_get_arrays_while_gc_drops_the_snapshot(root, paused):
    with new_store(root) as s:
        assert_same(arrays(1), race(root, paused, lambda: s.get_arrays("old")))


@pytest.mark.parametrize("api", ["casckpt.load", "dcp.load"])
def test_load_while_gc_drops_the_snapshot(paused, tmp_path, api):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp
    import casckpt

    droot = tmp_path / "d"
    w = torch.randn(128, 64)
    casckpt.save({"w": w}, droot, "old", chunk_size=4096)
    casckpt.save({"w": w + 1}, droot, "new", delta=False)  # a delta save would read its base: paused
    out = {"w": torch.zeros(128, 64)}
    if api == "casckpt.load":
        assert race(droot, paused, lambda: casckpt.load(out, droot, "old")) == "old"
    else:  # CasReader alone holds the lock from read_metadata to the end of read_data
        race(droot, paused, lambda: dcp.load(out, storage_reader=casckpt.CasReader(droot, snapshot="old")))
    assert torch.equal(out["w"], w)


def test_verify_during_gc_reports_no_false_missing_chunks(root, paused):
    with new_store(root) as s:
        indexed = sorted(d.hex for d, _ in s.index.chunks())
        report = race(root, paused, lambda: verify(s, ["old", "new"]))
        assert report.ok and not report.problems, report.to_json()
        kept = {d.hex for d in s.manifest("new").digests()}
        assert kept <= {d.hex for d, _ in s.index.chunks()} <= set(indexed)


def test_export_and_diff_values_while_gc_runs(root, paused, tmp_path):
    with new_store(root) as s:
        r = race(root, paused, lambda: diff(s, "old", "new", values=True))
        assert r.changed and r.chunks_read > 0
    with new_store(root) as s:
        s.put_arrays("newer", arrays(3))
        dst = tmp_path / "new.safetensors"
        paused[0].clear()
        paused[1].clear()
        race(root, paused, lambda: export_snapshot(s, "new", dst, format="safetensors"), dropped="new")
        assert dst.stat().st_size > sum(a.nbytes for a in arrays(2).values())
