"""Pipeline on its own: results in order, the in-flight memory budget holds, the first error
cancels what has not started and comes out once the running tasks are done; Tally serializes
progress calls from worker threads."""

from __future__ import annotations

import threading

import pytest

from casckpt import pipeline
from casckpt.pipeline import Pipeline


@pytest.fixture
def pipe():
    p = Pipeline(workers=4, inflight_bytes=100)
    yield p
    p.close()


def test_results_in_order(pipe):
    assert pipe.map(lambda x: x * x, list(range(50))) == [x * x for x in range(50)]


def test_memory_budget_bounds_what_runs_at_once(pipe):
    """Tasks of cost 40 under a budget of 100: two run together (a barrier proves it), never three."""
    running, peak, lock = [0], [0], threading.Lock()
    pair = threading.Barrier(2, timeout=30)

    def task(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            pair.wait()  # two at a time must be possible, or this times out
        finally:
            with lock:
                running[0] -= 1
        return i

    assert pipe.map(task, list(range(10)), cost=lambda _: 40) == list(range(10))
    assert peak[0] == 2


def test_a_task_larger_than_the_budget_still_runs_alone(pipe):
    assert pipe.map(lambda i: i, [0, 1, 2], cost=lambda _: 500) == [0, 1, 2]


def test_first_error_cancels_the_rest_and_waits_for_running_tasks(pipe):
    started, running, lock = [], [0], threading.Lock()
    release = threading.Event()

    def task(i):
        with lock:
            started.append(i)
            running[0] += 1
        try:
            if i == 0:
                raise ValueError("boom")
            release.wait(0.05)  # keep the others busy a moment
            return i
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(ValueError, match="boom"):
        pipe.map(task, list(range(1000)))
    assert running[0] == 0  # nothing still runs once map has raised
    assert len(started) < 100  # the rest never started (at most a window of 2 x workers in flight)


class Recorder:
    """A progress callback that notices being entered by two threads at once."""

    def __init__(self):
        self.calls, self.inside, self.overlaps = [], 0, 0

    def __call__(self, done, total):
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        self.calls.append((done, total))
        threading.Event().wait(0.001)  # widen the window a racing caller would hit
        self.inside -= 1


def test_tally_calls_progress_one_at_a_time_in_order(pipe):
    bar = Recorder()
    tally = pipeline.Tally(bar, 200)
    pipe.map(lambda i: tally.add(1), list(range(200)))
    assert bar.overlaps == 0 and bar.calls == [(i, 200) for i in range(1, 201)]


@pytest.mark.parametrize("verb", ["verify", "diff"])
def test_progress_from_worker_threads_is_serialized(tmp_path, verb):
    """verify and diff --values report progress from worker threads; the callback never runs twice
    at once and sees every count once, in order."""
    from casckpt.diff import diff
    from casckpt.verify import verify
    from storekit import arrays, new_store

    with new_store(tmp_path / "s", workers=8) as s:
        a, b = arrays(1, n=40000), arrays(2, n=40000)
        s.put_arrays("a", a)
        s.put_arrays("b", b)
        bar = Recorder()
        if verb == "verify":
            n = verify(s, progress=bar).chunks_checked
        else:
            n = diff(s, "a", "b", values=True, progress=bar).chunks_read // 2
        assert n > 20 and bar.overlaps == 0
        assert bar.calls == [(i, n) for i in range(1, n + 1)]


def _square_in_child(q) -> None:
    q.put(Pipeline(workers=3).map(lambda x: x * x, list(range(20))))


def test_pools_are_the_processs_and_a_forked_child_starts_its_own():
    """Pipelines of one size share the process's pool (its threads stay warm between stores);
    a forked child, which has none of its parent's threads, gets pools of its own."""
    import multiprocessing as mp
    assert Pipeline(workers=3).pool is Pipeline(workers=3).pool is not Pipeline(workers=2).pool
    assert Pipeline(workers=3).map(lambda x: x + 1, list(range(20))) == list(range(1, 21))  # threads started
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_square_in_child, args=(q,))
    child.start()
    try:
        assert q.get(timeout=30) == [x * x for x in range(20)]
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
