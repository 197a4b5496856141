"""import/export: DCP directories, .safetensors and torch.save files, loaded back with stock tools."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from clikit import cli, cli_json

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def model_state():
    g = torch.Generator().manual_seed(0)
    return {"layer.w": torch.randn(300, 64, generator=g), "layer.b": torch.randn(64, generator=g).to(torch.bfloat16),
            "f8": torch.randn(50, generator=g).to(torch.float8_e4m3fn), "ids": torch.arange(1000),
            "mask": torch.arange(10) % 2 == 0, "step": 7, "opt": {"lr": 0.125, "m": torch.ones(3)}}


def blank(sd):
    if isinstance(sd, dict):
        return {k: blank(v) for k, v in sd.items()}
    return torch.zeros_like(sd) if isinstance(sd, torch.Tensor) else None


def same(a, b) -> None:
    assert type(a) is type(b) or not isinstance(a, torch.Tensor)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8))
    else:
        assert a == b


def test_dcp_import_export_round_trip(tmp_path):
    sd = model_state()
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp_path / "src")), no_dist=True)
    root = tmp_path / "store"
    first = cli_json("import", root, "orig", tmp_path / "src")  # creates the store
    assert first["new_chunks"] > 0
    show = cli_json("show", root, "orig")
    dtypes = {i["name"]: i["dtype"] for i in show["items"]}
    assert dtypes["layer.b"] == "bfloat16" and dtypes["f8"] == "float8_e4m3fn" and dtypes["step"] == "bytes"
    out = cli_json("export", root, "orig", tmp_path / "out", "--format", "dcp")
    assert out["format"] == "dcp" and (tmp_path / "out" / ".metadata").is_file()
    loaded = blank(sd)
    loaded["step"], loaded["opt"]["lr"] = 0, 0.0
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(tmp_path / "out")), no_dist=True)
    same(sd, loaded)
    again = cli_json("import", root, "back", tmp_path / "out")
    assert again["new_chunks"] == 0  # deduplicated against the store
    r = cli_json("diff", root, "orig", "back")
    assert r["identical"] and r["changed"] == [] and len(r["unchanged"]) == 8


def test_safetensors_round_trip_with_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file, save_file
    tensors = {k: v for k, v in model_state().items() if isinstance(v, torch.Tensor)}
    tensors["f5"] = torch.linspace(-2, 2, 17).to(torch.float8_e5m2)
    tensors["scalar"] = torch.tensor(3.5, dtype=torch.float16)
    save_file(tensors, str(tmp_path / "in.safetensors"))
    root = tmp_path / "store"
    cli_json("import", root, "st", tmp_path / "in.safetensors")
    cli_json("export", root, "st", tmp_path / "out.safetensors", "--format", "safetensors")
    same(tensors, load_file(str(tmp_path / "out.safetensors")))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "out.safetensors"), framework="np") as f:
        assert f.get_tensor("ids").tolist() == list(range(1000))


def test_torch_save_round_trip(tmp_path):
    sd = model_state()
    torch.save(sd, tmp_path / "in.pt")
    root = tmp_path / "store"
    cli_json("import", root, "t", tmp_path / "in.pt")
    cli_json("export", root, "t", tmp_path / "out.pt", "--format", "torch")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    same(sd, got)  # nested again as it was saved
    # exported as safetensors, the non-tensor items go as U8 and come back as bytes items
    cli_json("export", root, "t", tmp_path / "t.safetensors", "--format", "safetensors")
    cli_json("import", root, "t2", tmp_path / "t.safetensors")
    assert cli_json("diff", root, "t", "t2")["identical"]


def test_dcp_metadata_is_unpickled_safely(tmp_path):
    """A .metadata that would run code on plain pickle.load is refused; nothing runs."""
    src = tmp_path / "evil"
    src.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))
    (src / ".metadata").write_bytes(pickle.dumps(Evil()))
    r = cli("import", tmp_path / "store", "x", src)
    assert r.returncode == 2 and "does not allow" in r.stderr
    assert not marker.exists()


def test_export_refuses_existing_destination_and_bad_input(tmp_path):
    root = tmp_path / "store"
    with __import__("casckpt").Store.open(root, create=True) as store:
        store.put_arrays("a", {"x": np.arange(4, dtype=np.float32), "c": np.zeros(2, np.complex128)})
    (tmp_path / "taken").write_text("x")
    assert cli("export", root, "a", tmp_path / "taken", "--format", "torch").returncode == 2
    r = cli("export", root, "a", tmp_path / "a.safetensors", "--format", "safetensors")
    assert r.returncode == 2 and "complex128" in r.stderr and not (tmp_path / "a.safetensors").exists()
    assert cli("export", root, "a", tmp_path / "a.x", "--format", "zip").returncode == 2
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    assert cli("import", root, "b", tmp_path / "bad.safetensors").returncode == 2
    assert cli("import", root, "b", tmp_path / "missing.pt").returncode == 2


def _global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle that calls ``module.name(arg)``, the name possibly dotted."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85" + b"R" + b"."


def test_dcp_metadata_cannot_reach_other_modules_through_allowed_ones(tmp_path):
    """DCP's metadata module imports os: a dotted global like ``os.system`` resolved through it
    must be refused like any other global, and nothing may run."""
    src = tmp_path / "evil"
    src.mkdir()
    marker = tmp_path / "pwned"
    for module, name in [("torch.distributed.checkpoint.metadata", "os.system"),
                         ("torch.distributed.checkpoint.metadata", "torch.load"),
                         ("torch.distributed.checkpoint.metadata", "field")]:
        (src / ".metadata").write_bytes(_global_call(module, name, f"touch {marker}"))
        r = cli("import", tmp_path / "store", "x", src)
        assert r.returncode == 2 and "does not allow" in r.stderr, (name, r.stderr)
        assert not marker.exists()


def _stock_dcp_dir(path):
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.arange(8.0), "step": 3}, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True)


def test_dcp_metadata_naming_a_file_outside_its_folder_is_refused(tmp_path):
    src, secret = tmp_path / "ckpt", tmp_path / "secret.bin"
    _stock_dcp_dir(src)
    secret.write_bytes(b"TOP-SECRET" * 100)
    md = pickle.loads((src / ".metadata").read_bytes())
    for target in ("../secret.bin", str(secret)):
        for info in md.storage_data.values():
            info.relative_path = target
        (src / ".metadata").write_bytes(pickle.dumps(md))
        r = cli("import", tmp_path / "store", "x", src)
        assert r.returncode == 2 and "outside its folder" in r.stderr, r.stderr
    assert not (tmp_path / "store" / "snapshots" / "x.json").exists()


def test_a_broken_dcp_directory_is_a_clean_error(tmp_path):
    src = tmp_path / "ckpt"
    _stock_dcp_dir(src)
    for f in src.glob("*.distcp"):
        f.write_bytes(b"")  # data files truncated
    r = cli("import", tmp_path / "store", "x", src)
    assert r.returncode == 2 and "cannot read the DCP checkpoint" in r.stderr and "Traceback" not in r.stderr
