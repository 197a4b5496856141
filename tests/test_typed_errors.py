"""Bad input found by review: each gives a typed CasckptError (or a clean exit 2), never a raw
OverflowError, FileExistsError, IsADirectoryError, ValueError or an internal-error exit."""

import json

import numpy as np
import pytest

import casckpt
from clikit import cli


def test_creating_a_store_where_a_file_is(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(casckpt.CasckptError):
        casckpt.Store.open(tmp_path / "f", create=True)


def test_an_absurd_codec_level_in_the_config(tmp_path):
    casckpt.Store.open(tmp_path / "s", create=True).close()
    cfg = tmp_path / "s" / "casckpt.json"
    cfg.write_text(cfg.read_text().replace('"level": 1', '"level": 1e999'))
    with pytest.raises(casckpt.CasckptError, match="codec"):
        casckpt.Store.open(tmp_path / "s")


def test_a_folder_where_a_manifest_should_be(tmp_path):
    with casckpt.Store.open(tmp_path / "s", create=True) as s:
        (s.snap_dir / "odd.json").mkdir()
        with pytest.raises(casckpt.ManifestError):
            s.get_arrays("odd")


def test_chunk_lengths_that_split_an_element(tmp_path):
    with casckpt.Store.open(tmp_path / "s", create=True) as s:
        s.put_arrays("a", {"w": np.arange(4, dtype=np.float32)})
        path = s.snap_dir / "a.json"
        doc = json.loads(s.manifest("a").to_bytes(1))  # format 1: one [digest, length] per ref
        digest = doc["items"]["w"]["chunks"][0][0]
        doc["items"]["w"]["chunks"] = [[digest, 6], [digest, 10]]  # adds up, but cuts a float32
        path.write_text(json.dumps(doc))
        with pytest.raises(casckpt.ManifestError, match="inside a float32"):
            s.get_arrays("a")


def test_importing_a_file_that_is_not_a_torch_save(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    r = cli("import", tmp_path / "store", "x", junk, "--format", "torch")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
