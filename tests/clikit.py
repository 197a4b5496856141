"""Helpers for the command-line tests: run ``python -m casckpt`` for real and read its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the casckpt command in a child process (the real entry point); never raises on rc."""
    return subprocess.run([sys.executable, "-m", "casckpt", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def cli_json(*args, rc: int = 0):
    r = cli(*args, "--json")
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def state(step: int, *, rows: int = 64, cols: int = 256) -> dict[str, np.ndarray]:
    """An evolving training state: step ``step`` rewrites a few rows of ``w`` and all of ``bias``;
    ``emb`` never changes (so every snapshot shares its chunks)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    emb = rng.standard_normal((rows, cols)).astype(np.float32)
    for s in range(1, step + 1):
        w[(s * 7) % rows] += np.float32(0.01 * s)
    return {"w": w, "emb": emb, "bias": np.full(cols, step, dtype=np.float32),
            "step": np.array(step, dtype=np.int64)}


def disk_bytes(root: Path) -> int:
    """Bytes of every chunk file on disk, read straight from the directory."""
    return sum(p.stat().st_size for p in (Path(root) / "chunks").glob("*/*") if p.is_file())
