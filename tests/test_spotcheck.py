"""Saves trust the index without one lstat per unchanged chunk (casckpt.spotcheck): a sample is
checked, a sample that finds a loss checks everything, and what a sample misses is found and
healed by verify and gc (the next save writes the chunk again). Real chunk files are deleted."""

import os

import numpy as np
import pytest

from casckpt import spotcheck
from casckpt.gc import gc
from casckpt.verify import verify
from storekit import assert_same, chunk_names, new_store

STATE = {"w": np.arange(200 * 1024, dtype=np.float32)}  # 200 chunks of 4 KiB


def chunk_path(root, hexdigest):
    return root / "chunks" / hexdigest[:2] / hexdigest


def test_an_unchanged_save_checks_a_sample_not_every_chunk(tmp_path, monkeypatch):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", STATE)
        calls, real = [], os.lstat  # NOTE: the local back-end's presence check is an lstat
        monkeypatch.setattr(os, "lstat", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
        assert s.put_arrays("b", STATE).new_chunks == 0
    chunk_calls = [p for p in calls if len(os.path.basename(str(p))) == 64]
    assert 0 < len(chunk_calls) <= spotcheck.SAMPLE < 200


def test_a_sample_that_finds_a_loss_checks_every_chunk(tmp_path):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", STATE)
        gone = sorted(chunk_names(s.root))[::2]  # half the files: any sample meets one
        for h in gone:
            chunk_path(s.root, h).unlink()
        assert s.put_arrays("b", STATE).new_chunks == len(gone)
        assert_same(STATE, s.get_arrays("a"))


@pytest.fixture
def unsampled(tmp_path, monkeypatch):
    """A store whose save 'b' trusted an index entry of a deleted chunk file: the sample (here
    empty, the worst case) missed it, so 'b' references a chunk that is not there."""
    monkeypatch.setattr(spotcheck, "SAMPLE", 0)
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", STATE)
        lost = sorted(chunk_names(s.root))[7]
        chunk_path(s.root, lost).unlink()
        assert s.put_arrays("b", STATE).new_chunks == 0  # the trade: trusted
        yield s, lost


def test_verify_finds_a_lost_chunk_and_the_next_save_heals_it(unsampled):
    s, lost = unsampled
    r = verify(s, quick=True)
    assert [p.digest for p in r.problems] == [lost] and r.problems[0].snapshots == ["a", "b"]
    assert s.put_arrays("c", STATE).new_chunks == 1  # the entry was dropped: written again
    assert verify(s).ok
    assert_same(STATE, s.get_arrays("a"))
    assert_same(STATE, s.get_arrays("b"))


def test_gc_drops_the_entry_of_a_lost_chunk_and_the_next_save_heals_it(unsampled):
    s, lost = unsampled
    plan = gc(s)
    assert [d.hex for d in plan.lost] == [lost] and plan.chunks == ()
    assert s.put_arrays("c", STATE).new_chunks == 1
    assert_same(STATE, s.get_arrays("b"))
