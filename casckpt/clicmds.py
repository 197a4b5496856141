"""The subcommands of ``casckpt``: each a few lines over one library function (see :mod:`casckpt.cli`).

Every command that changes the store sets ``args.interrupted``: a function saying, after Ctrl-C,
what state the store was left in and whether running the command again is safe.
"""

from __future__ import annotations

from typing import Callable

from . import clifmt as fmt
from .cli import OK, PROBLEMS, SNAP_HELP, emit_json, open_store
from .progress import Bar, status


def add_commands(cmd: Callable) -> None:
    s = cmd("ls", cmd_ls, "list snapshots with their sizes, tags and metadata")
    s.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only snapshots with this tag (repeat: with all of them)")
    cmd("show", cmd_show, "list a snapshot's items").add_argument("snapshot", metavar="SNAP", help=SNAP_HELP)
    s = cmd("diff", cmd_diff, "compare two snapshots item by item")
    s.add_argument("a", metavar="A", help="the older snapshot (a name or 'latest')")
    s.add_argument("b", metavar="B", help="the newer snapshot (a name or 'latest')")
    s.add_argument("--values", action="store_true", help="read differing chunks: max |a-b|, relative L2")
    s.add_argument("--stat", action="store_true", help="a summary per module: items added, removed and "
                   "changed, bytes that differ, relative L2 (reads differing chunks, as --values)")
    s.add_argument("--depth", type=int, metavar="N", help="with --stat: a module is the first N dotted "
                   "parts of a name (default: all but the last)")
    s = cmd("rm", cmd_rm, "forget snapshots (their chunks go at the next gc)")
    s.add_argument("snapshots", metavar="SNAP", nargs="+", help=SNAP_HELP)
    s.add_argument("--no-wait", action="store_true", help="exit 3 if the store is busy")
    s = cmd("gc", cmd_gc, "apply a retention policy and delete unreferenced chunks")
    _policy_args(s)
    s.add_argument("--thin-older-than", type=int, metavar="N", help="in kept snapshots but the newest N, "
                   "drop the items matching --drop-items (rewrites their manifests)")
    s.add_argument("--drop-items", action="append", default=[], metavar="PATTERN", help="item names to "
                   "drop when thinning, as a shell pattern (e.g. 'optim.*'); repeat for more")
    s.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    s.add_argument("--no-wait", action="store_true", help="exit 3 if a save holds the store")
    s = cmd("verify", cmd_verify, "check that snapshots' chunks exist and hash to their names")
    s.add_argument("snapshots", metavar="SNAP", nargs="*", help=SNAP_HELP + "; default: every snapshot")
    s.add_argument("--quick", action="store_true", help="check existence only, read nothing")
    cmd("du", cmd_du, "store totals: logical and stored bytes, ratios")
    s = cmd("import", cmd_import, "store a DCP directory, .safetensors or torch.save file as a snapshot")
    s.add_argument("snapshot", metavar="SNAP", help="name of the new snapshot")
    s.add_argument("src", metavar="SRC", help="a DCP checkpoint directory, a .safetensors file or a torch.save file")
    s.add_argument("--format", choices=("dcp", "safetensors", "torch"), help="default: detect")
    s = cmd("export", cmd_export, "write a snapshot as a DCP directory, .safetensors or torch.save file")
    s.add_argument("snapshot", metavar="SNAP", help=SNAP_HELP)
    s.add_argument("dst", metavar="DST", help="where to write: a new file, or a new or empty directory (dcp)")
    s.add_argument("--format", choices=("dcp", "safetensors", "torch"), required=True)
    s = cmd("reindex", cmd_reindex, "rebuild the index from chunk headers and manifests")
    s.add_argument("--verify", action="store_true", help="read and hash every referenced chunk first "
                   "(slow: for a store that lost power after sync=False saves)")
    s = cmd("report", cmd_report, "write an HTML page with plots: storage, dedup, per-module change, retention")
    s.add_argument("--out", metavar="DIR", default="casckpt-report", help="folder for index.html and its "
                   "PNGs (default: ./casckpt-report)")
    _policy_args(s)


def _policy_args(s) -> None:
    s.add_argument("--keep-last", type=int, metavar="N", help="keep the newest N snapshots")
    s.add_argument("--keep-every", type=int, metavar="K", help="keep snapshots whose save number is a "
                   "multiple of K (stable: a second gc keeps the same ones)")
    for unit in ("hourly", "daily", "weekly", "monthly"):
        s.add_argument(f"--keep-{unit}", type=int, metavar="N", help=f"keep the newest snapshot of each of "
                       f"the newest N {unit.replace('ily', 'y').removesuffix('ly')}s that have one")
    s.add_argument("--keep-within", metavar="DURATION", help="keep every snapshot created within DURATION "
                   "(e.g. 2d, 12h, 1w) before the newest one")
    s.add_argument("--keep", nargs="+", default=[], metavar="NAME", help="keep these snapshots")
    s.set_defaults(thin_older_than=None, drop_items=[])


