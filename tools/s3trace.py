"""tools/s3trace.py: the requests, in order (method and key), of a DCP save and load and of the
metadata commands on object storage, against a local S3 server (moto on 127.0.0.1 in its own
process, as tools/bench_s3.py; nothing else is contacted). For reading what an operation asks for
and spotting a request made twice; chunk names are shortened, repeats folded (``x17``).

    .venv/bin/python tools/s3trace.py            # cold, unchanged and changed save, loads, ls, rm, gc, verify
    .venv/bin/python tools/s3trace.py --new-host # the same saves and load on a host without a cache
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_s3 import Server, served  # noqa: E402

BUCKET, URL = "trace", "s3://trace/store"


def _short(line: str) -> str:
    method, path = line.split(" ", 1)
    path = re.sub(r"/chunks/[0-9a-f]{2}/[0-9a-f]{64}", "/chunks/<chunk>", path)
    path = re.sub(r"locks/([sx])-[0-9a-f]{32}", r"locks/\1-<id>", path)
    path = re.sub(r"damaged/[0-9a-f]{64}", "damaged/<digest>", path)
    return f"{method} {path.replace(f'/{BUCKET}/store/', '/').replace(f'/{BUCKET}?', '?')}"


def show(server: Server, title: str, fn) -> None:
    """Run ``fn`` and print the requests the server saw meanwhile, repeats folded."""
    before = len(server.requests())
    fn()
    lines = [_short(x) for x in server.requests()[before:]]
    folded: list[list] = []
    for line in lines:
        if folded and folded[-1][0] == line:
            folded[-1][1] += 1
        else:
            folded.append([line, 1])
    print(f"== {title}: {len(lines)} requests")
    for line, n in folded:
        print(f"   {line}" + (f"  x{n}" if n > 1 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-host", action="store_true", help="save and load again from a host without a cache")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")  # DCP's: no process group
    import torch
    import torch.distributed.checkpoint as dcp

    import casckpt
    from casckpt import gc, usage, verify

    with served("casckpt-s3trace-") as server:
        server.bucket(BUCKET)
        g = torch.Generator().manual_seed(0)
        sd = {**{f"w{i}": torch.randn(64, 1024, generator=g) for i in range(4)}, "step": 1}  # 16 chunks + 1
        with casckpt.Store.open(URL, create=True, chunk_size=64 << 10):
            pass

        def save(name):
            dcp.save(sd, storage_writer=casckpt.CasWriter(URL, snapshot=name), planner=casckpt.DedupSavePlanner())

        def load(name):
            dcp.load(sd, storage_reader=casckpt.CasReader(URL, snapshot=name))

        def with_store(fn):
            with casckpt.Store.open(URL) as s:
                fn(s)
        if a.new_host:
            save("s0")
            sd["w0"][0] += 1
            save("s1")
            os.environ["CASCKPT_CACHE_DIR"] += "-new-host"
            show(server, "load latest, new host", lambda: load("latest"))
            show(server, "unchanged save, new host", lambda: save("s2"))
            os.environ["CASCKPT_CACHE_DIR"] += "-another"
            sd["w0"][0] += 1
            show(server, "changed save (1 chunk), another new host", lambda: save("s3"))
            return
        show(server, "cold save", lambda: save("s0"))
        show(server, "unchanged save", lambda: save("s1"))
        sd["w0"][0] += 1
        show(server, "changed save (1 chunk)", lambda: save("s2"))
        show(server, "load latest", lambda: load("latest"))
        show(server, "load s1", lambda: load("s1"))
        show(server, "ls (as the CLI: rows, totals, latest)",
             lambda: with_store(lambda s: usage.du(s, rows=usage.ls(s))))
        show(server, "rm s0", lambda: with_store(lambda s: s.delete("s0")))
        show(server, "gc", lambda: with_store(gc.gc))
        show(server, "verify", lambda: with_store(verify.verify))


if __name__ == "__main__":
    main()
