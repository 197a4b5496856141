"""Dedup across world sizes (casckpt.dcp.reshard): a state saved on one number of ranks and
re-saved unchanged on another writes nothing new, loads bit-exactly everywhere, and a change at a
shard edge is still written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import casckpt
from casckpt.dcp.reshard import Extents
from casckpt.digest import Digest
from casckpt.manifest import ChunkRef, Item
from casckpt.verify import verify
from test_dcp_dist import _bits, free_port

ROWS, COLS = 100, 64  # 256-byte rows; 16 rows per 4 KiB chunk: 2, 3 and 4 ranks cut off the grid
CHUNK = 4 << 10


def state(changed: bool = False) -> torch.Tensor:
    t = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(3))
    if changed:
        t[40] += 1.0  # inside the 3-rank layout's second shard, in a chunk a shard edge cuts
    return t


def _job(rank: int, world: int, port: int, root: str, load: str, saves: list, out: str) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        sd = {"w": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(0)])}
        stats = {}
        if load:
            casckpt.load(sd, root, load)
        for name, changed in saves:
            if changed:
                sd = {"w": distribute_tensor(state(True), mesh, [Shard(0)])}
            elif not load:
                sd = {"w": distribute_tensor(state(), mesh, [Shard(0)])}
            stats[name] = casckpt.save(sd, root, name, chunk_size=CHUNK).to_json()
        if rank == 0:
            Path(out).write_text(json.dumps(stats))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, world: int, load: str, saves: list) -> dict:
    out = tmp_path / f"out{world}.json"
    mp.spawn(_job, args=(world, free_port(), str(tmp_path / "store"), load, saves, str(out)),
             nprocs=world, join=True)
    return json.loads(out.read_text())


def test_unchanged_resave_on_other_world_sizes_writes_nothing(tmp_path):
    full = _run(tmp_path, 2, "", [("a", False)])["a"]
    on3 = _run(tmp_path, 3, "a", [("b", False), ("c", True)])
    on4 = _run(tmp_path, 4, "c", [("d", False)])
    assert full["new_chunks"] > 0
    assert on3["b"]["new_chunks"] == 0 and on3["b"]["bytes_written"] == 0
    assert 1 <= on3["c"]["new_chunks"] <= 2  # the changed row's chunk(s) only
    assert on4["d"]["new_chunks"] == 0  # parts of parts: c itself refers into a's chunks

    with casckpt.Store.open(tmp_path / "store") as store:
        m = store.manifest("b")
        assert any(c.offset is not None for it in m.items.values() for c in it.chunks)
        assert store.manifest("b").digests() <= store.manifest("a").digests()
        assert verify(store).ok
    for name, want in [("a", state()), ("b", state()), ("c", state(True)), ("d", state(True))]:
        got = {"w": torch.zeros(ROWS, COLS)}
        casckpt.load(got, tmp_path / "store", name)
        assert _bits(got["w"]) == _bits(want), name


def _item(lengths, offsets=None, tag=0):
    refs = tuple(ChunkRef(Digest(bytes([tag + i]) * 32), n, None if offsets is None else offsets[i])
                 for i, n in enumerate(lengths))
    return Item("float32", (sum(lengths) // 8, 2), refs)


def test_extents_cover():
    # two shards of rows 0-5 and 6-9 (8-byte rows): chunks of 4 rows on the grid, cut at row 6
    ext = Extents({"w@0,0": _item([32, 16], tag=0), "w@6,0": _item([16, 16], tag=10)})
    group = ("w", "float32", (0,), (2,))
    d = lambda i: bytes([i]) * 32
    assert ext.cover(group, 0, 32) is None  # exactly a whole stored chunk: its digest differs
    assert ext.cover(group, 0, 16) == ((d(0), 0, 16),)
    assert ext.cover(group, 16, 64) == ((d(0), 16, 16), (d(1), None, 16), (d(10), None, 16))
    assert ext.cover(group, 40, 80) == ((d(1), 8, 8), (d(10), None, 16), (d(11), None, 16))
    assert ext.cover(group, 64, 88) is None  # past the end: not all bytes are stored
    assert ext.cover(("w", "bfloat16", (0,), (2,)), 0, 16) is None  # another dtype: no line
    # a ref that is itself a part of a chunk keeps its offset
    ext2 = Extents({"w": _item([16, 16], offsets=[8, 0], tag=20)})
    assert ext2.cover(("w", "float32", (0,), (2,)), 4, 20) == ((d(20), 12, 12), (d(21), 0, 4))
