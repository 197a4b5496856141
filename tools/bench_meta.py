"""tools/bench_meta.py: metadata costs that must not grow with the store (issue 13).

Builds a store of ``--chunks`` real chunk files (tiny items, so the files are cheap to make), then
``--snapshots`` manifests of ``--refs`` chunk refs each, drawn from those chunks (written straight
into ``snapshots/``, as many saves would leave them), and times, median of ``--repeat``:

* parsing and validating one manifest of ``--refs`` refs (format 2, and format 1 for contrast);
* looking up ``--refs`` digests at planning (``Store.stored``: LMDB plus a sampled lstat), and
  what one lstat per chunk (the old way) costs on top;
* ``ls`` and ``gc --dry-run`` over all snapshots: the first run (every manifest parsed, the
  reference-key cache built) and the next ones (cache current: nothing parsed);
* ``reindex`` of the store of ``--chunks`` chunks (headers only), and ``reindex --verify``; and
  the same for a store of ``--big`` chunks of 2 MiB, where reading bodies is what costs.

Usage: .venv/bin/python tools/bench_meta.py [--chunks 100000] [--refs 500000] [--snapshots 100]
The machine's load shows in every figure: quote medians from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import casckpt  # noqa: E402
from casckpt.gc import plan_gc  # noqa: E402
from casckpt.manifest import Item, Manifest, utc_now  # noqa: E402
from casckpt.usage import ls  # noqa: E402

PER_ITEM = 1000  # refs per item of the synthetic manifests (500 items for 500k refs)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def make_chunks(root: Path, n: int) -> list[bytes]:
    """A store holding ``n`` chunk files of 16 bytes (one tiny item each); their raw digests."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (n, 16), dtype=np.uint8)
    with casckpt.Store.open(root, create=True, sync=False) as s:
        s.put_arrays("chunks", {f"c{i}": data[i] for i in range(n)})
        m = s.manifest("chunks")
        return [it.raw_digests for it in m.items.values()]


def synthetic(name: str, pool: np.ndarray, refs: int, seed: int) -> Manifest:
    """A manifest of ``refs`` refs to chunks of ``pool`` (an (n, 32) uint8 array of digests)."""
    rng = np.random.default_rng(seed)
    pick = pool[rng.integers(0, len(pool), refs)]
    items = {}
    for k in range(0, refs, PER_ITEM):
        part = pick[k:k + PER_ITEM]
        items[f"layers.{k // PER_ITEM}.w"] = Item.columnar(
            "uint8", (16 * len(part),), part.tobytes(), np.full(len(part), 16, np.int64))
    return Manifest(name, utc_now(), 4096, items, {"seq": seed})


def fresh(root: Path):
    return casckpt.Store.open(root, sync=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--refs", type=int, default=500_000)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--big", type=int, default=256, help="2 MiB chunks of the second reindex store")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    out: dict = {"chunks": args.chunks, "refs": args.refs, "snapshots": args.snapshots, "big": args.big}
    with tempfile.TemporaryDirectory(prefix="bench-meta-") as tmp:
        root = Path(tmp) / "store"
        t = time.perf_counter()
        pool = np.frombuffer(b"".join(make_chunks(root, args.chunks)), np.uint8).reshape(-1, 32)
        print(f"made {args.chunks} chunk files in {time.perf_counter() - t:.1f} s", flush=True)

        with fresh(root) as s:
            out["reindex_s"], r = timed(s.reindex, args.repeat)
            assert r["chunks"] == args.chunks, r
            out["reindex_verify_s"], _ = timed(lambda: s.reindex(verify=True), 1)

        big = Path(tmp) / "big"
        rng = np.random.default_rng(1)
        with casckpt.Store.open(big, create=True, sync=False) as s:
            w = (rng.standard_normal((args.big, 512 * 1024), dtype=np.float32) * 0.02)
            s.put_arrays("w", {"w": w})
            del w
            out["reindex_big_s"], r = timed(s.reindex, args.repeat)
            assert r["chunks"] == args.big, r
            out["reindex_big_verify_s"], _ = timed(lambda: s.reindex(verify=True), 1)

        m = synthetic("probe", pool, args.refs, 0)
        v2, v1 = m.to_bytes(), m.to_bytes(1)
        out["manifest_mb"] = round(len(v2) / 1e6, 1)
        out["manifest_v1_mb"] = round(len(v1) / 1e6, 1)
        out["parse_s"], _ = timed(lambda: Manifest.from_bytes(v2), args.repeat)
        out["parse_v1_s"], _ = timed(lambda: Manifest.from_bytes(v1), 1)
        digests = [c.digest for it in m.items.values() for c in it.chunks]

        with fresh(root) as s:
            out["lookup_s"], have = timed(lambda: s.stored(digests), args.repeat)
            assert len(have) == len(set(digests))
            paths = [s.chunks.path(d) for d in digests]
            out["lstat_each_s"], _ = timed(lambda: sum(os.path.lexists(p) for p in paths), 1)

        for i in range(args.snapshots):
            data = synthetic(f"step-{i}", pool, args.refs, i + 1).to_bytes()
            (root / "snapshots" / f"step-{i}.json").write_bytes(data)
        print(f"wrote {args.snapshots} manifests of {args.refs} refs", flush=True)

        def ls_fresh():
            with fresh(root) as s:
                return ls(s)

        def gc_fresh():
            with fresh(root) as s:
                return plan_gc(s, keep_last=args.snapshots // 2)

        out["ls_first_s"], rows = timed(ls_fresh, 1)  # parses every manifest, fills the cache
        assert len(rows) == args.snapshots + 1
        out["ls_s"], _ = timed(ls_fresh, args.repeat)
        out["gc_dry_run_s"], plan = timed(gc_fresh, args.repeat)
        out["gc_drop"] = len(plan.drop)

    rows = [("parse a manifest of {refs} refs (format 2)", "parse_s"),
            ("  … the same in format 1", "parse_v1_s"),
            ("look up {refs} digests at planning (Store.stored)", "lookup_s"),
            ("  … one lstat per chunk on top (before)", "lstat_each_s"),
            ("ls over {snapshots} snapshots, first (cache built)", "ls_first_s"),
            ("ls over {snapshots} snapshots", "ls_s"),
            ("gc --dry-run over {snapshots} snapshots", "gc_dry_run_s"),
            ("reindex {chunks} chunks (headers)", "reindex_s"),
            ("reindex --verify {chunks} chunks", "reindex_verify_s"),
            ("reindex {big} chunks of 2 MiB (headers)", "reindex_big_s"),
            ("reindex --verify {big} chunks of 2 MiB", "reindex_big_verify_s")]
    for label, key in rows:
        print(f"{label.format(**out):<55} {out[key]:8.3f} s")
    print(f"manifest size: {out['manifest_mb']} MB (format 1: {out['manifest_v1_mb']} MB)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
