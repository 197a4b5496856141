"""The torch-free store API: round trips, dedup, verified reads, names, reopen, format versions."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import casckpt
from casckpt import chunking, manifest
from conftest import chunk_files

NUMERIC = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
           np.float16, np.float32, np.float64, np.complex64, np.complex128]


def assert_same(a, b):
    a = np.asarray(a)
    assert b.dtype == a.dtype.newbyteorder("<") and b.shape == a.shape
    assert a.tobytes() == np.ascontiguousarray(b).astype(a.dtype).tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(st.sampled_from(NUMERIC), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)))
def test_round_trip_any_dtype_and_shape(store, arr):
    name = f"s{len(store.snapshot_names())}"
    store.put_arrays(name, {"x": arr})
    assert_same(arr, store.get_arrays(name)["x"])


@pytest.mark.parametrize("shape", [(), (0,), (0, 7), (3, 0), (1,), (5000,), (4, 3), (3, 40000), (70000, 2)])
def test_round_trip_shapes(store, rng, shape):
    arr = rng.standard_normal(shape).astype(np.float32)
    store.put_arrays("s", {"x": arr})
    assert_same(arr, store.get_arrays("s")["x"])


def test_round_trip_non_contiguous_and_big_endian(store, rng):
    base = rng.integers(0, 1000, size=(64, 64)).astype(np.int64)
    arrays = {"t": base.T, "strided": base[::3, 1::2], "be": base.astype(">i8"), "nan": np.array([np.nan, -0.0, np.inf])}
    store.put_arrays("s", arrays)
    out = store.get_arrays("s")
    for k, v in arrays.items():
        assert np.array_equal(np.asarray(v), out[k], equal_nan=True), k
        assert out[k].flags.c_contiguous


def test_unsupported_dtype_is_a_type_error(store):
    with pytest.raises(TypeError):
        store.put_arrays("s", {"x": np.array(["a"])})
    assert store.snapshot_names() == []


def test_identical_second_put_writes_no_chunk_file(store, rng):
    arrays = {"w": rng.standard_normal((100, 300)).astype(np.float32), "b": np.arange(999)}
    first = store.put_arrays("one", arrays)
    files = chunk_files(store.root)
    second = store.put_arrays("two", arrays)
    assert first.new_chunks == len(files) > 2
    assert (second.new_chunks, second.bytes_written) == (0, 0)
    assert chunk_files(store.root) == files


def test_identical_items_in_one_snapshot_store_once(store, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    stats = store.put_arrays("s", {"a": w, "b": w.copy(), "zeros": np.zeros((64, 64), np.float32)})
    assert stats.chunks > stats.new_chunks
    assert len(chunk_files(store.root)) == stats.new_chunks


def test_row_aligned_chunks_localise_updates(store, rng):
    table = rng.standard_normal((4096, 64)).astype(np.float32)  # 256-byte rows, 64 rows a chunk
    store.put_arrays("a", {"emb": table})
    table[[5, 3000]] += 1.0  # two rows in two different chunks
    stats = store.put_arrays("b", {"emb": table})
    assert stats.new_chunks == 2


@pytest.mark.parametrize("victim", ["first", "last"])
def test_flipped_byte_in_any_chunk_is_detected(store, rng, victim):
    store.put_arrays("s", {"w": rng.standard_normal((200, 100)).astype(np.float32)})
    files = chunk_files(store.root)
    path = files[0] if victim == "first" else files[-1]
    data = bytearray(path.read_bytes())
    for pos in (len(data) // 2, len(data) - 1, 20):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        path.write_bytes(flipped)
        with pytest.raises(casckpt.CorruptChunkError) as err:
            store.get_arrays("s")
        assert path.name in str(err.value) and "'w'" in str(err.value) and "snapshot 's'" in str(err.value)
        assert err.value.digest == path.name
    path.write_bytes(data)
    store.get_arrays("s")


def test_deleted_chunk_is_a_missing_chunk_error(store, rng):
    store.put_arrays("s", {"w": rng.standard_normal((200, 100)).astype(np.float32)})
    path = chunk_files(store.root)[3]
    path.unlink()
    with pytest.raises(casckpt.MissingChunkError) as err:
        store.get_arrays("s")
    assert isinstance(err.value, FileNotFoundError) and err.value.digest == path.name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "/abs", "a\x00b", "tab\tname", ".hidden", "a..b",
                                  "x" * 201, "latest", "snap\n", "ü", 5])
def test_invalid_names_are_refused_before_writing(store, name):
    with pytest.raises(casckpt.InvalidNameError):
        store.put_arrays(name, {"x": np.arange(3)})
    assert chunk_files(store.root) == [] and os.listdir(store.root / "snapshots") == []


def test_snapshot_names_must_be_unique(store):
    store.put_arrays("s", {"x": np.arange(3)})
    with pytest.raises(casckpt.SnapshotExistsError):
        store.put_arrays("s", {"x": np.arange(4)})
    store.put_arrays("s", {"x": np.arange(4)}, overwrite=True)
    assert np.array_equal(store.get_arrays("s")["x"], np.arange(4))


def test_snapshots_oldest_first_latest_and_delete(store):
    for n in ("b", "a", "c"):
        store.put_arrays(n, {"x": np.array([ord(n)])})
    assert [s.name for s in store.snapshots()] == ["b", "a", "c"]
    assert store.get_arrays("latest")["x"][0] == ord("c")
    store.delete("c")
    assert store.resolve("latest") == "a"
    with pytest.raises(casckpt.SnapshotNotFoundError):
        store.get_arrays("c")
    with pytest.raises(KeyError):
        store.delete("c")


def test_reopen_after_close_keeps_everything(tmp_path, rng):
    arr = rng.standard_normal((50, 50))
    with casckpt.Store.open(tmp_path / "s", create=True, chunk_size=8192, level=3) as s:
        s.put_arrays("one", {"a": arr})
    with casckpt.Store.open(tmp_path / "s") as s:
        assert s.config.chunk_size == 8192 and s.config.codec.level == 3
        assert_same(arr, s.get_arrays("one")["a"])
        assert s.put_arrays("two", {"a": arr}).new_chunks == 0


def test_open_non_store_without_create(tmp_path):
    with pytest.raises(casckpt.StoreNotFoundError):
        casckpt.Store.open(tmp_path)
    with pytest.raises(casckpt.CasckptError):
        casckpt.Store.open(tmp_path / "missing")


def test_newer_format_is_refused(tmp_path):
    casckpt.Store.open(tmp_path / "s", create=True).close()
    cfg = tmp_path / "s" / "casckpt.json"
    doc = json.loads(cfg.read_text())
    doc["version"] = 99
    cfg.write_text(json.dumps(doc))
    with pytest.raises(casckpt.UnsupportedFormatError, match="upgrade"):
        casckpt.Store.open(tmp_path / "s")


def test_newer_manifest_is_refused(store):
    store.put_arrays("s", {"x": np.arange(3)})
    path = store.root / "snapshots" / "s.json"
    doc = json.loads(path.read_text())
    doc["version"] = manifest.VERSION + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(casckpt.UnsupportedFormatError):
        store.get_arrays("s")


def test_manifest_is_plain_json_and_loading_needs_no_index(store, rng):
    arr = rng.standard_normal((30, 30))
    store.put_arrays("s", {"a": arr})
    doc = json.loads((store.root / "snapshots" / "s.json").read_text())
    assert doc["format"] == "casckpt.manifest" and doc["items"]["a"]["dtype"] == "float64"
    store.close()
    import shutil
    shutil.rmtree(store.root / "index")
    os.chmod(store.root, 0o555)  # nothing may be written while loading
    try:
        with casckpt.Store.open(store.root) as s:
            assert_same(arr, s.get_arrays("s")["a"])
    finally:
        os.chmod(store.root, 0o755)


def test_chunk_size_is_fixed_at_creation(tmp_path):
    casckpt.Store.open(tmp_path / "s", create=True, chunk_size=8192).close()
    with pytest.raises(casckpt.CasckptError):
        casckpt.Store.open(tmp_path / "s", chunk_size=16384)
    with pytest.raises(casckpt.CasckptError):
        casckpt.Store.open(tmp_path / "t", create=True, chunk_size=1000)


def test_level_zero_stores_raw(tmp_path, rng):
    with casckpt.Store.open(tmp_path / "s", create=True, level=0) as s:
        z = np.zeros(100_000, np.float32)
        stats = s.put_arrays("s", {"z": z})
        assert stats.bytes_written >= z.nbytes
        assert_same(z, s.get_arrays("s")["z"])


def test_reindex_rebuilds_counts(store, rng):
    store.put_arrays("a", {"w": rng.standard_normal((100, 100))})
    store.put_arrays("b", {"w": rng.standard_normal((100, 100))})
    before = store.index.totals()
    result = store.reindex()
    assert result["snapshots"] == 2 and store.index.totals() == before
    assert [s.name for s in store.snapshots()] == ["a", "b"]


def test_default_chunk_size_is_documented():
    fmt = open(os.path.join(os.path.dirname(__file__), "..", "docs", "FORMAT.md")).read()
    assert f"{chunking.DEFAULT_CHUNK_SIZE >> 20} MiB" in fmt


def test_two_handles_on_one_store_in_one_process(tmp_path):
    # LMDB refuses a second environment on the same files in one process; handles must share it.
    with casckpt.Store.open(tmp_path / "s", create=True) as a, casckpt.Store.open(tmp_path / "s") as b:
        a.put_arrays("one", {"x": np.arange(5)})
        assert b.put_arrays("two", {"x": np.arange(5)}).new_chunks == 0
        assert [s.name for s in a.snapshots()] == [s.name for s in b.snapshots()] == ["one", "two"]
    with casckpt.Store.open(tmp_path / "s") as c:
        assert c.stored(d for d in c.manifest("one").digests()) == c.manifest("one").digests()


def test_reindex_never_vouches_for_a_torn_orphan(store, rng):
    from casckpt import chunks as chunkfmt
    from casckpt.digest import digest_of

    arr = rng.standard_normal(1000)
    store.put_arrays("a", {"x": np.arange(10)})
    # A power loss left a file under the name of a chunk no snapshot references yet, torn.
    digest = digest_of(memoryview(arr.view(np.uint8)))
    path = store.chunks.path(digest)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(chunkfmt.HEADER.pack(chunkfmt.MAGIC, 1, 0, 0, arr.nbytes) + bytes(arr.nbytes))
    assert store.reindex()["orphan_chunks"] == 1
    assert store.stored([digest]) == set()
    store.put_arrays("b", {"x": arr})  # must rewrite the torn file, not trust it
    assert np.array_equal(store.get_arrays("b")["x"], arr)


def test_a_lost_chunk_file_is_written_again_not_trusted_from_the_index(store, rng):
    arr = rng.standard_normal((300, 100))
    store.put_arrays("a", {"w": arr})
    lost = chunk_files(store.root)[1]
    lost.unlink()  # the index still lists it
    stats = store.put_arrays("b", {"w": arr})
    assert stats.new_chunks == 1 and lost.exists()
    assert_same(arr, store.get_arrays("b")["w"])
    assert_same(arr, store.get_arrays("a")["w"])  # healed as a side effect


def test_reindex_removes_only_lmdb_files_from_a_shared_index_folder(tmp_path, rng):
    shared = tmp_path / "local"
    shared.mkdir()
    (shared / "precious.txt").write_text("keep me")
    (shared / "sub").mkdir()
    with casckpt.Store.open(tmp_path / "s", create=True, index_path=shared) as s:
        s.put_arrays("a", {"w": rng.standard_normal(100)})
        assert s.reindex()["chunks"] == 1
    assert (shared / "precious.txt").read_text() == "keep me" and (shared / "sub").is_dir()


def test_taking_the_lock_exclusively_while_holding_it_fails_instead_of_hanging(store):
    from casckpt.lock import SHARED

    store.put_arrays("a", {"x": np.arange(3)})
    with store.lock(SHARED):
        with pytest.raises(casckpt.CasckptError, match="wait forever"):
            store.delete("a")
    store.delete("a")  # released: works
    assert store.snapshot_names() == []


def test_an_index_belongs_to_one_store(tmp_path, rng):
    shared = tmp_path / "local-index"
    with casckpt.Store.open(tmp_path / "a", create=True, index_path=shared) as a:
        a.put_arrays("s", {"w": rng.standard_normal(10)})
    # a second store pointed at the same index must not reuse A's "safely stored" entries
    with pytest.raises(casckpt.IndexDamagedError, match="another store"):
        casckpt.Store.open(tmp_path / "b", create=True, index_path=shared)
