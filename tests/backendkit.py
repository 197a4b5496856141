"""The back-end conformance suite (see casckpt/backends/__init__.py for the contract).

A back-end joins by subclassing :class:`BackendConformance` in its own test file and giving two
fixtures: ``backend`` (a fresh, empty back-end) and ``reopen`` (a picklable callable that opens
the same root again, so a second process can race the first). Nothing here knows which medium is
underneath: the suite is what every back-end promises to the store above the seam.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from casckpt.backends import Backend, BlobNotFoundError
from casckpt.errors import UnsafePathError

HOSTILE = ["..", "../x", "a/../b", "/abs", "/etc/passwd", "a//b", "", "./a", "a/", "a\x00b",
           "x" * 2000, "a/" + "y" * 300, "a\\b", "~", "a b", "é", "a/.", "a\nb"]


def _race(reopen, key: str, fill: int, start, results) -> None:
    backend = reopen()
    start.wait()
    results.put((fill, backend.put_if_absent(key, [bytes([fill]) * (1 << 20)])))


class BackendConformance:
    """Subclass and provide the ``backend`` and ``reopen`` fixtures."""

    # -- missing keys ----------------------------------------------------------------------------
    def test_missing_key(self, backend: Backend):
        with pytest.raises(BlobNotFoundError):
            backend.get("nope/a")
        with pytest.raises(BlobNotFoundError):
            backend.get_range("nope/a", 0, 4)
        assert backend.size("nope/a") is None
        assert not backend.exists("nope/a")
        assert backend.delete("nope/a") is False
        assert list(backend.list("nope/")) == []

    # -- writes and reads ------------------------------------------------------------------------
    def test_round_trip_in_parts(self, backend: Backend):
        payload = os.urandom(70_000)
        assert backend.put_if_absent("chunks/ab/cd", [payload[:16], memoryview(payload)[16:]]) is True
        assert backend.get("chunks/ab/cd") == payload
        assert backend.size("chunks/ab/cd") == len(payload)
        assert backend.exists("chunks/ab/cd")

    def test_empty_blob(self, backend: Backend):
        assert backend.put_if_absent("e", []) is True
        assert backend.get("e") == b""
        assert backend.size("e") == 0

    def test_put_if_absent_keeps_the_first(self, backend: Backend):
        assert backend.put_if_absent("k", [b"first"]) is True
        assert backend.put_if_absent("k", [b"second, longer"]) is False
        assert backend.get("k") == b"first"

    def test_replace_creates_and_overwrites(self, backend: Backend):
        backend.replace("cfg/c.json", [b"one"])
        assert backend.get("cfg/c.json") == b"one"
        backend.replace("cfg/c.json", [b"two!"])
        assert backend.get("cfg/c.json") == b"two!"
        assert backend.size("cfg/c.json") == 4

    def test_delete(self, backend: Backend):
        backend.put_if_absent("d/x", [b"1"])
        assert backend.delete("d/x") is True
        assert backend.size("d/x") is None
        assert backend.delete("d/x") is False
        assert backend.put_if_absent("d/x", [b"2"]) is True  # the name is free again
        assert backend.get("d/x") == b"2"

    def test_unsynced_write_then_sync(self, backend: Backend):
        assert backend.put_if_absent("s/a", [b"abc"], sync=False) is True
        backend.replace("s/b", [b"def"], sync=False)
        backend.sync(["s/a", "s/b"])
        assert (backend.get("s/a"), backend.get("s/b")) == (b"abc", b"def")

    def test_sync_data_then_sync_of_the_names(self, backend: Backend):
        assert backend.put_if_absent("s/c", [b"ghi"], sync=False) is True
        backend.sync_data("s/c")
        backend.sync_data("s/never-written")  # nothing there: nothing to do, no error
        backend.sync(["s/c"], data_synced={"s/c"})
        assert backend.get("s/c") == b"ghi"

    def test_sync_makes_a_delete_durable(self, backend: Backend):
        backend.put_if_absent("s/gone", [b"x"], sync=False)
        assert backend.delete("s/gone") is True
        backend.sync(["s/gone"])  # a key whose blob was deleted: its deletion is made durable
        assert not backend.exists("s/gone")

    def test_version_changes_when_the_blob_does(self, backend: Backend):
        assert backend.version("v/a") is None
        backend.replace("v/a", [b"one"])
        first = backend.version("v/a")
        assert first == backend.version("v/a")  # stable while the blob is
        backend.replace("v/a", [b"two"])
        assert first is None and backend.version("v/a") is None or backend.version("v/a") != first
        backend.delete("v/a")
        assert backend.version("v/a") is None

    def test_listed_versions_when_given_are_the_blobs_versions(self, backend: Backend):
        backend.replace("v/a", [b"one"])
        backend.replace("v/b", [b"one"])
        before = {b.key: b.version for b in backend.list("v/")}
        for key, version in before.items():
            assert version is None or version == backend.version(key)
        backend.replace("v/a", [b"two, longer"])
        (after,) = [b for b in backend.list("v/") if b.key == "v/a"]
        assert after.version is None or (after.version == backend.version("v/a") and after.version != before["v/a"])

    def test_listed_times_when_given_are_recent(self, backend: Backend):
        backend.put_if_absent("t/a", [b"x"])
        (blob,) = backend.list("t/")
        assert blob.mtime is None or abs(blob.mtime - time.time()) < 3600

    # -- ranges ----------------------------------------------------------------------------------
    @pytest.mark.parametrize("start,end", [(0, 10), (3, 7), (5, 5), (8, 100), (10, 20), (50, 60), (0, 0)])
    def test_ranges(self, backend: Backend, start: int, end: int):
        data = bytes(range(10))
        backend.put_if_absent("r", [data])
        assert backend.get_range("r", start, end) == data[start:end]

    def test_get_versioned_gives_the_bytes_and_their_version(self, backend: Backend):
        backend.replace("v/g", [b"one"])
        data, version = backend.get_versioned("v/g")
        assert data == b"one" and (version is None or version == backend.version("v/g"))
        backend.replace("v/g", [b"two, longer"])
        data, again = backend.get_versioned("v/g")
        assert data == b"two, longer" and (again is None or again != version)
        with pytest.raises(BlobNotFoundError):
            backend.get_versioned("v/nope")

    def test_get_head_gives_the_first_bytes_and_the_size(self, backend: Backend):
        data = os.urandom(5000)
        backend.put_if_absent("h/long", [data])
        backend.put_if_absent("h/short", [b"abc"])
        backend.put_if_absent("h/empty", [])
        assert backend.get_head("h/long", 48) == (data[:48], 5000)
        assert backend.get_head("h/short", 48) == (b"abc", 3)
        assert backend.get_head("h/empty", 48) == (b"", 0)
        with pytest.raises(BlobNotFoundError):
            backend.get_head("h/nope", 48)

    # -- batch deletes ---------------------------------------------------------------------------
    def test_delete_many_removes_those_named_and_tolerates_missing_ones(self, backend: Backend):
        for i in range(6):
            backend.put_if_absent(f"m/{i}", [b"x" * i])
        checks = []
        backend.delete_many(["m/0", "m/2", "m/nope", "m/4"], before=lambda: checks.append(1))
        assert {b.key for b in backend.list("m/")} == {"m/1", "m/3", "m/5"}
        assert checks  # the lock check ran before the deleting request(s)
        backend.delete_many([])
        backend.delete_many(["m/1", "m/3", "m/5"])
        assert list(backend.list("m/")) == []

    def test_delete_many_refuses_more_than_a_batch(self, backend: Backend):
        backend.put_if_absent("m/keep", [b"x"])
        with pytest.raises(ValueError):
            backend.delete_many(["m/keep"] * (backend.delete_batch + 1))
        assert backend.exists("m/keep")

    def test_delete_many_stops_when_the_check_fails(self, backend: Backend):
        backend.put_if_absent("m/a", [b"x"])

        class Lapsed(Exception):
            pass

        def lapsed():
            raise Lapsed()
        with pytest.raises(Lapsed):
            backend.delete_many(["m/a"], before=lapsed)
        assert backend.exists("m/a")  # nothing deleted once the check failed

    # -- listing ---------------------------------------------------------------------------------
    def test_list_by_prefix(self, backend: Backend):
        keys = {"a/1": b"x", "a/2": b"yy", "a/sub/3": b"zzz", "ab/4": b"", "b": b"wwww"}
        for k, v in keys.items():
            backend.put_if_absent(k, [v])
        def listed(prefix):
            return {(b.key, b.size) for b in backend.list(prefix)}
        assert listed("a/") == {("a/1", 1), ("a/2", 2), ("a/sub/3", 3)}
        assert listed("a") == {("a/1", 1), ("a/2", 2), ("a/sub/3", 3), ("ab/4", 0)}
        assert {k for k, _ in listed("")} >= set(keys)
        assert listed("a/sub/") == {("a/sub/3", 3)}
        assert listed("zz/") == set()
        backend.delete("a/2")
        assert listed("a/") == {("a/1", 1), ("a/sub/3", 3)}

    # -- hostile keys ----------------------------------------------------------------------------
    @pytest.mark.parametrize("key", HOSTILE, ids=repr)
    def test_hostile_key_refused(self, backend: Backend, key: str):
        for op in (lambda: backend.get(key), lambda: backend.get_range(key, 0, 1),
                   lambda: backend.put_if_absent(key, [b"x"]), lambda: backend.replace(key, [b"x"]),
                   lambda: backend.delete(key), lambda: backend.size(key), lambda: backend.get_head(key, 8),
                   lambda: backend.get_versioned(key), lambda: backend.version(key),
                   lambda: backend.delete_many(["ok", key])):
            with pytest.raises(UnsafePathError):
                op()
        with pytest.raises(UnsafePathError):
            list(backend.list(key + "/"))
        assert [b for b in backend.list("") if not b.key.startswith("tmp/")] == []

    def test_bad_range_refused(self, backend: Backend):
        backend.put_if_absent("r", [b"abc"])
        with pytest.raises(ValueError):
            backend.get_range("r", 2, 1)
        with pytest.raises(ValueError):
            backend.get_range("r", -1, 2)

    # -- races -----------------------------------------------------------------------------------
    def test_put_if_absent_race_threads(self, backend: Backend):
        wins, start = [], threading.Barrier(8)
        def put(fill: int) -> None:
            start.wait()
            if backend.put_if_absent("race", [bytes([fill]) * (1 << 20)]):
                wins.append(fill)
        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(wins) == 1
        assert backend.get("race") == bytes([wins[0]]) * (1 << 20)

    def test_put_if_absent_race_processes(self, backend: Backend, reopen):
        ctx = mp.get_context("spawn")
        start, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(reopen, "prace", i + 1, start, results)) for i in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        winners = [fill for fill, won in outcomes if won]
        assert len(winners) == 1, outcomes
        assert backend.get("prace") == bytes([winners[0]]) * (1 << 20)

    def test_replace_never_seen_half_done(self, backend: Backend):
        size, blobs = 1 << 21, [b"A" * (1 << 21), b"B" * (1 << 21)]
        backend.replace("swap", [blobs[0]])
        stop, seen = threading.Event(), []
        def read() -> None:
            while not stop.is_set():
                data = backend.get("swap")
                seen.append(len(data) == size and data in blobs)
        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(30):
                backend.replace("swap", [blobs[i % 2][: size // 2], blobs[i % 2][size // 2:]])
        finally:
            stop.set()
            reader.join(timeout=60)
        assert seen and all(seen)


class BlobMachine(RuleBasedStateMachine):
    """Any sequence of operations leaves the back-end agreeing with a plain dict. Subclasses set
    ``make`` (a callable returning a fresh back-end)."""

    make = None
    # NOTE: no key is a folder of another ("a" next to "a/b"): the store never makes such pairs,
    # and a file system cannot hold them.
    keys = st.sampled_from(["c", "a/b", "a/c", "b/a", "chunks/00/x", "snapshots/s.json"])
    values = st.binary(max_size=64)

    def __init__(self) -> None:
        super().__init__()
        self.backend, self.model = type(self).make(), {}

    @rule(key=keys, value=values)
    def put_if_absent(self, key, value):
        created = self.backend.put_if_absent(key, [value])
        assert created == (key not in self.model)
        if created:
            self.model[key] = value

    @rule(key=keys, value=values)
    def replace(self, key, value):
        self.backend.replace(key, [value])
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key):
        assert self.backend.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(chosen=st.lists(keys, max_size=4, unique=True))
    def delete_many(self, chosen):
        self.backend.delete_many(chosen)
        for k in chosen:
            self.model.pop(k, None)

    @rule(key=keys, start=st.integers(0, 70), length=st.integers(0, 70))
    def get_range(self, key, start, length):
        if key in self.model:
            assert self.backend.get_range(key, start, start + length) == self.model[key][start:start + length]

    @invariant()
    def agrees(self):
        listed = {b.key: b.size for b in self.backend.list("") if not b.key.startswith("tmp/")}
        assert listed == {k: len(v) for k, v in self.model.items()}
        for k, v in self.model.items():
            assert self.backend.get(k) == v


def machine_settings():
    return settings(max_examples=20, stateful_step_count=12, deadline=None, derandomize=True)
