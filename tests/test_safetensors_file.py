"""casckpt's own .safetensors reader against the `safetensors` library as the oracle: whatever
bytes a file holds, casckpt accepts exactly what the library accepts (for the dtypes casckpt
knows) and reads the same tensors; everything else is a CasckptError, never a crash."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casckpt
from casckpt import safetensors_file as stf
from clikit import cli

safetensors = pytest.importorskip("safetensors")  # the oracle, a test dependency

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "F16": 2,
         "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}
assert set(SIZES) == set(stf.CODES)


def oracle(blob: bytes):
    """The safetensors library's reading of ``blob``: {name: (dtype code, shape, bytes)} or None."""
    try:
        return {name: (t["dtype"], list(t["shape"]), bytes(t["data"])) for name, t in safetensors.deserialize(blob)}
    except Exception:  # SafetensorError, or a panic surfaced as an exception: not valid
        return None


def ours(tmp_path, blob: bytes):
    path = tmp_path / "f.safetensors"
    path.write_bytes(blob)
    try:
        arrays, _ = stf.read(path)
    except casckpt.CasckptError:
        return None
    return {name: (stf.NAMES[dt], list(a.shape), a.tobytes()) for name, (dt, a) in arrays.items()}


def build(header, data: bytes, *, pad: bool = True) -> bytes:
    text = (json.dumps(header) if not isinstance(header, bytes) else header)
    text = text.encode() if isinstance(text, str) else text
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# -- strategies ------------------------------------------------------------------------------------
shapes = st.lists(st.integers(0, 4), max_size=3)
entries = st.lists(st.tuples(st.sampled_from(sorted(SIZES)), shapes), max_size=4)
jsonish = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
                       lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=2), c, max_size=2),
                       max_leaves=4)


@st.composite
def files(draw):
    """Mostly well-formed files, then bent: offsets moved, data short or long, fields of the wrong
    type, metadata that is not a map of strings, bytes flipped."""
    header, data, pos = {}, b"", 0
    for i, (code, shape) in enumerate(draw(entries)):
        n = math.prod(shape) * SIZES[code]
        header[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + n]}
        data += bytes((pos + k) % 251 for k in range(n))
        pos += n
    names = list(header)
    if names and draw(st.booleans()):
        victim = header[draw(st.sampled_from(names))]
        field = draw(st.sampled_from(["data_offsets", "shape", "dtype", "whole"]))
        if field == "data_offsets":
            victim["data_offsets"] = [draw(st.integers(-1, pos + 3)), draw(st.integers(-1, pos + 3))]
        elif field == "whole":
            header[names[0]] = draw(jsonish)
        else:
            victim[field] = draw(jsonish)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
                                      | jsonish)
    if draw(st.booleans()):
        header = draw(st.sampled_from([[header], "x", 7, None]))  # a header that is not an object
    data = data[:max(0, len(data) + draw(st.integers(-2, 2)))] + b"\0" * max(0, draw(st.integers(-2, 2)))
    blob = build(header, data, pad=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # flip one byte anywhere (header length included)
        i = draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1:]
    return blob


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(blob=files())
def test_casckpt_reads_exactly_what_safetensors_reads(tmp_path, blob):
    want, got = oracle(blob), ours(tmp_path, blob)
    assert got == want


def test_hand_made_cases_agree_with_the_library(tmp_path):
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "list header": build([f32], b"\0" * 8),
        "metadata a list": build({"__metadata__": [1], "a": f32}, b"\0" * 8),
        "metadata not strings": build({"__metadata__": {"k": 1}, "a": f32}, b"\0" * 8),
        "past the end": build({"a": {**f32, "data_offsets": [4, 12]}}, b"\0" * 8),
        "overlap": build({"a": f32, "b": {**f32, "data_offsets": [4, 12]}}, b"\0" * 12),
        "gap": build({"a": {**f32, "data_offsets": [4, 12]}}, b"\0" * 12),
        "left over": build({"a": f32}, b"\0" * 9),
        "float shape": build({"a": {**f32, "shape": [2.0]}}, b"\0" * 8),
        "leading space": build(b' {"a":' + json.dumps(f32).encode() + b"}", b"\0" * 8),
        "ok": build({"__metadata__": {"k": "v"}, "a": f32, "e": {"dtype": "U8", "shape": [0], "data_offsets": [8, 8]}},
                    b"\1" * 8),
    }
    for what, blob in cases.items():
        valid = what in ("ok", "leading space")
        assert (ours(tmp_path, blob) is None) == (oracle(blob) is None) == (not valid), what
        assert ours(tmp_path, blob) == oracle(blob), what


@pytest.mark.parametrize("header", [[], {"__metadata__": ["x"]}, {"__metadata__": 3}])
def test_import_of_a_malformed_header_is_a_clear_error_not_a_crash(tmp_path, header):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(build(header, b""))
    r = cli("import", tmp_path / "store", "s", src)
    assert r.returncode == 2 and r.stderr.startswith("casckpt: error:") and "Traceback" not in r.stderr
