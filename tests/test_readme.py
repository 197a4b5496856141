"""The README's examples, run as written and in order in one folder (its paths moved there): the
Python blocks, then the shell blocks that run `casckpt` (not Quick start's tools/ scripts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from clikit import REPO

BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_examples_to_run():
    assert sum(lang == "python" for lang, _ in BLOCKS) >= 2
    assert any(lang == "bash" and code.startswith("casckpt ") for lang, code in BLOCKS)


def test_readme_examples_run_in_order(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for i, (lang, code) in enumerate(BLOCKS, 1):
        if lang == "bash" and not code.startswith("casckpt "):
            continue  # Quick start: tools/demo and tools/test themselves
        code = code.replace("/ckpt/store", str(tmp_path / "store"))
        cmd = [sys.executable, "-W", "ignore::UserWarning", "-c", code] if lang == "python" else \
            ["bash", "-euo", "pipefail", "-c", code]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"README block {i} ({lang}) failed:\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "report" / "index.html").is_file()
