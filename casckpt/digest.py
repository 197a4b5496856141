"""The chunk digest: BLAKE3-256 of a chunk's uncompressed bytes. The only module that imports blake3."""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

from .errors import ManifestError

DIGEST_SIZE = 32
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Digest:
    """A 32-byte BLAKE3 digest; ``str(d)`` is its 64-character lowercase hex form."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, got {self.raw!r:.80}")

    def __hash__(self) -> int:
        # NOTE: the dataclass's own hash builds a tuple per call; sets of 500k digests feel it
        return hash(self.raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"Digest({self.raw.hex()[:16]}…)"

    @classmethod
    def from_hex(cls, text: object) -> "Digest":
        """Parse a digest from JSON; anything but 64 lowercase hex characters is a ManifestError."""
        if not isinstance(text, str) or not _HEX.fullmatch(text):
            raise ManifestError(f"not a chunk digest: {str(text)[:80]!r}")
        return cls(bytes.fromhex(text))


def digest_of(data) -> Digest:
    """BLAKE3 of a bytes-like object (a memoryview or a contiguous numpy array works, no copy)."""
    # NOTE: blake3 releases the GIL for inputs over a few KiB, so callers hash in a thread pool.
    return Digest(blake3.blake3(data).digest())


def raw_digest(data) -> bytes:
    """:func:`digest_of` as 32 raw bytes, without a Digest object (for many small inputs)."""
    return blake3.blake3(data).digest()
