"""diff: item level by digests, FQNs for DCP shards, and --values reading only differing chunks."""

from __future__ import annotations

import numpy as np
import pytest

from casckpt import fsutil
from casckpt.diff import diff
from clikit import cli, cli_json
from storekit import new_store


def two_snapshots(store, rng):
    a = {"w": rng.standard_normal((64, 128)).astype(np.float32),
         "emb": rng.standard_normal((64, 128)).astype(np.float32),
         "ids": np.arange(5000, dtype=np.int64), "gone": np.zeros(3, np.float32)}
    b = {k: v.copy() for k, v in a.items() if k != "gone"}
    b["w"][10] += 0.5  # one row: one chunk of w
    b["w"][50, 3] = -100.0
    b["new"] = np.ones(4, np.float32)
    store.put_arrays("a", a)
    store.put_arrays("b", b)
    return a, b


def test_json_shape_and_item_level_result(tmp_path, rng):
    root = tmp_path / "s"
    with new_store(root) as store:
        a, b = two_snapshots(store, rng)
        w_chunks = len(store.manifest("a").items["w"].chunks)
    r = cli_json("diff", root, "a", "b")
    assert (r["added"], r["removed"], r["changed"], r["unchanged"]) == (["new"], ["gone"], ["w"], ["emb", "ids"])
    c = r["changes"]["w"]
    assert c["chunks"] == w_chunks and c["chunks_differ"] == 2 and c["bytes_differ"] == 2 * 4096
    assert c["max_abs_diff"] is None and r["chunks_read"] == 0 and not r["identical"]
    r = cli_json("diff", root, "a", "b", "--values")
    c = r["changes"]["w"]
    d = b["w"].astype(np.float64) - a["w"]
    rows = np.concatenate([a["w"][8:16], a["w"][48:56]]).astype(np.float64)  # 8 rows per 4 KiB chunk
    assert c["max_abs_diff"] == pytest.approx(np.abs(d).max())
    assert c["rel_l2"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(rows))
    assert r["chunks_read"] == 4
    out = cli("diff", root, "a", "b", "--values")
    assert out.returncode == 0 and "~ w" in out.stdout and "+ new" in out.stdout and "- gone" in out.stdout


def test_values_read_only_the_differing_chunks(tmp_path, rng, monkeypatch):
    with new_store(tmp_path / "s") as store:
        a, b = two_snapshots(store, rng)
        wanted = {c.digest for m in ("a", "b") for i, c in enumerate(store.manifest(m).items["w"].chunks)
                  if store.manifest("a").items["w"].chunks[i] != store.manifest("b").items["w"].chunks[i]}
        reads = []
        real = fsutil.read_file  # the file reader: every chunk read goes through it

        def counting(path):
            if path.parent.parent.name == "chunks":
                reads.append(path.name)
            return real(path)
        monkeypatch.setattr(fsutil, "read_file", counting)
        diff(store, "a", "b")
        assert reads == []  # digests alone tell what is unchanged
        r = diff(store, "a", "b", values=True)
        # b's changed chunks are deltas against a's at the same place: reading one reads its base
        # (a differing chunk of a) again, so files repeat, but no other chunk is read
        assert set(reads) == {d.hex for d in wanted} and len(wanted) == 4
        assert r.chunks_read == 4


def test_values_work_when_other_tensors_chunks_are_gone(tmp_path, rng):
    """The CLI proof: delete every chunk file not of the changed tensor; diff --values still works."""
    root = tmp_path / "s"
    with new_store(root) as store:
        a, b = two_snapshots(store, rng)
        keep = {c.digest for m in ("a", "b") for c in store.manifest(m).items["w"].chunks}
        doomed = [d for d in store.chunks if d not in keep]
        for d in doomed:
            store.chunks.delete(d)
    assert doomed
    r = cli_json("diff", root, "a", "b", "--values")
    expect = np.abs(b["w"].astype(np.float64) - a["w"]).max()
    assert r["changed"] == ["w"] and r["changes"]["w"]["max_abs_diff"] == pytest.approx(expect)
    assert cli("verify", root).returncode == 1  # the deletions were real


