"""DCP jobs of 2 and 4 ranks over gloo saving into one store on S3 (moto on 127.0.0.1) and loading
it resharded; each rank has its own index cache folder, as ranks on separate hosts would."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

pytest.importorskip("obstore")

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import casckpt
from s3kit import free_port
from s3kit import moto, s3_url  # noqa: F401 (fixtures)

CHUNK = 16 << 10
ROWS, COLS = 64, 256


def full_tensor(step: int = 0) -> torch.Tensor:
    t = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(7))
    t[: step * 4] += step  # each step changes a few rows more
    return t


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _job(rank: int, world: int, port: int, url: str, caches: str, out: str) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ["CASCKPT_CACHE_DIR"] = os.path.join(caches, f"host{rank}")  # a host per rank
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        stats = []
        for step in range(3):
            sd = {"w": distribute_tensor(full_tensor(step), mesh, [Shard(0)]), "step": step}
            writer = casckpt.CasWriter(url, chunk_size=CHUNK)
            dcp.save(sd, checkpoint_id=f"{url}/step-{step}", storage_writer=writer,
                     planner=casckpt.DedupSavePlanner())
            stats.append(writer.stats.to_json() if rank == 0 else None)
        target = {"w": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(1)]), "step": -1}
        name = casckpt.load(target, url, "latest")
        cols = slice(rank * COLS // world, (rank + 1) * COLS // world)
        ok = _bits(target["w"].to_local()) == _bits(full_tensor(2)[:, cols]) and target["step"] == 2
        oks = [None] * world
        dist.all_gather_object(oks, ok)
        if rank == 0:
            Path(out).write_text(json.dumps({"stats": stats, "loaded": name, "ok": oks}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_save_into_s3_and_load_resharded(s3_url, tmp_path, world, monkeypatch):
    out = tmp_path / "result.json"
    mp.spawn(_job, args=(world, free_port(), s3_url, str(tmp_path / "caches"), str(out)), nprocs=world, join=True)
    res = json.loads(out.read_text())
    assert res["ok"] == [True] * world and res["loaded"] == "step-2"
    cold, *later = res["stats"]
    assert cold["new_chunks"] == cold["chunks"] == ROWS * COLS * 4 // CHUNK + 1  # and the step
    assert all(0 < s["new_chunks"] < cold["chunks"] for s in later)  # only the changed rows' chunks
    # A fresh host (this process, a new cache) loads any step on one rank, bit-exactly.
    monkeypatch.setenv("CASCKPT_CACHE_DIR", str(tmp_path / "caches" / "fresh"))
    for step in range(3):
        got = {"w": torch.zeros(ROWS, COLS), "step": -1}
        casckpt.load(got, f"{s3_url}/step-{step}")
        assert _bits(got["w"]) == _bits(full_tensor(step)) and got["step"] == step
    with casckpt.Store.open(s3_url) as s:
        from casckpt import verify
        assert verify.verify(s).ok