# -- reading ---------------------------------------------------------------------------------------
def cmd_ls(args) -> int:
    import json

    from .usage import du, latest as latest_of, ls
    with open_store(args) as store:
        rows = ls(store)
        total = du(store, rows=rows)  # NOTE: no second listing of the snapshots
    latest = latest_of(rows)  # NOTE: from the rows, whose cache is current: no manifest read again
    rows = [r for r in rows if set(args.tag) <= set(r.tags)]
    if args.json:
        return emit_json([r.to_json() for r in rows])
    fmt.table(["NAME", "CREATED", "LOGICAL", "CHUNKS", "ONLY HERE", "TAGS", "META"],
              [[r.name, fmt.when(r.created, utc=args.utc), fmt.size(r.logical_bytes), r.chunks,
                fmt.size(r.unique_bytes), ",".join(r.tags + (("(import)",) if r.origin == "import" else ())),
                fmt.short(json.dumps(r.meta, separators=(",", ":")) if r.meta else "", 48)] for r in rows])
    for r in rows:
        if r.damaged:
            print(f"DAMAGED {r.name}: {r.damaged}")
    shown = "" if not args.tag else f" with tag {', '.join(args.tag)}"
    print(f"{fmt.plural(len(rows), 'snapshot')}{shown}; store total {fmt.size(total.stored_bytes)} stored in "
          f"{fmt.plural(total.chunks, 'chunk')}" + (f"; latest (where a resume starts): {latest}" if latest else ""))
    return OK


def cmd_show(args) -> int:
    from .diff import natural_key
    from .usage import show
    from .values import small_values
    import json

    from .manifest import resumable, tags_of
    with open_store(args) as store:
        d = show(store, args.snapshot)
        m = store.manifest(d.name)
        values = small_values(store, m)
    if args.json:
        return emit_json({**d.to_json(), "values": values})
    print(f"{d.name}  created {fmt.when(d.created, utc=args.utc)}  logical {fmt.size(d.logical_bytes)}  "
          f"stored {fmt.size(d.stored_bytes)}" + ("" if resumable(m) else "  (imported: 'latest' prefers saved ones)"))
    if tags_of(m) or isinstance(m.meta.get("user"), dict):
        print(f"tags {','.join(tags_of(m)) or '-'}  meta {json.dumps(m.meta.get('user') or {}, separators=(',', ':'))}")
    items = sorted(d.items, key=lambda i: natural_key(i.name))
    fmt.table(["ITEM", "DTYPE", "SHAPE", "CHUNKS", "LOGICAL", "STORED", "VALUE"],
              [[i.name, i.dtype, _shape(i), i.chunks, fmt.size(i.logical_bytes),
                fmt.size(i.stored_bytes), values.get(i.name, "")] for i in items])
    return OK


def _shape(item) -> str:
    # NOTE: a bytes item's "shape" is its length, which LOGICAL shows already: not a tensor shape
    return "-" if item.dtype == "bytes" else "x".join(map(str, item.shape)) or "()"


def cmd_diff(args) -> int:
    from .diff import diff, stat
    with open_store(args) as store, Bar("diff", unit="chunk") as b:
        r = diff(store, args.a, args.b, values=args.values or args.stat, progress=b)
    if args.json:
        return emit_json({**r.to_json(), **({"stat": [m.to_json() for m in stat(r, depth=args.depth)]}
                                            if args.stat else {})})
    if args.stat:
        fmt.table(["MODULE", "+", "-", "~", "BYTES DIFFER", "REL L2"],
                  [[m.module, m.added, m.removed, m.changed, fmt.size(m.bytes_differ), fmt.num(m.rel_l2)]
                   for m in stat(r, depth=args.depth)])
    else:
        _print_diff(r)
    print(f"{len(r.added)} added, {len(r.removed)} removed, {len(r.renamed)} renamed, {len(r.changed)} changed, "
          f"{len(r.unchanged)} unchanged")
    return OK


