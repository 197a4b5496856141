"""A store on S3 (moto's server on 127.0.0.1): the commit, what a save costs in requests, the
index as a per-host cache, gc seen from other hosts, faults, a kill -9 mid-save, gc in a loop
against saves, all through the real Store and real processes. Each "host" is a cache folder."""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
import urllib.parse
import warnings

import numpy as np
import pytest

pytest.importorskip("obstore")

import casckpt
from casckpt.errors import LockLostError, SnapshotExistsError, StoreIOError
from casckpt.objlock import Timing
from s3kit import Fault
from s3kit import moto, proxy, proxy_server, s3_url  # noqa: F401 (fixtures)
from storekit import arrays, assert_same, gc_module, run_child, verify_module

CHUNK = 16 << 10
TIMING = "6:0.3:1.5"  # lock expiry, refresh, slack (seconds): a killed holder's lock goes in ~8 s


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setenv("CASCKPT_LOCK_TIMING", TIMING)  # child processes
    monkeypatch.setenv("CASCKPT_RETRY_TIMEOUT", "1.5")  # with the 1 s timeout: within 2.5 s
    monkeypatch.setenv("CASCKPT_INIT_BACKOFF", "0.02")
    monkeypatch.setenv("AWS_TIMEOUT", "1s")
    monkeypatch.setattr(casckpt.Store, "lock_timing", Timing(*map(float, TIMING.split(":")), poll=0.05))


@pytest.fixture
def host(tmp_path, monkeypatch):
    """``host(name)``: make the next stores opened use that host's own index cache."""
    def use(name: str):
        monkeypatch.setenv("CASCKPT_CACHE_DIR", str(tmp_path / f"cache-{name}"))
    use("a")
    return use


def open_s3(url, proxy=None, **kw):
    kw.setdefault("workers", 2)
    if proxy is not None:
        kw["storage_options"] = {"endpoint": proxy.endpoint, **kw.get("storage_options", {})}
    return casckpt.Store.open(url, **kw)


