"""The values of small items (``step``, ``lr``, a scheduler's state), as short text for people.

Numeric items of a few elements are decoded with numpy. ``bytes`` items hold ``torch.save``
output (DCP's non-tensor state, or non-tensor leaves of an imported ``torch.save`` file); they are
loaded with ``torch.load(weights_only=True)`` when torch is installed, which runs no code from
the store, and shown as ``<N bytes>`` otherwise. torch is imported only when such an item is read.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import dtypes
from .manifest import Item, Manifest
from .store import Store

MAX_ELEMENTS = 16  # numeric items up to this many elements are shown
MAX_BYTES = 64 << 10  # bytes items up to this size are loaded
WIDTH = 80


def is_small(item: Item) -> bool:
    if item.dtype == "bytes":
        return item.nbytes <= MAX_BYTES
    return int(np.prod(item.shape, dtype=np.int64)) <= MAX_ELEMENTS


def small_values(store: Store, m: Manifest, keys=None) -> dict[str, str]:
    """Short text for each small item among ``keys`` (default: all) of manifest ``m``."""
    out = {}
    for key in (m.items if keys is None else keys):
        item = m.items[key]
        if is_small(item):
            out[key] = text(store, m, key)
    return out


def text(store: Store, m: Manifest, key: str) -> str:
    item = m.items[key]
    arr = store.read_array(m, key)
    if item.dtype == "bytes":
        return _short(_load(arr.tobytes()))
    if item.dtype in ("bfloat16",) or item.dtype.startswith("float8"):
        arr = dtypes.to_float64(item.dtype, arr.reshape(-1)).reshape(arr.shape)
    return _short(repr(arr.tolist()))


def _load(data: bytes) -> str:
    if importlib.util.find_spec("torch") is None:
        return f"<{len(data)} bytes>"
    from . import torchio  # NOTE: late, so torch loads only when such an item is shown

    try:
        return repr(torchio.load_value("", data))
    except Exception:  # not loadable without running code, or not torch.save output at all
        return f"<{len(data)} bytes, not loadable with weights_only>"


def _short(s: str) -> str:
    return s if len(s) <= WIDTH else s[:WIDTH - 1] + "…"

