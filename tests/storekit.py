"""Helpers for the reliability tests: deterministic data, bit-exact checks, raw views of a store
root that bypass the store, and a runner for child processes that save into a store."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

import casckpt

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CHUNK = 4096  # the smallest chunk size: small arrays span many chunk files


def lock_busy_event(monkeypatch, thread_name: str):
    """An Event set when the thread named ``thread_name`` finds the store lock taken: a wrapper at
    the lock's I/O boundary (``flock``), so a test can wait for "is waiting" instead of sleeping."""
    import fcntl
    import threading

    import casckpt.lock

    busy, real = threading.Event(), fcntl.flock

    def flock(fd, op):
        try:
            return real(fd, op)
        except BlockingIOError:
            if threading.current_thread().name == thread_name:
                busy.set()
            raise
    monkeypatch.setattr(casckpt.lock.fcntl, "flock", flock)
    return busy


def in_thread(fn, *, timeout: float = 60) -> dict:
    """Run ``fn`` in another thread (as another process would: a thread may not wait on a lock it
    holds itself); ``{"value": ...}`` or ``{"error": exc}``, empty if it did not end in time."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    return out


def arrays(seed: int, *, n: int = 6000) -> dict[str, np.ndarray]:
    """A small state dict; ``shared`` is the same for every seed, so saves dedup against each other."""
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(n).astype(np.float32),
            "b": rng.integers(0, 1 << 30, n // 4, dtype=np.int64),
            "shared": np.arange(n, dtype=np.float32)}


def nudged(seed: int, step: int) -> dict[str, np.ndarray]:
    """``arrays(seed)`` after ``step`` training-like steps: every weight of ``w`` moved a little,
    one in 50 entries of ``b`` changed; new chunks of a save are deltas against the step before."""
    out = arrays(seed)
    rng = np.random.default_rng(1000 + seed)
    for _ in range(step):
        out["w"] = out["w"] + (rng.standard_normal(out["w"].size) * 1e-3).astype(np.float32)
        out["b"][::50] += 1
    return out


def assert_same(expected: dict, got: dict) -> None:
    """Bit-exact equality of two state dicts (same keys, dtypes, shapes and bytes)."""
    assert sorted(expected) == sorted(got)
    for k, a in expected.items():
        b = got[k]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), k
        assert a.tobytes() == b.tobytes(), f"item {k!r} differs"


def open_store(root, **kw) -> casckpt.Store:
    kw.setdefault("workers", 2)
    return casckpt.Store.open(root, **kw)


def new_store(root, **kw) -> casckpt.Store:
    return open_store(root, create=True, chunk_size=CHUNK, **kw)


def tmp_files(root: Path) -> list[str]:
    return sorted(os.listdir(Path(root) / "tmp"))


def chunk_names(root: Path) -> set[str]:
    """Chunk file names on disk, read straight from the directory."""
    return {p.name for p in (Path(root) / "chunks").glob("*/*")}


def referenced(store: casckpt.Store) -> set[str]:
    """Hex digests every committed manifest references, with the bases their delta chunks need
    (read straight from the chunk files' headers, bypassing the store)."""
    out = {d.hex for n in store.snapshot_names() for d in store.manifest(n).digests()}
    todo = list(out)
    while todo:
        base = base_of(store.root, todo.pop())
        if base and base not in out:
            out.add(base)
            todo.append(base)
    return out


def base_of(root: Path, hexdigest: str) -> str | None:
    """The base digest a delta chunk file names in its header (version 2), else None."""
    try:
        head = (Path(root) / "chunks" / hexdigest[:2] / hexdigest).read_bytes()[:48]
    except FileNotFoundError:
        return None
    return head[16:48].hex() if len(head) == 48 and head[4] == 2 else None


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to prove a test left them untouched)."""
    return {str(p): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file() and not p.is_symlink()}


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("PYTHONHASHSEED", None)
    return env


def run_child(script: str, spec: dict, *, timeout: float = 60, wait: bool = True):
    """Run ``tests/<script>`` in a fresh interpreter with ``spec`` as its JSON argument."""
    cmd = [sys.executable, str(TESTS / script), json.dumps(spec)]
    if not wait:
        return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def gc_module():
    """casckpt.gc (imported plainly: an import error in it must fail the tests, not skip them)."""
    from casckpt import gc
    return gc


def verify_module():
    from casckpt import verify
    return verify


@contextlib.contextmanager
def small_tmpfs(path: Path, mib: int):
    """A real file system of ``mib`` MiB mounted at ``path`` (needs root; skips, saying why, if not)."""
    import pytest

    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a {mib} MiB tmpfs for a real disk-full test: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(path: Path) -> Path:
    """Write a file at ``path`` until the file system is full; returns it (delete it to free the disk)."""
    block = b"\xa5" * 65536
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return path


def noise(mib: float, seed: int = 0) -> np.ndarray:
    """Incompressible bytes: what a disk-full test needs to fill the disk for real."""
    return np.random.default_rng(seed).integers(0, 256, int(mib * (1 << 20)), dtype=np.uint8)
