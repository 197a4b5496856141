"""User metadata and tags on saves, `ls` showing and filtering them, and what "latest" means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import casckpt
from clikit import cli, cli_json
from storekit import new_store

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")


def model_sd(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model": torch.nn.Linear(8, 8).state_dict()}


def test_save_records_meta_and_tags_and_ls_filters_by_tag(tmp_path):
    root = tmp_path / "s"
    for step in range(3):
        casckpt.save(model_sd(step), root, f"step-{step}", meta={"loss": 1 / (step + 1), "cfg": {"lr": 0.1}},
                     tags=["run-a"] + (["best"] if step == 1 else []))
    dcp.save(model_sd(9), checkpoint_id="raw", planner=casckpt.DedupSavePlanner(),
             storage_writer=casckpt.CasWriter(root, meta={"via": "dcp.save"}, tags=["run-b"]))
    with casckpt.Store.open(root) as store:
        m = store.manifest("step-1")
        assert m.meta["user"] == {"loss": 0.5, "cfg": {"lr": 0.1}} and m.meta["tags"] == ["best", "run-a"]
        assert "dcp" in m.meta and store.manifest("raw").meta["user"] == {"via": "dcp.save"}
    rows = {r["name"]: r for r in cli_json("ls", root)}
    assert rows["step-2"]["tags"] == ["run-a"] and math.isclose(rows["step-2"]["meta"]["loss"], 1 / 3)
    assert rows["raw"]["tags"] == ["run-b"] and rows["raw"]["origin"] == "save"
    assert [r["name"] for r in cli_json("ls", root, "--tag", "best")] == ["step-1"]
    assert [r["name"] for r in cli_json("ls", root, "--tag", "run-a", "--tag", "best")] == ["step-1"]
    assert cli_json("ls", root, "--tag", "nope") == []
    shown = cli("show", root, "step-1").stdout.splitlines()[1]
    assert shown.startswith("tags best,run-a  meta {") and '"loss":0.5' in shown
    out = cli("ls", root, "--tag", "best").stdout
    assert "best,run-a" in out and '"loss":0.5' in out and "1 snapshot with tag best" in out


def test_bad_meta_or_tags_fail_before_anything_is_written(tmp_path):
    root = tmp_path / "s"
    casckpt.save(model_sd(0), root, "ok")
    for kw in (dict(meta={"x": float("nan")}), dict(meta={"x": {1, 2}}), dict(tags="best"),
               dict(tags=["two words"]), dict(meta=["not", "a", "dict"])):
        with pytest.raises(casckpt.CasckptError):
            casckpt.save(model_sd(1), root, "bad", **kw)
    assert [r["name"] for r in cli_json("ls", root)] == ["ok"]


def test_an_import_never_becomes_latest_by_surprise(tmp_path):
    root = tmp_path / "s"
    for step in range(3):
        casckpt.save(model_sd(step), root, f"step-{step}")
    assert cli("export", root, "step-1", tmp_path / "x", "--format", "dcp").returncode == 0
    assert cli("import", root, "round-trip", tmp_path / "x").returncode == 0  # newer than step-2
    with casckpt.Store.open(root) as store:
        assert store.resolve("latest") == "step-2"
        assert store.manifest("round-trip").meta["import"]["format"] == "dcp"
    sd = model_sd(7)
    assert casckpt.load(sd, root) == "step-2"
    assert cli_json("show", root, "latest")["name"] == "step-2"
    assert "latest (where a resume starts): step-2" in cli("ls", root).stdout
    assert {r["name"]: r["origin"] for r in cli_json("ls", root)}["round-trip"] == "import"
    assert "(imported: 'latest' prefers saved ones)" in cli("show", root, "round-trip").stdout.splitlines()[0]
    casckpt.save(model_sd(3), root, "step-3")
    assert casckpt.load(sd, root) == "step-3"


def test_in_a_store_of_imports_only_latest_is_the_newest_import(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        store.put_arrays("src", {"w": np.ones(4, np.float32)})
    assert cli("export", root, "src", tmp_path / "w.safetensors", "--format", "safetensors").returncode == 0
    other = tmp_path / "t"
    assert cli("import", other, "base", tmp_path / "w.safetensors").returncode == 0
    assert cli("import", other, "base2", tmp_path / "w.safetensors").returncode == 0
    with casckpt.Store.open(other) as store:
        assert store.resolve("latest") == "base2"
        store.put_arrays("trained", {"w": np.zeros(4, np.float32)})  # a put_arrays save counts
        assert store.resolve("latest") == "trained"


def test_latest_parses_each_manifest_once_per_process(tmp_path, monkeypatch):
    # every manifest of the last LATEST_SKEW seconds is a candidate for "latest": a job saving
    # every few seconds must not parse them all again at each save, only the ones it has not seen
    import numpy as np

    from casckpt import snapshots
    from casckpt.manifest import Manifest
    monkeypatch.setattr(snapshots, "_HEADS", snapshots._HEADS)  # put back after the test
    root = tmp_path / "s"
    with casckpt.Store.open(root, create=True) as store:
        for i in range(6):
            store.put_arrays(f"s{i}", {"w": np.full(8, i, np.float32)})
    snapshots._HEADS = snapshots._Heads()  # as a new process finds it
    parsed = []
    real = Manifest.from_bytes.__func__
    monkeypatch.setattr(Manifest, "from_bytes", classmethod(lambda cls, data, **kw: parsed.append(1) or real(cls, data, **kw)))
    with casckpt.Store.open(root) as store:
        assert store.manifest("latest").name == "s5"
    first = len(parsed)
    with casckpt.Store.open(root) as store:  # a new Store, as each save's writer opens one
        store.put_arrays("s6", {"w": np.full(8, 6, np.float32)})
    with casckpt.Store.open(root) as store:
        assert store.manifest("latest").name == "s6"
        assert store.get_arrays("latest")["w"][0] == 6
    assert first == 6  # every manifest is in the skew window: each parsed once
    assert len(parsed) - first == 2  # the winner at s6's save, then s6 itself; no other again
    with casckpt.Store.open(root) as store:
        store.put_arrays("imp", {"w": np.zeros(8, np.float32)}, meta={"import": {"from": "x"}})
    with casckpt.Store.open(root) as store:
        assert store.manifest("latest").name == "s6"  # imports never become "latest"
