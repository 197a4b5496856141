"""The DCP layer across real processes: 2 and 4 ranks over gloo on CPU (torch.multiprocessing).

One job saves a DTensor sharded on dim 0 plus replicated state, then loads it back sharded on
dim 1; the test process then loads the same snapshot alone (1 rank) and re-saves it unsharded.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import pytest
import torch.multiprocessing as mp

import casckpt
import casckpt.fsutil

CHUNK = 16 << 10  # 16 rows of the 64 x 256 float32 tensor per chunk
ROWS, COLS = 64, 256


def full_tensor() -> torch.Tensor:
    return torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(7))


def replicated() -> torch.Tensor:
    return torch.randn(32, 128, generator=torch.Generator().manual_seed(8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _job(rank: int, world: int, port: int, root: str, out: str) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        rep = replicated()
        sd = {"w": distribute_tensor(full_tensor(), mesh, [Shard(0)]), "rep": rep,
              f"copy_on_rank{rank}": rep.clone(), "step": 5}
        synced = []  # chunk files this rank fsyncs (a recording wrapper at the I/O boundary)
        fsync_file = casckpt.fsutil.fsync_file
        casckpt.fsutil.fsync_file = lambda p: (synced.append(str(p)), fsync_file(p))[1]
        writer = casckpt.CasWriter(root, chunk_size=CHUNK)
        dcp.save(sd, checkpoint_id="s0", storage_writer=writer, planner=casckpt.DedupSavePlanner())
        casckpt.fsutil.fsync_file = fsync_file
        written, fsynced = [None] * world, [None] * world
        dist.all_gather_object(written, writer.chunks_written)
        dist.all_gather_object(fsynced, len(set(synced)))
        again = casckpt.save(sd, root, "s1")  # same state, same sharding: nothing new

        # Load on 2 ranks, now sharded on dim 1.
        target = {"w": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(1)]), "rep": torch.zeros(32, 128),
                  "step": 0}
        name = casckpt.load(target, root, "latest", allow_partial_load=True)
        cols = slice(rank * COLS // world, (rank + 1) * COLS // world)
        ok = (_bits(target["w"].to_local()) == _bits(full_tensor()[:, cols])
              and _bits(target["rep"]) == _bits(rep) and target["step"] == 5)
        oks = [None] * world
        dist.all_gather_object(oks, ok)
        if rank == 0:
            Path(out).write_text(json.dumps({
                "stats": writer.stats.to_json(), "written": written, "fsynced": fsynced,
                "again": again.to_json(),
                "loaded": name, "ok": oks}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_save_sharded_load_resharded_and_on_one_rank(tmp_path, world):
    root, out = tmp_path / "store", tmp_path / "result.json"
    mp.spawn(_job, args=(world, free_port(), str(root), str(out)), nprocs=world, join=True)
    res = json.loads(out.read_text())
    store = casckpt.Store.open(root)
    m = store.manifest("s0")
    shards = [f"w@{r * ROWS // world},0" for r in range(world)]

    # DTensor shards keyed by offset; replicated tensors and byte items once.
    assert {*shards, "rep", *(f"copy_on_rank{r}" for r in range(world)), "step"} == set(m.items)
    assert m.meta["dcp"]["state_dict_metadata"]["w"]["size"] == [ROWS, COLS]
    # each new chunk was written by exactly one rank, and rep/copies share their chunks
    assert sum(res["written"]) == res["stats"]["new_chunks"] == len(m.digests())
    # every rank made its own chunk files durable (a shared file system needs the writer's fsync);
    # the coordinator syncs every new chunk at commit
    assert res["fsynced"][1:] == res["written"][1:] and res["fsynced"][0] == len(m.digests())
    assert all(n > 0 for n in res["written"])
    assert all(m.items[f"copy_on_rank{r}"].chunks == m.items["rep"].chunks for r in range(world))
    assert len(list((root / "chunks").glob("*/*"))) == len(m.digests())
    assert res["again"]["new_chunks"] == 0 and res["again"]["chunks"] == res["stats"]["chunks"]
    assert res["ok"] == [True] * world and res["loaded"] == "s1"

    # One rank (this process, no process group) loads the 2-rank snapshot: bit-exact.
    got = {"w": torch.zeros(ROWS, COLS), "rep": torch.zeros(32, 128), "step": 0}
    casckpt.load(got, root, "s0", allow_partial_load=True)
    assert _bits(got["w"]) == _bits(full_tensor()) and _bits(got["rep"]) == _bits(replicated())
    assert got["step"] == 5

    # Saved unsharded, the tensor cuts into the same chunks (shard boundary on the row grid).
    stats = casckpt.save({"w": full_tensor()}, root, "whole")
    assert stats.new_chunks == 0
    assert store.manifest("whole").items["w"].chunks == sum((m.items[k].chunks for k in shards), ())


def _failing_rank_job(rank: int, world: int, port: int, root: str, out: str) -> None:
    """Rank 1's disk fills while it writes its chunks; rank 0 (the coordinator) holds the lock."""
    import errno

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        sd = {f"w{rank}": torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(rank))}
        bad = {f"w{rank}": torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(100 + rank))}
        real = casckpt.fsutil.write_parts

        def disk_full(path, *a, **k):  # the I/O boundary: every file rank 1 writes
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        if rank == 1:
            casckpt.fsutil.write_parts = disk_full
        try:
            casckpt.save(bad, root, "bad", chunk_size=CHUNK)
            got = "saved"
        except casckpt.StoreIOError as exc:
            got = f"StoreIOError {exc.errno}"
        except BaseException as exc:  # reported, so the test shows what escaped
            got = f"{type(exc).__name__}: {exc}"
        casckpt.fsutil.write_parts = real
        dist.barrier()
        again = casckpt.save(sd, root, "good")  # the next save of the same job works
        outs = [None] * world
        dist.all_gather_object(outs, got)
        if rank == 0:
            Path(out).write_text(json.dumps({"errors": outs, "good": again.new_chunks}))
    finally:
        dist.destroy_process_group()


