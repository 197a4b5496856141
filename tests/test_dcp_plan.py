"""DedupSavePlanner's global plan equals DefaultSavePlanner's: the same metadata, items and shard
index hints (it builds them without DCP's per-item dataclasses.replace), over tensors, byte items and
shards of one tensor spread over several plans; one plan skips DCP's dedup, several do not. The
global metadata's JSON text, written directly, equals json.dumps of its JSON form."""

import io

import pytest
import torch
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner, create_default_global_save_plan
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import _create_write_items

from casckpt.dcp.planner import DedupSavePlanner, global_save_plan


def shard(rank: int) -> WriteItem:
    t = torch.zeros(4, 8)
    return WriteItem(index=MetadataIndex("sharded", [4 * rank, 0]), type=WriteItemType.SHARD,
                     tensor_data=TensorWriteData(ChunkStorageMetadata(torch.Size([4 * rank, 0]), torch.Size([4, 8])),
                                                 TensorProperties.create_from_tensor(t), torch.Size([8, 8])))


def plans() -> list[SavePlan]:
    out = []
    for rank in range(2):
        items = [*_create_write_items(f"t{rank}", torch.arange(3.0 + rank)),
                 *_create_write_items("shared", torch.ones(2, 2)),  # on both ranks: DCP dedups it
                 *_create_write_items(f"b{rank}", io.BytesIO(b"x")), shard(rank)]
        out.append(SavePlan(items, planner_data={f"t{rank}": (f"t{rank}",)}))
    return out


def hints(ps: list[SavePlan]) -> list[list[tuple]]:
    """Each item's place; the index hint of shards (a whole tensor's, DCP's 0, is read by nothing:
    global_save_plan keeps the planned item)."""
    return [[(i.index.fqn, tuple(i.index.offset or ()), i.index.index if i.type == WriteItemType.SHARD else None,
              i.type) for i in p.items] for p in ps]


def test_global_save_plan_equals_dcps():
    for build in (global_save_plan, create_default_global_save_plan):
        with pytest.raises(AssertionError):  # "shared" twice: plans must be deduplicated first
            build(plans())
    ours, md = global_save_plan(dedup_save_plans(plans()))
    theirs, md_dcp = create_default_global_save_plan(dedup_save_plans(plans()))
    assert hints(ours) == hints(theirs) and ours == theirs
    assert md.state_dict_metadata == md_dcp.state_dict_metadata
    assert [c.offsets for c in md.state_dict_metadata["sharded"].chunks] == [torch.Size([0, 0]), torch.Size([4, 0])]
    assert [i.index.index for p in ours for i in p.items if i.index.fqn == "sharded"] == [0, 1]


def test_the_planners_global_plan_equals_the_default_planners():
    for n in (1, 2):
        a, b = DedupSavePlanner(), DefaultSavePlanner()
        ours, md = a.create_global_plan(plans()[:n])
        theirs, md_dcp = b.create_global_plan(plans()[:n])
        assert hints(ours) == hints(theirs) and ours == theirs
        assert md.state_dict_metadata == md_dcp.state_dict_metadata and md.planner_data == md_dcp.planner_data
    assert sum(i.index.fqn == "shared" for p in ours for i in p.items) == 1  # two plans: deduplicated


def test_metadata_text_is_json_dumps_of_metadata_json_and_reads_back():
    # the writer puts DCP's metadata into the manifest as text it writes itself (meta.RawJSON):
    # the bytes must be json.dumps of metadata_to_json, and a manifest read back must give it
    import json

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta, TensorStorageMetadata

    from casckpt.dcp.meta import metadata_from_json, metadata_to_json, metadata_to_text
    from casckpt.manifest import Manifest, utc_now

    props = [TensorProperties.create_from_tensor(t) for t in
             (torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16, requires_grad=True), torch.zeros(1, 1).to(torch.int8))]
    sdm = {"w": TensorStorageMetadata(props[0], torch.Size([2]), [ChunkStorageMetadata(torch.Size([0]), torch.Size([2]))]),
           'q"\\ü.x': TensorStorageMetadata(props[1], torch.Size([6, 3]), [
               ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([3, 3])),
               ChunkStorageMetadata(torch.Size([3, 0]), torch.Size([3, 3]))]),
           "s": TensorStorageMetadata(props[2], torch.Size([]), [ChunkStorageMetadata(torch.Size([]), torch.Size([]))]),
           "b": BytesStorageMetadata()}
    for md in (Metadata(sdm), Metadata(sdm, planner_data={k: (k,) for k in sdm} | {"n": ("a", 0, "b")},
                                       storage_meta=StorageMeta(checkpoint_id="c", save_id="s"), version="1.0.0")):
        text = metadata_to_text(md)
        assert text == json.dumps(metadata_to_json(md), separators=(",", ":"))
        m = Manifest("m", utc_now(), 4096, {}, {"dcp": text, "user": {"x": [1]}})
        back = Manifest.from_bytes(m.to_bytes())
        assert back.meta == {"dcp": metadata_to_json(md), "user": {"x": [1]}}
        assert metadata_from_json(back.meta["dcp"], "m").state_dict_metadata == sdm