def _print_diff(r) -> None:
    rule = fmt.rename_rule(r.renamed)
    if rule:
        print(f"R {rule[0]}* -> {rule[1]}*  ({fmt.plural(len(r.renamed), 'item')} renamed)")
    else:
        for old, new in r.renamed:
            print(f"R {old} -> {new}")
    for name in r.added:
        print(f"+ {name}")
    for name in r.removed:
        print(f"- {name}")
    for name, c in r.changes.items():
        extra = "dtype/shape/sharding changed" if c.layout_changed else \
            f"{c.chunks_differ}/{c.chunks} chunks, {fmt.size(c.bytes_differ)} differ"
        if c.max_abs_diff is not None or c.rel_l2 is not None:
            extra += f", max|a-b| {fmt.num(c.max_abs_diff)}, rel L2 {fmt.num(c.rel_l2)}"
        value = f"  {c.value_a} -> {c.value_b}" if c.value_a is not None else ""
        print(f"~ {name}  ({extra}){value}")


def cmd_verify(args) -> int:
    from .verify import verify
    with open_store(args) as store, Bar("verify", unit="chunk") as b:
        r = verify(store, args.snapshots or None, quick=args.quick, progress=b)
    if args.json:
        emit_json(r.to_json())
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
    orphans = "" if r.orphans is None else f"; {fmt.plural(r.orphans, 'unreferenced chunk')} (gc reclaims them)"
    if r.ok:
        print(f"ok: {fmt.plural(len(r.snapshots), 'snapshot')}, {fmt.plural(r.chunks_checked, 'chunk')} {what}{orphans}")
        return OK
    print(f"PROBLEMS: {fmt.plural(len(r.problems), 'bad chunk')}; broken snapshots: "
          f"{', '.join(r.broken_snapshots)}{orphans}")
    return PROBLEMS


def cmd_du(args) -> int:
    from .usage import du
    with open_store(args) as store:
        u = du(store, disk=True)
    if args.json:
        return emit_json(u.to_json())
    d = u.disk
    fmt.table(["", ""], [["snapshots", u.snapshots], ["logical", fmt.size(u.logical_bytes)],
                         ["unique (raw)", fmt.size(u.raw_bytes)], ["stored", fmt.size(u.stored_bytes)],
                         ["chunks", u.chunks], ["dedup ratio", fmt.num(u.dedup_ratio)],
                         ["compression ratio", fmt.num(u.compression_ratio)], ["total ratio", fmt.num(u.ratio)],
                         ["on disk (du -sh)", fmt.size(d.total)],
                         ["  chunk files", f"{fmt.size(d.chunks)} in {fmt.plural(d.chunk_files, 'file')}"],
                         ["  manifests", fmt.size(d.manifests)], ["  index", fmt.size(d.index)],
                         ["  other", fmt.size(d.other)]],
              head=False)
    return OK


# -- changing the store ----------------------------------------------------------------------------
def cmd_rm(args) -> int:
    args.interrupted = lambda a: ("some of the snapshots may be forgotten already (`casckpt ls` shows "
                                  "which remain); each is forgotten whole or not at all, so running "
                                  "rm again for those left is safe")
    with open_store(args, no_wait=args.no_wait) as store:
        names = store.delete_all([store.resolve(n) for n in args.snapshots])  # all exist, or none goes
    if args.json:
        return emit_json({"removed": names})
    print(f"removed {fmt.plural(len(names), 'snapshot')} (run gc to free their chunks):")
    print(fmt.names(names))
    return OK


def cmd_gc(args) -> int:
    from .gc import gc
    args.interrupted = _gc_interrupted
    printed = []

    reading = Bar("gc: reading manifests", unit="manifest")

    def on_plan(plan) -> None:
        reading.close()
        args.state["deleting"] = True
        if not args.json:
            _print_plan(plan, dry_run=False)
            printed.append(True)

    with open_store(args) as store:
        status("gc: planning: reading manifests, listing chunks…")
        with reading, Bar("gc: deleting chunks", unit="chunk") as b:
            plan = gc(store, policy=_policy(args), thin_older_than=args.thin_older_than,
                      drop_items=args.drop_items, dry_run=args.dry_run, wait=not args.no_wait,
                      on_plan=on_plan, progress=b, plan_progress=reading)
    if args.json:
        return emit_json({**plan.to_json(), "dry_run": args.dry_run})
    if not printed:
        _print_plan(plan, dry_run=args.dry_run)
    print(("dry run: nothing deleted; would free " if args.dry_run else "freed ") + fmt.size(plan.bytes_freed))
    return OK


def _policy(args):
    from .errors import CasckptError
    from .retention import Policy, parse_duration
    if (args.thin_older_than is None) != (not args.drop_items):
        raise CasckptError("--thin-older-than and --drop-items go together")
    return Policy(last=args.keep_last, every=args.keep_every, hourly=args.keep_hourly, daily=args.keep_daily,
                  weekly=args.keep_weekly, monthly=args.keep_monthly, keep=tuple(args.keep), utc=args.utc,
                  within=None if args.keep_within is None else parse_duration(args.keep_within))


