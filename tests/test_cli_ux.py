"""The command as a person meets it: options anywhere, clear errors and help, readable counts and
times, progress bars that survive threads, and Ctrl-C that says what it left."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

from casckpt.clifmt import when
from casckpt.diff import natural_key
from casckpt.progress import Bar
from clikit import REPO, cli, cli_json, state
from storekit import new_store


class Tty(io.StringIO):
    def isatty(self):
        return True


def make(root, n: int = 3, prefix: str = "s"):
    with new_store(root) as store:
        for s in range(n):
            store.put_arrays(f"{prefix}{s}", state(s))


def test_global_options_before_or_after_the_command(tmp_path):
    root, idx = tmp_path / "s", tmp_path / "idx"
    make(root, 2)
    before = cli("--json", "--index", idx, "ls", root)
    after = cli("ls", root, "--index", idx, "--json")
    assert before.returncode == after.returncode == 0, before.stderr
    assert before.stdout == after.stdout and '"name": "s1"' in before.stdout
    assert (idx / "data.mdb").exists()  # the index given before the command was used


def test_unknown_options_are_named_by_the_right_parser(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    r = cli("--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr and "required" not in r.stderr
    r = cli("ls", root, "--bogus")
    assert r.returncode == 2 and "casckpt ls: error: unrecognized arguments: --bogus" in r.stderr
    assert "usage: casckpt ls" in r.stderr
    r = cli()
    assert r.returncode == 2 and "COMMAND" in r.stderr


def test_help_names_every_positional_and_says_latest_is_accepted():
    for command, words in [("show", ["SNAP", "latest"]), ("diff", ["A ", "B ", "latest"]),
                           ("export", ["SNAP", "DST", "latest"]), ("import", ["SRC", "SNAP"]),
                           ("rm", ["SNAP", "latest"]), ("verify", ["latest"])]:
        out = cli(command, "--help").stdout
        for w in words:
            assert w in out, (command, w)
    assert "before or after COMMAND" in cli("--help").stdout


def test_counts_are_pluralized(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    out = cli("ls", root).stdout
    assert "1 snapshot;" in out and "1 snapshots" not in out
    assert "ok: 1 snapshot," in cli("verify", root).stdout
    gc = cli("gc", root).stdout
    assert "drop 0" in gc and "drop 0: -" not in gc


def test_times_carry_their_zone_local_unless_utc(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    created = cli_json("ls", root)[0]["created"]
    env = {**os.environ, "TZ": "Asia/Kolkata"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "casckpt", *map(str, a)], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=60).stdout
    local, utc = run("ls", root), run("ls", root, "--utc")
    assert "+0530" in local and when(created, utc=True) in utc and " UTC" in utc
    assert created[11:19] in utc and created[11:19] not in local  # 5:30 apart
    assert "+0530" in run("show", root, "latest")


def test_gc_lists_dropped_names_on_wrapped_lines_and_shortens_runs(tmp_path):
    root = tmp_path / "s"
    make(root, 40, prefix="a-long-snapshot-name-")
    r = cli("gc", root, "--keep-every", "2", "--dry-run")  # drops every other one: no runs
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("keep 20 snapshots, drop 20:")
    listed = [ln for ln in lines if ln.startswith("  a-long")]
    assert len(listed) > 3 and all(len(ln) <= 120 for ln in listed)
    assert sum(ln.count("a-long-snapshot-name-") for ln in listed) == 20
    r = cli("gc", root, "--keep-last", "1", "--dry-run")
    assert "  a-long-snapshot-name-0..a-long-snapshot-name-38 (39)\n" in r.stdout


def test_export_dcp_prints_no_torch_warning(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    r = cli("export", root, "latest", tmp_path / "out", "--format", "dcp")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = cli("import", root, "back", tmp_path / "out")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_natural_sort():
    names = ["optim.state.10", "optim.state.2", "optim.state.1.exp_avg", "a", "optim.state.1"]
    assert sorted(names, key=natural_key) == ["a", "optim.state.1", "optim.state.1.exp_avg",
                                              "optim.state.2", "optim.state.10"]


def test_bar_draws_only_on_a_terminal_with_units_rate_and_eta():
    quiet = io.StringIO()
    with Bar("x", stream=quiet) as bar:
        bar(5, 10)
    assert quiet.getvalue() == ""
    tty = Tty()
    with Bar("export", stream=tty) as bar:
        bar(3 << 20, 6 << 20)
        bar(6 << 20, 6 << 20)
    out = tty.getvalue()
    assert "export" in out and "100%" in out and "6.00M" in out and "B/s" in out and "<" in out


def test_bar_is_thread_safe_and_never_goes_backwards():
    # Workers report (done, total) out of order, as the store's thread pool does.
    tty, total, threads = Tty(), 4000, 8
    with Bar("verify", unit="chunk", stream=tty) as bar:
        def work(k):
            for i in range(k, total + 1, threads):
                bar(i, total)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(1, threads + 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert bar.done == total  # never past the total: each update is read-modify-write under the lock
        bar(10, total)
        assert bar.done == total  # a late report does not move it back
    assert "4000/4000" in tty.getvalue()


def test_ctrl_c_during_import_says_what_it_left_and_exits_130(tmp_path):
    root = tmp_path / "s"
    make(root, 1)
    src = tmp_path / "dcp"
    src.mkdir()
    fifo = src / ".metadata"  # a DCP checkpoint whose metadata never finishes arriving
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-m", "casckpt", "import", str(root), "new", str(src),
                          "--format", "dcp"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    fd = _open_writer(fifo, p)  # once this succeeds the child is reading the source: mid-import
    try:
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        os.close(fd)
    assert p.returncode == 130, err
    assert "interrupted" in err and "new was not committed" in err and "again is safe" in err
    assert "Traceback" not in err
    assert [r["name"] for r in cli_json("ls", root)] == ["s0"]
    assert cli("verify", root).returncode == 0


def _open_writer(fifo, p) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.05)
    raise AssertionError("the import never opened its source")


def test_ctrl_c_message_for_gc_depends_on_how_far_it_got():
    from argparse import Namespace

    from casckpt.clicmds import _gc_interrupted
    assert "nothing was deleted" in _gc_interrupted(Namespace(state={}))
    msg = _gc_interrupted(Namespace(state={"deleting": True}))
    assert "whole" in msg and "again is safe" in msg


def test_tally_counts_exactly_and_reports_in_order_across_threads():
    from casckpt.pipeline import Tally

    reports = []
    tally = Tally(lambda done, total: reports.append((done, total)), 8000)
    ts = [threading.Thread(target=lambda: [tally.add(1) for _ in range(1000)]) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert tally.done == 8000 and reports == [(i, 8000) for i in range(1, 8001)]


def on_a_terminal(*args) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal (stdout a pipe); its return code and what
    the terminal showed."""
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "casckpt", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=slave, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    p.stdout.read()
    os.close(master)
    return p.wait(timeout=60), shown.decode(errors="replace")


