import numpy as np
import pytest

import casckpt


@pytest.fixture
def store(tmp_path):
    # Small chunks so that small test arrays span many chunks.
    with casckpt.Store.open(tmp_path / "store", create=True, chunk_size=16 << 10) as s:
        yield s


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def chunk_files(root) -> list:
    """Chunk files on disk, read straight from the directory (bypassing the store)."""
    return sorted(p for p in (root / "chunks").glob("*/*") if p.is_file())
