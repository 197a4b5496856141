"""casckpt.gcpause: the cyclic collector is paused around a save's per-item steps and left as the
caller had it, after a save, a failed save, nested and overlapping pauses."""

import gc
import threading

import pytest
import torch

import casckpt
from casckpt import gcpause
from casckpt.errors import CasckptError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")


@pytest.fixture
def collector():
    was = gc.isenabled()
    yield
    gc.enable() if was else gc.disable()


def test_pause_nests_and_restores_the_callers_state(collector):
    gc.enable()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
    assert gc.isenabled()
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()  # disabled by the caller: left disabled


def test_an_error_inside_a_pause_still_restores(collector):
    gc.enable()
    with pytest.raises(ValueError):
        with gcpause.paused():
            raise ValueError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_in_threads_resume_after_the_last(collector):
    gc.enable()
    inside, leave = threading.Event(), threading.Event()

    def other():
        with gcpause.paused():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    with gcpause.paused():
        t.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread's pause is still running
    leave.set()
    t.join(5)
    assert gc.isenabled()


def test_a_save_and_a_failed_save_leave_the_collector_as_they_found_it(tmp_path, collector):
    sd = {f"t{i}": torch.arange(i + 1, dtype=torch.float32) for i in range(50)}
    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        casckpt.save(sd, tmp_path / "s", f"ok-{enabled}")
        assert gc.isenabled() is enabled
        bad = {**sd, "q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)}
        with pytest.raises(CasckptError, match="quantized"):  # raised while hashing, inside a pause
            casckpt.save(bad, tmp_path / "s", f"bad-{enabled}")
        assert gc.isenabled() is enabled
    got = {k: torch.zeros_like(v) for k, v in sd.items()}
    casckpt.load(got, tmp_path / "s", "ok-False")
    assert all(torch.equal(got[k], sd[k]) for k in sd)
