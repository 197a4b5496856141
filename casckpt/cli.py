"""The ``casckpt`` command: thin subcommands over the library verbs.

Each command opens the store, calls one library function and prints its result: a table for
people, or with ``--json`` the ``to_json()`` of the dataclass the library returned. A progress
bar goes to stderr, only when stderr is a terminal, for commands that read chunks.

Exit codes: 0 ok; 1 verify found a problem; 2 usage error or a casckpt error (no such store or
snapshot, bad name, unreadable input, I/O error); 3 the store lock is busy (``--no-wait``);
70 an internal error (a bug: please report the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import json
import logging
import sys
import time
import traceback
from typing import Callable

from . import __version__
from .errors import CasckptError, LockTimeoutError
from .store import Store

OK, PROBLEMS, ERROR, BUSY, INTERNAL = 0, 1, 2, 3, 70


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe must surface here, not in the flush at exit (code 120)
        return code
    except LockTimeoutError as exc:
        return _fail(exc, BUSY)
    except BrokenPipeError:  # `casckpt ls STORE | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except (CasckptError, OSError) as exc:
        return _fail(exc, ERROR)
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return INTERNAL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casckpt", description="Content-addressed, deduplicating checkpoint store.")
    p.add_argument("--version", action="version", version=f"casckpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("store", metavar="STORE", help="path of the store")
    common.add_argument("--index", metavar="PATH", default=None,
                        help="where the LMDB index lives if not in the store (e.g. a local disk)")

    def cmd(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, parents=[common], help=help, description=help)
        s.set_defaults(run=fn)
        return s

    cmd("ls", cmd_ls, "list snapshots with their sizes")
    cmd("show", cmd_show, "list a snapshot's items").add_argument("snapshot", metavar="SNAP")
    s = cmd("diff", cmd_diff, "compare two snapshots item by item")
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    s.add_argument("--values", action="store_true", help="read differing chunks: max |a-b|, relative L2")
    s = cmd("rm", cmd_rm, "forget snapshots (their chunks go at the next gc)")
    s.add_argument("snapshots", metavar="SNAP", nargs="+")
    s.add_argument("--no-wait", action="store_true", help="exit 3 if the store is busy")
    s = cmd("gc", cmd_gc, "apply a retention policy and delete unreferenced chunks")
    s.add_argument("--keep-last", type=int, metavar="N", help="keep the newest N snapshots")
    s.add_argument("--keep-every", type=int, metavar="K", help="keep every K-th snapshot, oldest first")
    s.add_argument("--keep", nargs="+", default=[], metavar="NAME", help="keep these snapshots")
    s.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    s.add_argument("--no-wait", action="store_true", help="exit 3 if a save holds the store")
    s = cmd("verify", cmd_verify, "check that snapshots' chunks exist and hash to their names")
    s.add_argument("snapshots", metavar="SNAP", nargs="*")
    s.add_argument("--quick", action="store_true", help="check existence only, read nothing")
    cmd("du", cmd_du, "store totals: logical and stored bytes, ratios")
    s = cmd("import", cmd_import, "store a DCP directory, .safetensors or torch.save file as a snapshot")
    s.add_argument("snapshot", metavar="SNAP")
    s.add_argument("src", metavar="SRC")
    s.add_argument("--format", choices=("dcp", "safetensors", "torch"), help="default: detect")
    s = cmd("export", cmd_export, "write a snapshot as a DCP directory, .safetensors or torch.save file")
    s.add_argument("snapshot", metavar="SNAP")
    s.add_argument("dst", metavar="DST")
    s.add_argument("--format", choices=("dcp", "safetensors", "torch"), required=True)
    cmd("reindex", cmd_reindex, "rebuild the index from chunk files and manifests")
    return p


# -- commands --------------------------------------------------------------------------------------
def cmd_ls(args) -> int:
    from .usage import du, ls
    with _open(args) as store:
        rows, total = ls(store), du(store)
    if args.json:
        return _json([r.to_json() for r in rows])
    _table(["NAME", "CREATED", "LOGICAL", "CHUNKS", "ONLY HERE"],
           [[r.name, r.created[:19], _size(r.logical_bytes), r.chunks, _size(r.unique_bytes)] for r in rows])
    for r in rows:
        if r.damaged:
            print(f"DAMAGED {r.name}: {r.damaged}")
    print(f"{len(rows)} snapshots; store total {_size(total.stored_bytes)} stored in {total.chunks} chunks")
    return OK


def cmd_show(args) -> int:
    from .usage import show
    with _open(args) as store:
        d = show(store, args.snapshot)
    if args.json:
        return _json(d.to_json())
    print(f"{d.name}  created {d.created}  logical {_size(d.logical_bytes)}  stored {_size(d.stored_bytes)}")
    _table(["ITEM", "DTYPE", "SHAPE", "CHUNKS", "LOGICAL", "STORED"],
           [[i.name, i.dtype, "x".join(map(str, i.shape)) or "()", i.chunks, _size(i.logical_bytes),
             _size(i.stored_bytes)] for i in d.items])
    return OK


def cmd_diff(args) -> int:
    from .diff import diff
    with _open(args) as store, Bar("diff") as bar:
        r = diff(store, args.a, args.b, values=args.values, progress=bar)
    if args.json:
        return _json(r.to_json())
    for name in r.added:
        print(f"+ {name}")
    for name in r.removed:
        print(f"- {name}")
    for name, c in r.changes.items():
        extra = "dtype/shape/sharding changed" if c.layout_changed else \
            f"{c.chunks_differ}/{c.chunks} chunks, {_size(c.bytes_differ)} differ"
        if c.max_abs_diff is not None or c.rel_l2 is not None:
            extra += f", max|a-b| {_num(c.max_abs_diff)}, rel L2 {_num(c.rel_l2)}"
        print(f"~ {name}  ({extra})")
    print(f"{len(r.added)} added, {len(r.removed)} removed, {len(r.changed)} changed, {len(r.unchanged)} unchanged")
    return OK


def cmd_rm(args) -> int:
    with _open(args, no_wait=args.no_wait) as store:
        names = store.delete_all([store.resolve(n) for n in args.snapshots])  # all exist, or none goes
    if args.json:
        return _json({"removed": names})
    print(f"removed {len(names)} snapshots: {', '.join(names)} (run gc to free their chunks)")
    return OK


def cmd_gc(args) -> int:
    from .gc import gc
    with _open(args) as store:
        plan = gc(store, keep_last=args.keep_last, keep_every=args.keep_every, keep=args.keep,
                  dry_run=args.dry_run, wait=not args.no_wait)
    if args.json:
        return _json({**plan.to_json(), "dry_run": args.dry_run})
    print(f"keep {len(plan.keep)} snapshots, drop {len(plan.drop)}: {', '.join(plan.drop) or '-'}")
    print(f"chunks to delete: {len(plan.chunks)} ({plan.orphans} orphans), {_size(plan.chunk_bytes)}; "
          f"temp files: {len(plan.tmp_files)}, {_size(plan.tmp_bytes)}")
    print(("dry run: nothing deleted; would free " if args.dry_run else "freed ") + _size(plan.bytes_freed))
    return OK


def cmd_verify(args) -> int:
    from .verify import verify
    with _open(args) as store, Bar("verify") as bar:
        r = verify(store, args.snapshots or None, quick=args.quick, progress=bar)
    if args.json:
        _json(r.to_json())
        return OK if r.ok else PROBLEMS
    for p in r.problems:
        print(f"{p.kind} chunk {p.digest}: {p.reason}")
        for snap, item in p.refs:
            print(f"    breaks {snap}: {item}")
    for snap, why in r.bad_manifests.items():
        print(f"bad manifest {snap}: {why}")
    for f in r.stray_files:
        print(f"stray file in snapshots/ (not a manifest; left alone): {f}")
    what = "exist" if r.quick else "exist and hash to their names"
    orphans = "" if r.orphans is None else f"; {r.orphans} unreferenced chunks (gc reclaims them)"
    if r.ok:
        print(f"ok: {len(r.snapshots)} snapshots, {r.chunks_checked} chunks {what}{orphans}")
        return OK
    print(f"PROBLEMS: {len(r.problems)} bad chunks; broken snapshots: {', '.join(r.broken_snapshots)}{orphans}")
    return PROBLEMS


def cmd_du(args) -> int:
    from .usage import du
    with _open(args) as store:
        u = du(store)
    if args.json:
        return _json(u.to_json())
    _table(["", ""], [["snapshots", u.snapshots], ["logical", _size(u.logical_bytes)],
                      ["unique (raw)", _size(u.raw_bytes)], ["stored", _size(u.stored_bytes)],
                      ["chunks", u.chunks], ["dedup ratio", _num(u.dedup_ratio)],
                      ["compression ratio", _num(u.compression_ratio)], ["total ratio", _num(u.ratio)]], head=False)
    return OK


def cmd_import(args) -> int:
    from .transfer import import_snapshot, read_source
    source = read_source(args.src, format=args.format)  # NOTE: before the store is made: a bad
    with _open(args, create=True) as store:             # source leaves no empty store behind
        s = import_snapshot(store, args.snapshot, source)
    if args.json:
        return _json(s.to_json())
    print(f"imported {s.snapshot}: {_size(s.logical_bytes)} in {s.chunks} chunks, "
          f"{s.new_chunks} new ({_size(s.bytes_written)} written)")
    return OK


def cmd_export(args) -> int:
    from .transfer import export_snapshot
    with _open(args) as store, Bar("export") as bar:
        s = export_snapshot(store, args.snapshot, args.dst, format=args.format, progress=bar)
    if args.json:
        return _json(s.to_json())
    print(f"exported {s.snapshot} ({s.items} items) as {s.format} to {s.path}: {_size(s.bytes)}")
    return OK


def cmd_reindex(args) -> int:
    with _open(args) as store:
        r = store.reindex()
    if args.json:
        return _json(r)
    print(f"reindexed {r['chunks']} chunks and {r['snapshots']} snapshots"
          + (f"; {r['unreadable_chunks']} unreadable chunks skipped" if r.get("unreadable_chunks") else "")
          + (f"; {r['orphan_chunks']} unreferenced chunks left for gc" if r.get("orphan_chunks") else ""))
    return OK


# -- output ----------------------------------------------------------------------------------------
def _open(args, *, create: bool = False, no_wait: bool = False) -> Store:
    return Store.open(args.store, create=create, index_path=args.index, lock_timeout=0 if no_wait else None)


def _fail(exc: BaseException, code: int) -> int:
    print(f"casckpt: error: {exc}", file=sys.stderr)
    return code


def _json(obj) -> int:
    print(json.dumps(obj, indent=2, allow_nan=False))
    return OK


def _table(headers: list[str], rows: list[list], *, head: bool = True) -> None:
    cells = ([headers] if head else []) + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))] if cells else []
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


class Bar:
    """A progress bar on stderr, drawn only when stderr is a terminal; call it as ``bar(done, total)``."""

    def __init__(self, label: str, stream=None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self.on = self.stream.isatty()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.on or (now - self.last < 0.1 and done < total):
            return
        self.last, self.drawn = now, True
        frac = done / total if total else 1.0
        fill = int(30 * frac)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (30 - fill)}] {frac:6.1%} {done}/{total}")
        self.stream.flush()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
