"""DCP's Metadata as JSON, item keys, and torch dtype names. Never pickle.

A DCP snapshot's manifest keeps DCP's ``Metadata`` under ``meta["dcp"]`` (see docs/FORMAT.md,
"DCP snapshots"), and one manifest item per saved tensor, shard or byte string, keyed by
:func:`item_key`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   StorageMeta, TensorProperties, TensorStorageMetadata)

from ..errors import CasckptError, ManifestError
from ..manifest import RawJSON, compact_json, json_str
from ..torchio import dtype_name, torch_dtype  # NOTE: re-exported: the one dtype-name function

FORMAT = 1
_LAYOUTS = {"strided": torch.strided}
_MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
                   "preserve_format": torch.preserve_format}


# -- item keys ------------------------------------------------------------------------------------
def item_key(fqn: str, offsets: Sequence[int] | None = None, sizes: Sequence[int] | None = None,
             size: Sequence[int] | None = None) -> str:
    """The manifest key of a saved item: the FQN when it covers the whole tensor (or is a byte
    string), else ``"{fqn}@{o0},{o1},..."``. An FQN holding '@' always gets the '@' form, so
    :func:`casckpt.manifest.key_fqn` is exact."""
    whole = offsets is None or (not any(offsets) and list(sizes) == list(size))
    if whole and "@" not in fqn:
        return fqn
    return f"{fqn}@{','.join(str(int(o)) for o in (offsets or ()))}"



# -- Metadata -> JSON -----------------------------------------------------------------------------
def metadata_to_json(md: Metadata) -> dict:
    """DCP's Metadata as plain JSON (planner_data must be DCP's flatten mapping or None)."""
    return {"format": FORMAT, "version": md.version,
            "state_dict_metadata": {fqn: _storage_to_json(fqn, v) for fqn, v in md.state_dict_metadata.items()},
            "planner_data": _planner_data_to_json(md.planner_data),
            "storage_meta": _storage_meta_to_json(md.storage_meta)}


def metadata_to_text(md: Metadata) -> RawJSON:
    """:func:`metadata_to_json` as compact JSON text, the same bytes as ``json.dumps`` of it, with
    the state dict's entries written directly (for 20k small tensors the dicts and their encoding
    were a tenth of a second of every save)."""
    sdm = ",".join(f"{json_str(fqn)}:{_storage_text(fqn, v)}" for fqn, v in md.state_dict_metadata.items())
    head = compact_json({"format": FORMAT, "version": md.version})
    rest = compact_json({"planner_data": _planner_data_to_json(md.planner_data),
                   "storage_meta": _storage_meta_to_json(md.storage_meta)})
    return RawJSON(f'{head[:-1]},"state_dict_metadata":{{{sdm}}},{rest[1:]}')


def _storage_text(fqn: str, v: Any) -> str:
    if not isinstance(v, TensorStorageMetadata):
        return compact_json(_storage_to_json(fqn, v))
    p = v.properties
    key = _props_key(p)
    props = _PROPS_TEXT.get(key)
    if props is None:
        props = _PROPS_TEXT[key] = compact_json(_properties_json(p))[1:-1]
    chunks = ",".join(f"[[{_ints_text(c.offsets)}],[{_ints_text(c.sizes)}]]" for c in v.chunks)
    return f'{{"type":"tensor",{props},"size":[{_ints_text(v.size)}],"chunks":[{chunks}]}}'


def _ints_text(xs: Sequence[int]) -> str:
    return ",".join(map(str, xs))  # NOTE: torch.Size holds ints


def _storage_to_json(fqn: str, v: Any) -> dict:
    if isinstance(v, BytesStorageMetadata):
        return {"type": "bytes"}
    if not isinstance(v, TensorStorageMetadata):
        raise CasckptError(f"DCP metadata for {fqn!r} has unknown type {type(v).__name__}")
    return {"type": "tensor", **_properties_json(v.properties), "size": list(v.size),
            "chunks": [[list(c.offsets), list(c.sizes)] for c in v.chunks]}


def _properties_json(p: TensorProperties) -> dict:
    # NOTE: a checkpoint has a handful of distinct property sets and may have 100k tensors
    key = _props_key(p)
    out = _PROPS.get(key)
    if out is None:
        out = _PROPS[key] = {"dtype": dtype_name(p.dtype), "layout": str(p.layout).removeprefix("torch."),
                             "requires_grad": bool(p.requires_grad),
                             "memory_format": str(p.memory_format).removeprefix("torch."),
                             "pin_memory": bool(p.pin_memory)}
    return out


def _props_key(p: TensorProperties) -> tuple:
    return p.dtype, p.layout, p.requires_grad, p.memory_format, p.pin_memory


_PROPS: dict[tuple, dict] = {}
_PROPS_TEXT: dict[tuple, str] = {}  # the same, as the JSON text inside an entry's braces


def _planner_data_to_json(pd: Any) -> dict | None:
    if pd is None:
        return None
    ok = isinstance(pd, dict) and all(
        isinstance(k, str) and isinstance(path, (tuple, list))
        and all(type(p) in (str, int) for p in path) for k, path in pd.items())
    if not ok:
        raise CasckptError("casckpt stores DCP planner_data only as DefaultSavePlanner's flatten "
                           f"mapping (FQN -> path of str/int); got {type(pd).__name__}")
    return {k: list(path) for k, path in pd.items()}


def _storage_meta_to_json(sm: StorageMeta | None) -> dict | None:
    if sm is None:
        return None
    return {"checkpoint_id": None if sm.checkpoint_id is None else str(sm.checkpoint_id),
            "save_id": sm.save_id, "load_id": sm.load_id, "modules": list(sm.modules)}


# -- JSON -> Metadata -----------------------------------------------------------------------------
def metadata_from_json(doc: Any, source: str) -> Metadata:
    """Rebuild DCP's Metadata from :func:`metadata_to_json` output, checking every field."""
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("no DCP metadata of a known format")
        sdm = {str(k): _storage_from_json(v) for k, v in doc["state_dict_metadata"].items()}
        pd = doc.get("planner_data")
        planner_data = None if pd is None else {str(k): tuple(_path(p)) for k, p in pd.items()}
        return Metadata(sdm, planner_data=planner_data, storage_meta=_storage_meta_from_json(doc.get("storage_meta")),
                        version=doc.get("version"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{source}: bad DCP metadata: {exc}") from None


def _path(p: Any) -> list:
    if not isinstance(p, list) or not all(type(x) in (str, int) for x in p):
        raise ValueError("a planner_data path must be a list of strings and integers")
    return p


def _ints(v: Any) -> torch.Size:
    if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
        raise ValueError(f"expected a list of non-negative integers, got {str(v)[:60]}")
    return torch.Size(v)


def _storage_from_json(v: Any) -> TensorStorageMetadata | BytesStorageMetadata:
    if v["type"] == "bytes":
        return BytesStorageMetadata()
    if v["type"] != "tensor":
        raise ValueError(f"unknown item type {str(v['type'])[:20]!r}")
    props = TensorProperties(dtype=torch_dtype(v["dtype"]), layout=_LAYOUTS[v["layout"]],
                             requires_grad=bool(v["requires_grad"]),
                             memory_format=_MEMORY_FORMATS[v["memory_format"]], pin_memory=bool(v["pin_memory"]))
    chunks = [ChunkStorageMetadata(offsets=_ints(o), sizes=_ints(s)) for o, s in v["chunks"]]
    return TensorStorageMetadata(properties=props, size=_ints(v["size"]), chunks=chunks)


def _storage_meta_from_json(d: Any) -> StorageMeta | None:
    if d is None:
        return None
    return StorageMeta(checkpoint_id=d.get("checkpoint_id"), save_id=d.get("save_id"),
                       load_id=d.get("load_id"), modules=list(d.get("modules") or []))


def metadata_from_items(items: dict) -> Metadata:
    """Metadata for a snapshot not written by DCP (``Store.put_arrays``): every item a whole tensor."""
    sdm = {}
    for key, it in items.items():
        if it.dtype == "bytes":
            sdm[key] = BytesStorageMetadata()
            continue
        size = torch.Size(it.shape)
        sdm[key] = TensorStorageMetadata(TensorProperties(dtype=torch_dtype(it.dtype)), size,
                                         [ChunkStorageMetadata(torch.Size([0] * len(size)), size)])
    return Metadata(sdm)


def storage_key(fqn: str, offsets: Sequence[int] | None, md: Any) -> str:
    """The item key of a saved chunk named by DCP's storage index (its FQN and chunk offsets)."""
    if isinstance(md, BytesStorageMetadata) or offsets is None:
        return item_key(fqn)
    for c in md.chunks:
        if list(c.offsets) == list(offsets):
            return item_key(fqn, c.offsets, c.sizes, md.size)
    raise ManifestError(f"DCP metadata has no chunk of {fqn!r} at offsets {list(offsets)}")
