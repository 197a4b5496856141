"""Compression round trips and the raw fallback, straight against casckpt.codec."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casckpt import codec, planes

CFG = codec.CodecConfig(level=1, byte_grouping=True)


def roundtrip(raw: bytes, group: int, cfg=CFG) -> tuple[int, bytes]:
    kind, parts = codec.encode(memoryview(raw), group=group, config=cfg)
    payload = b"".join(bytes(p) for p in parts)
    return kind, bytes(codec.decode(kind, memoryview(payload), len(raw)))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=5000), group=st.sampled_from([0, 2, 4, 8, 16]))
def test_any_bytes_round_trip(raw, group):
    assert roundtrip(raw, group)[1] == raw


def test_random_bytes_are_stored_raw():
    raw = np.random.default_rng(0).bytes(1 << 20)
    assert roundtrip(raw, 0)[0] == codec.RAW


def test_float_weights_are_byte_grouped_and_smaller():
    w = (np.random.default_rng(0).standard_normal(1 << 18) * 0.02).astype(np.float32)
    kind, parts = codec.encode(memoryview(w).cast("B"), group=4, config=codec.CodecConfig(exponent=False))
    assert kind == codec.BG
    assert sum(len(bytes(p)) for p in parts) < 0.9 * w.nbytes
    assert roundtrip(w.tobytes(), 4)[1] == w.tobytes()


def test_zeros_compress_with_plain_zstd():
    assert roundtrip(bytes(1 << 16), 0)[0] == codec.ZSTD


@pytest.mark.parametrize("kind", [codec.RAW, codec.ZSTD, codec.BG, codec.BGX, codec.BGR, 9])
def test_garbage_payloads_raise_value_error(kind):
    with pytest.raises(ValueError):
        codec.decode(kind, memoryview(b"\x04garbage-payload"), 1024)


# -- codec 3: whole-byte exponents ----------------------------------------------------------------
FLOATS = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4", "float64": "<f8",
          "complex64": "<c8", "complex128": "<c16"}
# special bit patterns per word size: ±0, ±inf, NaNs (quiet, signalling, with payloads), the
# smallest and largest denormals, the largest finite, one
SPECIALS = {
    2: [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F, 0x7F7F, 0x3F80,
        0x7C00, 0xFC00, 0x7E00, 0x03FF, 0x7BFF],
    4: [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
        0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x3F800000],
    8: [0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FF0000000000001,
        0xFFF8DEADBEEF0001, 1, 0x800FFFFFFFFFFFFF, 0x7FEFFFFFFFFFFFFF, 0x3FF0000000000000],
}


def trained_like(dtype: str, n: int, seed: int = 0) -> np.ndarray:
    """N(0, 0.02) values of ``dtype`` (bfloat16: its bits in uint16, rounded to nearest even)."""
    w = (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(np.float32)
    if dtype == "bfloat16":
        u = w.view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if dtype.startswith("complex"):
        return (w[: n // 2 * 2].view(np.complex64)).astype(FLOATS[dtype])
    return w.astype(FLOATS[dtype])


def encoded(raw: bytes, group: int, cfg=CFG) -> tuple[int, memoryview]:
    kind, parts = codec.encode(memoryview(raw), group=group, config=cfg)
    return kind, memoryview(b"".join(bytes(p) for p in parts))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(sorted(FLOATS)), n=st.integers(0, 3000),
       patches=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 2 ** 64 - 1)), max_size=40),
       specials=st.booleans(), data=st.data())
def test_floats_with_any_bit_patterns_round_trip(dtype, n, patches, specials, data):
    arr = trained_like(dtype, n)
    k = arr.itemsize
    words = arr.view(f"<u{min(k, 8)}")  # complex128: each half is a float64 word
    for pos, bits in patches:  # arbitrary bit patterns, NaN payloads and all
        if words.size:
            words[pos % words.size] = bits & (2 ** (8 * words.itemsize) - 1)
    if specials and words.size:
        pool = SPECIALS[words.itemsize] if words.itemsize in SPECIALS else SPECIALS[4]
        idx = data.draw(st.lists(st.integers(0, words.size - 1), max_size=60))
        for i, j in enumerate(idx):
            words[j] = pool[i % len(pool)]
    raw = arr.tobytes()
    kind, payload = encoded(raw, k)
    assert kind in ((codec.RAW, codec.BGR) if k == 2 else (codec.RAW, codec.BGX))
    assert bytes(codec.decode(kind, payload, len(raw))) == raw
    if k in (2, 4):  # codec 4 is written for 2-byte floats and read for 4-byte ones too
        rot_kind, rot = rotated(raw, k)
        assert bytes(codec.decode(rot_kind, rot, len(raw))) == raw
    assert bytes(codec.decode_flat(kind, payload, len(raw))) == raw
    out = memoryview(bytearray(len(raw)))
    assert codec.decode(kind, payload, len(raw), out) is out and bytes(out) == raw


@pytest.mark.parametrize("dtype", sorted(FLOATS))
def test_trained_like_floats_use_codec_4_or_3_and_beat_codec_2(dtype):
    raw = trained_like(dtype, 1 << 17).tobytes()
    k = np.dtype(FLOATS[dtype]).itemsize
    kind3, p3 = encoded(raw, k)
    kind2, p2 = encoded(raw, k, codec.CodecConfig(exponent=False))
    assert (kind3, kind2) == (codec.BGR if k == 2 else codec.BGX, codec.BG)
    # 8-byte words keep their bits in place (an 11-bit exponent fits no byte): a tie there
    assert p3.nbytes < (p2.nbytes if k <= 4 else 1.01 * p2.nbytes)
    assert bytes(codec.decode(kind3, p3, len(raw))) == raw
    if k == 2:  # codec 4 beats what codec 3 writes for the same bytes where the exponent has 8 bits
        assert p3.nbytes <= codec_3(raw, k)[1].nbytes * (0.998 if dtype == "bfloat16" else 1)
    if k == 4:  # not written for 4-byte floats (it decodes slower, README Performance), but smaller
        rot = codec._encode_rotated(memoryview(raw), k)[1]
        assert sum(memoryview(p).nbytes for p in rot) <= p3.nbytes * (0.998 if dtype == "float32" else 1)


def codec_3(raw: bytes, k: int) -> tuple[int, memoryview]:
    """What casckpt wrote for floats before codec 4 (still written for 8- and 16-byte ones)."""
    kind, parts = codec._encode_exponent(memoryview(raw), k, codec._WORDS[k])
    return kind, memoryview(b"".join(bytes(p) for p in parts))


@pytest.mark.parametrize("dtype,r", [("bfloat16", 3), ("float32", 3), ("float16", 1)])
def test_codec_4_rotation_follows_the_exponent(dtype, r):
    """Trained-like bfloat16/float32: two near-constant exponent bits leave the top byte (r = 3);
    float16's 5-bit exponent keeps codec 3's layout (r = 1); XOR residuals keep their zero top
    bytes (r = 0)."""
    arr = trained_like(dtype, 1 << 15)
    k = arr.itemsize
    kind, payload = rotated(arr.tobytes(), k)
    assert kind == codec.BGR and payload[:2].tobytes() == bytes([k, r])
    words = arr.view(f"<u{k}")
    residual = (words ^ (words + (np.arange(words.size) % 3).astype(words.dtype))).tobytes()
    kind, payload = rotated(residual, k)
    assert kind == codec.BGR and payload[:2].tobytes() == bytes([k, 0])
    assert bytes(codec.decode(kind, payload, len(residual))) == residual


def rotated(raw: bytes, k: int) -> tuple[int, memoryview]:
    """Codec 4 for any 2- or 4-byte floats (casckpt writes it for 2-byte ones only)."""
    kind, parts = codec._encode_rotated(memoryview(raw), k)
    return kind, memoryview(b"".join(bytes(p) for p in parts))


def test_exponent_byte_is_whole():
    """float32 1.5 and -1.5: the exponent plane holds 127 for both, the sign sits in plane 2."""
    raw = np.array([1.5, -1.5] * 4096, dtype="<f4").tobytes()
    kind, payload = codec_3(raw, 4)
    got = planes.exponent_planes(memoryview(raw), 4, 4)
    assert kind == codec.BGX and set(got[3].tolist()) == {127}
    assert set(got[2].tolist()) == {0x40, 0xC0}


def test_xor_of_two_steps_compresses():
    """The bytes a delta chunk holds (mostly-zero high bytes) go through codec 3 too."""
    a = trained_like("float32", 1 << 16)
    b = (a - np.float32(1e-4) * np.random.default_rng(1).standard_normal(a.size).astype(np.float32))
    raw = (a.view("<u4") ^ b.view("<u4")).tobytes()
    kind, payload = encoded(raw, 4)
    assert kind == codec.BGX and payload.nbytes < 0.7 * len(raw)
    assert bytes(codec.decode(kind, payload, len(raw))) == raw


def test_codec_3_is_the_default_but_not_for_old_store_configs():
    assert codec.CodecConfig().exponent is True
    old = codec.CodecConfig.from_json({"name": "zstd", "level": 1, "byte_grouping": True})
    assert old.exponent is False
    assert codec.CodecConfig.from_json(codec.CodecConfig().to_json()) == codec.CodecConfig()
    raw = trained_like("float32", 1 << 14).tobytes()
    assert encoded(raw, 4, old)[0] == codec.BG


@pytest.fixture(scope="module", params=[codec.BGX, codec.BGR])
def bgx_payload(request):
    """``(raw, payload, codec)`` of bfloat16 weights, coded by codec 3 or 4."""
    raw = trained_like("bfloat16", 1 << 14).tobytes()
    kind, payload = codec_3(raw, 2) if request.param == codec.BGX else encoded(raw, 2)
    assert kind == request.param
    return raw, bytes(payload), kind


@settings(max_examples=200, deadline=None, derandomize=True)
@given(cut=st.integers(0, 10 ** 6))
def test_truncated_codec_3_payloads_raise_value_error(bgx_payload, cut):
    raw, payload, kind = bgx_payload
    with pytest.raises(ValueError):
        codec.decode(kind, memoryview(payload[:cut % len(payload)]), len(raw))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
       tail=st.binary(max_size=3))
def test_garbled_codec_3_payloads_never_crash(bgx_payload, edits, tail):
    """A garbled payload raises ValueError or decodes to bytes of the right length (wrong bytes
    are then caught by the chunk's digest, see test_garbled_chunk_is_corrupt_on_load)."""
    raw, payload, kind = bgx_payload
    bad = bytearray(payload)
    for pos, value in edits:
        bad[pos % len(bad)] = value
    bad += tail
    try:
        got = codec.decode(kind, memoryview(bytes(bad)), len(raw))
    except ValueError:
        return
    assert len(got) == len(raw)


@pytest.mark.parametrize("header", [b"", b"\x04", b"\x00\x00", b"\x04\x03", b"\x06\x04", b"\x02\x04",
                                    b"\x04\x04", b"\x02\x02\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                                    b"\x02\x02\x00\xff\xff\xff\xff\x00\x00\x00\x00\x00"])
def test_bad_codec_3_headers_raise_value_error(header):
    with pytest.raises(ValueError):
        codec.decode(codec.BGX, memoryview(header), 1024)


@pytest.mark.parametrize("header", [b"", b"\x04", b"\x08\x00", b"\x03\x00", b"\x04\x10", b"\x02\xff",
                                    b"\x02\x03\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00"])
def test_bad_codec_4_headers_raise_value_error(header):
    with pytest.raises(ValueError):
        codec.decode(codec.BGR, memoryview(header), 1024)


def test_garbled_chunk_is_corrupt_on_load(tmp_path):
    """A codec-3 chunk whose raw mantissa plane was flipped decodes, but never reaches the caller."""
    import casckpt

    w = trained_like("float32", 1 << 15)
    with casckpt.Store.open(tmp_path / "s", create=True) as store:
        store.put_arrays("a", {"w": w})
        (digest, info), = store.index.chunks()
        assert info.codec == codec.BGX
        path = store.chunks.path(digest)
        data = bytearray(path.read_bytes())
        assert data[16 + 2] == 0  # plane 0, a float32 mantissa plane, is stored raw
        data[16 + 2 + 4 * 5 + 100] ^= 0x01
        path.write_bytes(bytes(data))
        decoded = codec.decode(codec.BGX, memoryview(bytes(data[16:])), w.nbytes)
        assert bytes(decoded) != w.tobytes()  # the codec cannot tell ...
        with pytest.raises(casckpt.CorruptChunkError):  # ... the digest does
            store.get_arrays("a")


def test_store_written_before_codec_3_keeps_codec_2(tmp_path):
    """A store config without the "exponent" key (written by an older casckpt) gets no codec-3
    chunks, so that casckpt can still read everything in it."""
    import json

    import casckpt

    root = tmp_path / "s"
    casckpt.Store.open(root, create=True).close()
    cfg = json.loads((root / "casckpt.json").read_text())
    del cfg["codec"]["exponent"]
    (root / "casckpt.json").write_text(json.dumps(cfg))
    w = trained_like("float32", 1 << 15)
    with casckpt.Store.open(root, level=1) as store:
        assert store.config.codec.exponent is False
        store.put_arrays("a", {"w": w})
        assert {info.codec for _, info in store.index.chunks()} == {codec.BG}
        assert store.get_arrays("a")["w"].tobytes() == w.tobytes()


@pytest.mark.parametrize("k,w", [(2, 0), (2, 2), (4, 0), (4, 2), (4, 4), (8, 0), (8, 4), (8, 8), (16, 8), (16, 0), (16, 4)])
def test_every_word_size_the_format_allows_round_trips(k, w):
    """The encoder picks ``w`` from the element size; the decoder takes any the format allows
    (complex64 as two float32 words: k=8, w=4)."""
    arr = trained_like("float32", 1 << 14)
    words = arr.view("<u4")
    words[::101] = np.resize(np.array(SPECIALS[4], dtype="<u4"), words[::101].size)
    raw = arr.tobytes()
    kind, parts = codec._encode_exponent(memoryview(raw), k, w)
    payload = memoryview(b"".join(bytes(p) for p in parts))
    assert kind == codec.BGX and payload[:2].tobytes() == bytes([k, w])
    assert bytes(codec.decode(kind, payload, len(raw))) == raw


# -- decoding a chain of deltas at once -----------------------------------------------------------
CODERS = {"default": lambda raw, k: encoded(raw, k), "codec3": codec_3,
          "codec4": lambda raw, k: rotated(raw, k) if k in (2, 4) else encoded(raw, k),
          "codec2": lambda raw, k: encoded(raw, k, codec.CodecConfig(exponent=False)),
          "raw": lambda raw, k: encoded(raw, k, codec.CodecConfig(level=0))}


@settings(max_examples=80, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(["bfloat16", "float32", "float64"]), n=st.integers(1, 5000),
       layers=st.lists(st.tuples(st.sampled_from(sorted(CODERS)), st.sampled_from([0.0, 1e-4, 1.0]),
                                 st.booleans()), min_size=1, max_size=4))
def test_decode_xor_of_any_chain_is_the_xor_of_its_raw_bytes(dtype, n, layers):
    """A chain of payloads coded alike (XORed plane by plane), by codec 4 with different
    rotations (full chunks and XOR residuals), or by different codecs (the fallback) decodes to
    the XOR of all their raw bytes."""
    rng = np.random.default_rng(n)
    coded, want = [], None
    for i, (name, flips, residual) in enumerate(layers):
        arr = trained_like(dtype, n, seed=i)
        arr.view(np.uint8)[:] ^= (rng.random(arr.nbytes) < flips).astype(np.uint8)
        if residual:  # what a delta holds: the XOR of two nearby states
            arr.view(np.uint8)[:] ^= trained_like(dtype, n, seed=i).view(np.uint8)[::-1] & 0x03
            arr.view(np.uint8)[:] = (arr.view(np.uint8) & 0x07)
        raw = arr.tobytes()
        want = raw if want is None else bytes(a ^ b for a, b in zip(want, raw))
        coded.append(CODERS[name](raw, arr.itemsize))
    out = memoryview(bytearray(len(want)))
    codec.decode_xor(coded, out)
    assert bytes(out) == want


def unzigzag_add(below: bytes, z: bytes, w: int) -> bytes:
    """``below + unzigzag(z)`` on ``w``-byte little-endian integers, in plain Python ints."""
    m, out = (1 << 8 * w) - 1, bytearray()
    for i in range(0, len(z), w):
        v = int.from_bytes(z[i:i + w], "little")
        d = (v >> 1) ^ (-(v & 1) & m)
        out += ((int.from_bytes(below[i:i + w], "little") + d) & m).to_bytes(w, "little")
    return bytes(out)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(["bfloat16", "float32", "float64"]), n=st.integers(1, 3000),
       layers=st.lists(st.tuples(st.sampled_from(sorted(CODERS)), st.booleans(), st.booleans()),
                       min_size=1, max_size=4))
def test_decode_chain_applies_each_layers_op_from_the_root_up(dtype, n, layers):
    """Layers whose op is XOR (0) or a zigzag difference of element-size integers, coded by any
    codec, decode to the root's bytes combined with each layer above it in turn."""
    coded, raws = [], []
    for i, (name, sub, small) in enumerate(layers):
        arr = trained_like(dtype, n, seed=i)
        if small:  # a delta of nearby states: small integers
            arr.view(np.uint8)[:] &= 0x07
        raws.append((arr.tobytes(), arr.itemsize if sub else 0))
        coded.append((*CODERS[name](raws[-1][0], arr.itemsize), raws[-1][1]))
    want = raws[-1][0]
    for raw, op in reversed(raws[:-1]):
        want = unzigzag_add(want, raw, op) if op else bytes(a ^ b for a, b in zip(want, raw))
    out = memoryview(bytearray(len(want)))
    codec.decode_chain(coded, out)
    assert bytes(out) == want


@settings(max_examples=60, deadline=None, derandomize=True)
@given(w=st.sampled_from([2, 4, 8]), data=st.data())
def test_zigzag_difference_round_trips_and_is_small_for_small_moves(w, data):
    n = data.draw(st.integers(0, 64)) * w
    a, b = data.draw(st.binary(min_size=n, max_size=n)), data.draw(st.binary(min_size=n, max_size=n))
    z = bytes(planes.zigzag_sub(a, b, w))
    assert unzigzag_add(b, z, w) == a
    out = np.frombuffer(bytearray(b), dtype=np.uint8)
    planes.add_unzigzag(out, np.frombuffer(bytearray(z), dtype=np.uint8), w)
    assert out.tobytes() == a
    x = np.array([5, 5, 7, 0], dtype=f"<u{w}")
    y = np.array([5, 6, 6, 2 ** (8 * w) - 1], dtype=f"<u{w}")  # equal, -1, +1, +1 across the wrap
    assert np.frombuffer(planes.zigzag_sub(x.tobytes(), y.tobytes(), w), dtype=f"<u{w}").tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize("third", ["default", "codec2", "residual"])
@pytest.mark.parametrize("bad", [0, 1, 2])
def test_decode_xor_names_the_layer_that_does_not_decode(third, bad):
    raw = trained_like("float32", 1 << 12).tobytes()
    small = (np.frombuffer(raw, "<u4") & 0x1F).tobytes()
    last = {"default": encoded(raw, 4), "codec2": CODERS["codec2"](raw, 4), "residual": encoded(small, 4)}[third]
    layers = [encoded(raw, 4), encoded(small, 4), last]
    kind, payload = layers[bad]
    layers[bad] = (kind, payload[:-1])  # truncated
    with pytest.raises(codec.LayerError) as err:
        codec.decode_xor(layers, memoryview(bytearray(len(raw))))
    assert err.value.index == bad and isinstance(err.value, ValueError)


def test_chunks_of_older_formats_stay_readable_alone_and_as_bases(tmp_path):
    """A store made before format version 4 holds codec-4 float32 chunks and XOR deltas (op 0):
    they are read bit-exactly, as chunks and as bases of new zigzag deltas, and the first chunk
    written moves the store to version 4, which a casckpt that knows only version 3 refuses
    instead of meeting a delta op it cannot decode."""
    import json

    import casckpt
    from casckpt import chunks, config, delta

    root, w = tmp_path / "s", trained_like("float32", 1 << 15)
    w2 = w + np.float32(1e-4) * trained_like("float32", w.size, seed=1)
    w3 = w2 + np.float32(1e-4) * trained_like("float32", w.size, seed=2)
    with casckpt.Store.open(root, create=True, max_depth=2) as store:
        store.put_arrays("a", {"w": w})
        store.put_arrays("b", {"w": w2})
        (d1, _), = [(d, i) for d, i in store.index.chunks() if i.base is None]
        (d2, i2), = [(d, i) for d, i in store.index.chunks() if i.base is not None]
        assert i2.base == d1
        # rewrite both as casckpt wrote them before version 4: codec 4, and a XOR delta
        p1, p2 = store.chunks.path(d1), store.chunks.path(d2)
        head = bytearray(p1.read_bytes()[:chunks.HEADER.size])
        head[5] = codec.BGR
        p1.write_bytes(bytes(head) + bytes(rotated(w.tobytes(), 4)[1]))
        kind, payload = rotated(bytes(delta.xor(w2.tobytes(), w.tobytes())), 4)
        p2.write_bytes(chunks.HEADER2.pack(chunks.MAGIC, chunks.DELTA_VERSION, kind, 1, 0, w.nbytes, d1.raw)
                       + bytes(payload))
    doc = json.loads((root / config.CONFIG).read_text())
    (root / config.CONFIG).write_text(json.dumps({**doc, "version": 3}))
    delta.CACHE.clear()  # bases are read back from their old files
    with casckpt.Store.open(root, max_depth=2) as store:
        assert store.get_arrays("a")["w"].tobytes() == w.tobytes()
        assert store.get_arrays("b")["w"].tobytes() == w2.tobytes()
        store.put_arrays("c", {"w": w3})
        (d3, i3), = [(d, i) for d, i in store.index.chunks() if d not in (d1, d2)]
        assert (i3.base, i3.depth) == (d2, 2)  # a zigzag delta on the XOR delta
        assert [store.chunks.read_payload(d)[5] for d in (d2, d3)] == [0, 4]
        assert store.get_arrays("c")["w"].tobytes() == w3.tobytes()
    assert json.loads((root / config.CONFIG).read_text())["version"] == config.VERSION  # (4 or newer)
    old = config.VERSION
    try:
        config.VERSION = 3
        with pytest.raises(casckpt.UnsupportedFormatError):
            casckpt.Store.open(root)
    finally:
        config.VERSION = old


def test_decodes_in_many_threads_at_once_never_share_scratch_buffers():
    """Decoding reuses per-thread buffers: results from several threads at once, and a result
    kept while the same thread decodes more, stay exactly the bytes encoded."""
    from concurrent.futures import ThreadPoolExecutor

    raws = [trained_like(dt, 1 << 15, seed=i).tobytes() for i, dt in enumerate(["float32", "bfloat16"] * 6)]
    coded = [encoded(r, 4 if i % 2 == 0 else 2) for i, r in enumerate(raws)]
    chains = [[coded[i], coded[(i + 2) % len(coded)]] for i in range(len(coded))]

    def one(i: int) -> tuple[bytes, bytes]:
        kept = codec.decode(*coded[i], len(raws[i]))
        out = memoryview(bytearray(len(raws[i])))
        codec.decode_xor(chains[i], out)
        return bytes(kept), bytes(out)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, [i for _ in range(3) for i in range(len(raws))]))
    for i, (kept, xored) in enumerate(got):
        j = i % len(raws)
        assert kept == raws[j]
        assert xored == bytes(a ^ b for a, b in zip(raws[j], raws[(j + 2) % len(raws)]))
