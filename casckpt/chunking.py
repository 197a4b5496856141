"""Where chunk boundaries fall in an item's bytes.

Fixed-size chunking on a row grid. For a tensor of shape ``(d0, d1, ...)`` a *row* is one index of
the first dimension: ``row_bytes = d1 * d2 * ... * itemsize`` (a 1-d tensor's row is one element).

* ``row_bytes <= chunk_size``: a chunk holds ``rows_per_chunk = chunk_size // row_bytes`` whole
  rows, so rewriting a few rows rewrites only the chunks that hold them.
* ``row_bytes > chunk_size``: each row is cut on its own into pieces of ``chunk_size`` bytes (the
  last piece of a row may be shorter), so a row never shares a chunk with its neighbours.
* a 0-d tensor is one chunk; an empty tensor has none.

The grid is anchored on the *global* row index: a shard that starts at global row ``r0`` (and
spans whole rows) begins its chunks at the next multiple of ``rows_per_chunk``, so the same tensor
saved row-sharded over any number of ranks (shard boundaries on grid lines) cuts identical chunks.
"""

from __future__ import annotations

import math

# Chosen by measurement with tools/bench (see docs/FORMAT.md, "Chunk size").
DEFAULT_CHUNK_SIZE = 2 << 20
MIN_CHUNK_SIZE = 4 << 10
MAX_CHUNK_SIZE = 256 << 20


def spans(shape: tuple[int, ...], itemsize: int, chunk_size: int, *, row0: int = 0) -> list[tuple[int, int]]:
    """``(offset, length)`` of each chunk in the item's C-contiguous bytes.

    ``row0`` is the global index of the item's first row (non-zero for a row shard).
    """
    nbytes = math.prod(shape) * itemsize
    if nbytes == 0:
        return []
    if len(shape) == 0 or (nbytes <= chunk_size and row0 == 0):  # one chunk (most items, by count)
        return [(0, nbytes)]
    rows = shape[0]
    row_bytes = nbytes // rows
    if row_bytes > chunk_size:
        return [(r * row_bytes + o, min(chunk_size, row_bytes - o))
                for r in range(rows) for o in range(0, row_bytes, chunk_size)]
    per = max(1, chunk_size // row_bytes)
    cuts = [0]
    first = (-row0) % per or per  # rows until the next grid line
    cuts.extend(range(min(first, rows), rows, per))
    if cuts[-1] != rows:
        cuts.append(rows)
    cuts = sorted(set(cuts))
    return [(a * row_bytes, (b - a) * row_bytes) for a, b in zip(cuts, cuts[1:])]
