"""Model-based: a hypothesis state machine drives put / get / delete / gc / reindex / reopen /
losing the index in random order against a plain dict, and checks the store after every step."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import casckpt
from casckpt import gc as gc_mod
from storekit import CHUNK, assert_same, chunk_names, open_store, referenced


NAMES = st.sampled_from(["a", "b", "c", "d"])
# a handful of contents, overlapping in chunks, so dedup and gc interact
SEEDS = st.integers(0, 5)


def content(seed: int, size: int) -> dict[str, np.ndarray]:
    base = np.arange(size * 1024, dtype=np.float32)
    base[: 1024 * (seed % 3)] += seed  # the first chunks differ by seed, the rest are shared
    return {"w": base, "s": np.full(seed + 1, seed, dtype=np.int16)}


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="casckpt-model-"))
        self.root = self.dir / "store"
        self.store = open_store(self.root, create=True, chunk_size=CHUNK, sync=False)
        self.model: dict[str, dict] = {}

    @rule(name=NAMES, seed=SEEDS, size=st.integers(1, 6))
    def put(self, name, seed, size):
        data = content(seed, size)
        if name in self.model:
            with pytest.raises(casckpt.SnapshotExistsError):
                self.store.put_arrays(name, data)
        else:
            self.store.put_arrays(name, data)
            self.model[name] = data

    @rule(name=NAMES)
    def get(self, name):
        if name in self.model:
            assert_same(self.model[name], self.store.get_arrays(name))
        else:
            with pytest.raises(casckpt.SnapshotNotFoundError):
                self.store.get_arrays(name)

    @rule(name=NAMES)
    def delete(self, name):
        if name in self.model:
            self.store.delete(name)
            del self.model[name]
        else:
            with pytest.raises(casckpt.SnapshotNotFoundError):
                self.store.delete(name)

    @rule()
    def gc(self):
        gc_mod.gc(self.store)
        assert chunk_names(self.root) == referenced(self.store)

    @rule()
    def reindex(self):
        self.store.reindex()

    @rule()
    def reopen(self):
        self.store.close()
        self.store = open_store(self.root, sync=False)

    @rule()
    def lose_index(self):
        self.store.close()
        shutil.rmtree(self.root / "index")
        self.store = open_store(self.root, sync=False)

    @precondition(lambda self: self.model)
    @rule()
    def latest(self):
        newest = list(self.model)[-1]  # dicts keep insertion order: the newest put still present
        assert self.store.resolve("latest") == newest
        assert_same(self.model[newest], self.store.get_arrays("latest"))

    @invariant()
    def same_snapshots(self):
        assert sorted(x.name for x in self.store.snapshots()) == sorted(self.model)
        assert referenced(self.store) <= chunk_names(self.root)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=12, deadline=None,
                                          derandomize=True, database=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_store_matches_a_dict = StoreMachine.TestCase
