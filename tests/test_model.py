"""Model-based: a hypothesis state machine drives put / get / delete / gc (with retention) /
reindex / reopen (delta on or off, any chain depth) / losing the index in random order against a
plain dict, and checks after every step that every remaining snapshot loads bit-exactly. Nudged
contents make saves write delta chunks, so gc, rm and reindex meet chains of bases."""

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


def content(seed: int, size: int, nudge: int = 0) -> dict[str, np.ndarray]:
    base = np.arange(size * 1024, dtype=np.float32)
    base[: 1024 * (seed % 3)] += seed  # the first chunks differ by seed, the rest are shared
    base[::7] += np.float32(nudge / 64)  # a small change everywhere: a delta of the chunk before
    return {"w": base, "s": np.full(seed + 1, seed, dtype=np.int16)}


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="casckpt-model-"))
        self.root = self.dir / "store"
        self.store = open_store(self.root, create=True, chunk_size=CHUNK, sync=False)
        self.model: dict[str, dict] = {}

    @rule(name=NAMES, seed=SEEDS, size=st.integers(1, 6), nudge=st.integers(0, 3))
    def put(self, name, seed, size, nudge):
        data = content(seed, size, nudge)
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

    @rule(keep_last=st.none() | st.integers(0, 3))
    def gc(self, keep_last):
        gc_mod.gc(self.store, keep_last=keep_last)
        if keep_last is not None:
            kept = list(self.model)[-keep_last:] if keep_last else []
            self.model = {k: v for k, v in self.model.items() if k in kept}
        assert chunk_names(self.root) == referenced(self.store)

    @rule()
    def reindex(self):
        self.store.reindex()

    @rule(delta=st.booleans(), max_depth=st.integers(1, 3))
    def reopen(self, delta, max_depth):
        self.store.close()
        self.store = open_store(self.root, sync=False, delta=delta, max_depth=max_depth)

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
        for name, data in self.model.items():
            assert_same(data, self.store.get_arrays(name))

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=14, deadline=None,
                                          derandomize=True, database=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_store_matches_a_dict = StoreMachine.TestCase
