"""Delta chunks: a chunk stored as XOR against the chunk at the same place in the previous
snapshot. Real stores on disk; damage is done to the files themselves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import casckpt
from casckpt import codec, config, delta
from casckpt.digest import digest_of
from casckpt.gc import gc
from casckpt.usage import du, ls
from casckpt.verify import verify
from storekit import assert_same, base_of, chunk_names, new_store, open_store, referenced


def steps(n: int, *, lr: float = 1e-4, size: int = 8 * 1024) -> list[dict[str, np.ndarray]]:
    """``n`` training-like states: every weight moves a little each step (deltas pay)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(size) * 0.02).astype(np.float32)
    out = []
    for _ in range(n):
        w = w + (rng.standard_normal(size) * lr).astype(np.float32)
        out.append({"w": w.copy(), "ids": np.arange(size // 4, dtype=np.int64)})
    return out


def chunk_file(root, hexdigest: str):
    return root / "chunks" / hexdigest[:2] / hexdigest


def deltas(store) -> dict:
    return {d: i for d, i in store.index.chunks() if i.base is not None}


@pytest.fixture(autouse=True)
def no_cache():
    """Every test reads its bases back from the store unless it says otherwise."""
    delta.CACHE.clear()
    yield
    delta.CACHE.clear()


def saved(root, states, **kw):
    s = new_store(root, **kw)
    for i, st in enumerate(states):
        s.put_arrays(f"s{i}", st)
    return s


def test_small_changes_are_stored_as_deltas_and_load_bit_exactly(tmp_path):
    root = tmp_path / "s"
    states = steps(3)
    with saved(root, states) as s:
        d = deltas(s)
        w = s.manifest("s1").items["w"].chunks
        assert {c.digest for c in w} <= set(d) and len(d) == 2 * len(w)  # s1 and s2's w chunks
        assert all(i.depth == 1 for i in d.values())
        full = sum(i.stored_len for dg, i in s.index.chunks() if dg in {c.digest for c in s.manifest("s0").items["w"].chunks})
        assert sum(d[c.digest].stored_len for c in w) < 0.85 * full
        delta.CACHE.clear()
        for i, st in enumerate(states):
            assert_same(st, s.get_arrays(f"s{i}"))
        # names stay the BLAKE3 of the raw bytes
        raw = states[1]["w"].view(np.uint8)
        assert w[0].digest == digest_of(raw[:w[0].length])
        assert base_of(root, w[0].digest.hex) == s.manifest("s0").items["w"].chunks[0].digest.hex


def test_delta_off_stores_every_chunk_whole(tmp_path):
    with saved(tmp_path / "s", steps(3), delta=False) as s:
        assert not deltas(s)
        assert json.loads((s.root / config.CONFIG).read_text())["delta"]["enabled"] is False
    with open_store(tmp_path / "s", delta=True) as s:  # a session override
        s.put_arrays("s9", steps(4)[3])
        assert deltas(s)


def test_random_changes_are_stored_whole(tmp_path):
    rng = np.random.default_rng(1)
    with new_store(tmp_path / "s") as s:
        for i in range(2):
            s.put_arrays(f"s{i}", {"w": rng.standard_normal(8192).astype(np.float32)})
        assert not deltas(s)


@pytest.mark.parametrize("max_depth", [1, 3])
def test_chains_never_grow_past_max_depth(tmp_path, max_depth):
    states = steps(7)
    with saved(tmp_path / "s", states, max_depth=max_depth) as s:
        depths = {i.depth for i in deltas(s).values()}
        assert max(depths) == max_depth and min(depths) == 1
        for i, st in enumerate(states):
            assert_same(st, s.get_arrays(f"s{i}"))


def test_gc_keeps_the_bases_kept_snapshots_need(tmp_path):
    root = tmp_path / "s"
    states = steps(4)
    with saved(root, states, max_depth=3) as s:
        plan = gc(s, keep_last=1)  # s3 is a chain down to s0's chunks
        assert plan.drop == ("s0", "s1", "s2")
        assert_same(states[3], s.get_arrays("s3"))
        assert chunk_names(root) == referenced(s) > {d.hex for d in s.manifest("s3").digests()}
        assert verify(s).ok and verify(s).orphans == 0
        s.delete("s3")
        gc(s)
        assert chunk_names(root) == set()


def test_ls_counts_bases_as_shared(tmp_path):
    with saved(tmp_path / "s", steps(2)) as s:
        rows = {r.name: r for r in ls(s)}
        # s0's w chunks are the bases of s1's: deleting s0 alone would free nothing of w
        assert rows["s0"].unique_bytes == 0
        d = deltas(s)
        assert rows["s1"].unique_bytes == sum(i.stored_len for i in d.values())
        files = [p for p in (s.root / "chunks").glob("*/*")]
        assert du(s).stored_bytes == sum(p.stat().st_size for p in files) and du(s).chunks == len(files)


def test_max_depth_out_of_range_is_refused(tmp_path):
    for bad in (0, delta.MAX_DEPTH_LIMIT + 1):
        with pytest.raises(casckpt.CasckptError):
            new_store(tmp_path / "s", max_depth=bad)


def test_reindex_rebuilds_base_links_from_headers(tmp_path):
    states = steps(3)
    with saved(tmp_path / "s", states) as s:
        before = deltas(s)
        s.delete("s0")  # s0's chunks are only bases now
        r = s.reindex()
        assert deltas(s) == before and r["orphan_chunks"] == 0
        gc(s)
        for i in (1, 2):
            assert_same(states[i], s.get_arrays(f"s{i}"))


def test_version_1_store_is_read_and_upgraded_at_first_write(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as s:
        s.put_arrays("s0", steps(1)[0])
    doc = json.loads((root / config.CONFIG).read_text())
    doc["version"] = 1
    del doc["delta"]  # as version 1 wrote it
    (root / config.CONFIG).write_text(json.dumps(doc))
    with open_store(root) as s:
        s.index._write(lambda txn: txn.put(b"version", b"1", db=s.index._meta))  # a version 1 index
    with open_store(root) as s:  # reading changes nothing
        assert_same(steps(1)[0], s.get_arrays("s0"))
        assert json.loads((root / config.CONFIG).read_text())["version"] == 1
        s.put_arrays("s1", steps(2)[1])
        assert deltas(s)
    assert json.loads((root / config.CONFIG).read_text())["version"] == config.VERSION == 5
    # an older casckpt (which reads up to version 1) now refuses the store instead of misreading
    doc = json.loads((root / config.CONFIG).read_text())
    with pytest.raises(casckpt.UnsupportedFormatError):
        old = config.VERSION
        try:
            config.VERSION = 1
            config.StoreConfig.from_bytes(json.dumps(doc).encode(), "casckpt.json")
        finally:
            config.VERSION = old


def _base_of_s1(s) -> tuple[str, str]:
    c = s.manifest("s1").items["w"].chunks[0].digest.hex
    return c, base_of(s.root, c)


def test_missing_base_is_a_typed_error_naming_snapshot_item_and_base(tmp_path):
    with saved(tmp_path / "s", steps(2)) as s:
        chunk, base = _base_of_s1(s)
        chunk_file(s.root, base).unlink()
        with pytest.raises(casckpt.MissingChunkError) as err:
            s.get_arrays("s1")
        assert err.value.base == base and err.value.digest == chunk and err.value.item == "w"
        assert "'s1'" in str(err.value) and base in str(err.value)
        for quick in (True, False):
            r = verify(s, quick=quick)
            assert not r.ok and set(r.broken_snapshots) == {"s0", "s1"}
            p = next(p for p in r.problems if p.digest == chunk)
            assert p.kind == "missing" and p.base == base and p.refs == (("s1", "w"),)


def test_corrupt_base_is_a_typed_error_and_never_wrong_bytes(tmp_path):
    states = steps(2)
    with saved(tmp_path / "s", states) as s:
        chunk, base = _base_of_s1(s)
        path = chunk_file(s.root, base)
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x40  # still decodes, to the wrong bytes
        path.write_bytes(bytes(data))
        with pytest.raises(casckpt.CorruptChunkError) as err:
            s.get_arrays("s1")
        assert err.value.base == base and "'s1'" in str(err.value)
        r = verify(s, ["s1"])
        assert [(p.digest, p.kind, p.base, p.snapshots) for p in r.problems if p.digest == chunk] == \
            [(chunk, "corrupt", base, ["s1"])]
        # the next save of the same data heals the store: the chunk is written again
        s.put_arrays("again", states[1])
        assert_same(states[1], s.get_arrays("again"))


def test_a_base_swapped_for_another_chunk_is_caught(tmp_path):
    """Any other valid chunk of the right length in the base's place: the delta decodes to
    bytes that do not hash to its name, so it is refused."""
    with saved(tmp_path / "s", steps(2)) as s:
        chunk, base = _base_of_s1(s)
        other = s.manifest("s0").items["w"].chunks[1].digest.hex
        shutil.copyfile(chunk_file(s.root, other), chunk_file(s.root, base))
        with pytest.raises(casckpt.CorruptChunkError):
            s.get_arrays("s1")


def test_a_cycle_of_bases_is_refused(tmp_path):
    with saved(tmp_path / "s", steps(2)) as s:
        chunk, base = _base_of_s1(s)
        path = chunk_file(s.root, chunk)
        head = bytearray(path.read_bytes())
        # make the base a delta of the chunk: a loop of two links
        b = chunk_file(s.root, base)
        body = b.read_bytes()[16:]
        b.write_bytes(bytes(head[:16]) + bytes.fromhex(chunk) + body)
        with pytest.raises(casckpt.CorruptChunkError):
            s.get_arrays("s1")
        assert not verify(s).ok


def test_float_deltas_are_zigzag_differences_and_other_bytes_xor(tmp_path):
    """Floats moved by a few units in the last place: the difference of their bit patterns (op =
    element size) codes smaller than their XOR; integers keep XOR (op 0). The header's op is what
    the reader follows: a wrong or impossible one is a CorruptChunkError, never wrong bytes."""
    states = steps(2)
    states[1]["ids"] = states[0]["ids"] + 1
    with saved(tmp_path / "s", states) as s:
        ops = {}
        for name in ("w", "ids"):
            d = s.manifest("s1").items[name].chunks[0].digest
            ops[name] = s.chunks.read_payload(d)[5]
            assert s.index.get(d).base is not None
        assert ops == {"w": 4, "ids": 0}
        kind, _, payload, *_ = s.chunks.read_payload(s.manifest("s1").items["w"].chunks[0].digest)
        assert (kind, bytes(payload[:2])) == (codec.BGX, bytes([4, 0]))  # no sign bit to move
        chunk, _ = _base_of_s1(s)
        path = chunk_file(s.root, chunk)
        good = path.read_bytes()
        for op in (3, 8, 2):  # no such op; then the wrong widths, which only the digest catches
            bad = bytearray(good)
            bad[7] = op
            path.write_bytes(bytes(bad))
            delta.CACHE.clear()
            with pytest.raises(casckpt.CorruptChunkError):
                s.get_arrays("s1")
        path.write_bytes(good)
        assert_same(states[1], s.get_arrays("s1"))


def test_saves_read_bases_from_the_cache_or_the_store_alike(tmp_path):
    states = steps(3)
    a, b = tmp_path / "a", tmp_path / "b"
    with saved(a, states):
        pass
    delta.CACHE.budget = 0
    try:
        with saved(b, states):
            pass
    finally:
        delta.CACHE.budget = delta.DEFAULT_CACHE_BYTES
    assert {p.name: p.read_bytes() for p in (a / "chunks").glob("*/*")} == \
        {p.name: p.read_bytes() for p in (b / "chunks").glob("*/*")}


def test_after_a_delta_that_did_not_pay_the_next_ones_are_tried_only_every_RETRY_saves(tmp_path):
    """Like Adam's first moment: new noise every step. Skipping the attempt saves a base read,
    an XOR and the samples per chunk; a retry every RETRY saves notices when deltas pay again."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(4096).astype(np.float32)
    retry = delta.BaseCache.RETRY
    with new_store(tmp_path / "s") as s:
        s.put_arrays("s0", {"w": w})
        s.put_arrays("s1", {"w": rng.standard_normal(4096).astype(np.float32)})  # refused
        w = s.get_arrays("s1")["w"]
        kinds = []
        for i in range(2, retry + 2):
            w = w + np.float32(1e-4)  # would pay from here on
            s.put_arrays(f"s{i}", {"w": w})
            kinds.append(s.index.get(s.manifest(f"s{i}").items["w"].chunks[0].digest).base is not None)
        assert kinds == [False] * (retry - 1) + [True]


def test_diff_values_and_export_read_delta_chunks_as_raw_bytes(tmp_path):
    from casckpt import safetensors_file
    from casckpt.diff import diff
    from casckpt.transfer import export_snapshot
    states = steps(2)
    with saved(tmp_path / "s", states) as s:
        assert deltas(s)
        change = diff(s, "s0", "s1", values=True).changes["w"]
        a, b = states[0]["w"].astype(np.float64), states[1]["w"].astype(np.float64)
        assert change.max_abs_diff == pytest.approx(np.abs(b - a).max())
        assert change.rel_l2 == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a))
        export_snapshot(s, "s1", tmp_path / "s1.safetensors", format="safetensors")
    arrays, _ = safetensors_file.read(tmp_path / "s1.safetensors")
    assert_same(states[1], {k: np.asarray(v) for k, (_, v) in arrays.items()})


@pytest.mark.parametrize("which", ["base", "delta"])
def test_an_undecodable_payload_in_a_chain_names_the_damaged_chunk(tmp_path, which):
    """A chain decodes at once (codec.decode_xor); a payload that does not decode is still
    blamed on its own chunk: the base's digest as ``base``, or the delta itself."""
    with saved(tmp_path / "s", steps(2)) as s:
        chunk, base = _base_of_s1(s)
        path = chunk_file(s.root, base if which == "base" else chunk)
        path.write_bytes(path.read_bytes()[:-7])  # truncated: trailing planes missing
        with pytest.raises(casckpt.CorruptChunkError) as err:
            s.get_arrays("s1")
        assert err.value.digest == chunk and err.value.item == "w"
        assert err.value.base == (base if which == "base" else "")
        assert "'s1'" in str(err.value)
