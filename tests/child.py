"""A child process for the reliability tests: saves (or collects garbage) in a real store.

Run as ``python tests/child.py '<json spec>'``. Spec keys:

* ``root``: the store; ``action``: ``save`` | ``save_loop`` | ``gc_loop`` | ``admin``.
* ``save``: ``name`` and ``seed`` of one snapshot (``step``: ``nudged(seed, step)`` instead of
  ``arrays(seed)``, so the save writes delta chunks); optional ``crash``: ``[target, n, when]`` kills
  this process with SIGKILL at the ``n``-th call of ``target`` (``when`` = ``before`` | ``after``).
  Every target is at the I/O boundary: ``write_parts`` (every file written), ``link`` (``os.link``
  of a chunk file into ``chunks/``), ``fsync_dir``, ``index_chunks`` (the commit of an LMDB write
  transaction that writes chunk entries: the index commit), ``publish`` (``os.link`` of the
  manifest into ``snapshots/``: the commit point), ``index_registry`` (the commit of an LMDB
  write transaction that writes the snapshot registry).
* ``save_loop``: saves ``prefix``-0, -1, ... with seeds ``seed``+i for ``seconds``, deleting all but
  the newest ``keep`` of its own; ``gc_loop``: runs gc for ``seconds``. Both print a JSON report.
* ``admin``: optionally ``reindex``, then ``delete`` the listed names, then ``gc``.

The hooks are installed in this process only: the store under test is the real one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import lmdb

import casckpt
from casckpt import fsutil
from storekit import arrays, nudged

def counted(target: str, n: int, when: str):
    """``hit(fn, *args)``: run fn, killing this process before or after the n-th hit."""
    count, lock = [0], threading.Lock()

    def hit(fn, *args, **kwargs):
        with lock:
            count[0] += 1
            now = count[0] == n
        if now and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*args, **kwargs)
        if now and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return hit


def install_crash(target: str, n: int, when: str) -> None:
    hit = counted(target, n, when)
    if target in ("write_parts", "fsync_dir"):
        orig = getattr(fsutil, target)
        setattr(fsutil, target, lambda *a, **k: hit(orig, *a, **k))
    elif target in ("link", "publish"):
        folder = "chunks" if target == "link" else "snapshots"
        real_link = os.link

        def link(src, dst, *a, **k):
            # NOTE: a link into a fan-out folder not made yet fails and is retried: not a hit
            if _in(dst, folder) and os.path.isdir(os.path.dirname(os.path.abspath(dst))):
                return hit(real_link, src, dst, *a, **k)
            return real_link(src, dst, *a, **k)
        os.link = link
    elif target in ("index_chunks", "index_registry"):
        real_open = lmdb.open
        lmdb.open = lambda *a, **k: _Env(real_open(*a, **k), {"index_chunks": b"chunks",
                                                               "index_registry": b"snapshots"}[target], hit)
    else:
        raise SystemExit(f"unknown crash target {target}")


def _in(path, folder: str) -> bool:
    p = os.path.abspath(os.fspath(path))
    return folder in (os.path.basename(os.path.dirname(p)), os.path.basename(os.path.dirname(os.path.dirname(p))))


class _Env:
    """An LMDB environment whose write transactions call ``hit`` around their commit when they
    wrote to the sub-database ``watch``."""

    def __init__(self, env, watch: bytes, hit):
        self._env, self._watch, self._hit, self._names = env, watch, hit, {}

    def open_db(self, key=None, *a, **k):
        db = self._env.open_db(key, *a, **k)
        self._names[id(db)] = key
        return db

    def begin(self, *a, write=False, **k):
        txn = self._env.begin(*a, write=write, **k)
        return _Txn(txn, self) if write else txn

    def __getattr__(self, name):
        return getattr(self._env, name)


class _Txn:
    def __init__(self, txn, env: _Env):
        self._txn, self._env, self._touched = txn, env, False

    def _note(self, db):
        self._touched |= self._env._names.get(id(db)) == self._env._watch

    def put(self, key, value, *a, db=None, **k):
        self._note(db)
        return self._txn.put(key, value, *a, db=db, **k)

    def delete(self, key, *a, db=None, **k):
        self._note(db)
        return self._txn.delete(key, *a, db=db, **k)

    def __enter__(self):
        self._txn.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is None and self._touched:
            return self._env._hit(self._txn.__exit__, *exc)
        return self._txn.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._txn, name)


def save(spec: dict) -> None:
    if spec.get("crash"):
        install_crash(*spec["crash"])
    data = nudged(spec["seed"], spec["step"]) if "step" in spec else arrays(spec["seed"])
    with casckpt.Store.open(spec["root"], workers=2) as s:
        s.put_arrays(spec["name"], data)
    print(json.dumps({"saved": spec["name"]}))


def save_loop(spec: dict) -> None:
    mine, done = [], 0
    deadline = time.monotonic() + spec["seconds"]
    with casckpt.Store.open(spec["root"], workers=2) as s:
        i = 0
        while time.monotonic() < deadline or i < spec.get("min_saves", 1):
            name = f"{spec['prefix']}-{i}"
            s.put_arrays(name, arrays(spec["seed"] + i))
            mine.append(name)
            while len(mine) > spec.get("keep", 10**9):
                s.delete(mine.pop(0))
            i, done = i + 1, done + 1
    print(json.dumps({"saved": done, "kept": mine}))


def gc_loop(spec: dict) -> None:
    from casckpt.gc import gc
    runs = chunks_freed = 0
    deadline = time.monotonic() + spec["seconds"]
    with casckpt.Store.open(spec["root"], workers=2) as s:
        while time.monotonic() < deadline:
            plan = gc(s)
            runs, chunks_freed = runs + 1, chunks_freed + len(plan.chunks)
            time.sleep(spec.get("pause", 0.01))
    print(json.dumps({"runs": runs, "chunks_freed": chunks_freed}))


def admin(spec: dict) -> None:
    """What an operator might run from a shell while a job holds the store open."""
    from casckpt.gc import gc
    with casckpt.Store.open(spec["root"], workers=2) as s:
        if spec.get("reindex"):
            s.reindex()
        for name in spec.get("delete", []):
            s.delete(name)
        if spec.get("gc"):
            gc(s)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    {"save": save, "save_loop": save_loop, "gc_loop": gc_loop, "admin": admin}[spec["action"]](spec)
