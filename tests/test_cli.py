"""The casckpt command through its real entry point: every subcommand, --json shapes, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from clikit import REPO, cli, cli_json, disk_bytes, state
from storekit import new_store


def make(root, n: int = 3):
    with new_store(root) as store:
        for s in range(n):
            store.put_arrays(f"s{s}", state(s))


def test_ls_json_and_table(tmp_path):
    root = tmp_path / "s"
    make(root)
    rows = cli_json("ls", root)
    assert [r["name"] for r in rows] == ["s0", "s1", "s2"]
    for r in rows:
        assert set(r) >= {"name", "created", "logical_bytes", "chunks", "unique_bytes"}
        assert r["logical_bytes"] == sum(a.nbytes for a in state(0).values())
    assert rows[0]["created"] < rows[2]["created"] and 0 < rows[2]["unique_bytes"] < rows[2]["logical_bytes"]
    out = cli("ls", root)
    assert out.returncode == 0 and "s2" in out.stdout and "store total" in out.stdout and out.stderr == ""


def test_show_json(tmp_path):
    root = tmp_path / "s"
    make(root)
    d = cli_json("show", root, "latest")
    assert d["name"] == "s2" and {i["name"] for i in d["items"]} == {"w", "emb", "bias", "step"}
    w = next(i for i in d["items"] if i["name"] == "w")
    assert (w["dtype"], w["shape"], w["logical_bytes"]) == ("float32", [64, 256], 64 * 256 * 4)
    assert w["chunks"] == 16 and 0 < w["stored_bytes"]
    assert "w " in cli("show", root, "s1").stdout


def test_du_matches_disk(tmp_path):
    root = tmp_path / "s"
    make(root)
    u = cli_json("du", root)
    assert u["snapshots"] == 3 and u["stored_bytes"] == disk_bytes(root)
    assert u["logical_bytes"] == 3 * sum(a.nbytes for a in state(0).values())
    assert u["chunks"] == len(list((root / "chunks").glob("*/*")))
    assert u["dedup_ratio"] > 2 and u["compression_ratio"] > 0 and "dedup ratio" in cli("du", root).stdout


def test_rm_then_gc(tmp_path):
    root = tmp_path / "s"
    make(root)
    assert cli_json("rm", root, "s0", "s1") == {"removed": ["s0", "s1"]}
    assert [r["name"] for r in cli_json("ls", root)] == ["s2"]
    r = cli("rm", root, "s2", "nope")
    assert r.returncode == 2 and "nope" in r.stderr
    assert [x["name"] for x in cli_json("ls", root)] == ["s2"]  # nothing removed when one is missing
    gc = cli_json("gc", root)
    assert gc["drop"] == [] and gc["chunks"] > 0
    assert cli_json("du", root)["stored_bytes"] == disk_bytes(root)


def test_reindex(tmp_path):
    root = tmp_path / "s"
    make(root)
    before = cli_json("du", root)
    r = cli_json("reindex", root)
    assert r["snapshots"] == 3 and r["chunks"] == before["chunks"]
    after = cli_json("du", root)
    assert after.pop("disk")["chunks"] == before.pop("disk")["chunks"]  # the index file may differ
    assert after == before


def test_exit_codes_for_errors(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    assert cli("ls", tmp_path / "missing").returncode == 2
    assert cli("show", root, "nope").returncode == 2
    assert cli("show", root, "../etc").returncode == 2
    assert cli("frobnicate", root).returncode == 2
    assert cli().returncode == 2
    r = cli("show", root, "nope")
    assert r.stderr.startswith("casckpt: error:") and "Traceback" not in r.stderr
    assert cli("--version").stdout.startswith("casckpt ")


def test_console_script_matches_module(tmp_path):
    # NOTE: the script installed beside the interpreter running the tests (tools/test's .venv,
    # or any environment casckpt is installed in): missing means the install is broken.
    exe = Path(sys.executable).parent / "casckpt"
    assert exe.exists(), f"no console script {exe}: is casckpt installed in this environment?"
    root = tmp_path / "s"
    make(root, 1)
    r = subprocess.run([str(exe), "ls", str(root), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == cli("ls", root, "--json").stdout


def test_lifecycle_commands_do_not_import_torch():
    code = ("import sys, casckpt.cli, casckpt.gc, casckpt.diff, casckpt.verify, casckpt.usage, casckpt.transfer;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "casckpt.dcp" not in open(REPO / "casckpt" / "cli.py").read()


def test_index_kept_outside_the_store(tmp_path):
    import casckpt

    root, local = tmp_path / "s", tmp_path / "local-index"
    with casckpt.Store.open(root, create=True, index_path=local) as store:
        store.put_arrays("s0", state(0))
        chunks = store.index.totals()[0]
    assert not (root / "index").exists()
    assert cli_json("du", root, "--index", local)["chunks"] == chunks
    assert not (root / "index").exists()  # the command used the index it was given


def test_output_cut_short_by_the_reader_is_not_an_error(tmp_path):
    root = tmp_path / "s"
    make(root, 3)
    p = subprocess.Popen([sys.executable, "-m", "casckpt", "ls", str(root)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `casckpt ls STORE | head -0`
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0 and b"Broken pipe" not in err and b"Traceback" not in err
