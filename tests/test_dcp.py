"""The DCP layer in one process: round trips, dedup, dtypes, views, byte items, async_save,
"latest", JSON-only manifests and typed errors. Real stores on disk, real DCP."""

from __future__ import annotations

import errno
import json
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

import casckpt
import casckpt.fsutil
from casckpt.dcp import item_key, key_fqn
from casckpt.dcp.reader import _Region
from casckpt.manifest import ChunkRef, Item
from conftest import chunk_files

CHUNK = 16 << 10
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning",
                                        "ignore:ComplexHalf support:UserWarning")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def zeros_like_sd(sd):
    return {k: zeros_like_sd(v) if isinstance(v, dict) else
            torch.zeros_like(v) if isinstance(v, torch.Tensor) else v for k, v in sd.items()}


def assert_same_sd(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_sd(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert same_bits(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(8, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


def test_model_and_optimizer_round_trip(root):
    model, opt = trained(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 2}
    stats = casckpt.save(sd, root, "step-2", chunk_size=CHUNK)
    assert stats.new_chunks > 0 and stats.logical_bytes > 0

    model2, opt2 = trained(1)
    sd2 = {"model": model2.state_dict(), "optim": opt2.state_dict(), "step": 0}
    assert casckpt.load(sd2, root, "step-2") == "step-2"
    model2.load_state_dict(sd2["model"])
    opt2.load_state_dict(sd2["optim"])
    assert_same_sd(model.state_dict(), model2.state_dict())
    assert_same_sd(opt.state_dict()["state"], opt2.state_dict()["state"])
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]
    assert sd2["step"] == 2


def test_second_save_of_same_state_writes_no_chunk_file(root):
    model, opt = trained(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 2}
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    before = chunk_files(root)
    stats = casckpt.save(sd, root, "b")
    assert chunk_files(root) == before
    assert (stats.new_chunks, stats.bytes_written) == (0, 0)
    assert stats.chunks > 0


def test_default_planner_still_dedups(root):
    model, _ = trained(0)
    sd = {"model": model.state_dict()}
    w = casckpt.CasWriter(root, chunk_size=CHUNK)
    dcp.save(sd, checkpoint_id="a", storage_writer=w)
    before = chunk_files(root)
    dcp.save(sd, checkpoint_id="b", storage_writer=w)
    assert w.stats.new_chunks == 0 and chunk_files(root) == before
    sd2 = zeros_like_sd(sd)
    dcp.load(sd2, storage_reader=casckpt.CasReader(root))  # "latest" by default
    assert_same_sd(sd, sd2)


def test_identical_tensors_under_two_fqns_are_stored_once(root):
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    sd = {"embed": w, "lm_head": w, "copy": w.clone(), "m1": torch.zeros(64, 64), "m2": torch.zeros(64, 64)}
    stats = casckpt.save(sd, root, "tied", chunk_size=CHUNK)
    m = casckpt.Store.open(root).manifest("tied")
    assert len(m.items["embed"].chunks) == 1  # 16 KiB rows * 64 = one chunk
    assert stats.new_chunks == len(m.digests()) == 2  # w and zeros
    assert len(chunk_files(root)) == 2


def test_every_dtype_round_trips_bit_exactly(root):
    g = torch.Generator().manual_seed(3)
    names = ["float32", "float16", "float64", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
             "float8_e5m2fnuz", "float8_e8m0fnu", "int8", "int16", "int32", "int64", "uint8", "uint16",
             "uint32", "uint64", "bool", "complex64", "complex128", "complex32", "float4_e2m1fn_x2"]
    sd = {}
    for n in names:
        dt = getattr(torch, n)
        if dt == torch.bool:
            sd[n] = torch.randint(0, 2, (37, 5), generator=g).bool()
            continue
        size = torch.empty(0, dtype=dt).element_size()
        raw = torch.randint(0, 256, (37 * 5 * size,), dtype=torch.uint8, generator=g)
        sd[n] = raw.view(dt).reshape(37, 5)  # every bit pattern, NaNs included
    casckpt.save(sd, root, "dtypes", chunk_size=CHUNK)
    got = {n: torch.empty_like(t) for n, t in sd.items()}
    casckpt.load(got, root, "dtypes")
    for n in names:
        assert same_bits(sd[n], got[n]), n
    items = casckpt.Store.open(root).manifest("dtypes").items
    assert {n: items[n].dtype for n in names} == {n: n for n in names}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantized_tensors_are_refused_naming_the_dtype(root):
    q = torch.quantize_per_tensor(torch.randn(16, 4), scale=0.1, zero_point=3, dtype=torch.quint8)
    with pytest.raises(casckpt.CasckptError, match=r"quantized tensors \(torch.quint8\)"):
        casckpt.save({"q": q}, root, "q", chunk_size=CHUNK)
    assert casckpt.Store.open(root).snapshot_names() == []


def test_views_and_odd_shapes(root):
    torch.manual_seed(0)
    base = torch.randn(40, 30)
    c = torch.randn(8, 8, dtype=torch.complex64)
    sd = {"t": base.t(), "strided": base[::3, 1::2], "scalar": torch.tensor(3.5), "empty": torch.empty(0, 4),
          "expanded": torch.randn(1, 7).expand(5, 7), "conj": c.conj(), "neg": torch.randn(3, 3).neg()._neg_view()}
    casckpt.save(sd, root, "views", chunk_size=CHUNK)
    got = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}
    casckpt.load(got, root, "views")
    for k, v in sd.items():
        assert same_bits(v.resolve_conj().resolve_neg().contiguous(), got[k]), k


class Custom:
    def __init__(self, x):
        self.x = x


def test_bytes_items_round_trip_dedup_and_load_safely(root):
    sd = {"step": 12, "sched": {"last_epoch": 3, "lr": [0.1, 0.01]}, "name": "run-7",
          "blob": b"\x00" * 50_000, "custom": Custom(5)}
    s1 = casckpt.save(sd, root, "a", chunk_size=CHUNK)
    s2 = casckpt.save(sd, root, "b")
    assert s1.new_chunks > 0 and s2.new_chunks == 0
    items = casckpt.Store.open(root).manifest("a").items
    assert items["step"].dtype == "bytes" and len(items["step"].shape) == 1
    assert len(items["blob"].chunks) > 1  # chunked like tensors

    got = {"step": 0, "sched": {"last_epoch": 0, "lr": [0.0, 0.0]}, "name": "", "blob": b""}
    casckpt.load(got, root, "a", allow_partial_load=True)
    assert {k: sd[k] for k in got} == got
    with pytest.raises(casckpt.CheckpointFailedError, match="weights_only|Unpickl"):
        casckpt.load({"custom": None}, root, "a", allow_partial_load=True)
    out = {"custom": None}
    casckpt.load(out, root, "a", allow_pickle=True, allow_partial_load=True)
    assert isinstance(out["custom"], Custom) and out["custom"].x == 5


def test_latest_and_snapshot_selection(root):
    for i in range(3):
        casckpt.save({"x": torch.full((4,), float(i))}, root, f"s{i}", chunk_size=CHUNK)
    got = {"x": torch.zeros(4)}
    assert casckpt.load(got, root) == "s2" and got["x"][0] == 2
    dcp.load(got, checkpoint_id="s0", storage_reader=casckpt.CasReader(root))
    assert got["x"][0] == 0
    dcp.load(got, storage_reader=casckpt.CasReader(root, snapshot="s1"))
    assert got["x"][0] == 1
    assert casckpt.Store.open(root).resolve("latest") == "s2"


def test_async_save(root):
    model, opt = trained(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict()}
    w = casckpt.CasWriter(root, chunk_size=CHUNK)
    fut = dcp.async_save(sd, checkpoint_id="async-1", storage_writer=w, planner=casckpt.DedupSavePlanner())
    fut.result(timeout=60)
    assert w.stats is not None and w.stats.snapshot == "async-1"
    got = zeros_like_sd({"model": model.state_dict()})
    casckpt.load(got, root, "async-1", allow_partial_load=True)
    assert_same_sd({"model": model.state_dict()}, got)


def test_manifests_are_json_and_loading_never_unpickles(root, monkeypatch):
    model, opt = trained(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    for f in (root / "snapshots").glob("*.json"):
        doc = json.loads(f.read_text())
        assert doc["meta"]["dcp"]["state_dict_metadata"]

    def refuse(*a, **k):
        raise AssertionError("store data was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    got = zeros_like_sd({"model": model.state_dict(), "optim": opt.state_dict(), "step": 0})
    casckpt.load(got, root, "a")
    assert got["step"] == 3
    assert_same_sd({"model": model.state_dict()}, {"model": got["model"]})


def test_typed_errors(root):
    sd = {"w": torch.randn(64, 64)}
    with pytest.raises(casckpt.InvalidNameError):
        casckpt.save(sd, root, "../escape")
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    with pytest.raises(casckpt.SnapshotExistsError):
        casckpt.save(sd, root, "a")
    with pytest.raises(casckpt.SnapshotNotFoundError):
        casckpt.load(sd, root, "missing")
    with pytest.raises(casckpt.StoreNotFoundError):
        casckpt.load(sd, root.parent / "nowhere")


def test_corrupt_chunk_is_a_typed_error(root):
    sd = {"w": torch.randn(64, 64)}
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    (f,) = chunk_files(root)
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(casckpt.CorruptChunkError):
        casckpt.load({"w": torch.zeros(64, 64)}, root, "a")


def test_dedup_planner_reuses_planning_hashes(root, monkeypatch):
    sd = {"w": torch.randn(256, 64)}
    casckpt.save(sd, root, "a", chunk_size=CHUNK)
    store = casckpt.Store.open(root, delta=False)  # a delta's base is verified when read back: hashed
    hashed, real = [], casckpt.digest.blake3  # the hashing library itself, counted
    monkeypatch.setattr(casckpt.digest, "blake3", type("Counting", (), {
        "blake3": staticmethod(lambda data: (hashed.append(1), real.blake3(data))[1])}))
    stats = casckpt.save({"w": sd["w"] + 1}, store, "b")
    assert stats.new_chunks == len(store.manifest("b").items["w"].chunks) == 4
    assert len(hashed) == 4  # each chunk hashed once, while planning; write_data did not re-hash


def test_item_keys():
    assert item_key("a.b", [0, 0], [4, 4], [4, 4]) == "a.b"
    assert item_key("a.b", [4, 0], [4, 4], [8, 4]) == "a.b@4,0"
    assert item_key("x@y", [0], [3], [3]) == "x@y@0"
    for k, fqn in [("a.b", "a.b"), ("a.b@4,0", "a.b"), ("x@y@0", "x@y"), ("s@", "s")]:
        assert key_fqn(k) == fqn


def test_region_selects_only_overlapping_chunks():
    # 64 rows of 1 KiB in 16-row chunks: rows 20..35 touch chunks 1 and 2 only.
    digest = casckpt.digest.digest_of(b"x")
    item = Item("float32", (64, 256), tuple(ChunkRef(digest, 16 << 10) for _ in range(4)))
    ri = ReadItem(LoadItemType.TENSOR, MetadataIndex("w"), torch.Size([0, 0]), MetadataIndex("w", [0, 0]),
                  torch.Size([20, 8]), torch.Size([16, 100]))
    r = _Region.plan(ri, "w", item)
    assert r.select == [1, 2] and r.base == 16 << 10
    cols = ReadItem(LoadItemType.TENSOR, MetadataIndex("w"), torch.Size([0, 0]), MetadataIndex("w", [0, 0]),
                    torch.Size([0, 128]), torch.Size([64, 128]))
    assert _Region.plan(cols, "w", item).select == [0, 1, 2, 3]


def test_cuda_tensors(root):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sd = {"w": torch.randn(300, 300, device="cuda"), "h": torch.randn(10, device="cuda").half()}
    casckpt.save(sd, root, "gpu", chunk_size=CHUNK)
    got = {k: torch.zeros_like(v) for k, v in sd.items()}
    casckpt.load(got, root, "gpu")
    for k in sd:
        assert same_bits(sd[k].cpu(), got[k].cpu()), k


def test_failed_save_releases_the_store_lock(root, monkeypatch):
    from casckpt.lock import EXCLUSIVE

    casckpt.save({"w": torch.randn(8, 8)}, root, "a", chunk_size=CHUNK)
    bad = {"w": torch.randn(8, 8), "sparse": torch.eye(4).to_sparse()}
    with pytest.raises(casckpt.CasckptError):
        casckpt.save(bad, root, "b")
    store = casckpt.Store.open(root)
    with store.lock(EXCLUSIVE, timeout=0):  # gc could run: no save holds the shared lock
        pass

    w = casckpt.CasWriter(root)  # used directly, kept alive: the failure must not leave the lock
    with pytest.raises(CheckpointException) as info:  # DCP's own error, raised by dcp.save
        dcp.save(bad, checkpoint_id="c", storage_writer=w, planner=casckpt.DedupSavePlanner())
    assert isinstance(info.value.failures[0][0], casckpt.CasckptError)
    with store.lock(EXCLUSIVE, timeout=0):
        pass
    # a failure inside the writer's own step: the disk fills while chunk files are written

    w2 = casckpt.CasWriter(root)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(casckpt.fsutil, "write_parts", disk_full)  # a fault at the I/O boundary
    with pytest.raises(CheckpointException) as info:
        dcp.save({"w": torch.randn(8, 8)}, checkpoint_id="d", storage_writer=w2,
                 planner=casckpt.DedupSavePlanner())
    assert isinstance(info.value.failures[0][0], casckpt.StoreIOError)
    assert info.value.failures[0][0].errno == errno.ENOSPC
    with store.lock(EXCLUSIVE, timeout=0):
        pass
    assert not store.exists("b") and not store.exists("c") and not store.exists("d")


def test_index_elsewhere_and_sync_files_off(root, tmp_path):
    # A store on a network file system keeps its LMDB index on local disk; sync_files=False
    # (DCP's switch) skips fsync. Both must still save, dedup and load bit-exactly.
    model, _ = trained(0)
    sd = {"model": model.state_dict()}
    local = tmp_path / "local-index"
    w = casckpt.CasWriter(root, chunk_size=CHUNK, sync_files=False, index_path=local)
    dcp.save(sd, checkpoint_id="a", storage_writer=w, planner=casckpt.DedupSavePlanner())
    assert (local / "data.mdb").exists() and not (root / "index").exists()
    # NOTE: sync_files=False again: a syncing save would verify and fsync the unsynced chunks
    # it reuses (tests/test_sync_off.py), counting them as new
    again = casckpt.CasWriter(root, index_path=local, sync_files=False)
    dcp.save(sd, checkpoint_id="b", storage_writer=again, planner=casckpt.DedupSavePlanner())
    assert again.stats.new_chunks == 0 and again.stats.chunks > 0
    out = zeros_like_sd(sd)
    dcp.load(out, storage_reader=casckpt.CasReader(root, snapshot="b"))
    assert_same_sd(sd["model"], out["model"])


def test_ranks_that_resolve_latest_differently_are_refused(root):
    # Each rank resolves "latest" in read_metadata; a commit in between must not mix snapshots.
    from torch.distributed.checkpoint.planner import LoadPlan

    casckpt.save({"w": torch.zeros(4)}, root, "step-1")
    rank0 = casckpt.CasReader(root)
    rank0.read_metadata()
    casckpt.save({"w": torch.ones(4)}, root, "step-2")
    rank1 = casckpt.CasReader(root)
    rank1.read_metadata()
    plans = [rank0.prepare_local_plan(LoadPlan([])), rank1.prepare_local_plan(LoadPlan([]))]
    with pytest.raises(casckpt.CasckptError, match="different snapshots"):
        rank0.prepare_global_plan(plans)
    assert rank0.prepare_global_plan(plans[:1]) == plans[:1]


def test_loading_latest_parses_its_manifest_once(root, monkeypatch):
    casckpt.save({"w": torch.randn(64, 64)}, root, "step-1")
    read, real = [], casckpt.fsutil.read_file  # the file reader: every manifest read goes through it

    def counting(path):
        if path.parent.name == "snapshots":
            read.append(path.name)
        return real(path)
    monkeypatch.setattr(casckpt.fsutil, "read_file", counting)
    out = {"w": torch.zeros(64, 64)}
    assert casckpt.load(out, root) == "step-1"
    assert read == ["step-1.json"]  # resolved, checked and loaded from one read (and one parse)
