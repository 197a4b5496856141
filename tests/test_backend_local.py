"""The conformance suite on the local file-system back-end, plus what only a file system has:
symlinks planted in the root, and no file left behind outside it."""

from __future__ import annotations

import functools
import os

import pytest

from backendkit import BackendConformance, BlobMachine, machine_settings
from casckpt.backends.local import LocalBackend
from casckpt.errors import UnsafePathError


@pytest.fixture
def backend(tmp_path):
    return LocalBackend(tmp_path / "root")


@pytest.fixture
def reopen(backend):
    return functools.partial(LocalBackend, backend.root)


class TestLocal(BackendConformance):
    def test_versions_and_times_are_given(self, backend):
        backend.replace("v", [b"one"])
        first = backend.version("v")
        backend.replace("v", [b"one"])  # the same bytes: still a new file
        assert first is not None and backend.version("v") not in (None, first)
        assert next(iter(backend.list("v"))).mtime is not None

    def test_nothing_written_outside_root(self, backend, tmp_path):
        backend.put_if_absent("a/b", [b"x"])
        backend.replace("c", [b"y"])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
        assert not any((backend.root / "tmp").iterdir())  # temp files are gone

    def test_symlinked_file_is_not_followed(self, backend, tmp_path):
        secret = tmp_path / "secret"
        secret.write_bytes(b"outside")
        backend.put_if_absent("keep", [b"k"])
        os.symlink(secret, backend.root / "link")
        with pytest.raises(UnsafePathError):
            backend.get("link")
        with pytest.raises(UnsafePathError):
            backend.get_range("link", 0, 3)
        assert [b.key for b in backend.list("")] == ["keep"] or "link" not in {b.key for b in backend.list("")}

    def test_symlinked_folder_is_not_listed_or_written_through(self, backend, tmp_path):
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "f").write_bytes(b"o")
        backend.root.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, backend.root / "d")
        assert list(backend.list("d/")) == []
        with pytest.raises(UnsafePathError):
            backend.replace("d/g", [b"x"])
        assert sorted(p.name for p in outside.iterdir()) == ["f"]


class LocalMachine(BlobMachine):
    counter = 0

    @staticmethod
    def make():
        import tempfile
        return LocalBackend(tempfile.mkdtemp(prefix="casckpt-blobs-"))


TestLocalMachine = LocalMachine.TestCase
TestLocalMachine.settings = machine_settings()


def test_a_store_opens_over_a_backend_given(tmp_path):
    """Store.open takes a back-end as well as a path: the whole store then lives in it."""
    import numpy as np

    from casckpt import Store
    backend = LocalBackend(tmp_path / "s")
    with Store.open(backend, create=True) as s:
        s.put_arrays("a", {"w": np.arange(10, dtype=np.float32)})
        assert s.backend is backend
    assert {b.key for b in backend.list("snapshots/")} == {"snapshots/a.json"}
    with Store.open(tmp_path / "s") as s:
        assert s.get_arrays("a")["w"].tolist() == list(range(10))
