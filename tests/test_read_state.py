"""casckpt.read_state: a whole snapshot as the nested dict that was saved, with no template."""

from __future__ import annotations

import pytest
import torch

import casckpt

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")


def test_read_state_rebuilds_nesting_lists_and_optimizer_ids(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    fresh = torch.optim.SGD(model.parameters(), lr=0.1)  # no state yet: DCP saves no empty dict
    sd = {"model": model.state_dict(), "optims": [opt.state_dict(), fresh.state_dict()], "epoch": 3}
    casckpt.save(sd, tmp_path / "run" / "s1")
    got = casckpt.read_state(tmp_path / "run" / "s1")
    assert got["epoch"] == 3 and torch.equal(got["model"]["weight"], model.weight)
    assert set(got["optims"][0]["state"]) == {0, 1}  # ints again, as torch.optim needs
    assert got["optims"][1]["state"] == {}
    restored = torch.optim.AdamW(model.parameters())
    restored.load_state_dict(got["optims"][0])
    assert torch.equal(restored.state_dict()["state"][1]["exp_avg_sq"], opt.state_dict()["state"][1]["exp_avg_sq"])
    torch.optim.SGD(model.parameters(), lr=0.1).load_state_dict(got["optims"][1])


class Opaque:  # not on torch.load's weights_only allow-list
    pass


def test_read_state_never_unpickles_arbitrary_objects_unless_asked(tmp_path):
    casckpt.save({"obj": Opaque(), "w": torch.ones(2)}, tmp_path / "run" / "s1")
    with pytest.raises(casckpt.CheckpointFailedError, match="Weights only load failed"):
        casckpt.read_state(tmp_path / "run")
    assert isinstance(casckpt.read_state(tmp_path / "run", allow_pickle=True)["obj"], Opaque)
