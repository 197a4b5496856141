"""``du`` reports what ``du -sh`` sees next to logical, unique and stored bytes: many tiny chunks
take far more file-system blocks than their stored bytes."""

import subprocess

import numpy as np

from casckpt.usage import du
from clikit import cli_json
from storekit import new_store

TINY = {f"x{i}": np.arange(100, dtype=np.float32) + i for i in range(300)}  # 400 bytes each


def du_s(*paths) -> int:
    out = subprocess.run(["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(out.stdout.splitlines()[-1].split()[0])


def test_disk_blocks_match_du_and_exceed_stored_bytes(tmp_path):
    with new_store(tmp_path / "s") as s:
        s.put_arrays("a", TINY)
        u = du(s, disk=True)
    d = u.disk
    assert d.total == du_s(tmp_path / "s")
    assert d.chunk_files == u.chunks == 300 and d.chunks > 4 * u.stored_bytes  # a block per tiny file
    assert d.manifests > 0 and d.index > 0
    assert cli_json("du", tmp_path / "s")["disk"] == d.to_json()


def test_an_index_kept_elsewhere_is_counted_too(tmp_path):
    with new_store(tmp_path / "s", index_path=tmp_path / "local") as s:
        s.put_arrays("a", TINY)
        d = du(s, disk=True).disk
    assert d.index > 0 and d.total == du_s(tmp_path / "s", tmp_path / "local")
