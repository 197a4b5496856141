"""tools/bench_s3meta.py: what the metadata commands cost on object storage (issue 13), in requests
and seconds, against a local S3 server (moto on 127.0.0.1 in its own process, as tools/bench_s3.py).

Saves ``--snapshots`` snapshots of ``--chunks`` chunks each (a few chunks change per step) and
one of ``--bulk`` chunks of its own, then
runs each command as a user would, ``python -m casckpt …`` in a fresh process on the saving
host's cache, and counts the requests the server saw, by method:

    ls, ls again, gc --dry-run, rm of the bulk and half the steps (not counted), gc, reindex

Usage: .venv/bin/python tools/bench_s3meta.py [--snapshots 20] [--chunks 40] [--json]
The machine's load shows in the seconds (moto is Python, on the same cores); the requests do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_s3 import Server, served  # noqa: E402

CHUNK = 16 << 10


def command(server: Server, env: dict, *args: str) -> dict:
    """Run ``casckpt ARGS``; its seconds (process start included) and requests by method."""
    before = len(server.requests())
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "casckpt", *args], env=env, capture_output=True, text=True,
                       timeout=600)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"casckpt {' '.join(args)} failed: {r.stderr}")
    lines = server.requests()[before:]
    by: dict[str, int] = {}
    for line in lines:
        method, _, path = line.partition(" ")
        kind = ("list" if "list-type=" in path else "chunks" if "/chunks/" in path
                else "snapshots" if "/snapshots/" in path else "other")
        if os.environ.get("BENCH_S3META_LOG"):
            print("   ", args[0], line, file=sys.stderr)
        by[f"{method} {kind}"] = by.get(f"{method} {kind}", 0) + 1
    return {"seconds": round(seconds, 3), "requests": len(lines), "by": dict(sorted(by.items())),
            "stdout": r.stdout}


def populate(url: str, snapshots: int, chunks: int, bulk: int) -> None:
    import casckpt

    rng = np.random.default_rng(0)
    w = rng.standard_normal(chunks * CHUNK // 4).astype(np.float32)
    with casckpt.Store.open(url, create=True, chunk_size=CHUNK, delta=False) as s:
        for i in range(snapshots):
            w[rng.integers(0, len(w), 3)] += 1  # about 3 chunks change per step
            s.put_arrays(f"step-{i:04d}", {"w": w})
        # chunks only this snapshot holds: what the gc below deletes, with the dropped steps' own
        s.put_arrays("bulk", {"b": rng.standard_normal(bulk * CHUNK // 4).astype(np.float32)})


def run(snapshots: int, chunks: int, bulk: int) -> dict:
    with served("casckpt-s3meta-") as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        url = "s3://meta/store"
        server.bucket("meta")
        populate(url, snapshots, chunks, bulk)
        out = {"snapshots": snapshots + 1, "chunks_per_snapshot": chunks, "bulk_chunks": bulk}
        for key, args in (("ls", ("ls",)), ("ls_again", ("ls",)), ("gc_dry_run", ("gc", "--dry-run"))):
            out[key] = command(server, env, *args, url)
            del out[key]["stdout"]
        names = ["bulk", *(f"step-{i:04d}" for i in range(0, snapshots, 2))]
        command(server, env, "rm", url, *names)
        out["gc"] = command(server, env, "--json", "gc", url)
        out["gc"]["chunks_deleted"] = json.loads(out["gc"].pop("stdout"))["chunks"]
        out["reindex"] = command(server, env, "reindex", url)
        del out["reindex"]["stdout"]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--bulk", type=int, default=400, help="chunks of one more snapshot, which gc deletes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run(a.snapshots, a.chunks, a.bulk)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"== {a.snapshots} snapshots of {a.chunks} chunks and one of {a.bulk} on a local S3 server (moto); "
          f"gc deletes {res['gc']['chunks_deleted']} chunks ==")
    for k in ("ls", "ls_again", "gc_dry_run", "gc", "reindex"):
        r = res[k]
        print(f"{k:12s} {r['seconds']:7.2f} s {r['requests']:6d} requests  {r['by']}")


if __name__ == "__main__":
    main()
