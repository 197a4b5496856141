"""Compression round trips and the raw fallback, straight against casckpt.codec."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casckpt import codec

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
    kind, parts = codec.encode(memoryview(w).cast("B"), group=4, config=CFG)
    assert kind == codec.BG
    assert sum(len(bytes(p)) for p in parts) < 0.9 * w.nbytes
    assert roundtrip(w.tobytes(), 4)[1] == w.tobytes()


def test_zeros_compress_with_plain_zstd():
    assert roundtrip(bytes(1 << 16), 0)[0] == codec.ZSTD


@pytest.mark.parametrize("kind", [codec.RAW, codec.ZSTD, codec.BG, 9])
def test_garbage_payloads_raise_value_error(kind):
    with pytest.raises(ValueError):
        codec.decode(kind, memoryview(b"\x04garbage-payload"), 1024)