def test_long_commands_draw_progress_on_a_terminal_only(tmp_path):
    root = tmp_path / "s"
    src = tmp_path / "w.safetensors"
    make(root, 3)
    assert cli("export", root, "s2", src, "--format", "safetensors").returncode == 0
    rc, shown = on_a_terminal("import", root, "imp", src)
    assert rc == 0 and "import imp" in shown and "100%" in shown and "B/s" in shown
    rc, shown = on_a_terminal("verify", root)
    assert rc == 0 and "verify: 100%" in shown and "chunk/s" in shown
    rc, shown = on_a_terminal("gc", root, "--keep-last", "1")
    assert rc == 0 and "gc: planning" in shown and "gc: reading manifests: 100%" in shown
    assert "gc: deleting chunks: 100%" in shown
    rc, shown = on_a_terminal("reindex", root)
    assert rc == 0 and "reindex: 100%" in shown
    for args in (("verify", root), ("reindex", root), ("gc", root)):
        assert cli(*args).stderr == ""  # not a terminal: nothing drawn


def test_ctrl_c_while_gc_waits_for_a_save_deletes_nothing_and_says_so(tmp_path):
    from casckpt.lock import SHARED

    root = tmp_path / "s"
    make(root, 3)
    with new_store(root) as store, store.lock(SHARED):  # what a save in progress holds
        p = subprocess.Popen([sys.executable, "-m", "casckpt", "gc", str(root), "--keep-last", "1"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_until_open(p, root / "lock")  # gc is waiting for its exclusive lock
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "gc stopped while planning: nothing was deleted; running gc again is safe" in err
    assert "Traceback" not in err and out == ""
    assert [r["name"] for r in cli_json("ls", root)] == ["s0", "s1", "s2"]


def _wait_until_open(p, path) -> None:
    """Until process ``p`` has ``path`` open (read from /proc: Linux)."""
    deadline, target = time.monotonic() + 60, str(path.resolve())
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        fds = f"/proc/{p.pid}/fd"
        for fd in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{fd}") == target:
                    return
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"the child never opened {path}")
