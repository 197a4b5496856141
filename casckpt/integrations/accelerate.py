"""Hugging Face Accelerate: ``save_state`` / ``load_state`` through a casckpt store.

    from casckpt.integrations.accelerate import load_state, save_state
    save_state(accelerator, f"/ckpt/run/step-{step}")   # on every process, like accelerator.save_state
    load_state(accelerator, "/ckpt/run/step-100")        # or "/ckpt/run" for the newest snapshot

They keep what ``accelerator.save_state`` keeps: every prepared model (unwrapped, as
``accelerator.get_state_dict`` gives it), optimizer, scheduler and registered custom object,
the step counter, and each process's RNG states (torch, Python, numpy), as one snapshot instead
of a folder of files, so unchanged weights and moments are not written twice. Models, optimizers
and schedulers are matched by the order in which they were prepared, as Accelerate does.
Loading rebuilds the whole saved state in each process (:func:`casckpt.read_state`), which fits
replicated (DDP) training; sharded (FSDP) training should save with DCP's ``get_state_dict``
and :func:`casckpt.save` instead.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from .. import checkpoint_id as ids
from ..dcp.api import read_state, save
from ..store import SaveStats


def save_state(accelerator: Accelerator, checkpoint_id: str | os.PathLike, *,
               overwrite: bool = False) -> SaveStats:
    """Save the accelerator's training state as a casckpt snapshot (call on every process)."""
    store, name = ids.split(checkpoint_id)
    state: dict[str, Any] = {"step": accelerator.step}
    for i, model in enumerate(accelerator._models):
        state[f"model_{i}"] = accelerator.get_state_dict(model, unwrap=True)
    for kind, objs in (("optimizer", accelerator._optimizers), ("scheduler", accelerator._schedulers),
                       ("custom", accelerator._custom_objects)):
        for i, obj in enumerate(objs):
            state[f"{kind}_{i}"] = obj.state_dict()
    # NOTE: RNG states differ between processes; one key per process keeps DCP from keeping one.
    state[f"rng_{accelerator.process_index}"] = _rng_state()
    return save(state, store, name, overwrite=overwrite)


def load_state(accelerator: Accelerator, checkpoint_id: str | os.PathLike, *,
               allow_pickle: bool = False) -> None:
    """Restore what :func:`save_state` saved into the accelerator's prepared objects
    (``checkpoint_id`` may be the store itself: its newest snapshot)."""
    state = read_state(checkpoint_id, allow_pickle=allow_pickle)
    for i, model in enumerate(accelerator._models):
        accelerator.unwrap_model(model).load_state_dict(state[f"model_{i}"])
    for kind, objs in (("optimizer", accelerator._optimizers), ("scheduler", accelerator._schedulers),
                       ("custom", accelerator._custom_objects)):
        for i, obj in enumerate(objs):
            obj.load_state_dict(state[f"{kind}_{i}"])
    accelerator.step = int(state["step"])
    rng = state.get(f"rng_{accelerator.process_index}")
    if rng is not None:
        _set_rng_state(rng)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
