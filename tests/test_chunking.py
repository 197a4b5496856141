"""Chunk boundaries: whole rows, full coverage, and a grid anchored on global rows."""

import math

from hypothesis import assume, given
from hypothesis import strategies as st

from casckpt.chunking import spans

shapes = st.lists(st.integers(0, 50), min_size=0, max_size=3).map(tuple)


@given(shape=shapes, itemsize=st.sampled_from([1, 2, 4, 8]), chunk=st.sampled_from([16, 64, 256]))
def test_spans_tile_the_item_and_respect_the_chunk_size(shape, itemsize, chunk):
    out = spans(shape, itemsize, chunk)
    total = math.prod(shape) * itemsize
    assert sum(n for _, n in out) == total
    pos = 0
    for off, n in out:
        assert off == pos and 0 < n and (n <= chunk or len(shape) == 0)
        pos += n


@given(rows=st.integers(1, 200), cols=st.integers(1, 20), chunk=st.sampled_from([64, 256, 1024]))
def test_small_rows_never_straddle_a_chunk(rows, cols, chunk):
    row = cols * 4
    assume(row <= chunk)
    for off, n in spans((rows, cols), 4, chunk):
        assert off % row == 0 and n % row == 0


@given(rows=st.integers(1, 20), cols=st.integers(17, 100))
def test_big_rows_are_cut_on_their_own(rows, cols):
    row = cols * 4  # over the 64-byte chunk
    for off, n in spans((rows, cols), 4, 64):
        assert off // row == (off + n - 1) // row  # a chunk never spans two rows


@given(rows=st.integers(1, 300), per=st.integers(1, 8), cut=st.integers(0, 300))
def test_row_shards_on_grid_lines_cut_the_same_chunks(rows, per, cut):
    row = 8
    chunk = per * row
    cut = min(cut, rows) // per * per  # a shard boundary on a grid line
    whole = [(o // row, n // row) for o, n in spans((rows, 2), 4, chunk)]
    top = [(o // row, n // row) for o, n in spans((cut, 2), 4, chunk, row0=0)]
    bottom = [(cut + o // row, n // row) for o, n in spans((rows - cut, 2), 4, chunk, row0=cut)]
    assert top + bottom == whole
