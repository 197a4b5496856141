"""`export --format torch` gives back the nested state dict, so stock load_state_dict calls take it."""

from __future__ import annotations

import pytest
import torch

import casckpt
from casckpt.nest import nest
from clikit import cli

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")


def trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(2):
        model(torch.randn(4, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def fresh():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.5)


def assert_loads_into_fresh_objects(obj, model, opt):
    m2, o2 = fresh()
    m2.load_state_dict(obj["model"])
    o2.load_state_dict(obj["optim"])
    for k, v in model.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
    a, b = opt.state_dict(), o2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(b["state"][pid][k], v), (pid, k)


def test_export_of_a_dcp_snapshot_loads_into_model_and_optimizer(tmp_path):
    model, opt = trained()
    root = tmp_path / "s"
    casckpt.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": 2}, root, "step-2")
    r = cli("export", root, "step-2", tmp_path / "out.pt", "--format", "torch")
    assert r.returncode == 0, r.stderr
    obj = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(obj) == {"model", "optim", "step"} and obj["step"] == 2
    assert isinstance(obj["optim"]["state"], dict) and isinstance(obj["optim"]["param_groups"], list)
    assert_loads_into_fresh_objects(obj, model, opt)


def test_torch_file_round_trip_keeps_the_nesting(tmp_path):
    model, opt = trained()
    src = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, src)
    root = tmp_path / "s"
    assert cli("import", root, "imp", src).returncode == 0
    assert cli("export", root, "imp", tmp_path / "back.pt", "--format", "torch").returncode == 0
    obj = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(obj["model"]) == list(model.state_dict())  # "0.weight" stays one key of "model"
    assert obj["epoch"] == 3
    assert_loads_into_fresh_objects(obj, model, opt)


def test_nest_follows_paths_lists_and_optimizer_state():
    flat = {"a.b": 1, "opt.state.1.m": 2, "opt.state.0.m": 3, "opt.param_groups.0.lr": 0.1,
            "xs.1": "second", "plain": 4}
    paths = {"a.b": ["a", "b"], "opt.state.1.m": ["opt", "state", 1, "m"], "opt.state.0.m": ["opt", "state", 0, "m"],
             "opt.param_groups.0.lr": ["opt", "param_groups", 0, "lr"], "xs.1": ["xs", 1]}
    assert nest(flat, paths) == {"a": {"b": 1}, "opt": {"state": {0: {"m": 3}, 1: {"m": 2}},
                                                         "param_groups": [{"lr": 0.1}]},
                                 "xs": [None, "second"], "plain": 4}