def big(seed: int, n: int = 40) -> dict[str, np.ndarray]:
    """``n`` chunks of float32 noise."""
    return {"w": np.random.default_rng(seed).standard_normal(n * CHUNK // 4).astype(np.float32)}


def chunk_keys(url: str) -> set[str]:
    from casckpt.backends.object import ObjectBackend
    return {b.key.rsplit("/", 1)[1] for b in ObjectBackend(url).list("chunks/")}


def referenced(s) -> set[str]:
    return {d.hex for n in s.snapshot_names() for d in s.live(s.manifest(n).digests())}


def test_round_trip_on_a_fresh_host_and_racing_creators(s3_url, host):
    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("s1", arrays(1))
        assert s.backend.local_path is None and str(s.index_path).startswith(str(casckpt.objcache.cache_root()))
    host("b")
    with open_s3(s3_url + "/", create=True) as s:  # an existing store: create is a no-op
        assert_same(arrays(1), s.get_arrays("latest"))
        assert s.put_arrays("s2", arrays(1)).new_chunks == 0  # the new host dedups against the store


def test_reindex_rebuilds_the_cache_and_refuses_verify(s3_url, host):
    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("s1", arrays(1))
        r = s.reindex()
        assert r["verified"] is False and r["seconds"] >= 0
        with pytest.raises(casckpt.CasckptError, match="casckpt verify"):
            s.reindex(verify=True)
        assert_same(arrays(1), s.get_arrays("s1"))


def test_a_concurrent_save_of_the_same_name_loses(s3_url, host):
    with open_s3(s3_url, create=True, chunk_size=CHUNK):
        pass
    results, start = {}, threading.Barrier(2)

    def save(who: str, seed: int) -> None:
        with open_s3(s3_url, index_path=str(host_dir[who])) as s:
            start.wait()
            try:
                results[who] = s.put_arrays("same", arrays(seed))
            except SnapshotExistsError as exc:
                results[who] = exc
    host_dir = {w: casckpt.objcache.cache_root().parent / f"idx-{w}" for w in "xy"}
    threads = [threading.Thread(target=save, args=(w, i)) for i, w in enumerate("xy")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    lost = [w for w, r in results.items() if isinstance(r, SnapshotExistsError)]
    assert len(lost) == 1, results
    winner = "y" if lost == ["x"] else "x"
    with open_s3(s3_url) as s:
        assert_same(arrays("xy".index(winner)), s.get_arrays("same"))


def test_what_saves_cost_in_requests(s3_url, host, proxy, monkeypatch):
    monkeypatch.setattr(casckpt.Store, "lock_timing", Timing())  # no refresh within the test
    with open_s3(s3_url, proxy, create=True, chunk_size=CHUNK) as s:
        data = big(1)
        proxy.clear()
        cold = s.put_arrays("cold", data)
        assert proxy.count("PUT", "/chunks/") == cold.new_chunks == 40
        proxy.clear()
        assert s.put_arrays("same", data).new_chunks == 0
        unchanged = len(proxy.requests)
        assert proxy.count(path="/chunks/") == 0  # no HEAD, GET or PUT per unchanged chunk
        assert unchanged <= 10, proxy.requests
        data["w"][:: len(data["w"]) // 2] += 1  # 2 of 40 chunks change
        proxy.clear()
        changed = s.put_arrays("changed", data)
        assert changed.new_chunks == 2
        assert proxy.count("PUT", "/chunks/") == 2
        assert proxy.count("HEAD", "/chunks/") == 0
        assert proxy.count("GET", "/chunks/") <= 2  # at most a delta base read per new chunk
        assert len(proxy.requests) - proxy.count(path="/chunks/") <= 16  # O(1): lock, epoch, manifests


def test_a_new_host_reads_chunk_headers_never_bodies(s3_url, host, proxy):
    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("s1", big(1))
        s.put_arrays("s2", big(2, n=10))
    host("b")
    proxy.clear()
    with open_s3(s3_url, proxy) as s:
        assert s.put_arrays("s3", big(1)).new_chunks == 0
        assert_same(big(2, n=10), s.get_arrays("s2"))
    chunk_gets = [p for m, p in proxy.requests if m == "GET" and "/chunks/" in p]
    assert len(chunk_gets) == 50 + 10  # 50 headers (ranged) for the cache, then 10 bodies for the load
    assert len([p for p in proxy.ranged if "/chunks/" in p]) == 50


def test_gc_on_another_host_is_seen_by_every_cache(s3_url, host):
    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("x", big(1))
        s.put_arrays("y", big(2))
    host("b")
    with open_s3(s3_url) as s:
        s.delete("x")
        plan = gc_module().gc(s)
        assert len(plan.chunks) == 40
    host("a")
    with open_s3(s3_url, delta=False) as s:  # its cache still lists x's chunks
        again = s.put_arrays("x-again", big(1))
        assert again.new_chunks == 40  # written again, not trusted from a stale cache
        assert_same(big(1), s.get_arrays("x-again"))
        assert verify_module().verify(s).ok


def test_a_save_that_keeps_failing_commits_nothing_and_the_next_works(s3_url, host, proxy):
    with open_s3(s3_url, proxy, create=True, chunk_size=CHUNK, storage_options={"max_retries": 2}) as s:
        s.put_arrays("s1", arrays(1))
        proxy.plan(Fault("503", count=10_000, method="PUT", path="/chunks/"))
        with pytest.raises(StoreIOError):
            s.put_arrays("s2", arrays(2))
        assert s.snapshot_names() == ["s1"]
        proxy.clear()
        s.put_arrays("s2", arrays(2))
        assert_same(arrays(2), s.get_arrays("s2"))
        assert_same(arrays(1), s.get_arrays("s1"))


def test_transient_faults_during_a_save_and_a_load_are_absorbed(s3_url, host, proxy):
    with open_s3(s3_url, proxy, create=True, chunk_size=CHUNK) as s:
        proxy.plan(Fault("503", count=3, method="PUT"), Fault("drop", count=3, method="PUT", path="/chunks/"),
                   Fault("500", count=3, method="GET"), Fault("drop", count=3, method="GET", path="/chunks/"))
        s.put_arrays("s1", big(3, n=12))
        assert_same(big(3, n=12), s.get_arrays("s1"))
        assert len(proxy.injected) == 12


def test_a_save_whose_lock_lapsed_fails_before_its_commit(s3_url, host, proxy):
    with open_s3(s3_url, proxy, create=True, chunk_size=CHUNK) as s:
        stalled = []

        def progress(done, total):
            if not stalled:  # the save stalls while its lock cannot be refreshed
                stalled.append(1)
                proxy.plan(Fault("503", count=10_000, method="PUT", path="/locks/"))
                time.sleep(s.lock_timing.expiry)
                proxy.clear()
        with pytest.raises(LockLostError):
            s.put_arrays("late", arrays(4), progress=progress)
        assert not s.exists("late")
        s.put_arrays("next", arrays(4))


def test_kill9_mid_save_then_verify_and_gc(s3_url, host, proxy, monkeypatch):
    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("s1", arrays(1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the child goes through the proxy
    host("child")
    proxy.plan(Fault("delay", count=10_000, method="PUT", path="/chunks/", seconds=0.2))
    child = run_child("child.py", {"action": "save", "root": s3_url, "name": "crash", "seed": 99}, wait=False)
    deadline = time.monotonic() + 60
    while proxy.count("PUT", "/chunks/") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    proxy.clear()
    host("a")
    with open_s3(s3_url) as s:
        assert s.snapshot_names() == ["s1"]
        assert verify_module().verify(s).ok
        gc_module().gc(s)  # waits until the killed save's lock is stale
        assert chunk_keys(s3_url) == referenced(s)
        s.put_arrays("crash", arrays(99))
        assert_same(arrays(99), s.get_arrays("crash"))
        assert_same(arrays(1), s.get_arrays("s1"))


def test_gc_in_a_loop_against_saves_and_loads(s3_url, host, monkeypatch):
    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("base", arrays(0))
    procs = []
    for i, (action, extra) in enumerate([("save_loop", {"prefix": "p", "seed": 10, "keep": 2, "min_saves": 4}),
                                         ("gc_loop", {"pause": 0.05})]):
        host(f"child{i}")
        procs.append(run_child("child.py", {"action": action, "root": s3_url, "seconds": 6, **extra}, wait=False))
    host("a")
    loads = 0
    with open_s3(s3_url) as s:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert_same(arrays(0), s.get_arrays("base"))
            loads += 1
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    saved = json.loads(outs[0][0].strip().splitlines()[-1])
    ran = json.loads(outs[1][0].strip().splitlines()[-1])
    assert saved["saved"] >= 4 and ran["runs"] >= 1 and loads >= 1
    with open_s3(s3_url) as s:
        for name in saved["kept"]:
            assert_same(arrays(10 + int(name.split("-")[1])), s.get_arrays(name))
        gc_module().gc(s)
        assert chunk_keys(s3_url) == referenced(s)


def test_every_command_takes_a_store_url(s3_url, host):
    import subprocess
    import sys
    from storekit import child_env

    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("a", arrays(1))
        s.put_arrays("b", arrays(2))

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "casckpt", *args], env=child_env(), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout
    assert {x["name"] for x in json.loads(cli("--json", "ls", s3_url))} == {"a", "b"}
    assert "w" in cli("show", s3_url, "a") and "changed" in cli("diff", s3_url, "a", "b")
    assert "ok" in cli("verify", s3_url)
    cli("rm", s3_url, "a")
    cli("gc", s3_url)
    cli("reindex", s3_url)
    with open_s3(s3_url) as s:
        assert s.snapshot_names() == ["b"] and chunk_keys(s3_url) == referenced(s)


def test_secrets_stay_out_of_the_store_and_the_logs(s3_url, host, proxy, caplog):
    secret = "sk-" + "9" * 30
    with open_s3(s3_url, proxy, create=True, chunk_size=CHUNK,
                 storage_options={"secret_access_key": secret, "max_retries": 1}) as s:
        s.put_arrays("a", arrays(1))
        proxy.plan(Fault("503", count=100, method="PUT"))
        with pytest.raises(StoreIOError) as err:
            s.put_arrays("b", arrays(2))
        proxy.clear()
    from casckpt.backends.object import ObjectBackend
    b = ObjectBackend(s3_url)
    assert not any(secret.encode() in b.get(x.key) for x in b.list(""))
    assert secret not in str(err.value) + caplog.text


# -- metadata costs (issue 13): ls, gc planning and gc, counted in requests ----------------------
def ls_like_the_cli(s) -> tuple[list, str | None]:
    """What ``casckpt ls`` does: rows, totals and the latest snapshot."""
    from casckpt import usage
    rows = usage.ls(s)
    usage.du(s, rows=rows)
    return rows, usage.latest(rows)


def manifest_requests(proxy) -> list[tuple[str, str]]:
    """Requests for a manifest object itself (a GET or HEAD of snapshots/NAME.json; listings are
    requests on the bucket, and name no .json)."""
    return [(m, p) for m, p in proxy.requests if "/snapshots/" in p and p.endswith(".json")]


def test_repeated_ls_and_gc_planning_read_no_manifest(s3_url, host, proxy):
    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        for i in range(4):
            s.put_arrays(f"s{i}", arrays(i))
        s.put_arrays("imported", arrays(9), meta={"import": {"from": "test"}})
    proxy.clear()
    with open_s3(s3_url, proxy) as s:  # a fresh process would see this: no parse kept in memory
        first, latest = ls_like_the_cli(s)
    assert latest == "s3" and [r.name for r in first] == ["s0", "s1", "s2", "s3", "imported"]
    assert sorted(manifest_requests(proxy)) == sorted(("GET", p) for _, p in manifest_requests(proxy))
    assert len(manifest_requests(proxy)) == 5  # each manifest read once, to fill the cache
    counts = []
    for _ in range(2):
        proxy.clear()
        with open_s3(s3_url, proxy) as s:
            assert ls_like_the_cli(s) == (first, "s3")
        assert manifest_requests(proxy) == [] and proxy.count(path="/chunks/") == 0
        counts.append(len(proxy.requests))
    assert counts[0] == counts[1] == 2, proxy.requests  # the config and one listing of snapshots/
    proxy.clear()
    with open_s3(s3_url, proxy) as s:
        plan = gc_module().plan_gc(s, keep_last=2)
    assert plan.drop and manifest_requests(proxy) == [] and proxy.count(path="/chunks/") == 0
    assert len(proxy.requests) == 3, proxy.requests  # the config, snapshots/ and chunks/ listed once each
    # more snapshots: once taken in, an ls costs what it did with fewer
    with open_s3(s3_url) as s:
        for i in range(4, 10):
            s.put_arrays(f"s{i}", arrays(i))
        ls_like_the_cli(s)
    proxy.clear()
    with open_s3(s3_url, proxy) as s:
        assert ls_like_the_cli(s)[1] == "s9"
    assert manifest_requests(proxy) == [] and len(proxy.requests) == counts[0]


def test_a_manifest_replaced_on_s3_is_read_again(s3_url, host, proxy):
    from casckpt.manifest import Manifest
    from casckpt.usage import ls

    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("s0", big(1, n=4))
        s.put_arrays("s1", big(2, n=4))
        assert [r.unique_bytes > 0 for r in ls(s)] == [True, True]  # both cached
        m, m0 = s.manifest("s1"), s.manifest("s0")
        # s1 rewritten to name s0's items (as a thinning gc rewrites a manifest in place)
        s.commit(Manifest("s1", m.created, m.chunk_size, m0.items, m.meta), {}, overwrite=True)
    proxy.clear()
    with open_s3(s3_url, proxy) as s:
        assert [r.unique_bytes for r in ls(s)] == [0, 0]  # both hold the same chunks now
        assert manifest_requests(proxy) == [("GET", manifest_requests(proxy)[0][1])]
        assert manifest_requests(proxy)[0][1].endswith("/snapshots/s1.json")
        assert_same(big(1, n=4), s.get_arrays("s1"))


def test_gc_deletes_in_batches_without_a_request_per_chunk(s3_url, host, proxy):
    from casckpt.lock import EXCLUSIVE

    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("x", big(1))
        s.put_arrays("keep", arrays(1))
        s.delete("x")
    proxy.clear()
    with open_s3(s3_url, proxy) as s:
        s.backend.delete_batch = 16  # NOTE: S3 takes 1,000 per request; 40 chunks make 3 batches here
        gc = gc_module()
        with s.lock(EXCLUSIVE):
            plan = gc.plan_gc(s)
            n = len(plan.chunks)
            assert 32 < n <= 40 and plan.chunk_bytes > n * CHUNK // 2
            assert proxy.count("HEAD") == 0 and proxy.count(path="/chunks/") == 0  # sizes from the listing
            proxy.clear()
            gc.execute(s, plan)
            assert proxy.count("POST") == 3  # DeleteObjects: 16 + 16 + the rest
            assert proxy.count(path="/chunks/") == 0  # no HEAD or DELETE per chunk
        assert chunk_keys(s3_url) == referenced(s)
        assert_same(arrays(1), s.get_arrays("keep"))


def test_a_gc_whose_lock_lapsed_stops_before_its_next_batch(s3_url, host, proxy):
    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("x", big(1))
        s.put_arrays("keep", arrays(1))
        s.delete("x")
        n = len(chunk_keys(s3_url) - referenced(s))
    with open_s3(s3_url, proxy) as s:
        s.backend.delete_batch = 16
        stalled = []

        def progress(done, total):
            if not stalled:  # after the first batch, the lock cannot be refreshed for a while
                stalled.append(done)
                proxy.plan(Fault("503", count=10_000, method="PUT", path="/locks/"))
                time.sleep(s.lock_timing.expiry)
                proxy.clear()
        with pytest.raises(LockLostError):
            gc_module().gc(s, progress=progress)
        assert stalled == [16] and len(chunk_keys(s3_url) - referenced(s)) == n - 16
        plan = gc_module().gc(s)  # the next gc finishes the job
        assert len(plan.chunks) == n - 16 and chunk_keys(s3_url) == referenced(s)
        assert_same(arrays(1), s.get_arrays("keep"))


def _damage(url: str, key: str) -> None:
    """Flip a byte of a chunk object's payload (its header stays valid), as rot or a stray
    writer would, straight on the bucket."""
    from casckpt.backends.object import ObjectBackend
    b = ObjectBackend(url)
    data = bytearray(b.get(key))
    data[-1] ^= 0xFF
    b.replace(key, [bytes(data)])


def test_a_chunk_verify_finds_damaged_is_forgotten_by_every_hosts_cache(s3_url, host):
    data = big(5, n=6)
    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("s1", data)
        key = s.chunks.key(sorted(s.manifest("s1").digests(), key=lambda d: d.raw)[0])
    host("b")
    with open_s3(s3_url, delta=False) as s:
        s.put_arrays("other", arrays(1))  # host b's cache now vouches for s1's chunks
    _damage(s3_url, key)
    host("a")
    with open_s3(s3_url) as s:
        report = verify_module().verify(s)
        assert [p.kind for p in report.problems] == ["corrupt"]
    from casckpt.backends.object import ObjectBackend
    markers = lambda: [b.key for b in ObjectBackend(s3_url).list("damaged/")]  # noqa: E731
    assert markers() == ["damaged/" + key.rsplit("/", 1)[1]]
    host("b")
    with open_s3(s3_url, delta=False) as s:
        assert s.put_arrays("s2", data).new_chunks == 1  # written again, not trusted from b's cache
        assert verify_module().verify(s).ok and markers() == []  # healed: its marker goes
        assert_same(data, s.get_arrays("s1"))  # same digest, same object
        _damage(s3_url, key)
        assert not verify_module().verify(s).ok and len(markers()) == 1
        s.delete_all(["s1", "s2"])
        gc_module().gc(s)  # the chunk goes, and with it its marker
        assert markers() == []


def test_a_new_host_skips_missing_and_damaged_chunks_and_the_next_save_rewrites_them(s3_url, host):
    from casckpt.backends.object import ObjectBackend
    data = big(6, n=6)
    with open_s3(s3_url, create=True, chunk_size=CHUNK, delta=False) as s:
        s.put_arrays("s1", data)
        keys = sorted(s.chunks.key(d) for d in s.manifest("s1").digests())
    ObjectBackend(s3_url).delete(keys[0])  # lost (a lifecycle rule, a stray delete)
    b = ObjectBackend(s3_url)
    b.replace(keys[1], [b"not a chunk"])  # a header no casckpt writes
    host("new")
    with open_s3(s3_url, delta=False) as s:  # the cache is made from nothing: a header read per chunk
        assert s.put_arrays("s2", data).new_chunks == 2
        assert_same(data, s.get_arrays("s1"))


# -- what a DCP save and load cost (issue 13): each metadata request once ------------------------
def by_kind(proxy, url: str) -> collections.Counter:
    """The proxy's requests by method and kind: ``"GET config"``, ``"HEAD manifest"``, ``"LIST
    snapshots/"``, ``"POST delete"`` (one DeleteObjects)… Objects are named by what they are
    (config, epoch, lock, manifest, chunk, marker), listings by the folder they list."""
    prefix = url.split("/", 3)[3]
    kinds = {"casckpt.json": "config", "epoch": "epoch", "locks": "lock", "snapshots": "manifest",
             "chunks": "chunk", "damaged": "marker"}
    out = collections.Counter()
    for method, path in proxy.requests:
        path, _, query = path.partition("?")
        if "list-type=2" in query:
            listed = urllib.parse.unquote(query.split("prefix=", 1)[1].split("&")[0])
            out[f"LIST {listed[len(prefix) + 1:]}"] += 1
        elif query == "delete":
            out[f"{method} delete"] += 1
        else:
            key = path.split(f"/{prefix}/", 1)[1]
            out[f"{method} {kinds[key.split('/')[0]]}"] += 1
    return out


def each_once(proxy, method: str, kind: str) -> bool:
    """Whether no object of ``kind`` (``/snapshots/``, ``/chunks/``) was asked for twice by ``method``."""
    keys = [p for m, p in proxy.requests if m == method and kind in p]
    return len(keys) == len(set(keys))


def test_a_dcp_save_and_load_make_each_metadata_request_once(s3_url, host, proxy, monkeypatch):
    import torch
    import torch.distributed.checkpoint as dcp

    monkeypatch.setattr(casckpt.Store, "lock_timing", Timing())  # no refresh within the test
    with open_s3(s3_url, create=True, chunk_size=CHUNK):
        pass
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the writer and reader open their own stores
    sd = {"w": torch.from_numpy(big(1)["w"]), "step": 7}  # 40 chunks and a byte item

    def save(name: str) -> collections.Counter:
        proxy.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP's: no process group
            dcp.save(sd, storage_writer=casckpt.CasWriter(s3_url, snapshot=name), planner=casckpt.DedupSavePlanner())
        return by_kind(proxy, s3_url)
    # the lock (PUT, LIST, and a DeleteObjects to release it), the config, the name's HEAD at
    # set-up, the epoch and the listing of snapshots/ once (catch_up), the manifest PUT
    once = {"GET config": 1, "HEAD manifest": 1, "PUT lock": 1, "LIST locks/": 1, "GET epoch": 1,
            "LIST snapshots/": 1, "PUT manifest": 1, "POST delete": 1}
    # a cache that never recorded an epoch lists the damaged markers once; no latest to read
    assert save("s0") == {**once, "LIST damaged/": 1, "PUT chunk": 41}
    assert save("s1") == once  # unchanged: nothing per chunk
    sd["w"][:: sd["w"].numel() // 2] += 1  # 2 of 40 chunks change
    changed = save("s2")
    # "latest" reads the manifests saved within a minute of the newest, each once (s1 and s0);
    # a new chunk's delta base is one GET
    assert changed == {**once, "GET manifest": 2, "GET chunk": 2, "PUT chunk": 2}, changed
    assert each_once(proxy, "GET", "/snapshots/") and each_once(proxy, "GET", "/chunks/")

    got = {"w": torch.zeros_like(sd["w"]), "step": 0}
    proxy.clear()
    assert casckpt.load(got, s3_url) == "s2" and torch.equal(got["w"], sd["w"]) and got["step"] == 7
    load = by_kind(proxy, s3_url)
    # no HEAD of the manifest it resolved, however often the load looks at it again; of the
    # manifests "latest" weighs, only s2 is read: this process parsed s0 and s1 at s2's save
    assert {k: v for k, v in load.items() if k != "GET chunk"} == {
        "GET config": 1, "PUT lock": 1, "LIST locks/": 1, "LIST snapshots/": 1, "GET manifest": 1,
        "POST delete": 1}, load
    assert load["GET chunk"] == 41 + 2  # each chunk of s2 once, and the bases of its 2 deltas
    assert each_once(proxy, "GET", "/snapshots/") and each_once(proxy, "GET", "/chunks/")
    proxy.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(got, storage_reader=casckpt.CasReader(s3_url, snapshot="s1"))
    load = by_kind(proxy, s3_url)
    assert {k: v for k, v in load.items() if k != "GET chunk"} == {
        "GET config": 1, "PUT lock": 1, "LIST locks/": 1, "GET manifest": 1, "POST delete": 1}, load
    assert each_once(proxy, "GET", "/chunks/")


def test_a_hold_lists_snapshots_once_and_the_next_hold_sees_what_others_committed(s3_url, host, proxy):
    from casckpt.lock import EXCLUSIVE, SHARED

    with open_s3(s3_url, create=True, chunk_size=CHUNK) as s:
        s.put_arrays("a", arrays(1))
    with open_s3(s3_url, proxy) as s, open_s3(s3_url) as other:
        with s.lock(SHARED):
            proxy.clear()
            assert s.snapshot_names() == ["a"] and s.resolve("latest") == "a"
            other.put_arrays("b", arrays(2))  # another host commits meanwhile
            assert s.snapshot_names() == ["a"] and s.exists("a") and s.manifest("latest").name == "a"
            assert s.exists("b")  # not listed under this hold: asked for (a HEAD), found
            assert proxy.count("GET", "list-type=2") == 1 and proxy.count("HEAD") == 1
        assert s.snapshot_names() == ["a", "b"] and s.resolve("latest") == "b"  # a new hold, or none
        with s.lock(SHARED):
            assert s.resolve("latest") == "b"
        with s.lock(EXCLUSIVE):
            assert s.exists("a")
            s.forget(["a"])  # this process's own writes drop what the hold had read
            assert s.snapshot_names() == ["b"] and not s.exists("a")


def test_of_racing_creators_the_first_config_wins_and_the_loser_reads_it(s3_url, host, proxy):
    # the loser's conditional PUT of the config is held back until the winner has created the store
    proxy.plan(Fault("delay", method="PUT", path="/casckpt.json", seconds=0.5))  # within AWS_TIMEOUT
    opened = {}
    loser = threading.Thread(target=lambda: opened.setdefault("loser", open_s3(s3_url, proxy, create=True, chunk_size=CHUNK)))
    loser.start()
    deadline = time.monotonic() + 30
    while proxy.count("PUT", "/casckpt.json") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open_s3(s3_url, create=True, chunk_size=2 * CHUNK) as winner:
        loser.join(timeout=60)
        with opened["loser"] as s:
            assert s.config.store_id == winner.config.store_id and s.config.chunk_size == 2 * CHUNK
            assert proxy.count("GET", "/casckpt.json") == 2  # none at first, then the winner's
