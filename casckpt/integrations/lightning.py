"""PyTorch Lightning (and Fabric): a CheckpointIO that saves checkpoints as casckpt snapshots.

    from casckpt.integrations.lightning import CasckptCheckpointIO
    trainer = Trainer(plugins=[CasckptCheckpointIO()],
                      callbacks=[ModelCheckpoint(dirpath="/ckpt/run", save_top_k=-1)])
    fabric = Fabric(plugins=[CasckptCheckpointIO()])

Lightning names a checkpoint by a file path, ``/ckpt/run/epoch=0-step=100.ckpt``: the folder is
the store and the file name the snapshot (see :mod:`casckpt.checkpoint_id`), so every
checkpoint of a run deduplicates against the others. Lightning expects a save to an existing
path to replace it (``last.ckpt``), so this plugin overwrites; ``remove_checkpoint`` forgets the
snapshot and ``casckpt gc`` frees its chunks. Loading rebuilds the whole checkpoint dict in one
process (:func:`casckpt.read_state`); non-tensor values unpickle only with ``weights_only=False``
(Lightning's choice for its own checkpoints, which hold hyper-parameters) or ``allow_pickle``.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins import CheckpointIO

from .. import checkpoint_id as ids
from ..dcp.api import read_state, save
from ..store import Store


class CasckptCheckpointIO(CheckpointIO):
    """Lightning/Fabric CheckpointIO over a casckpt store (see the module docstring).

    ``store`` fixes the store; then checkpoint paths must lie in its folder. ``allow_pickle``
    is the default for loads where Lightning passes ``weights_only=None``.
    """

    def __init__(self, store: str | os.PathLike | None = None, *, allow_pickle: bool = False,
                 sync_files: bool = True) -> None:
        self.store = None if store is None else os.fspath(store)
        self.allow_pickle, self.sync_files = allow_pickle, sync_files

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"CasckptCheckpointIO takes no storage_options, got {storage_options!r}")
        store, name = ids.split(path, self.store)
        save(checkpoint, store, name, overwrite=True, sync_files=self.sync_files)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        store, name = ids.split(path, self.store)
        pickle = self.allow_pickle if weights_only is None else not weights_only
        return read_state(store, name, allow_pickle=pickle)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        store, name = ids.split(path, self.store)
        with Store.open(store) as st:
            st.delete(name)
