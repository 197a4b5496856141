"""Small items through DCP are packed many to a chunk file (casckpt.packs): few files, unchanged
small items deduplicate against their pack, loads are bit-exact, gc keeps a pack while any
snapshot references part of it, and a lost members cache only costs one repack."""

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import casckpt
from casckpt.diff import diff
from casckpt.digest import digest_of
from casckpt.gc import gc
from casckpt.usage import show
from casckpt.verify import verify
from conftest import chunk_files

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")
CHUNK = 256 << 10  # packs up to 256 KiB; items below 16 KiB are packed


def small_state(seed: int = 0, n: int = 300) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sd = {f"m.{i}.w": torch.from_numpy(rng.standard_normal(int(rng.integers(64, 1025))).astype(np.float32))
          for i in range(n)}
    sd["big"] = torch.from_numpy(rng.standard_normal((256, 1024)).astype(np.float32))  # 1 MiB: not packed
    return sd


def load(root, name, like):
    out = {k: torch.zeros_like(v) for k, v in like.items()}
    casckpt.load(out, root, name)
    return out


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_small_items_share_few_files_and_load_bit_exact(tmp_path):
    root, sd = tmp_path / "s", small_state()
    stats = casckpt.save(sd, root, "a", chunk_size=CHUNK)
    small = sum(v.numel() * 4 for k, v in sd.items() if k != "big")
    assert len(chunk_files(root)) <= -(-small // CHUNK) + 1 + 4  # packs + big's 4 chunks
    assert stats.chunks == 304 and stats.new_chunks == len(chunk_files(root))
    doc = json.loads((root / "snapshots" / "a.json").read_bytes())
    assert "offsets" in doc["items"]["m.0.w"] and "offsets" not in doc["items"]["big"]
    assert same(sd, load(root, "a", sd))
    with casckpt.Store.open(root) as s:  # a pack of float32 members is byte-grouped as they are
        m = s.manifest("a")
        assert s.index.get(m.items["m.0.w"].chunks[0].digest).codec == s.index.get(m.items["big"].chunks[0].digest).codec


def test_unchanged_small_items_dedup_against_their_pack(tmp_path):
    root, sd = tmp_path / "s", small_state()
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    files = set(chunk_files(root))
    with casckpt.Store.open(root) as s:
        member = digest_of(sd["m.0.w"].numpy().tobytes()).raw
        assert s.index.get_members([member])[member][0] == s.manifest("a").items["m.0.w"].chunks[0].digest.raw
    assert casckpt.save(sd, root, "b").new_chunks == 0 and set(chunk_files(root)) == files
    with casckpt.Store.open(root) as s:
        assert s.manifest("b").items == s.manifest("a").items  # the same refs into the same packs
    assert same(sd, load(root, "b", sd))
    for k in ("m.1.w", "m.2.w", "m.3.w"):
        sd[k] = sd[k] + 1
    stats = casckpt.save(sd, root, "c")
    assert stats.new_chunks == 1  # the three changed items, in one new pack
    with casckpt.Store.open(root) as s:
        r = diff(s, "a", "c")
        assert sorted(r.changed) == ["m.1.w", "m.2.w", "m.3.w"]
        assert verify(s).ok
    assert same(sd, load(root, "c", sd))


def test_show_charges_a_packed_item_its_share_of_the_pack(tmp_path):
    root, sd = tmp_path / "s", small_state()
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    with casckpt.Store.open(root) as s:
        detail = show(s, "a")
        m = s.manifest("a")
        packs = {c.digest for k, it in m.items.items() if k != "big" for c in it.chunks}
        pack_bytes = sum(s.index.get(d).stored_len for d in packs)
    items = {i.name: i for i in detail.items}
    small = [items[k] for k in sd if k != "big"]
    assert all(0 < i.stored_bytes < i.logical_bytes * 2 for i in small)  # not the whole pack each
    assert abs(sum(i.stored_bytes for i in small) - pack_bytes) <= len(small)  # shares add up (rounding)
    assert detail.stored_bytes == pack_bytes + items["big"].stored_bytes


def test_gc_keeps_a_pack_while_any_snapshot_references_part_of_it(tmp_path):
    root, sd = tmp_path / "s", small_state()
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    first = dict(sd)
    sd.update({k: sd[k] * 2 for k in list(sd)[:150]})  # half the small items change
    casckpt.save(sd, root, "b")
    with casckpt.Store.open(root) as s:
        s.delete("a")
        gc(s)
        assert same(sd, load(root, "b", sd))  # b's unchanged half still lives in a's packs
        s.delete("b")
        gc(s)
        assert chunk_files(root) == []
    assert casckpt.save(first, root, "again").new_chunks > 0  # members of deleted packs are gone


def test_after_reindex_an_unchanged_save_rebuilds_the_same_packs(tmp_path):
    """Members are a cache reindex does not rebuild; packing is deterministic (planning order),
    so the unchanged small items pack into the same bytes: the same pack names, nothing new."""
    root, sd = tmp_path / "s", small_state()
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    files = set(chunk_files(root))
    with casckpt.Store.open(root) as s:
        s.reindex()
        member = digest_of(sd["m.0.w"].numpy().tobytes()).raw
        assert s.index.get_members([member]) == {}
    assert casckpt.save(sd, root, "b").new_chunks == 0 and set(chunk_files(root)) == files
    assert casckpt.save(sd, root, "c").new_chunks == 0
    with casckpt.Store.open(root) as s:
        assert s.manifest("a").items == s.manifest("c").items
    assert same(sd, load(root, "a", sd)) and same(sd, load(root, "c", sd))


def _ranks_job(rank: int, world: int, port: int, root: str, out: str) -> None:
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shared = small_state(0, 40)  # the same on every rank: DCP saves each once
        sd = {**shared, **{f"own{rank}.{k}": v for k, v in small_state(1 + rank, 40).items()}}
        written, stats = [], []
        for name in ("a", "b", "c"):
            if name == "c" and rank == 1:
                sd["own1.m.0.w"] = sd["own1.m.0.w"] + 1
            w = casckpt.CasWriter(root, chunk_size=CHUNK)
            dcp.save(sd, checkpoint_id=name, storage_writer=w, planner=casckpt.DedupSavePlanner())
            written.append(w.chunks_written)
            stats.append(w.stats.to_json() if rank == 0 else None)
        everyone = [None] * world
        dist.all_gather_object(everyone, written)
        if rank == 0:
            Path(out).write_text(json.dumps({"written": everyone, "stats": stats}))
    finally:
        dist.destroy_process_group()


def test_ranks_pack_their_small_items_and_an_unchanged_save_writes_nothing(tmp_path):
    """Two ranks: each packs the small items it writes; the coordinator builds the manifest from
    the digests of planning and one write result per rank; an unchanged save writes nothing and
    refers to the same packs; one changed item costs one chunk; loads are bit-exact."""
    world, root, out = 2, tmp_path / "s", tmp_path / "out.json"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ranks_job, args=(world, port, str(root), str(out)), nprocs=world, join=True)
    res = json.loads(out.read_text())
    a, b, c = res["stats"]
    assert all(n > 0 for n in res["written"][0][:1] + res["written"][1][:1])  # both ranks packed some
    assert b["new_chunks"] == 0 and [w[1] for w in res["written"]] == [0, 0]
    assert c["new_chunks"] == 1 and a["chunks"] == b["chunks"] == c["chunks"] == 3 * 40 + 3 * 4  # small items, 4 chunks per big
    with casckpt.Store.open(root) as s:
        ma, mb, mc = (s.manifest(n) for n in "abc")
        assert ma.items == mb.items and len(ma.items) == 3 * 41
        assert [k for k in ma.items if ma.items[k] != mc.items[k]] == ["own1.m.0.w"]
        assert "big" in ma.items and len(chunk_files(root)) < 20
        assert verify(s).ok
    like = {**small_state(0, 40), **{f"own{r}.{k}": v for r in range(world) for k, v in small_state(1 + r, 40).items()}}
    assert same(like, load(root, "b", like))
    like["own1.m.0.w"] = like["own1.m.0.w"] + 1
    assert same(like, load(root, "c", like))
