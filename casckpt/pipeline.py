"""A bounded parallel map: the engine behind hashing, compressing, writing and reading chunks.

blake3, zstandard and file I/O release the GIL, so a thread pool uses every core. Memory stays
bounded: a task is submitted only while the summed ``cost`` of unfinished tasks fits the budget
(the cost of a write is the scratch memory it needs: a byte-grouped copy and the compressed
output), so extra memory during a save is capped by the budget, not by the state's size.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_INFLIGHT = 128 << 20
# NOTE: threads that only wait on the disk (fsync); two keep it busy while the workers compute
BACKGROUND_THREADS = 2

# NOTE: the thread pools are the process's, one per size, kept for its life. Every save and load
# opens a store, and so a pipeline, of its own: with pools of their own each started its threads
# cold, so each thread made its zstd contexts and first touched its reused decode scratch
# again, and a save that writes a few chunks paid that on every one (README, Performance). The
# price: those threads and their buffers, a few MiB each, stay.
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(kind: str, threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get((kind, threads))
        if pool is None:
            pool = _pools[(kind, threads)] = ThreadPoolExecutor(threads, thread_name_prefix=f"casckpt-{kind}")
        return pool


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist there, so start afresh."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def default_workers() -> int:
    """Threads per process: ``CASCKPT_THREADS`` if set, else this process's share of the cores.

    Ranks on one node (``LOCAL_WORLD_SIZE``, set by torchrun) split the cores between them, so
    8 ranks never run 8 × cores hashing threads. A process alone gets two threads more than
    cores: a worker blocked in write() or fsync (the kernel throttles writers when the disk lags)
    leaves a core to the others (measured with tools/bench).
    """
    override = os.environ.get("CASCKPT_THREADS", "")
    if override:
        try:
            n = int(override)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"CASCKPT_THREADS must be a positive integer, got {override!r}")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    if local_ranks == 1:
        return min(16, cores + 2)
    return max(1, cores // local_ranks)


class Pipeline:
    """A parallel map with an in-flight memory budget over the process's pool of ``workers``
    threads (shared with every pipeline of that size; see ``_pools``). Safe to share."""

    def __init__(self, *, workers: int | None = None, inflight_bytes: int = DEFAULT_INFLIGHT) -> None:
        self.workers = workers or default_workers()
        self.inflight_bytes = inflight_bytes

    @property
    def pool(self) -> ThreadPoolExecutor:
        return _pool("w", self.workers)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], *,
            cost: Callable[[T], int] = lambda _: 0) -> list[R]:
        """``[fn(t) for t in tasks]`` in parallel, in order; the first error cancels the rest."""
        if len(tasks) <= 1 or self.workers == 1:
            return [fn(t) for t in tasks]
        results: list = [None] * len(tasks)
        pending: dict[Future, tuple[int, int]] = {}
        inflight = 0

        def drain(block_until_room: int) -> None:
            nonlocal inflight
            while pending and (block_until_room < 0 or inflight + block_until_room > self.inflight_bytes
                               or len(pending) >= 2 * self.workers):
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i, c = pending.pop(f)
                    inflight -= c
                    results[i] = f.result()
                if block_until_room < 0 and not pending:
                    break

        try:
            for i, t in enumerate(tasks):
                c = cost(t)
                drain(c)
                pending[self.pool.submit(fn, t)] = (i, c)
                inflight += c
            drain(-1)
        except BaseException:
            for f in pending:
                f.cancel()
            wait(pending)
            raise
        return results

    def background(self, fn: Callable[..., R], *args) -> Future:
        """Run ``fn(*args)`` on a thread of a small pool of its own, for work that waits on the
        disk (an fsync): it holds up no worker of :meth:`map`, so the waits overlap their CPU work."""
        return _pool("bg", BACKGROUND_THREADS).submit(fn, *args)

    def close(self) -> None:
        """Nothing to release: the threads are the process's, kept for the next pipeline."""


class Tally:
    """Adds up work done in worker threads and reports it as ``progress(done, total)``.

    ``add`` may be called from any thread; the lock keeps the sum exact and the reports in
    order. ``grow`` raises the total once more work is known. Without ``progress`` it counts only.
    """

    def __init__(self, progress: Callable[[int, int], None] | None, total: int = 0) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self._lock = threading.Lock()

    def grow(self, n: int) -> None:
        with self._lock:
            self.total += n

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.progress:
                self.progress(self.done, self.total)
