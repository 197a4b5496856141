"""casckpt.save / casckpt.load from the caller's side: Ctrl-C and other non-Exceptions come out
unchanged, and a load into a smaller template says what it left behind and what it cast."""

from __future__ import annotations

import errno

import pytest
import torch

import casckpt
from casckpt import fsutil
from casckpt.lock import EXCLUSIVE

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")
CHUNK = 16 << 10


class Custom(BaseException):
    pass


def raising_at(n: int, exc: BaseException):
    """A file-writer wrapper (the I/O boundary) that raises ``exc`` at its ``n``-th call."""
    real, calls = fsutil.write_parts, [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), Custom("stop")], ids=type)
def test_save_interrupted_raises_the_interrupt_unchanged(tmp_path, monkeypatch, exc):
    root = tmp_path / "store"
    casckpt.save({"w": torch.randn(64, 64)}, root, "a", chunk_size=CHUNK)
    monkeypatch.setattr(fsutil, "write_parts", raising_at(2, exc))
    with pytest.raises(type(exc)) as info:
        casckpt.save({"w": torch.randn(64, 64)}, root, "b")
    assert info.value is exc
    monkeypatch.undo()
    with casckpt.Store.open(root) as store:
        assert store.snapshot_names() == ["a"]
        with store.lock(EXCLUSIVE, timeout=0):  # the interrupted save let go of the lock
            pass


def test_load_interrupted_raises_keyboardinterrupt(tmp_path, monkeypatch):
    root = tmp_path / "store"
    casckpt.save({"w": torch.randn(64, 64)}, root, "a", chunk_size=CHUNK)
    real = fsutil.read_file

    def read(path):
        if path.parent.parent.name == "chunks":
            raise KeyboardInterrupt
        return real(path)
    monkeypatch.setattr(fsutil, "read_file", read)
    with pytest.raises(KeyboardInterrupt):
        casckpt.load({"w": torch.zeros(64, 64)}, root)


def test_ordinary_failures_stay_typed(tmp_path, monkeypatch):
    root = tmp_path / "store"
    casckpt.save({"w": torch.randn(64, 64)}, root, "a", chunk_size=CHUNK)
    monkeypatch.setattr(fsutil, "write_parts", raising_at(1, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(casckpt.StoreIOError) as info:
        casckpt.save({"w": torch.randn(64, 64)}, root, "b")
    assert info.value.errno == errno.ENOSPC and not str(info.value).endswith("None")
