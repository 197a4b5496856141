"""Hostile input: names, manifests, configs and links planted in a store. Each gives a typed
CasckptError, never touches anything outside the store root, never returns wrong bytes."""

import json
import os
import shutil

import pytest

import casckpt
from casckpt import config
from casckpt.store import CONFIG
from storekit import arrays, assert_same, new_store, open_store, tree

BAD_NAMES = ["../evil", "../../etc/passwd", "a/../../b", "/abs/path", "/tmp", "a/b", "a\\b", "a\x00b",
             "\x00", "x" * 5000, "", ".", "..", ".hidden", "-rf", "latest", "a\nb", "é", " a", "a b"]


@pytest.fixture
def env(tmp_path):
    """A store holding ``s1``, and a folder beside it that nothing may touch."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.json").write_bytes(b'{"secret": 1}')
    (outside / "sub" / "evil.json").write_bytes(b"{}")
    with new_store(tmp_path / "store", sync=False) as s:
        s.put_arrays("s1", arrays(1))
        before = tree(outside)
        yield s, outside
        assert tree(outside) == before, "something outside the store changed"
        assert {p.name for p in tmp_path.iterdir()} == {"store", "outside"}


def test_bad_names_are_refused_everywhere(env):
    s, _ = env
    for name in BAD_NAMES:
        calls = [lambda: s.put_arrays(name, arrays(2)), lambda: s.delete(name)]
        if name != "latest":  # reading "latest" means the newest snapshot
            calls += [lambda: s.get_arrays(name), lambda: s.manifest(name), lambda: s.exists(name)]
        for call in calls:
            with pytest.raises(casckpt.InvalidNameError):
                call()
    assert [x.name for x in s.snapshots()] == ["s1"]
    assert os.listdir(s.snap_dir) == ["s1.json"]


def test_names_that_are_not_strings(env):
    s, _ = env
    for name in (7, None, b"s1", ("s1",)):
        with pytest.raises(casckpt.InvalidNameError):
            s.put_arrays(name, arrays(2))
        with pytest.raises(casckpt.InvalidNameError):
            s.get_arrays(name)


def manifest_doc(s, version: int = 1) -> dict:
    """s1's manifest in format ``version``, renamed to "bad" (the name it is planted under)."""
    return {**json.loads(s.manifest("s1").to_bytes(version)), "name": "bad"}


