"""Element types the store knows, by name, without torch.

Names follow torch / numpy spelling ("float32", "bfloat16", "float8_e4m3fn", "bool"). Types numpy
lacks (bfloat16, the float8 family) are held in numpy as unsigned integers of the same width, and
:func:`to_float64` decodes them for ``diff --values``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ManifestError


@dataclass(frozen=True, slots=True)
class DType:
    name: str
    itemsize: int
    floating: bool  # floats and complex: their bytes are grouped by significance before zstd
    numpy: str      # the numpy dtype that holds the bytes (little-endian)


_TABLE = [
    DType("bool", 1, False, "|b1"),
    DType("uint8", 1, False, "|u1"), DType("int8", 1, False, "|i1"),
    DType("uint16", 2, False, "<u2"), DType("int16", 2, False, "<i2"),
    DType("uint32", 4, False, "<u4"), DType("int32", 4, False, "<i4"),
    DType("uint64", 8, False, "<u8"), DType("int64", 8, False, "<i8"),
    DType("float16", 2, True, "<f2"), DType("bfloat16", 2, True, "<u2"),
    DType("float32", 4, True, "<f4"), DType("float64", 8, True, "<f8"),
    DType("complex32", 4, True, "<u4"),
    DType("complex64", 8, True, "<c8"), DType("complex128", 16, True, "<c16"),
    DType("float8_e4m3fn", 1, False, "|u1"), DType("float8_e4m3fnuz", 1, False, "|u1"),
    DType("float8_e5m2", 1, False, "|u1"), DType("float8_e5m2fnuz", 1, False, "|u1"),
    DType("float8_e8m0fnu", 1, False, "|u1"),
    DType("float4_e2m1fn_x2", 1, False, "|u1"),  # two packed fp4 values per byte
    DType("bytes", 1, False, "|u1"),  # opaque byte strings (DCP BYTE_IO items)
]
DTYPES = {d.name: d for d in _TABLE}


def lookup(name: object) -> DType:
    """The dtype called ``name``; an unknown name in a manifest is a ManifestError."""
    if not isinstance(name, str) or name not in DTYPES:
        raise ManifestError(f"unknown dtype {str(name)[:40]!r}")
    return DTYPES[name]


def from_numpy(dtype: np.dtype) -> DType:
    """The store dtype for a numpy dtype (either byte order; data is stored little-endian)."""
    dt = np.dtype(dtype)
    found = DTYPES.get(dt.name)
    if found is None or found.name == "bytes" or np.dtype(found.numpy) != dt.newbyteorder("<"):
        raise TypeError(f"casckpt cannot store numpy dtype {dt}")
    return found


def _float8_table(exp_bits: int, man_bits: int, bias: int, *, fn: bool, uz: bool) -> np.ndarray:
    """float64 value of each of the 256 bit patterns of a float8 format."""
    out = np.empty(256, dtype=np.float64)
    for b in range(256):
        sign = -1.0 if b >> 7 else 1.0
        e = (b >> man_bits) & ((1 << exp_bits) - 1)
        m = b & ((1 << man_bits) - 1)
        if uz and b == 0x80:
            out[b] = np.nan
            continue
        if not fn and not uz and e == (1 << exp_bits) - 1:  # IEEE-like: inf / nan
            out[b] = sign * np.inf if m == 0 else np.nan
            continue
        if fn and e == (1 << exp_bits) - 1 and m == (1 << man_bits) - 1:
            out[b] = np.nan
            continue
        if e == 0:
            out[b] = sign * m / (1 << man_bits) * 2.0 ** (1 - bias)
        else:
            out[b] = sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
    return out


_F8 = {
    "float8_e4m3fn": lambda: _float8_table(4, 3, 7, fn=True, uz=False),
    "float8_e4m3fnuz": lambda: _float8_table(4, 3, 8, fn=False, uz=True),
    "float8_e5m2": lambda: _float8_table(5, 2, 15, fn=False, uz=False),
    "float8_e5m2fnuz": lambda: _float8_table(5, 2, 16, fn=False, uz=True),
    "float8_e8m0fnu": lambda: np.where(np.arange(256) == 255, np.nan, 2.0 ** (np.arange(256) - 127.0)),
}


def is_real_float(name: str) -> bool:
    return name in ("float16", "bfloat16", "float32", "float64") or name in _F8


def to_float64(name: str, values: np.ndarray) -> np.ndarray:
    """Decode an array holding ``name``'s bytes (as stored) into float64 values."""
    if name == "bfloat16":
        return (values.astype("<u4") << 16).view("<f4").astype(np.float64)
    if name in _F8:
        return _F8[name]()[values.view(np.uint8)]
    return values.astype(np.float64)
