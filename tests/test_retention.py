"""Retention that does not shift between runs, restic-like time rules, and item-level thinning."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import casckpt
from casckpt.gc import gc
from casckpt.retention import Policy, Snap, parse_duration, select
from clikit import cli, cli_json
from storekit import assert_same, chunk_names, new_store, referenced


def weights_and_optim(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"model.w": rng.standard_normal(3000).astype(np.float32),
            "optim.exp_avg": rng.standard_normal(3000).astype(np.float32),
            "optim.step": np.array(step, np.int64)}


def test_keep_every_is_stable_across_runs(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        for s in range(12):
            store.put_arrays(f"step-{s:02d}", weights_and_optim(s))
        assert [store.manifest(f"step-{s:02d}").meta["seq"] for s in range(12)] == list(range(12))
    runs = [cli_json("gc", root, "--keep-every", "3", "--keep-last", "2")["keep"] for _ in range(3)]
    assert runs[0] == ["step-00", "step-03", "step-06", "step-09", "step-10", "step-11"]
    assert runs[1] == runs[2] == runs[0]
    with new_store(root) as store:  # the next save continues the numbering: gaps never renumber
        store.put_arrays("step-12", weights_and_optim(12))
        assert store.manifest("step-12").meta["seq"] == 12
    assert "step-12" in cli_json("gc", root, "--keep-every", "3", "--keep-last", "1", "--dry-run")["keep"]


def test_keep_every_in_a_store_saved_before_seq_was_recorded(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        for s in range(6):
            store.put_arrays(f"old-{s}", weights_and_optim(s))
    for p in (root / "snapshots").glob("*.json"):  # as an older casckpt wrote them
        doc = json.loads(p.read_bytes())
        del doc["meta"]["seq"]
        p.write_text(json.dumps(doc))
    with new_store(root) as store:
        store.reindex()  # the registry as an older casckpt left it: no seq either
        store.put_arrays("new", weights_and_optim(9))
        assert store.manifest("new").meta["seq"] == 6  # numbered after the 6 old ones
    assert cli_json("gc", root, "--keep-every", "2", "--dry-run")["keep"] == ["old-0", "old-2", "old-4", "new"]


def at(*hours: float) -> list[Snap]:
    t0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)  # a Monday
    return [Snap(f"h{h:g}", t0 + timedelta(hours=h), i) for i, h in enumerate(hours)]


def test_calendar_rules_keep_the_newest_of_each_bucket():
    snaps = at(0, 1, 1.5, 2.5, 25, 26, 24 * 8, 24 * 8 + 1, 24 * 40)
    utc = timezone.utc
    assert set(select(snaps, Policy(hourly=3), tz=utc)) == {"h960", "h193", "h192"}
    assert set(select(snaps, Policy(daily=3), tz=utc)) == {"h960", "h193", "h26"}
    assert set(select(snaps, Policy(weekly=2), tz=utc)) == {"h960", "h193"}
    assert set(select(snaps, Policy(monthly=5), tz=utc)) == {"h960", "h193"}  # March; April
    assert set(select(snaps, Policy(daily=10), tz=utc)) == {"h960", "h193", "h26", "h2.5"}
    why = select(snaps, Policy(daily=1, last=1), tz=utc)
    assert why == {"h960": ["last", "daily 2026-04-11"]}


def test_calendar_days_follow_the_time_zone():
    snaps = at(0, 5, 23)  # one UTC day; in IST (+5:30) h23 falls on the next day
    ist = timezone(timedelta(hours=5, minutes=30))
    assert set(select(snaps, Policy(daily=5), tz=timezone.utc)) == {"h23"}
    assert set(select(snaps, Policy(daily=5), tz=ist)) == {"h5", "h23"}
    assert set(select(snaps, Policy(daily=5, utc=True))) == {"h23"}


def test_keep_within_is_relative_to_the_newest_snapshot(tmp_path):
    snaps = at(0, 10, 30, 50, 60)
    assert set(select(snaps, Policy(within=parse_duration("1d")))) == {"h50", "h60"}
    assert set(select(snaps, Policy(within=parse_duration("1d12h")))) == {"h30", "h50", "h60"}
    assert parse_duration("2d") == 2 * 86400 and parse_duration("90m") == 5400 and parse_duration("1w") == 7 * 86400
    with pytest.raises(casckpt.CasckptError):
        parse_duration("2 days")
    with new_store(tmp_path / "s") as store:
        store.put_arrays("s0", weights_and_optim(0))
    r = cli("gc", tmp_path / "s", "--keep-within", "soon")
    assert r.returncode == 2 and "bad duration 'soon'" in r.stderr
    assert cli_json("gc", tmp_path / "s", "--keep-within", "2d")["keep"] == ["s0"]


def test_thinning_drops_optimizer_state_of_old_snapshots_and_keeps_weights(tmp_path):
    root = tmp_path / "s"
    saved = {}
    with new_store(root) as store:
        for s in range(5):
            saved[f"s{s}"] = weights_and_optim(s)
            store.put_arrays(f"s{s}", saved[f"s{s}"])
        seqs = {n: store.manifest(n).meta["seq"] for n in saved}
    plan = cli_json("gc", root, "--thin-older-than", "2", "--drop-items", "optim.*")
    assert plan["thinned"] == ["s0", "s1", "s2"] and plan["drop"] == [] and plan["chunks"] > 0
    with new_store(root) as store:
        for n in ("s0", "s1", "s2"):
            m = store.manifest(n)
            assert sorted(m.items) == ["model.w"] and m.meta["seq"] == seqs[n]
            assert m.meta["thinned"] == {"patterns": ["optim.*"], "items": 2}
            assert_same({"model.w": saved[n]["model.w"]}, store.get_arrays(n))
        for n in ("s3", "s4"):
            assert_same(saved[n], store.get_arrays(n))
        assert chunk_names(root) == referenced(store)
        assert [s.name for s in store.snapshots()] == list(saved)  # order (created) unchanged
        assert store.resolve("latest") == "s4"
    assert cli("verify", root).returncode == 0
    again = cli_json("gc", root, "--thin-older-than", "2", "--drop-items", "optim.*")
    assert again["thinned"] == [] and again["chunks"] == 0
    assert cli("gc", root, "--thin-older-than", "2").returncode == 2  # patterns are required


def test_thinning_needs_a_newest_snapshot_left_whole(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        store.put_arrays("s0", weights_and_optim(0))
        with pytest.raises(casckpt.CasckptError):
            gc(store, thin_older_than=0, drop_items=["optim.*"])
        assert sorted(store.manifest("s0").items) == ["model.w", "optim.exp_avg", "optim.step"]
    r = cli("gc", root, "--thin-older-than", "0", "--drop-items", "optim.*")
    assert r.returncode == 2 and "never thinned" in r.stderr


@pytest.mark.filterwarnings("ignore:torch.distributed is:UserWarning")
def test_a_thinned_dcp_snapshot_loads_as_weights_only(tmp_path):
    import torch

    root = tmp_path / "s"
    torch.manual_seed(0)
    # NOTE: layers of 16 KiB and more: smaller tensors share packs (casckpt.packs), and thinning
    # frees a pack only when no kept item is in it
    model = torch.nn.Sequential(torch.nn.Linear(16, 2048), torch.nn.Linear(2048, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        model(torch.randn(4, 16)).square().mean().backward()
        opt.step()
        casckpt.save({"model": model.state_dict(), "optim": opt.state_dict()}, root, f"step-{step}")
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    plan = cli_json("gc", root, "--thin-older-than", "1", "--drop-items", "optim.*")
    assert plan["thinned"] == ["step-0", "step-1"] and plan["chunks"] > 0
    with casckpt.Store.open(root) as store:
        m = store.manifest("step-1")
        assert all(k.startswith("model.") for k in m.items)
        assert all(k.startswith("model.") for k in m.meta["dcp"]["state_dict_metadata"])
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 2048), torch.nn.Linear(2048, 16))
    sd = {"model": fresh.state_dict()}
    assert casckpt.load(sd, root, "step-1") == "step-1"  # weights only: loads
    fresh.load_state_dict(sd["model"])
    full = {"model": fresh.state_dict(), "optim": torch.optim.AdamW(fresh.parameters()).state_dict()}
    with pytest.raises(casckpt.CasckptError):
        casckpt.load(full, root, "step-1")  # its optimizer state is gone, and it says so
    sd = {"model": fresh.state_dict()}
    casckpt.load(sd, root)  # latest is whole
    assert all(torch.equal(sd["model"][k], kept[k]) for k in kept)
    assert cli("verify", root).returncode == 0


def test_gc_time_rules_from_the_command_line_and_why_each_is_kept(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        for s in range(4):
            store.put_arrays(f"s{s}", weights_and_optim(s))
    plan = cli_json("gc", root, "--keep-daily", "1", "--keep-within", "1h", "--utc", "--dry-run")
    assert plan["keep"] == ["s0", "s1", "s2", "s3"]  # all within the hour; s3 is also today's newest
    assert plan["reasons"]["s3"][:2] == ["daily " + plan["reasons"]["s3"][0].split()[1], "within"]
    assert cli_json("gc", root, "--keep-daily", "1", "--dry-run")["keep"] == ["s3"]
    out = cli("gc", root, "--keep-daily", "1", "--keep-every", "2", "--dry-run").stdout
    assert "  keep s0  (every 2 (seq 0))" in out and "  keep s3  (daily " in out
