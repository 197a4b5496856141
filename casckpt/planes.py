"""Byte planes of floating chunks, on numpy alone: the bit layouts of codecs 3 and 4 and their
inverses (interleaving planes back into elements), the XOR of planes and the zigzag differences
that delta chunks decode through, and the per-thread scratch buffers decoding uses. :mod:`casckpt.codec` holds the zstd
side and the payload formats (docs/FORMAT.md, "Chunk files")."""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


# NOTE: codec 4 moves a bit out of the entropy-coded top byte when this fraction of a sample, or
# less, differs from the rest; the sample is SAMPLE elements.
_CONSTANT = 0.005
SAMPLE = 4096


def rotation(top: np.ndarray) -> int:
    """How far codec 4 rotates the top 16 bits of each element left, from a sample: 0 when most
    top bytes are zero (XOR residuals: sign and exponent rarely change, and zero bytes are what
    codes them best); 3 when the two bits below the sign are near-constant (float32 / bfloat16
    values between 2**-63 and 2: exponent bits e7 and e6), so the top byte holds the exponent's
    six low bits and two mantissa bits, whose entropy coder then sees how those depend on the
    exponent, and the byte below holds the sign and the two constant bits, which makes it
    compressible; else 1, the exponent byte whole as in codec 3 (float16's 5-bit exponent)."""
    sample = top[::max(1, top.size // SAMPLE)]
    if 2 * np.count_nonzero(sample >> 8) < sample.size:
        return 0
    for bit in (14, 13):
        ones = np.count_nonzero(sample & (1 << bit))
        if min(ones, sample.size - ones) > _CONSTANT * sample.size:
            return 1
    return 3


def rotated_planes(raw: memoryview, k: int, r: int) -> list[np.ndarray]:
    """The planes of codec 4 (``k`` 2 or 4): bytes below the top 16 bits as they are, then the
    top 16 bits rotated left by ``r``, low byte first."""
    x = np.frombuffer(raw, dtype=f"<u{k}")
    planes = [(x >> (8 * i)).astype(np.uint8) for i in range(k - 2)]
    top = x if k == 2 else (x >> 16).astype(np.uint16)
    if r:
        y = top << r
        y |= top >> (16 - r)
        top = y
    return planes + [top.astype(np.uint8), (top >> 8).astype(np.uint8)]


def exponent_planes(raw: memoryview, k: int, w: int) -> list[np.ndarray]:
    """The planes of codec 3 (plane ``i`` = byte ``i`` of every element, little-endian, after the
    move): in each ``w``-byte word the top byte ``s|e7..e1`` and the next ``e0|m..`` become
    ``e7..e0`` and ``s|m..``; lower bytes are unchanged. ``w`` 0: no bits move."""
    if k in (2, 4, 8) and w in (0, k):
        # NOTE: shifts and narrowing casts on whole words are ~2x faster than numpy's strided
        # transpose copy (2.7x for 2-byte elements); the exponent byte is one shift away.
        x = np.frombuffer(raw, dtype=f"<u{k}")
        planes = [x.astype(np.uint8)] + [(x >> (8 * i)).astype(np.uint8) for i in range(1, k)]
        if w:
            planes[k - 1], hi = (x >> (8 * k - 9)).astype(np.uint8), planes[k - 1]
            _swap_sign(planes[k - 2], hi)
        return planes
    planes = list(np.frombuffer(raw, dtype=np.uint8).reshape(-1, k).T.copy())
    for top in range(w - 1, k, w) if w else ():
        hi = planes[top].copy()
        planes[top] = (hi << 1) | (planes[top - 1] >> 7)
        _swap_sign(planes[top - 1], hi)
    return planes


def _swap_sign(lo: np.ndarray, hi: np.ndarray) -> None:
    """Replace the top bit of ``lo`` (in place) by the top bit of ``hi``."""
    tmp = lo ^ hi
    tmp &= 0x80
    lo ^= tmp


# NOTE: decoding's temporaries (zstd planes, XORed planes, 16-bit words) come from buffers each
# thread keeps, at most this big each (a 2 MiB chunk's planes and words fit): a fresh array of
# that size is a new mmap under glibc, and first touching its pages made delta decodes ~1.5x
# slower (measured). Bigger temporaries are allocated as they come.
_SCRATCH_MAX = 1 << 20
ZIGZAG_MAX = 8 << 20  # a zigzag delta's decode buffers: whole chunks, kept up to this size


def scratch(slot, n: int, dtype=np.uint8, *, limit: int = _SCRATCH_MAX) -> np.ndarray:
    """``n`` elements of the calling thread's reusable buffer ``slot`` (a new array if more than
    ``limit`` bytes)."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes > limit:
        return np.empty(n, dtype)
    bufs = _local.__dict__.setdefault("s", {})
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, _SCRATCH_MAX), np.uint8)
    return buf[:nbytes].view(dtype)


def xor_planes(acc: list[np.ndarray], planes: list[np.ndarray], *, slot: int = 0, first: int = 0) -> list[np.ndarray]:
    """``acc ^ planes`` plane by plane (see :func:`xor_plane`; ``slot``, ``first``: which)."""
    return [xor_plane(a, b, ("x", slot, first + i)) for i, (a, b) in enumerate(zip(acc, planes))]


def xor_plane(a: np.ndarray, b: np.ndarray, slot) -> np.ndarray:
    """``a ^ b``, in place into whichever is writable (a scratch buffer, or an XOR made before),
    else into the thread's scratch buffer ``slot``."""
    if not a.flags.writeable:
        a, b = b, a
    out = a if a.flags.writeable else scratch(slot, a.size)
    xor_into(out, b, a)
    return out


def xor_into(out: np.ndarray, b: np.ndarray, a: np.ndarray | None = None) -> None:
    """``out = (out if a is None else a) ^ b`` on byte arrays of one length, 8 bytes at a time
    where the length allows (2-4x faster than byte by byte)."""
    a = out if a is None else a
    if out.nbytes % 8 == 0:
        out, a, b = out.view(np.uint64), a.view(np.uint64), b.view(np.uint64)
    np.bitwise_xor(a, b, out=out)


def _top_word(pair: list[np.ndarray], r: int, out: np.ndarray) -> np.ndarray:
    """Codec 4's top 16 bits of every element from its two top planes, rotated back right by ``r``."""
    word = _pair(pair[0], pair[1], False, out)
    if r:
        low = np.right_shift(word, r, out=scratch("t", word.size, word.dtype))
        word <<= 16 - r
        word |= low
    return word


def join_rotated(low: list[np.ndarray], tops: dict[int, list[np.ndarray]], dest: memoryview) -> None:
    """Codec 4 elements into ``dest`` from the planes below the top 16 bits and, per rotation,
    the two top planes (several rotations: their top words are XORed, see :func:`casckpt.codec.decode_xor`)."""
    k = len(low) + 2
    out = np.frombuffer(dest, dtype=f"<u{k}")
    words = [_top_word(pair, r, out if k == 2 and i == 0 else scratch(("w", i), out.size, np.uint16))
             for i, (r, pair) in enumerate(tops.items())]
    for more in words[1:]:
        xor_into(words[0], more)
    if k == 4:
        _widen(_pair(low[0], low[1], False, scratch("l", out.size, np.uint16)), words[0], out)


def join_words(planes: list[np.ndarray], x: np.ndarray, *, moved: bool) -> None:
    """Assemble whole words from codec-3 planes into ``x``, moving the sign back to the top if
    ``moved``: byte pairs into 16-bit halves, then halves into wider words."""
    # NOTE: contiguous arithmetic, widening by pairs, is 1.5x (4-byte) to 5x (2-byte) faster
    # than writing strided byte columns.
    k = len(planes)
    parts = [_pair(planes[i], planes[i + 1], moved and i == k - 2, x if k == 2 else None)
             for i in range(0, k, 2)]
    while len(parts) > 1:
        parts = [_widen(parts[i], parts[i + 1], x if len(parts) == 2 else None) for i in range(0, len(parts), 2)]


def _pair(lo: np.ndarray, hi: np.ndarray, moved: bool, out: np.ndarray | None) -> np.ndarray:
    """16-bit values from a low and a high byte plane; ``moved``: ``hi`` is an exponent plane and
    ``lo`` holds the sign in its top bit."""
    half = np.dtype("<u2") if out is None else out.dtype
    if not moved:
        word = np.left_shift(hi, 8, out=out, dtype=half)
        word |= lo
        return word
    word = np.left_shift(hi, 7, out=out, dtype=half)
    bits = lo & 0x7F
    word |= bits
    np.bitwise_and(lo, 0x80, out=bits)
    word |= np.left_shift(bits, 8, dtype=half)
    return word


def _widen(lo: np.ndarray, hi: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    wide = np.dtype(f"<u{2 * lo.itemsize}") if out is None else out.dtype
    word = np.left_shift(hi, 8 * lo.itemsize, out=out, dtype=wide)
    word |= lo
    return word


# -- zigzag differences (delta chunks of floats, docs/FORMAT.md "Delta chunks") ----------------------
def zigzag_sub(a, b, w: int) -> memoryview:
    """A new buffer of ``zigzag(a - b)``: ``a`` and ``b`` read as little-endian ``w``-byte
    integers, subtracted with wrap-around, the sign moved to the lowest bit (0, -1, 1, -2, ... →
    0, 1, 2, 3, ...). A float that moved by a few units in its last place gives a small integer
    whatever its sign, where its XOR would flip every bit up to the highest one a carry reached."""
    d = np.subtract(np.frombuffer(a, dtype=f"<i{w}"), np.frombuffer(b, dtype=f"<i{w}"))
    z = np.left_shift(d, 1)
    d >>= 8 * w - 1  # arithmetic: all ones for a negative difference
    z ^= d
    return memoryview(z).cast("B")


def add_unzigzag(out: np.ndarray, z: np.ndarray, w: int) -> None:
    """``out += unzigzag(z)`` with wrap-around, ``out`` and ``z`` byte arrays of one length
    (``z`` a scratch buffer: it is overwritten)."""
    z = z.view(f"<u{w}")
    sign = np.bitwise_and(z, 1, out=scratch("zz", z.size, z.dtype, limit=ZIGZAG_MAX))
    np.negative(sign, out=sign)
    z >>= 1
    z ^= sign
    np.add(out.view(f"<u{w}"), z, out=out.view(f"<u{w}"))

