"""tools/bench --store s3://BUCKET/PREFIX: casckpt vs DCP's FsspecWriter/FsspecReader over s3fs,
both against the same local S3 server (moto on 127.0.0.1, in its own process, started here), in
the same run: cold save, unchanged save, ~5 %-changed save and load, with the requests each costs
(counted from the server's request log). Medians of ``--repeat`` runs, sides alternated per run.
No other address is contacted: the AWS variables point at the local server, with test keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_CONFIG_FILE": os.devnull,
       "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


class Server:
    """moto in a child process, logging one line per request."""

    def __init__(self, work: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = work / "requests.log"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "s3local.py"), str(self.port), str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the local S3 server did not start")

    def bucket(self, name: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", method="PUT"), timeout=30)

    def requests(self) -> list[str]:
        """Every request the server has answered so far, one ``METHOD path`` line each.

        NOTE: the server logs a request just after answering it, and on a busy machine a fixed
        wait let lines land in the next phase's count: a marker request (a 404) is sent and
        waited for instead, then left out."""
        mark = f"/casckpt-mark-{uuid.uuid4().hex}"
        try:
            urllib.request.urlopen(self.endpoint + mark, timeout=30).close()
        except urllib.error.HTTPError:
            pass
        deadline = time.monotonic() + 30
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if any(line.endswith(mark) for line in lines) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.05)  # NOTE: a request answered just before the marker may log just after it
        lines = self.log.read_text().splitlines()
        return [line for line in lines if " /casckpt-mark-" not in line]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def served(prefix: str):
    """A local S3 server in a fresh temp folder, with this process's environment pointed at it
    (credentials, endpoint, a cache folder) for the duration; all undone afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = Server(work)
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL", "CASCKPT_CACHE_DIR")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=server.endpoint, CASCKPT_CACHE_DIR=str(work / "cache"))
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def counted(server: Server, fn) -> tuple[float, dict]:
    """Seconds ``fn`` takes and the requests it made, by method."""
    before = len(server.requests())
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    lines = server.requests()[before:]
    by = {}
    for line in lines:
        method = line.split(" ", 1)[0]
        by[method] = by.get(method, 0) + 1
    by["total"] = len(lines)
    return seconds, by


def s3_speed(store_url: str, mib: int, repeat: int) -> dict:
    import bench  # tools/bench.py: the same state dicts and change pattern as the local bench
    import casckpt
    import torch.distributed.checkpoint as dcp
    from casckpt import delta
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    scheme, _, rest = store_url.partition("://")
    if scheme != "s3":
        raise SystemExit("tools/bench --store takes an s3:// URL (it runs against a local S3 server)")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/") or "casckpt"
    with served("casckpt-bench-s3-") as server:
        opts = {"endpoint_url": server.endpoint, "key": ENV["AWS_ACCESS_KEY_ID"], "secret": ENV["AWS_SECRET_ACCESS_KEY"]}
        server.bucket(bucket)
        sd = bench.model_state(mib)
        runs = {k: [] for k in ("dcp_save", "dcp_load", "cold", "unchanged", "changed5", "load")}
        reqs = {k: [] for k in runs}
        for r in range(repeat):
            for side in (("dcp", "cas") if r % 2 == 0 else ("cas", "dcp")):
                if side == "dcp":
                    path = f"s3://{bucket}/{prefix}-dcp{r}"
                    t, n = counted(server, lambda: dcp.save(sd, storage_writer=FsspecWriter(path, **opts)))
                    runs["dcp_save"].append(t), reqs["dcp_save"].append(n)
                    t, n = counted(server, lambda: dcp.load(sd, storage_reader=FsspecReader(path, **opts)))
                    runs["dcp_load"].append(t), reqs["dcp_load"].append(n)
                else:
                    url = f"s3://{bucket}/{prefix}-{r}"
                    delta.CACHE.clear()
                    for phase, name in (("cold", "cold"), ("unchanged", "same")):
                        t, n = counted(server, lambda: bench.cas_save(sd, url, name))
                        runs[phase].append(t), reqs[phase].append(n)
                    t, n = counted(server, lambda: bench.cas_load(sd, url, "same"))
                    runs["load"].append(t), reqs["load"].append(n)
                    with casckpt.Store.open(url) as s:
                        chunk = s.config.chunk_size
                    bench.change_chunks(sd, 0.05, chunk, seed=r)
                    t, n = counted(server, lambda: bench.cas_save(sd, url, "changed"))
                    runs["changed5"].append(t), reqs["changed5"].append(n)
        med = {k: statistics.median(v) for k, v in runs.items()}
        total = {k: statistics.median(x["total"] for x in v) for k, v in reqs.items()}
        return {"state_mib": mib, "repeat": repeat, "seconds_median": med, "seconds_all": runs,
                "requests_median": total, "requests_all": reqs,
                "ratios": {"cold_save": med["cold"] / med["dcp_save"],
                           "unchanged_save": med["unchanged"] / med["dcp_save"],
                           "changed5_save": med["changed5"] / med["dcp_save"],
                           "load": med["load"] / med["dcp_load"]}}


def report(res: dict) -> None:
    m, q = res["seconds_median"], res["requests_median"]
    print(f"\n== S3 (local moto server): {res['state_mib']} MiB float32 state, median of {res['repeat']} runs ==")
    print(f"{'':28s} {'casckpt':>9s} {'DCP+s3fs':>9s} {'ratio':>7s}  target  {'requests casckpt / DCP':>24s}")
    rows = [("cold save", "cold", "dcp_save", "≤ 1.20"), ("unchanged save", "unchanged", "dcp_save", "≤ 0.10"),
            ("~5%-changed save", "changed5", "dcp_save", "≤ 0.25"), ("load", "load", "dcp_load", "≤ 1.20")]
    for name, a, b, target in rows:
        print(f"{name:28s} {m[a]:8.3f}s {m[b]:8.3f}s {m[a] / m[b]:7.3f}  {target}  {q[a]:>12.0f} / {q[b]:<10.0f}")