def test_bfloat16_and_float8_values_without_torch_match_torch(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, generator=g)
    y = x.clone()
    y[:100] += 0.25
    arrays = {}
    for name, dt in (("bf", torch.bfloat16), ("f8", torch.float8_e4m3fn), ("f5", torch.float8_e5m2)):
        xa, ya = x.to(dt), y.to(dt)
        width = torch.uint16 if dt == torch.bfloat16 else torch.uint8
        arrays[name] = (xa.view(width).numpy(), ya.view(width).numpy(), str(dt)[6:],
                        (ya.double() - xa.double()).abs().max().item(),
                        ((ya.double() - xa.double()).norm() / xa.double().norm()).item())
    with new_store(tmp_path / "s") as store:
        names = {k: v[2] for k, v in arrays.items()}
        store.put_arrays("a", {k: v[0] for k, v in arrays.items()}, dtype_names=names)
        store.put_arrays("b", {k: v[1] for k, v in arrays.items()}, dtype_names=names)
    r = cli_json("diff", tmp_path / "s", "a", "b", "--values")
    for name, (_, _, dt, mx, rel) in arrays.items():
        c = r["changes"][name]
        assert c["dtype"] == dt and c["max_abs_diff"] == pytest.approx(mx), name
        # one 4 KiB chunk holds all 2048 elements, so "over the differing chunks" is the whole tensor
        assert c["chunks"] == 1 and c["rel_l2"] == pytest.approx(rel), name


def test_dcp_shards_are_reported_by_fqn(tmp_path, rng):
    w = rng.standard_normal((8, 4)).astype(np.float32)
    with new_store(tmp_path / "s") as store:
        store.put_arrays("a", {"layer.w@0,0": w[:4], "layer.w@4,0": w[4:], "b": w[0]}, meta={"dcp": {}})
        w2 = w.copy()
        w2[6] = 0
        store.put_arrays("b", {"layer.w@0,0": w2[:4], "layer.w@4,0": w2[4:], "b": w[0]}, meta={"dcp": {}})
        store.put_arrays("c", {"layer.w@0,0": w[:2], "layer.w@2,0": w[2:], "b": w[0]}, meta={"dcp": {}})
        r = diff(store, "a", "b", values=True)
        assert r.changed == ("layer.w",) and r.unchanged == ("b",)
        assert r.changes["layer.w"].chunks_differ == 1 and r.changes["layer.w"].shape is None
        assert r.changes["layer.w"].max_abs_diff == pytest.approx(float(np.abs(w[6]).max()))
        r = diff(store, "a", "c")  # resharded: the layout changed
        assert r.changed == ("layer.w",) and r.changes["layer.w"].layout_changed
        store.put_arrays("plain", {"x@1": w[0]})  # no "dcp" meta: keys are names as they are
        assert diff(store, "plain", "plain").unchanged == ("x@1",)


def test_diff_errors_and_tools_wrapper(tmp_path, rng):
    import subprocess
    from clikit import REPO
    with new_store(tmp_path / "s") as store:
        two_snapshots(store, rng)
    assert cli("diff", tmp_path / "s", "a", "nope").returncode == 2
    assert cli("diff", tmp_path / "s", "a").returncode == 2
    r = subprocess.run([str(REPO / "tools" / "diff"), str(tmp_path / "s"), "a", "latest", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"changed": [\n    "w"' in r.stdout


def test_an_fqn_holding_an_at_sign_is_grouped_and_exported_whole(tmp_path, rng):
    # The DCP layer keys such an item "fqn@" (whole) or "fqn@o0,..." (shard): the FQN is the key up
    # to its last '@', for diff and export alike.
    import torch

    from casckpt.diff import groups
    from casckpt.transfer import export_snapshot

    x = rng.standard_normal(6).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    with new_store(tmp_path / "s") as store:
        store.put_arrays("a", {"x@y@": x, "w@0,0": w[:2], "w@2,0": w[2:]}, meta={"dcp": {}})
        assert groups(store.manifest("a")) == {"x@y": ["x@y@"], "w": ["w@0,0", "w@2,0"]}
        assert diff(store, "a", "a").unchanged == ("w", "x@y")
        export_snapshot(store, "a", tmp_path / "a.pt", format="torch")  # assembles shards
    got = torch.load(tmp_path / "a.pt", weights_only=True)
    assert np.array_equal(got["x@y"].numpy(), x) and np.array_equal(got["w"].numpy(), w)