def _print_plan(plan, *, dry_run: bool) -> None:
    print(f"keep {fmt.plural(len(plan.keep), 'snapshot')}, drop {len(plan.drop)}" + (":" if plan.drop else ""))
    if dry_run and any(r != ["no policy"] for r in plan.reasons.values()):
        for name in plan.keep:
            print(f"  keep {name}  ({', '.join(plan.reasons.get(name, []))})")
    if plan.drop:
        print(fmt.names(list(plan.drop)))
    if plan.thinned:
        print(f"thin {fmt.plural(len(plan.thinned), 'snapshot')} (their manifests are rewritten without "
              f"the matching items):")
        print(fmt.names(sorted(plan.thinned)))
    for name in plan.damaged:
        print(f"DAMAGED {name}: its manifest cannot be read; kept, and no chunk is deleted while it "
              "exists (restore it or `casckpt rm` it)")
    print(f"chunks to delete: {len(plan.chunks)} ({plan.orphans} orphans), {fmt.size(plan.chunk_bytes)}; "
          f"temp files: {len(plan.tmp_files)}, {fmt.size(plan.tmp_bytes)}")


def _gc_interrupted(args) -> str:
    if not args.state.get("deleting"):
        return "gc stopped while planning: nothing was deleted; running gc again is safe"
    return ("gc stopped while deleting: every snapshot still listed is whole (dropped manifests go "
            "first); chunks and temp files not yet deleted are left unreferenced, and running gc "
            "again is safe and finishes the job")


def cmd_import(args) -> int:
    from .transfer import import_snapshot, read_source
    args.interrupted = _import_interrupted
    status(f"import: reading {args.src}…")
    source = read_source(args.src, format=args.format)  # NOTE: before the store is made: a bad
    with open_store(args, create=True) as store:        # source leaves no empty store behind
        args.state["store"] = store
        with Bar(f"import {args.snapshot}") as b:
            s = import_snapshot(store, args.snapshot, source, progress=b)
    if args.json:
        return emit_json(s.to_json())
    print(f"imported {s.snapshot}: {fmt.size(s.logical_bytes)} in {fmt.plural(s.chunks, 'chunk')}, "
          f"{s.new_chunks} new ({fmt.size(s.bytes_written)} written)")
    return OK


def _import_interrupted(args) -> str:
    store = args.state.get("store")
    if store is not None and store.exists(args.snapshot):
        return f"snapshot {args.snapshot} may already have been committed: `casckpt ls` shows it if so"
    return (f"snapshot {args.snapshot} was not committed; chunks written so far are unreferenced "
            "(gc reclaims them) and earlier snapshots are untouched; running the import again is safe")


def cmd_export(args) -> int:
    from .transfer import export_snapshot
    args.interrupted = lambda a: (f"the store was not changed; {a.dst} may be incomplete: remove it "
                                  "before running the export again")
    with open_store(args) as store, Bar(f"export {args.snapshot}") as b:
        s = export_snapshot(store, args.snapshot, args.dst, format=args.format, progress=b)
    if args.json:
        return emit_json(s.to_json())
    print(f"exported {s.snapshot} ({fmt.plural(s.items, 'item')}) as {s.format} to {s.path}: {fmt.size(s.bytes)}")
    return OK


def cmd_reindex(args) -> int:
    args.interrupted = lambda a: ("the index is incomplete but nothing else changed; run "
                                  "`casckpt reindex` again (safe) before using the store")
    with open_store(args) as store, Bar("reindex", unit="chunk") as b:
        r = store.reindex(progress=b, verify=args.verify)
    if args.json:
        return emit_json(r)
    print(f"reindexed {fmt.plural(r['chunks'], 'chunk')} and {fmt.plural(r['snapshots'], 'snapshot')} "
          f"in {r['seconds']:.2f} s" + (" (every chunk read and verified)" if r["verified"] else "")
          + (f"; {r['unreadable_chunks']} unreadable chunks skipped" if r.get("unreadable_chunks") else "")
          + (f"; {r['orphan_chunks']} unreferenced chunks left for gc" if r.get("orphan_chunks") else ""))
    return OK


def cmd_report(args) -> int:
    from .report import write
    args.interrupted = lambda a: f"the store was not changed; {a.out} may hold a partial report"
    with open_store(args) as store:
        status("report: reading manifests and comparing consecutive snapshots…")
        page = write(store, args.out, policy=_policy(args))
    if args.json:
        return emit_json({"page": str(page.absolute())})
    print(f"wrote {page} (open it in a browser)")
    return OK
