"""diff and show for people: natural order, renames, --stat per module, and small items' values."""

from __future__ import annotations

import io
import math

import numpy as np

from casckpt.diff import diff, stat
from clikit import cli, cli_json
from storekit import new_store


def torch_bytes(value) -> np.ndarray:
    import torch
    buf = io.BytesIO()
    torch.save(value, buf)
    return np.frombuffer(buf.getvalue(), np.uint8)


def layered(step: int, prefix: str = "") -> dict[str, np.ndarray]:
    """12 layers; every third moves by ``step``; a step counter and a learning rate."""
    out = {f"{prefix}layers.{k}.w": np.full((32, 32), k + 1 + step * (k % 3 == 0), np.float32) for k in range(12)}
    out[f"{prefix}optim.state.{2}.exp_avg"] = np.full(8, float(step), np.float32)
    out[f"{prefix}optim.state.{10}.exp_avg"] = np.full(8, float(step) + 1, np.float32)
    out["step"] = np.array(step, np.int64)
    return out


def test_names_come_in_natural_order(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        store.put_arrays("a", layered(0))
        store.put_arrays("b", layered(1))
        r = diff(store, "a", "b", small_values=False)
    assert r.changed == ("layers.0.w", "layers.3.w", "layers.6.w", "layers.9.w",
                         "optim.state.2.exp_avg", "optim.state.10.exp_avg", "step")
    assert r.unchanged[:3] == ("layers.1.w", "layers.2.w", "layers.4.w") and r.unchanged[-1] == "layers.11.w"
    out = cli("diff", root, "a", "b").stdout
    assert out.index("optim.state.2.") < out.index("optim.state.10.")


def test_a_prefix_rename_is_reported_as_renames_not_adds_and_removes(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        store.put_arrays("a", layered(1))
        store.put_arrays("b", layered(1, prefix="model."))
        store.put_arrays("c", {**layered(1, prefix="model."), "model.layers.0.w": np.zeros((32, 32), np.float32)})
        r = diff(store, "a", "b")
        assert len(r.renamed) == 14 and not r.added and not r.removed and not r.changed
        assert ("layers.10.w", "model.layers.10.w") in r.renamed and not r.identical
        r = diff(store, "a", "c")  # a changed item is added+removed, the others renamed
        assert r.added == ("model.layers.0.w",) and r.removed == ("layers.0.w",) and len(r.renamed) == 13
    out = cli("diff", root, "a", "b").stdout
    assert "R * -> model.*  (14 items renamed)" in out and "\n+ " not in out
    j = cli_json("diff", root, "a", "b")
    assert ["optim.state.2.exp_avg", "model.optim.state.2.exp_avg"] in j["renamed"] and j["added"] == []


def test_identical_items_under_two_new_names_pair_once(tmp_path):
    root = tmp_path / "s"
    z = np.zeros(16, np.float32)
    with new_store(root) as store:
        store.put_arrays("a", {"x": z})
        store.put_arrays("b", {"y1": z, "y2": z})
        r = diff(store, "a", "b")
    assert r.renamed == (("x", "y1"),) and r.added == ("y2",) and r.removed == ()


def test_stat_sums_bytes_and_l2_per_module(tmp_path):
    root = tmp_path / "s"
    a, b = layered(1), layered(2)
    with new_store(root) as store:
        store.put_arrays("a", a)
        store.put_arrays("b", b)
        r = diff(store, "a", "b", values=True)
    rows = {m.module: m for m in stat(r)}
    assert list(rows)[:2] == ["layers.0", "layers.3"]
    assert rows["layers.3"].changed == 1 and rows["layers.3"].bytes_differ == 32 * 32 * 4
    assert math.isclose(rows["layers.3"].rel_l2, 1 / 5, rel_tol=1e-9)  # 5 -> 6 everywhere
    by_top = {m.module: m for m in stat(r, depth=1)}
    sd = sum(float(np.sum((b[k].astype(np.float64) - a[k]) ** 2)) for k in a if k.startswith("optim."))
    sa = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in a if k.startswith("optim."))
    assert by_top["optim"].changed == 2 and math.isclose(by_top["optim"].rel_l2, math.sqrt(sd / sa), rel_tol=1e-9)
    out = cli("diff", root, "a", "b", "--stat").stdout
    assert out.splitlines()[0].split() == ["MODULE", "+", "-", "~", "BYTES", "DIFFER", "REL", "L2"]
    assert any(ln.startswith("layers.3 ") and "0.2" in ln for ln in out.splitlines())
    assert [m["module"] for m in cli_json("diff", root, "a", "b", "--stat", "--depth", "1")["stat"]] == \
        ["layers", "optim", "step"]


def test_small_values_show_in_diff_and_show(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        for s, lr in [(1, 0.1), (2, 0.05)]:
            store.put_arrays(f"s{s}", {**layered(s), "lr": torch_bytes(lr), "sched": torch_bytes({"last_epoch": s})},
                             dtype_names={"lr": "bytes", "sched": "bytes"})
        r = diff(store, "s1", "s2")
    assert (r.changes["step"].value_a, r.changes["step"].value_b) == ("1", "2")
    assert (r.changes["lr"].value_a, r.changes["lr"].value_b) == ("0.1", "0.05")
    assert r.changes["sched"].value_b == "{'last_epoch': 2}"
    assert r.changes["layers.0.w"].value_a is None  # a tensor is not a small item
    out = cli("diff", root, "s1", "s2").stdout
    assert "~ lr  (1/1 chunks, " in out and "0.1 -> 0.05" in out and "1 -> 2" in out
    shown = cli("show", root, "s2")
    line = {ln.split()[0]: ln for ln in shown.stdout.splitlines()[1:]}
    assert line["lr"].endswith("0.05") and line["step"].endswith(" 2") and line["sched"].endswith("{'last_epoch': 2}")
    assert line["lr"].split()[1:3] == ["bytes", "-"] and line["step"].split()[1:3] == ["int64", "()"]
    assert cli_json("show", root, "s2")["values"]["optim.state.2.exp_avg"] == "[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]"


def test_stat_l2_leaves_out_scalar_counters(tmp_path):
    root = tmp_path / "s"
    with new_store(root) as store:
        store.put_arrays("a", {"opt.3.m": np.full(100, 1.0, np.float32), "opt.3.step": np.array(4.0, np.float32)})
        store.put_arrays("b", {"opt.3.m": np.full(100, 1.01, np.float32), "opt.3.step": np.array(5.0, np.float32)})
        r = diff(store, "a", "b", values=True)
    (row,) = stat(r)
    assert row.module == "opt.3" and row.changed == 2 and math.isclose(row.rel_l2, 0.01, rel_tol=1e-4)
    assert math.isclose(r.changes["opt.3.step"].rel_l2, 0.25)  # still measured on its own
