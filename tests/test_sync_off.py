"""sync=False (DCP's sync_files=False): the index never vouches for an unsynced chunk beyond the
boot that wrote it, nor to a save that syncs. A "power loss" here is a torn chunk file plus a
new boot id (the kernel's boot id file, stood in for at the I/O boundary)."""

from __future__ import annotations

import os

import pytest

from casckpt import fsutil
from storekit import arrays, assert_same, chunk_names, new_store, open_store


@pytest.fixture
def boot(tmp_path, monkeypatch):
    path = tmp_path / "boot_id"
    path.write_text("boot-1\n")
    monkeypatch.setattr(fsutil, "BOOT_ID_PATH", str(path))
    return path


def chunk_reads(monkeypatch) -> list:
    """Record every chunk file read (a wrapper around the file reader)."""
    seen, real = [], fsutil.read_file

    def read(path):
        if path.parent.parent.name == "chunks":
            seen.append(path.name)
        return real(path)
    monkeypatch.setattr(fsutil, "read_file", read)
    return seen


def test_after_a_power_loss_a_save_never_reuses_a_torn_unsynced_chunk(tmp_path, boot):
    root = tmp_path / "s"
    with new_store(root, sync=False) as s:
        s.put_arrays("s1", arrays(1))
    victim = sorted((root / "chunks").glob("*/*"))[0]
    os.truncate(victim, victim.stat().st_size // 2)  # what the page cache never wrote back
    boot.write_text("boot-2\n")  # the machine came back up
    with open_store(root, sync=False) as s:
        s.put_arrays("s2", arrays(1))
        assert_same(arrays(1), s.get_arrays("s2"))  # the torn chunk was written again


def test_within_one_boot_unsynced_chunks_still_deduplicate_without_reads(tmp_path, boot, monkeypatch):
    root = tmp_path / "s"
    with new_store(root, sync=False) as s:
        s.put_arrays("s1", arrays(1))
        reads = chunk_reads(monkeypatch)
        stats = s.put_arrays("s2", arrays(1))
    assert stats.new_chunks == 0 and reads == []


def test_a_syncing_save_makes_the_unsynced_chunks_it_reuses_durable(tmp_path, boot, monkeypatch):
    root = tmp_path / "s"
    with new_store(root, sync=False) as s:
        s.put_arrays("s1", arrays(1))
    synced, real = [], fsutil.fsync_file
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: (synced.append(p.name), real(p))[1])
    with open_store(root) as s:
        s.put_arrays("durable", arrays(1))
        assert set(synced) == chunk_names(root)  # every chunk it references, verified and fsynced
        synced.clear()
        s.put_arrays("again", arrays(1))  # now marked synced: plain dedup, nothing to fsync
        assert synced == []
    boot.write_text("boot-2\n")
    with open_store(root, sync=False) as s:
        reads = chunk_reads(monkeypatch)
        assert s.put_arrays("after-reboot", arrays(1)).new_chunks == 0 and reads == []


def test_without_a_boot_id_unsynced_chunks_are_never_trusted(tmp_path, boot, monkeypatch):
    root = tmp_path / "s"
    with new_store(root, sync=False) as s:
        s.put_arrays("s1", arrays(1))
        monkeypatch.setattr(fsutil, "BOOT_ID_PATH", str(tmp_path / "missing"))
        reads = chunk_reads(monkeypatch)
        s.put_arrays("s2", arrays(1))
        assert len(reads) == len(chunk_names(root))  # each verified before reuse
        assert_same(arrays(1), s.get_arrays("s2"))
