"""Checkpoint ids as paths (how torchtitan, Lightning and Accelerate call DCP), and DCP parity:
storage_meta ids, writer reuse, use_collectives=False, statistics under DCP's default planner."""

from __future__ import annotations


import pytest
import torch
import torch.distributed.checkpoint as dcp

import casckpt
from casckpt import checkpoint_id as ids
from casckpt.errors import InvalidNameError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")


def state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(256, 64, generator=g), "b": torch.randn(64, generator=g), "step": seed}


def zeros(sd: dict) -> dict:
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0 for k, v in sd.items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


# -- the mapping ---------------------------------------------------------------------------------
def test_split_maps_a_path_to_its_parent_store_and_a_name(tmp_path):
    assert ids.split(f"{tmp_path}/run/step-100") == (f"{tmp_path}/run", "step-100")
    assert ids.split(tmp_path / "run" / "step-1/") == (f"{tmp_path}/run", "step-1")
    assert ids.split("run/step-2") == ("run", "step-2")
    assert ids.split("step-3", tmp_path) == (str(tmp_path), "step-3")


@pytest.mark.parametrize("bad", ["/ckpt/run/..", "/ckpt/run/latest", "/ckpt/run/a b", "/", "/ckpt/run/.hidden"])
def test_split_refuses_ids_without_a_valid_snapshot_name(bad):
    with pytest.raises(InvalidNameError, match="checkpoint id"):
        ids.split(bad)
    assert not ids.is_valid(bad)


def test_a_bare_name_needs_a_store_and_a_path_must_lie_in_the_given_store(tmp_path):
    with pytest.raises(InvalidNameError, match="no store was given"):
        ids.split("step-1")
    with pytest.raises(InvalidNameError, match="outside the store"):
        ids.split(tmp_path / "elsewhere" / "step-1", tmp_path / "run")
    assert ids.split(tmp_path / "run" / "step-1", tmp_path / "run" / ".")[1] == "step-1"


# -- DCP with path ids ---------------------------------------------------------------------------
def test_dcp_save_and_load_with_path_checkpoint_ids(tmp_path):
    sd = state(1)
    for step in (1, 2):
        dcp.save(sd, checkpoint_id=str(tmp_path / "run" / f"step-{step}"), storage_writer=casckpt.CasWriter(),
                 planner=casckpt.DedupSavePlanner())
    store = casckpt.Store.open(tmp_path / "run")
    assert sorted(store.snapshot_names()) == ["step-1", "step-2"]
    assert not (tmp_path / "run" / "step-1").exists()  # a snapshot, not a folder
    out = zeros(sd)
    dcp.load(out, checkpoint_id=tmp_path / "run" / "step-2", storage_reader=casckpt.CasReader())
    assert_same(out, sd)
    # a reader or writer given the store takes path ids inside it, and refuses others
    out = zeros(sd)
    dcp.load(out, checkpoint_id=str(tmp_path / "run" / "latest"), storage_reader=casckpt.CasReader(tmp_path / "run"))
    assert_same(out, sd)
    with pytest.raises(InvalidNameError, match="outside the store"):
        casckpt.CasWriter(tmp_path / "run").reset(tmp_path / "other" / "step-3")


def test_casckpt_save_and_load_take_a_checkpoint_path(tmp_path):
    sd = state(2)
    stats = casckpt.save(sd, tmp_path / "run" / "step-7")
    assert stats.snapshot == "step-7"
    out = zeros(sd)
    assert casckpt.load(out, tmp_path / "run" / "step-7") == "step-7"
    assert_same(out, sd)
    out = zeros(sd)
    assert casckpt.load(out, tmp_path / "run") == "step-7"  # the store itself: latest
    assert_same(out, sd)
    with pytest.raises(InvalidNameError):
        casckpt.save(sd, tmp_path / "run" / "bad name")


def test_storage_meta_carries_save_and_load_ids(tmp_path):
    sd = state(3)
    w = casckpt.CasWriter(tmp_path / "s")
    dcp.save(sd, checkpoint_id="a", storage_writer=w)
    r = casckpt.CasReader(tmp_path / "s")
    r.reset("a")
    md = r.read_metadata()
    assert md.storage_meta.save_id == w.save_id and len(w.save_id) == 32
    assert md.storage_meta.load_id == r.load_id and len(r.load_id) == 32
    r.reset("a")
    assert r.read_metadata().storage_meta.load_id == r.load_id  # a new load, a new id
    r.close()


def test_writer_reuse_without_a_new_id_is_refused_with_a_way_out(tmp_path):
    sd = state(4)
    w = casckpt.CasWriter(tmp_path / "s", snapshot="one")
    dcp.save(sd, storage_writer=w)
    with pytest.raises(BaseException) as info:
        dcp.save(sd, storage_writer=w)
    assert "immutable" in str(info.value) and "overwrite=True" in str(info.value)
    sd["b"] += 1
    dcp.save(sd, storage_writer=casckpt.CasWriter(tmp_path / "s", snapshot="one", overwrite=True))
    out = zeros(sd)
    casckpt.load(out, tmp_path / "s", "one")
    assert_same(out, sd)


def test_default_planner_statistics_count_only_chunks_the_store_lacked(tmp_path):
    """Save W1, W2, then W1 again with DCP's default planner: the third save writes nothing."""
    w1, w2 = state(5), state(6)
    for name, sd in (("a", w1), ("b", w2)):
        dcp.save(sd, checkpoint_id=name, storage_writer=casckpt.CasWriter(tmp_path / "s", chunk_size=16 << 10))
    w = casckpt.CasWriter(tmp_path / "s")
    dcp.save(w1, checkpoint_id="c", storage_writer=w)
    assert w.stats.new_chunks == 0 and w.stats.bytes_written == 0


# -- across real processes (gloo) ----------------------------------------------------------------
def _ranks_job(rank: int, world: int, port: int, root: str, out: str) -> None:
    import json
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        w1 = {f"r{rank}": torch.full((128, 64), float(rank)), "shared": torch.arange(4096.0)}
        w2 = {f"r{rank}": torch.full((128, 64), rank + 0.5), "shared": torch.arange(4096.0) + 1}
        stats = []
        for name, sd in (("a", w1), ("b", w2), ("c", w1)):  # DCP's default planner
            w = casckpt.CasWriter(root, chunk_size=16 << 10)
            dcp.save(sd, checkpoint_id=name, storage_writer=w)
            stats.append(w.stats.to_json() if rank == 0 else None)
        # without collectives each rank saves a snapshot of its own
        own = casckpt.CasWriter(root)
        dcp.save(w2, checkpoint_id=f"own-{rank}", storage_writer=own, use_collectives=False)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"stats": stats, "own": own.stats.to_json()}, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_default_planner_stats_and_no_collectives(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root, out = tmp_path / "store", tmp_path / "out.json"
    mp.spawn(_ranks_job, args=(2, port, str(root), str(out)), nprocs=2, join=True)
    res = json.loads(out.read_text())
    a, b, c = res["stats"]
    assert a["new_chunks"] > 0 and b["new_chunks"] > 0
    assert c["new_chunks"] == 0 and c["bytes_written"] == 0, c  # the store had every chunk of W1
    store = casckpt.Store.open(root)
    assert {"own-0", "own-1"} <= set(store.snapshot_names())
    for r in (0, 1):
        got = store.get_arrays(f"own-{r}")
        assert set(got) == {f"r{r}", "shared"} and float(got[f"r{r}"][0, 0]) == r + 0.5
    assert res["own"]["new_chunks"] == 0  # rank 0's own save found everything stored already
