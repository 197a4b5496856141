"""The thread budget: ranks sharing a node split its cores (issue: 8 ranks × cores threads)."""

from __future__ import annotations

import os

import pytest

from casckpt.pipeline import Pipeline, default_workers


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_a_process_alone_gets_its_cores_plus_two(monkeypatch):
    monkeypatch.delenv("CASCKPT_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == min(16, cores() + 2)


@pytest.mark.parametrize("ranks", [2, 8, 64])
def test_ranks_on_a_node_split_the_cores(monkeypatch, ranks):
    monkeypatch.delenv("CASCKPT_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert default_workers() == max(1, cores() // ranks)
    assert ranks * default_workers() <= max(cores(), ranks)  # never more busy threads than cores
    assert Pipeline().workers == default_workers()


def test_the_override_wins_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("CASCKPT_THREADS", "5")
    assert default_workers() == 5
    assert Pipeline(workers=3).workers == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv("CASCKPT_THREADS", bad)
        with pytest.raises(ValueError, match="CASCKPT_THREADS"):
            default_workers()
