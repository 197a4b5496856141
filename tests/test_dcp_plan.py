"""DedupSavePlanner's global plan equals DefaultSavePlanner's: the same metadata, items and shard
index hints (it builds them without DCP's per-item dataclasses.replace), over tensors, byte items and
shards of one tensor spread over several plans; one plan skips DCP's dedup, several do not."""

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
