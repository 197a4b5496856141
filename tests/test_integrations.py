"""casckpt inside real training frameworks (installed by tools/test): Lightning's Trainer and
Fabric through CasckptCheckpointIO, a save, a resume, and bit-exact state."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import casckpt

pytestmark = pytest.mark.filterwarnings("ignore")


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


def _module():
    import lightning.pytorch as pl

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return Regressor()


def _trainer(tmp_path, max_steps: int):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from casckpt.integrations.lightning import CasckptCheckpointIO

    ckpt = ModelCheckpoint(dirpath=tmp_path / "run", every_n_train_steps=2, save_top_k=-1)
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[ckpt],
                      plugins=[CasckptCheckpointIO()], default_root_dir=tmp_path), ckpt


def test_lightning_trainer_saves_into_one_store_and_resumes(tmp_path):
    torch.manual_seed(0)
    trainer, ckpt = _trainer(tmp_path, 6)
    model = _module()
    loader = torch.utils.data.DataLoader(_data(), batch_size=8)
    trainer.fit(model, loader)
    store = casckpt.Store.open(tmp_path / "run")
    names = sorted(store.snapshot_names())
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"], names
    assert not list((tmp_path / "run").glob("*.ckpt"))  # snapshots, not files

    # resume from step 4 in a fresh trainer: weights and optimizer moments come back bit-exactly
    saved = casckpt.read_state(tmp_path / "run" / "epoch=0-step=4.ckpt", allow_pickle=True)
    trainer2, _ = _trainer(tmp_path, 5)
    model2 = _module()
    seen = {}

    class Probe(__import__("lightning.pytorch", fromlist=["Callback"]).Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["w"] = pl_module.net[0].weight.detach().clone()
            seen["opt"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # live tensors otherwise

    trainer2.callbacks.append(Probe())
    trainer2.fit(model2, loader, ckpt_path=str(tmp_path / "run" / "epoch=0-step=4.ckpt"), weights_only=False)
    assert seen["step"] == 4
    assert torch.equal(seen["w"], saved["state_dict"]["net.0.weight"])
    st = seen["opt"]["state"]
    assert set(st) == {0, 1, 2, 3}  # integer parameter ids, as torch.optim needs them
    assert torch.equal(st[0]["exp_avg"], saved["optimizer_states"][0]["state"][0]["exp_avg"])


def test_fabric_save_and_load_through_casckpt(tmp_path):
    from lightning.fabric import Fabric

    from casckpt.integrations.lightning import CasckptCheckpointIO

    fabric = Fabric(accelerator="cpu", devices=1, plugins=[CasckptCheckpointIO()])
    torch.manual_seed(1)
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = fabric.setup(model, opt)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    fabric.save(tmp_path / "run" / "step-1", {"model": model, "optimizer": opt, "step": 1})
    model2 = torch.nn.Linear(16, 4)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    model2, opt2 = fabric.setup(model2, opt2)
    state = {"model": model2, "optimizer": opt2, "step": 0}
    rest = fabric.load(tmp_path / "run" / "step-1", state)
    assert state["step"] == 1 and rest == {}
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    fabric.strategy.checkpoint_io.remove_checkpoint(tmp_path / "run" / "step-1")
    assert casckpt.Store.open(tmp_path / "run").snapshot_names() == []


def test_accelerate_save_state_and_load_state_through_casckpt(tmp_path):
    from accelerate import Accelerator

    from casckpt.integrations.accelerate import load_state, save_state

    acc = Accelerator(cpu=True)
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    loader = torch.utils.data.DataLoader(_data(), batch_size=8)

    def step(x, y):
        acc.backward(torch.nn.functional.mse_loss(model(x), y))
        opt.step()
        sched.step()
        opt.zero_grad()

    batches = list(loader)
    for x, y in batches[:2]:
        step(x, y)
    stats = save_state(acc, tmp_path / "run" / "step-2")
    assert stats.snapshot == "step-2" and stats.new_chunks > 0
    saved = {"w": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
             "lr": sched.get_last_lr(), "rand": torch.rand(3)}
    for x, y in batches[2:4]:  # train on: everything moves
        step(x, y)
    load_state(acc, tmp_path / "run")  # the store itself: its newest snapshot
    for k, v in saved["w"].items():
        assert torch.equal(model.state_dict()[k], v), k
    got = opt.state_dict()
    assert torch.equal(got["state"][0]["exp_avg"], saved["opt"]["state"][0]["exp_avg"])
    assert got["param_groups"][0]["lr"] == saved["opt"]["param_groups"][0]["lr"]
    assert sched.get_last_lr() == saved["lr"]
    again = save_state(acc, tmp_path / "run" / "step-2b")  # the same state: nothing new to write
    assert again.new_chunks == 0
    assert torch.equal(torch.rand(3), saved["rand"])  # the RNG state came back too


# -- a torchtitan-style loop: FSDP2 on gloo, async save every step, resume on another world size --
def _titan_model(world: int):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8))
    if world > 1:
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _full(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _full(v).items()})
        elif isinstance(v, torch.Tensor):
            out[k] = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        else:
            out[k] = v
    return out


def _titan_job(rank: int, world: int, port: int, root: str, out: str, phase: str) -> None:
    import json

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, opt = _titan_model(world)
        if phase == "train":
            ckpt_group = dist.new_group(backend="gloo")  # as torchtitan: async saves off the training group
            g = torch.Generator().manual_seed(rank)
            pending = None
            for step in (1, 2, 3):
                x = torch.randn(4, 16, generator=g)
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad()
                if pending is not None:
                    pending.result()
                msd, osd = get_state_dict(model, opt)
                pending = dcp.async_save({"model": msd, "optim": osd}, checkpoint_id=f"{root}/step-{step}",
                                         storage_writer=casckpt.CasWriter(), planner=casckpt.DedupSavePlanner(),
                                         process_group=ckpt_group)
            pending.result()
        else:
            msd, osd = get_state_dict(model, opt)  # initialises optimizer state to load into
            dcp.load({"model": msd, "optim": osd}, checkpoint_id=f"{root}/step-3",
                     storage_reader=casckpt.CasReader())
            set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
        msd, osd = get_state_dict(model, opt)
        full = {k: v.tolist() if isinstance(v, torch.Tensor) else v
                for k, v in _full({"model": msd, "optim": osd}).items()}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(full, f)
    finally:
        dist.destroy_process_group()


def _spawn(world: int, *args) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_titan_job, args=(world, port, *args), nprocs=world, join=True)


def test_torchtitan_style_loop_resumes_on_another_world_size(tmp_path):
    import json

    root = tmp_path / "checkpoint"
    _spawn(2, str(root), str(tmp_path / "trained.json"), "train")
    assert sorted(casckpt.Store.open(root).snapshot_names()) == ["step-1", "step-2", "step-3"]
    trained = json.loads((tmp_path / "trained.json").read_text())
    assert any("exp_avg" in k for k in trained)
    for world in (1, 3):
        _spawn(world, str(root), str(tmp_path / f"resumed{world}.json"), "resume")
        assert json.loads((tmp_path / f"resumed{world}.json").read_text()) == trained, world