def plant(s, name: str, data) -> None:
    """Write a manifest file straight into snapshots/, bypassing the store."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    (s.snap_dir / f"{name}.json").write_bytes(raw)


def edited(doc: dict, fn) -> dict:
    doc = json.loads(json.dumps(doc))
    fn(doc)
    return doc


def first_ref(doc):
    return doc["items"]["w"]["chunks"][0]


HOSTILE_MANIFESTS = {
    "truncated": lambda d: json.dumps(d).encode()[:150],
    "empty": lambda d: b"",
    "not-json": lambda d: b"\xff\xfe\x00garbage",
    "a-list": lambda d: [1, 2, 3],
    "no-format": lambda d: edited(d, lambda x: x.pop("format")),
    "digest-dotdot": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, "../../outside/secret.json")),
    "digest-absolute": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, "/etc/passwd")),
    "digest-short": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, "ab" * 31)),
    "digest-upper": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, first_ref(x)[0].upper())),
    "digest-slash": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, "ab/" + "c" * 61)),
    "digest-number": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, 12345)),
    "digest-nul": lambda d: edited(d, lambda x: first_ref(x).__setitem__(0, "a" * 63 + "\x00")),
    "length-negative": lambda d: edited(d, lambda x: first_ref(x).__setitem__(1, -4096)),
    "length-huge": lambda d: edited(d, lambda x: x["items"].__setitem__(
        "w", {"dtype": "uint8", "shape": [1 << 50], "chunks": [[first_ref(x)[0], 1 << 50]]})),
    "shape-mismatch": lambda d: edited(d, lambda x: x["items"]["w"].__setitem__("shape", [7])),
    "shape-bool": lambda d: edited(d, lambda x: x["items"]["w"].__setitem__("shape", [True])),
    "dtype-unknown": lambda d: edited(d, lambda x: x["items"]["w"].__setitem__("dtype", "object")),
    "items-list": lambda d: edited(d, lambda x: x.__setitem__("items", [])),
    "name-escape": lambda d: edited(d, lambda x: x.__setitem__("name", "../outside/secret")),
    "name-other": lambda d: edited(d, lambda x: x.__setitem__("name", "s1")),
    "meta-list": lambda d: edited(d, lambda x: x.__setitem__("meta", [])),
    "created-missing": lambda d: edited(d, lambda x: x.pop("created")),
    "chunk_size-string": lambda d: edited(d, lambda x: x.__setitem__("chunk_size", "4096")),
}


def w_item(doc) -> dict:
    return doc["items"]["w"]


def n_refs(doc) -> int:
    return sum(c for _, c in w_item(doc)["lengths"])


HOSTILE_V2 = {  # format 2: columnar refs
    "digests-missing": lambda d: edited(d, lambda x: w_item(x).pop("digests")),
    "digests-number": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", 12345)),
    "digests-not-hex": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", "../../etc/passwd")),
    "digests-odd": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", w_item(x)["digests"][:-1])),
    "digests-space": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", " " + w_item(x)["digests"][:-2] + "\n")),
    "digests-not-ascii": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", "é" * 64)),
    "digests-short": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", "ab" * 31)),
    "digests-one-missing": lambda d: edited(d, lambda x: w_item(x).__setitem__("digests", w_item(x)["digests"][64:])),
    "lengths-missing": lambda d: edited(d, lambda x: w_item(x).pop("lengths")),
    "lengths-flat": lambda d: edited(d, lambda x: w_item(x).__setitem__("lengths", [n for n, c in w_item(x)["lengths"] for _ in range(c)])),
    "lengths-bool": lambda d: edited(d, lambda x: w_item(x).__setitem__("lengths", [[True, n_refs(x)]])),
    "lengths-negative": lambda d: edited(d, lambda x: w_item(x).__setitem__("lengths", [[-4096, n_refs(x)]])),
    "lengths-zero-count": lambda d: edited(d, lambda x: w_item(x)["lengths"].append([4096, 0])),
    "lengths-count-off": lambda d: edited(d, lambda x: w_item(x)["lengths"][0].__setitem__(1, n_refs(x) + 1)),
    "length-huge": lambda d: edited(d, lambda x: x["items"].__setitem__(
        "w", {"dtype": "uint8", "shape": [1 << 50], "digests": w_item(x)["digests"][:64],
              "lengths": [[1 << 50, 1]]})),
    "element-split": lambda d: edited(d, lambda x: w_item(x).__setitem__(
        "lengths", [[4094, 1], [4098, 1], [4096, w_item(x)["lengths"][0][1] - 2]] + w_item(x)["lengths"][1:])),
    "offsets-short": lambda d: edited(d, lambda x: w_item(x).__setitem__("offsets", [0])),
    "offsets-negative": lambda d: edited(d, lambda x: w_item(x).__setitem__("offsets", [-1] * n_refs(x))),
    "offsets-float": lambda d: edited(d, lambda x: w_item(x).__setitem__("offsets", [0.5] * n_refs(x))),
    "offsets-past-any-chunk": lambda d: edited(d, lambda x: w_item(x).__setitem__(
        "offsets", [(256 << 20) - 8] * n_refs(x))),
}


def test_hostile_manifests_are_typed_errors(env):
    s, _ = env
    cases = [(k, f, 1) for k, f in HOSTILE_MANIFESTS.items()] + [(k, f, 2) for k, f in HOSTILE_V2.items()]
    for kind, make, version in cases:
        plant(s, "bad", make(manifest_doc(s, version)))
        for call in (lambda: s.get_arrays("bad"), lambda: s.manifest("bad")):
            try:
                call()
            except casckpt.ManifestError:
                continue
            except Exception as exc:
                pytest.fail(f"{kind}: {type(exc).__name__}: {exc}")
            pytest.fail(f"{kind}: no error")
    assert_same(arrays(1), s.get_arrays("s1"))  # the good snapshot is unaffected
    s.put_arrays("s2", arrays(2))


def test_manifest_from_a_newer_format(env):
    s, _ = env
    plant(s, "bad", edited(manifest_doc(s), lambda x: x.__setitem__("version", 99)))
    with pytest.raises(casckpt.UnsupportedFormatError, match="upgrade"):
        s.get_arrays("bad")


def test_manifest_naming_a_chunk_that_is_not_there(env):
    s, _ = env
    plant(s, "bad", edited(manifest_doc(s), lambda x: first_ref(x).__setitem__(0, "0" * 64)))
    with pytest.raises(casckpt.MissingChunkError):
        s.get_arrays("bad")


def test_manifest_pointing_at_another_snapshots_chunk_never_returns_wrong_bytes(env):
    """A manifest whose refs were swapped: the digest check catches a length mismatch."""
    s, _ = env
    doc = manifest_doc(s)
    refs = doc["items"]["b"]["chunks"]
    refs[0][0], refs[-1][0] = refs[-1][0], refs[0][0]  # last chunk of b is shorter than the first
    plant(s, "bad", doc)
    with pytest.raises(casckpt.CorruptChunkError):
        s.get_arrays("bad")


def test_manifest_symlinked_to_a_file_outside(env):
    s, outside = env
    shutil.copy(s.snap_dir / "s1.json", outside / "s1copy.json")
    doc = manifest_doc(s)
    doc["name"] = "linked"
    (outside / "linked.json").write_text(json.dumps(doc))
    os.symlink(outside / "linked.json", s.snap_dir / "linked.json")
    with pytest.raises(casckpt.UnsafePathError):
        s.get_arrays("linked")
    os.unlink(s.snap_dir / "linked.json")
    os.unlink(outside / "s1copy.json")
    os.unlink(outside / "linked.json")


def test_chunk_file_replaced_by_a_symlink_outside(env):
    """The outside file holds exactly the right chunk bytes: had the read followed the link, it
    would have succeeded. It fails, the outside file is untouched, and the next save repairs."""
    s, outside = env
    digest = s.manifest("s1").items["w"].chunks[0].digest
    path = s.chunks.path(digest)
    target = outside / "chunk"
    shutil.move(path, target)
    os.symlink(target, path)
    before = target.read_bytes()
    with pytest.raises(casckpt.CorruptChunkError, match="symlink"):
        s.get_arrays("s1")
    s.reindex()  # the link is not indexed, so the next save of this data rewrites the chunk
    s.put_arrays("s1-again", arrays(1))
    assert not path.is_symlink()
    assert_same(arrays(1), s.get_arrays("s1"))
    assert target.read_bytes() == before
    target.unlink()


@pytest.mark.parametrize("sub", ["chunks/XX", "chunks", "snapshots", "tmp"])
def test_store_folder_replaced_by_a_symlink_outside(env, sub):
    """A fan-out folder or a store folder that is a symlink would send writes (and gc's
    deletions) outside the store: opening refuses it."""
    s, outside = env
    root = s.root
    sub = sub.replace("XX", s.manifest("s1").items["w"].chunks[0].digest.hex[:2])
    s.close()
    real = root / sub
    moved = outside / "moved"
    shutil.move(real, moved)
    os.symlink(moved, real)
    try:
        with pytest.raises(casckpt.UnsafePathError):
            with open_store(root) as s2:
                s2.put_arrays("s9", {"x": arrays(9)["w"]})
    finally:
        os.unlink(real)
        shutil.move(moved, real)


CONFIGS = {
    "newer": (lambda d: {**d, "version": config.VERSION + 1}, casckpt.UnsupportedFormatError),
    "not-json": (lambda d: b"{nope", casckpt.CasckptError),
    "a-list": (lambda d: [d], casckpt.CasckptError),
    "other-format": (lambda d: {**d, "format": "zarr"}, casckpt.CasckptError),
    "chunk-size-huge": (lambda d: {**d, "chunk_size": 1 << 40}, casckpt.CasckptError),
    "chunk-size-string": (lambda d: {**d, "chunk_size": "1M"}, casckpt.CasckptError),
    "codec-number": (lambda d: {**d, "codec": 5}, casckpt.CasckptError),
    "codec-level-text": (lambda d: {**d, "codec": {"level": "max"}}, casckpt.CasckptError),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_hostile_config(tmp_path, kind):
    root = tmp_path / "store"
    new_store(root, sync=False).close()
    doc = json.loads((root / CONFIG).read_bytes())
    make, err = CONFIGS[kind]
    out = make(doc)
    (root / CONFIG).write_bytes(out if isinstance(out, bytes) else json.dumps(out).encode())
    with pytest.raises(err):
        open_store(root)


def test_config_symlinked_outside(env):
    s, outside = env
    shutil.copy(s.root / CONFIG, outside / "cfg.json")
    (s.root / CONFIG).unlink()
    os.symlink(outside / "cfg.json", s.root / CONFIG)
    try:
        with pytest.raises(casckpt.UnsafePathError):
            open_store(s.root)
    finally:
        (s.root / CONFIG).unlink()
        shutil.move(outside / "cfg.json", s.root / CONFIG)
