"""casckpt makes a store only in a missing or empty folder and deletes only files it named itself;
a stray file in snapshots/ is reported, not fatal; an import that fails leaves no store behind."""

from __future__ import annotations


import numpy as np
import pytest

import casckpt
from casckpt import fsutil
from casckpt.gc import gc
from clikit import cli, cli_json
from storekit import arrays, assert_same, new_store, tree


@pytest.fixture
def folder(tmp_path):
    """A user's folder with files of their own, some where a store keeps its own."""
    d = tmp_path / "mine"
    (d / "tmp").mkdir(parents=True)
    (d / "tmp" / "important.txt").write_text("do not delete")
    (d / "notes.md").write_text("mine")
    return d


def test_open_create_refuses_a_non_empty_folder(folder):
    before = tree(folder)
    with pytest.raises(casckpt.StoreNotEmptyError, match="not empty"):
        casckpt.Store.open(folder, create=True)
    assert tree(folder) == before and not (folder / "casckpt.json").exists()
    (folder / "file").write_text("x")
    with pytest.raises(casckpt.StoreNotEmptyError):
        casckpt.Store.open(folder / "file", create=True)


def test_cli_import_refuses_a_non_empty_folder(folder, tmp_path):
    src = tmp_path / "w.safetensors"
    with new_store(tmp_path / "other") as s:
        s.put_arrays("a", {"w": np.ones(8, np.float32)})
    assert cli("export", tmp_path / "other", "a", src, "--format", "safetensors").returncode == 0
    before = tree(folder)
    r = cli("import", folder, "s", src)
    assert r.returncode == 2 and "not empty" in r.stderr
    assert tree(folder) == before


def test_save_through_dcp_refuses_a_non_empty_folder(folder):
    torch = pytest.importorskip("torch")
    before = tree(folder)
    with pytest.raises(casckpt.StoreNotEmptyError):
        casckpt.save({"w": torch.ones(4)}, folder, "s")
    assert tree(folder) == before


def test_empty_and_half_made_folders_become_stores(tmp_path):
    (tmp_path / "empty").mkdir()
    casckpt.Store.open(tmp_path / "empty", create=True).close()
    half = tmp_path / "half"  # a creation that died before its config was written
    for sub in ("tmp", "snapshots", "chunks"):
        (half / sub).mkdir(parents=True)
    (half / "lock").touch()
    fsutil.temp_path(half / "tmp", ".tmp").write_bytes(b"{")
    with casckpt.Store.open(half, create=True) as s:
        s.put_arrays("a", arrays(1))
        assert_same(arrays(1), s.get_arrays("a"))


def test_gc_deletes_only_files_casckpt_named(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("a", arrays(1))
        ours = fsutil.temp_path(root / "tmp", ".chunk")
        ours.write_bytes(b"torn")
        theirs = [root / "tmp" / "important.txt", root / "chunks" / "README", root / "chunks" / "ab" / "keep.txt",
                  root / "snapshots" / "notes.txt", root / "snapshots" / "Not A Name.json"]
        for p in theirs:
            p.parent.mkdir(exist_ok=True)
            p.write_text("user data")
        (root / "tmp" / "a-folder").mkdir()
        plan = gc(s)
        assert plan.tmp_files == (ours.name,) and not ours.exists()
        assert all(p.read_text() == "user data" for p in theirs) and (root / "tmp" / "a-folder").is_dir()
        assert_same(arrays(1), s.get_arrays("a"))


def test_a_stray_file_in_snapshots_is_reported_not_fatal(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("a", arrays(1))
    (root / "snapshots" / "notes.txt").write_text("mine")
    (root / "snapshots" / "my notes.json").write_text("{}")
    assert [r["name"] for r in cli_json("ls", root)] == ["a"]
    report = cli_json("verify", root)
    assert report["ok"] and report["stray_files"] == ["my notes.json", "notes.txt"]
    assert "stray" in cli("verify", root).stdout
    assert cli_json("gc", root)["executed"]
    assert (root / "snapshots" / "notes.txt").read_text() == "mine"


def test_importing_a_file_that_is_not_a_checkpoint_leaves_no_store(tmp_path):
    src = tmp_path / "train.py"
    src.write_text("print('hello')\n")
    r = cli("import", tmp_path / "store", "s", src)
    assert r.returncode == 2 and not (tmp_path / "store").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casckpt: error:") and "not a torch.save file" in lines[0]
    assert lines[0].rstrip().endswith("files")  # a whole sentence, not torch's page cut mid-way