def test_a_rank_failing_in_write_data_while_the_coordinator_holds_the_lock(tmp_path):
    from casckpt.lock import EXCLUSIVE

    root, out = tmp_path / "store", tmp_path / "result.json"
    casckpt.Store.open(root, create=True, chunk_size=CHUNK).close()
    mp.spawn(_failing_rank_job, args=(2, free_port(), str(root), str(out)), nprocs=2, join=True)
    res = json.loads(out.read_text())
    assert res["errors"] == [f"StoreIOError {28}"] * 2  # typed, on every rank
    with casckpt.Store.open(root) as store:
        assert store.snapshot_names() == ["good"] and res["good"] > 0
        with store.lock(EXCLUSIVE, timeout=0):  # nobody holds the lock any more
            pass
        # the coordinator reclaimed what the failed save had written: only "good"'s chunks remain
        assert {p.name for p in (root / "chunks").glob("*/*")} == {d.hex for d in store.manifest("good").digests()}
        assert os.listdir(root / "tmp") == []


def nudged_tensor(step: int) -> torch.Tensor:
    """full_tensor() after ``step`` small updates of every weight (deltas pay)."""
    t = full_tensor()
    g = torch.Generator().manual_seed(9)
    for _ in range(step):
        t = t + torch.randn(ROWS, COLS, generator=g) * 1e-3
    return t


def _delta_job(rank: int, world: int, port: int, root: str, out: str) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        written = []
        for step in range(3):
            sd = {"w": distribute_tensor(nudged_tensor(step), mesh, [Shard(0)]), "step": step}
            writer = casckpt.CasWriter(root, chunk_size=CHUNK)
            dcp.save(sd, checkpoint_id=f"s{step}", storage_writer=writer, planner=casckpt.DedupSavePlanner())
            written.append(writer.chunks_written)
        oks = []
        for step in range(3):  # load each step back sharded on dim 1
            target = {"w": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(1)]), "step": -1}
            casckpt.load(target, root, f"s{step}")
            cols = slice(rank * COLS // world, (rank + 1) * COLS // world)
            oks.append(_bits(target["w"].to_local()) == _bits(nudged_tensor(step)[:, cols]) and target["step"] == step)
        everyone = [None] * world
        dist.all_gather_object(everyone, {"written": written, "ok": oks})
        if rank == 0:
            Path(out).write_text(json.dumps(everyone))
    finally:
        dist.destroy_process_group()


def test_ranks_write_delta_chunks_that_load_bit_exactly(tmp_path):
    world = 2
    root, out = tmp_path / "store", tmp_path / "result.json"
    mp.spawn(_delta_job, args=(world, free_port(), str(root), str(out)), nprocs=world, join=True)
    res = json.loads(out.read_text())
    assert all(r["ok"] == [True, True, True] for r in res)
    assert all(r["written"][1] > 0 for r in res)  # every rank wrote chunks of its own shard
    store = casckpt.Store.open(root)
    entries = dict(store.index.chunks())
    for step in (1, 2):
        m, prev = store.manifest(f"s{step}"), store.manifest(f"s{step - 1}")
        for r in range(world):
            key = f"w@{r * ROWS // world},0"
            for c, p in zip(m.items[key].chunks, prev.items[key].chunks):
                info = entries[c.digest]
                # a delta against the same place one step back, or (depth 1 reached) its base
                assert info.base in (p.digest, entries[p.digest].base) and info.depth == 1
    for step in range(3):  # and on one rank, without a process group
        got = {"w": torch.zeros(ROWS, COLS), "step": -1}
        casckpt.load(got, root, f"s{step}")
        assert _bits(got["w"]) == _bits(nudged_tensor(step))
