"""A child process for the reliability tests: saves (or collects garbage) in a real store.

Run as ``python tests/child.py '<json spec>'``. Spec keys:

* ``root``: the store; ``action``: ``save`` | ``save_loop`` | ``gc_loop`` | ``admin``.
* ``save``: ``name`` and ``seed`` of one snapshot (``step``: ``nudged(seed, step)`` instead of
  ``arrays(seed)``, so the save writes delta chunks); optional ``crash``: ``[target, n, when]`` kills
  this process with SIGKILL at the ``n``-th call of ``target`` (``when`` = ``before`` | ``after``).
  Targets sit at the I/O boundary: ``write_parts`` (every file written), ``link`` (a chunk file
  linked into place), ``fsync_dir``, ``add_chunks`` (the index commit), ``publish`` (the manifest
  rename, the commit point), ``put_snapshot`` (the registry row).
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

import casckpt
from casckpt import chunks, fsutil
from casckpt.index import Index
from casckpt.store import Store
from storekit import arrays, nudged

TARGETS = {"write_parts": (fsutil, "write_parts"), "link": (chunks, "_link_into_place"),
           "fsync_dir": (fsutil, "fsync_dir"), "add_chunks": (Index, "add_chunks"),
           "publish": (Store, "_publish"), "put_snapshot": (Index, "put_snapshot")}


def install_crash(target: str, n: int, when: str) -> None:
    owner, attr = TARGETS[target]
    orig = getattr(owner, attr)
    count, lock = [0], threading.Lock()

    def wrapper(*args, **kwargs):
        with lock:
            count[0] += 1
            hit = count[0] == n
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = orig(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, attr, wrapper)


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
