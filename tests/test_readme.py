"""The README's Python examples, run as written (paths moved into a temporary folder), so it stays true."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from clikit import REPO

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2 and any("casckpt.save" in b for b in BLOCKS)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(tmp_path, i):
    code = BLOCKS[i].replace("/ckpt/store", str(tmp_path / "store"))
    r = subprocess.run([sys.executable, "-W", "ignore::UserWarning", "-c", code], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README block {i + 1} failed:\n{code}\n{r.stderr[-3000:]}"
