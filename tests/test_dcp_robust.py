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


def trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return model, opt


def test_load_into_a_fresh_optimizer_says_what_it_did_not_load(tmp_path):
    model, opt = trained()
    casckpt.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "s", "step-1")
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    target = {"model": fresh.state_dict(), "optim": torch.optim.Adam(fresh.parameters()).state_dict()}
    with pytest.warns(casckpt.LoadWarning, match="were not loaded") as rec:
        got = casckpt.load(target, tmp_path / "s")
    assert got == "step-1" and isinstance(got, str)
    moments = {f"optim.state.{p}.{k}" for p in range(4) for k in ("exp_avg", "exp_avg_sq", "step")}
    assert set(got.not_loaded) == moments and got.cast == {}
    assert "optim.state.0.exp_avg" in str(rec[0].message)


def test_load_says_when_it_casts(tmp_path):
    model, _ = trained()
    casckpt.save({"model": model.state_dict()}, tmp_path / "s", "a")
    target = {"model": {k: v.double() for k, v in model.state_dict().items()}}
    with pytest.warns(casckpt.LoadWarning, match="cast"):
        got = casckpt.load(target, tmp_path / "s")
    assert got.cast == {f"model.{k}": ("float32", "float64") for k in model.state_dict()}
    assert got.not_loaded == ()
    assert torch.equal(target["model"]["0.weight"], model.state_dict()["0.weight"].double())


def test_a_matching_template_loads_without_warnings(tmp_path, recwarn):
    model, opt = trained()
    sd = {"model": model.state_dict(), "optim": opt.state_dict()}
    casckpt.save(sd, tmp_path / "s", "a")
    got = casckpt.load(sd, tmp_path / "s")
    assert got.not_loaded == () and got.cast == {}
    assert not [w for w in recwarn if issubclass(w.category, casckpt.LoadWarning)]
