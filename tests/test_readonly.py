"""A store the caller may not write: every read-only command works and changes nothing.

Writes are really denied, two ways: a read-only bind mount of the store (EROFS, even for root)
and the command run as the unprivileged user ``nobody`` (EACCES). Each skips, saying why, where
the machine does not allow it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clikit import REPO
from storekit import arrays, new_store, tree

NOBODY = 65534
READS = [["ls"], ["du"], ["show", "{s}", "latest"], ["gc", "--dry-run"], ["verify"],
         ["verify", "--quick"], ["diff", "{s}", "a", "b", "--values"],
         ["export", "{s}", "a", "{out}/a.safetensors", "--format", "safetensors"]]


@pytest.fixture
def public(tmp_path):
    """A folder every user may read (pytest's own is root's alone), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="casckpt-ro-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_store(root: Path) -> None:
    with new_store(root) as s:
        s.put_arrays("a", arrays(1))
        s.put_arrays("b", arrays(2))
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def run(args: list[str], store: Path, out: Path, *, user: int | None = None) -> subprocess.CompletedProcess:
    argv = [a.format(s=store, out=out) for a in args]
    if "{s}" not in " ".join(args):
        argv.insert(1, str(store))
    cmd = [sys.executable, "-m", "casckpt", *argv]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["read-only mount", "user nobody"])
def denied(request, public):
    """(store path to use, user to run as, export folder) with writes to the store denied."""
    root = public / "store"
    make_store(root)
    out = public / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    if request.param == "read-only mount":
        ro = public / "ro"
        ro.mkdir()
        r = subprocess.run(["mount", "--bind", str(root), str(ro)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot bind-mount (needs root): {r.stderr.strip()}")
        try:
            r = subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
            yield ro, None, out, root
        finally:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    else:
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            pytest.skip("running as another user needs root and setpriv")
        probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                sys.executable, "-c", "pass"], capture_output=True, text=True)
        if probe.returncode:
            pytest.skip(f"user nobody cannot run this Python: {probe.stderr.strip()[:200]}")
        yield root, NOBODY, out, root


def test_read_only_commands_work_and_change_nothing(denied):
    store, user, out, real = denied
    before = tree(real)
    for args in READS:
        r = run(args, store, out, user=user)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert tree(real) == before
    assert (out / "a.safetensors").stat().st_size > 0


def test_writing_commands_fail_clearly(denied):
    store, user, out, real = denied
    before = tree(real)
    for args in (["rm", "{s}", "a"], ["gc"], ["reindex"]):
        r = run(args, store, out, user=user)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("casckpt: error:") and "Traceback" not in r.stderr
    assert tree(real) == before
