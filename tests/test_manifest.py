"""Manifest formats: format 2 (columnar refs) is written and read back exactly; format 1 manifests
(written by casckpt before format 2) still load; refs into part of a chunk are served or refused."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import casckpt
from casckpt import manifest
from casckpt.digest import digest_of
from casckpt.manifest import ChunkRef, Item, Manifest
from casckpt.verify import verify
from storekit import arrays, assert_same


def test_writers_write_format_2_with_columnar_refs(store):
    store.put_arrays("s", arrays(1))
    doc = json.loads((store.snap_dir / "s.json").read_bytes())
    assert doc["version"] == manifest.VERSION == 2
    w, m = doc["items"]["w"], store.manifest("s")
    assert "chunks" not in w and "offsets" not in w
    assert w["digests"] == "".join(c.digest.hex for c in m.items["w"].chunks)
    assert w["digests"][:64] in {p.name for p in (store.root / "chunks").glob("*/*")}  # greppable
    # 6000 float32 in 16 KiB chunks: one run of full chunks, then the short last one
    assert w["lengths"] == [[16384, 1], [24000 - 16384, 1]]


def test_format_1_manifest_still_loads(store):
    """A manifest as casckpt wrote it before format 2 ([digest, length] per ref) reads the same."""
    store.put_arrays("s", arrays(1))
    old = store.manifest("s").to_bytes(1)
    doc = json.loads(old)
    assert doc["version"] == 1 and isinstance(doc["items"]["w"]["chunks"][0][0], str)
    (store.snap_dir / "old.json").write_bytes(old.replace(b'"name":"s"', b'"name":"old"'))
    assert_same(arrays(1), store.get_arrays("old"))
    assert store.manifest("old").items == store.manifest("s").items


def test_round_trip_many_refs_and_every_length_shape():
    rng = np.random.default_rng(0)
    items = {}
    for k, lens in enumerate([[], [8], [4096] * 7 + [12], [4, 8, 4, 4, 8] * 30]):
        raw = rng.bytes(32 * len(lens))
        items[f"i{k}"] = Item.columnar("uint8", (sum(lens),), raw, np.array(lens, np.int64))
    m = Manifest("m", manifest.utc_now(), 4096, items, {"x": 1})
    back = Manifest.from_bytes(m.to_bytes())
    assert back.items == m.items and back.meta == m.meta
    assert [c.length for c in back.items["i3"].chunks] == [4, 8, 4, 4, 8] * 30
    assert back.refs == 1 + 8 + 150 and len(back.digest_keys()) == len(back.digests())


_lens = st.lists(st.integers(1, 1 << 22), max_size=40)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(keys=st.lists(st.text(max_size=12), min_size=1, max_size=4, unique=True),
       shapes=st.lists(st.integers(0, 10 ** 6), max_size=4), lens=_lens, partial=st.booleans(),
       meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
def test_written_bytes_are_json_dumps_of_the_document(keys, shapes, lens, partial, meta):
    # the manifest writes its items' JSON directly (Item.to_text): the bytes must be exactly
    # json.dumps of the document, whatever the keys (unicode, quotes), shapes and refs
    raw = bytes(range(32)) * len(lens)
    offs = np.arange(len(lens), dtype=np.int64) * 3 if partial else None
    items = {k: Item.columnar("float32", tuple(shapes), raw, np.array(lens, np.int64), offs) for k in keys}
    m = Manifest("m", manifest.utc_now(), 4096, items, meta)
    doc = {"format": manifest.FORMAT, "version": manifest.VERSION, "name": "m", "created": m.created,
           "chunk_size": 4096, "items": {k: v.to_json() for k, v in items.items()}, "meta": meta}
    assert m.to_bytes() == json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _pack_snapshot(store, name: str, parts: list[bytes]) -> bytes:
    """A snapshot whose item ``x`` is the concatenation of slices of one stored chunk (as a pack
    member or a shard of a resharded tensor would be referenced): plants the manifest by hand."""
    pack = b"".join(parts)
    store.put_arrays("packed", {"p": np.frombuffer(pack, np.uint8)})
    d = store.manifest("packed").items["p"].chunks[0].digest
    assert d == digest_of(pack)
    offs = np.cumsum([0] + [len(p) for p in parts[:-1]])
    refs = [ChunkRef(d, len(p), int(o)) for p, o in zip(parts, offs)][::-1]  # out of order on purpose
    item = Item("uint8", (len(pack),), refs)
    m = Manifest(name, manifest.utc_now(), store.config.chunk_size, {"x": item})
    (store.snap_dir / f"{name}.json").write_bytes(m.to_bytes())
    return b"".join(parts[::-1])


def test_refs_into_part_of_a_chunk_are_served(store):
    want = _pack_snapshot(store, "members", [b"a" * 40, b"bb" * 30, b"c" * 7])
    doc = json.loads((store.snap_dir / "members.json").read_bytes())
    assert doc["items"]["x"]["offsets"] == [100, 40, 0]
    assert store.get_arrays("members")["x"].tobytes() == want
    assert verify(store, ["members"]).ok


def test_a_ref_past_its_chunk_is_a_manifest_error(store):
    _pack_snapshot(store, "bad", [b"a" * 40, b"b" * 8])
    doc = json.loads((store.snap_dir / "bad.json").read_bytes())
    doc["items"]["x"]["offsets"][0] = 45  # 8 bytes from 45 run past the 48-byte chunk
    (store.snap_dir / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(casckpt.ManifestError, match="holds 48"):
        store.get_arrays("bad")


def test_format_1_cannot_hold_partial_refs(store):
    _pack_snapshot(store, "p", [b"a" * 4, b"b" * 4])
    with pytest.raises(casckpt.UnsupportedFormatError):
        store.manifest("p").to_bytes(1)


def test_items_are_immutable_values():
    a = Item("uint8", (4,), [ChunkRef(digest_of(b"abcd"), 4)])
    b = Item.columnar("uint8", (4,), digest_of(b"abcd").raw, np.array([4]))
    assert a == b and hash(a) == hash(b) and a.chunks == b.chunks
    with pytest.raises(AttributeError):
        a.dtype = "int8"
    with pytest.raises(ValueError):
        a.lengths[0] = 3


@pytest.mark.parametrize("change, match", [
    ({"shape": [-1]}, "bad shape"), ({"shape": [True]}, "bad shape"), ({"shape": [1.0]}, "bad shape"),
    ({"lengths": [[4, 1]]}, "add up to"), ({"lengths": [[8, 2]]}, "bad length list"),
    ({"offsets": [-1]}, "bad offset list"), ({"offsets": ["0"]}, "bad offset list"), ({"offsets": [0, 0]}, "bad offset list"),
    ({"offsets": [casckpt.chunking.MAX_CHUNK_SIZE - 4]}, "past the end"),
])
def test_a_bad_one_ref_item_is_refused(change, match):
    # one-ref items (every small one) take a fast path through validation: the same rules hold
    good = {"dtype": "float32", "shape": [2], "digests": "ab" * 32, "lengths": [[8, 1]], "offsets": [16]}
    assert Item.from_json("k", good).ref_offsets.tolist() == [16]
    with pytest.raises(casckpt.ManifestError, match=match):
        Item.from_json("k", {**good, **change})


def test_a_large_manifest_is_written_compressed_and_a_small_one_as_plain_json(tmp_path):
    import zstandard

    from casckpt import config
    root = tmp_path / "s"
    small = {f"t{i}": np.full(4, i, np.float32) for i in range(3)}
    many = {f"layers.{i}.norm": np.full(64, i, np.float32) for i in range(3000)}  # JSON over COMPRESS_OVER
    with casckpt.Store.open(root, create=True) as store:
        store.put_arrays("small", small)
        store.put_arrays("many", many)
        raw = {n: (root / "snapshots" / f"{n}.json").read_bytes() for n in ("small", "many")}
        assert json.loads(raw["small"])["items"]["t0"]["shape"] == [4]  # plain JSON, to read by eye
        text = zstandard.ZstdDecompressor().decompress(raw["many"])  # `zstd -dc` reads it
        assert len(text) > manifest.COMPRESS_OVER and len(raw["many"]) < len(text) / 2  # hex digests: 2x at least
        assert json.loads(text)["name"] == "many" and store.manifest("many").items.keys() == many.keys()
        assert_same(many, store.get_arrays("many"))
    assert json.loads((root / config.CONFIG).read_text())["version"] == config.VERSION == 5
    old = config.VERSION
    try:  # a casckpt that cannot read compressed manifests refuses the store, says upgrade
        config.VERSION = 4
        with pytest.raises(casckpt.UnsupportedFormatError):
            casckpt.Store.open(root)
    finally:
        config.VERSION = old


@pytest.mark.parametrize("frame", [
    b"\x28\xb5\x2f\xfd" + b"\x00" * 20,  # the magic, then no frame
    lambda good: good[:len(good) // 2],  # a truncated frame
    lambda good: good[:-8] + bytes(8),  # a damaged tail
    lambda good: __import__("zstandard").ZstdCompressor().compress(b" " * (manifest.MAX_FILE + 1)),  # too big
])
def test_a_bad_compressed_manifest_is_a_manifest_error(frame):
    m = Manifest("m", manifest.utc_now(), 4096, {f"k{i}": Item("uint8", (0,)) for i in range(9000)})
    good = m.to_file()
    assert good[:4] == b"\x28\xb5\x2f\xfd" and Manifest.from_bytes(good).items == m.items
    data = frame(good) if callable(frame) else frame
    with pytest.raises(casckpt.ManifestError):
        Manifest.from_bytes(data)
