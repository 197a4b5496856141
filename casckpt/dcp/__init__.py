"""casckpt as a storage layer for torch.distributed.checkpoint (DCP). The only package that imports torch."""

from .api import LoadResult, load, read_state, save
from ..manifest import key_fqn
from .meta import item_key
from .planner import DedupSavePlanner, SafeLoadPlanner
from .reader import CasReader
from .writer import CasWriter

__all__ = ["CasWriter", "CasReader", "DedupSavePlanner", "SafeLoadPlanner", "save", "load", "read_state",
           "LoadResult",
           "item_key", "key_fqn"]
