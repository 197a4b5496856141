"""verify: missing and corrupt chunks named with the snapshots and items they break; exit codes."""

from __future__ import annotations


import casckpt
from clikit import cli, cli_json, state
from storekit import new_store


def make(root):
    with new_store(root) as store:
        store.put_arrays("s1", state(1))
        store.put_arrays("s2", state(2))
        m1, m2 = store.manifest("s1"), store.manifest("s2")
        shared = m1.items["emb"].chunks[0].digest  # emb never changes: both snapshots hold it
        only2 = next(c.digest for c in m2.items["bias"].chunks)
        return shared, only2, store.chunks.path(shared), store.chunks.path(only2)


def test_clean_store_and_orphans_only_exit_0(tmp_path):
    root = tmp_path / "s"
    make(root)
    r = cli_json("verify", root)
    assert r["ok"] and r["missing"] == [] and r["corrupt"] == [] and r["orphans"] == 0
    assert r["snapshots"] == ["s1", "s2"] and r["chunks_checked"] > 0
    with new_store(root) as store:
        store.chunks.put(casckpt.digest.digest_of(b"o"), memoryview(b"o"), group=0, config=store.config.codec)
    r = cli_json("verify", root)
    assert r["ok"] and r["orphans"] == 1
    assert cli("verify", root).returncode == 0


def test_missing_chunk_names_every_snapshot_and_item_it_breaks(tmp_path):
    root = tmp_path / "s"
    shared, _, path, _ = make(root)
    path.unlink()
    r = cli_json("verify", root, "--quick", rc=1)
    assert not r["ok"] and [m["digest"] for m in r["missing"]] == [shared.hex]
    assert r["missing"][0]["snapshots"] == ["s1", "s2"]
    assert {"snapshot": "s1", "item": "emb"} in r["missing"][0]["items"]
    assert r["broken_snapshots"] == ["s1", "s2"]
    out = cli("verify", root)
    assert out.returncode == 1 and "missing chunk" in out.stdout and "breaks s1: emb" in out.stdout


def test_corrupt_chunk_found_by_full_verify_only(tmp_path):
    root = tmp_path / "s"
    _, only2, _, path = make(root)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cli("verify", root, "--quick").returncode == 0  # quick: existence only
    r = cli_json("verify", root, rc=1)
    assert [c["digest"] for c in r["corrupt"]] == [only2.hex] and r["corrupt"][0]["snapshots"] == ["s2"]
    assert r["broken_snapshots"] == ["s2"]
    assert cli("verify", root, "s1").returncode == 0  # s1 does not use that chunk
    r = cli_json("verify", root, "s2", rc=1)
    assert r["snapshots"] == ["s2"] and r["orphans"] is None


def test_bad_manifest_and_unknown_snapshot(tmp_path):
    root = tmp_path / "s"
    make(root)
    (root / "snapshots" / "s1.json").write_text("{not json")
    r = cli_json("verify", root, rc=1)
    assert list(r["bad_manifests"]) == ["s1"] and "s1" in r["broken_snapshots"]
    assert cli("verify", root, "nope").returncode == 2
    assert cli("verify", tmp_path / "nostore").returncode == 2


def test_a_corrupt_chunk_is_repaired_by_the_next_save_after_verify_or_reindex(tmp_path):
    import numpy as np

    import casckpt
    from casckpt.verify import verify

    rng = np.random.default_rng(5)
    arrays = {"w": rng.standard_normal((400, 300))}
    for repair in ("verify", "reindex"):
        with casckpt.Store.open(tmp_path / repair, create=True, chunk_size=64 << 10) as store:
            store.put_arrays("a", arrays)
            victim = sorted((tmp_path / repair / "chunks").glob("*/*"))[2]
            data = bytearray(victim.read_bytes())
            data[-1] ^= 0x10  # bit rot in the payload; the header still reads fine
            victim.write_bytes(data)
            if repair == "verify":
                assert not verify(store).ok
            else:  # a header-only reindex cannot see bit rot in a body: --verify reads it
                store.reindex(verify=True)
            assert store.put_arrays("b", arrays).new_chunks == 1
            for name in ("a", "b"):
                assert np.array_equal(store.get_arrays(name)["w"], arrays["w"])
