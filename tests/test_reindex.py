"""Index rebuild reads chunk headers, not bodies (casckpt.reindex): the entries match what the
saves recorded, bad headers stay out, and ``reindex --verify`` is there for rotted bodies."""

import shutil

from casckpt import fsutil
from clikit import cli
from storekit import arrays, assert_same, chunk_names, new_store, nudged, open_store


def count_chunk_reads(monkeypatch) -> list:
    """Whole chunk files read (bodies), counted at the I/O boundary (fsutil.read_file)."""
    reads, real = [], fsutil.read_file

    def read_file(path, *a, **kw):
        if "/chunks/" in str(path):
            reads.append(path)
        return real(path, *a, **kw)
    monkeypatch.setattr(fsutil, "read_file", read_file)
    return reads


def saved(root):
    with new_store(root) as s:  # full chunks and delta chunks
        for step in range(3):
            s.put_arrays(f"s{step}", nudged(1, step))
        return dict(s.index.chunks())


def test_rebuild_reads_no_chunk_body_and_restores_every_entry(tmp_path, monkeypatch):
    entries = saved(tmp_path / "s")
    assert any(i.base is not None for i in entries.values())
    reads = count_chunk_reads(monkeypatch)
    with open_store(tmp_path / "s") as s:
        r = s.reindex()
        assert reads == [] and r["chunks"] == len(entries) and r["seconds"] >= 0 and not r["verified"]
        assert dict(s.index.chunks()) == entries
        s.reindex(verify=True)
        assert len(reads) >= len(entries)  # --verify reads every chunk
        assert dict(s.index.chunks()) == entries


def test_a_missing_index_is_rebuilt_from_headers_on_first_use(tmp_path, monkeypatch):
    entries = saved(tmp_path / "s")
    shutil.rmtree(tmp_path / "s" / "index")
    reads = count_chunk_reads(monkeypatch)
    with open_store(tmp_path / "s") as s:
        assert s.put_arrays("again", nudged(1, 2)).new_chunks == 0
        assert reads == [] and dict(s.index.chunks()) == entries


def test_a_bad_header_stays_out_and_the_next_save_rewrites_it(tmp_path):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", arrays(1))
        bad = sorted(chunk_names(s.root))[3]
        path = s.root / "chunks" / bad[:2] / bad
        path.write_bytes(path.read_bytes()[:10])  # torn inside its header
        r = s.reindex()
        assert r["unreadable_chunks"] == 1
        assert s.put_arrays("b", arrays(1)).new_chunks == 1
        assert_same(arrays(1), s.get_arrays("a"))


def test_reindex_verify_catches_a_rotted_body_that_headers_cannot(tmp_path):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", arrays(1))
        bad = sorted(chunk_names(s.root))[3]
        path = s.root / "chunks" / bad[:2] / bad
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        assert s.reindex()["unreadable_chunks"] == 0  # the trade: a header cannot show it
        assert s.reindex(verify=True)["unreadable_chunks"] == 1
        assert s.put_arrays("b", arrays(1)).new_chunks == 1


def test_cli_reindex_reports_its_time(tmp_path):
    saved(tmp_path / "s")
    out = cli("reindex", tmp_path / "s")
    assert out.returncode == 0 and " in " in out.stdout and " s" in out.stdout, out
