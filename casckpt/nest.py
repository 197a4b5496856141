"""Flat item names back to the nested state dict they came from (torch-free).

A DCP snapshot keeps DCP's flatten mapping (``planner_data``: FQN → path of keys, e.g.
``"optim.state.0.exp_avg"`` → ``["optim", "state", 0, "exp_avg"]``); a ``torch.save`` import keeps
the same under ``meta["import"]["paths"]``. :func:`nest` rebuilds the structure so that
``model.load_state_dict`` and ``optimizer.load_state_dict`` accept the result.

An integer key makes a list, as DCP's own unflatten does (``param_groups``), except under an
optimizer's ``state`` (a mapping beside ``param_groups``), whose keys are integer parameter ids
of a dict: the paths alone cannot tell the two apart (and DCP writes those ids as strings), the
optimizer's layout can.
"""

from __future__ import annotations

from typing import Any


def paths_of(meta: dict) -> dict[str, list] | None:
    """The flatten mapping a manifest's ``meta`` holds, if any and well-formed."""
    pd = (meta.get("dcp") or {}).get("planner_data") if isinstance(meta.get("dcp"), dict) else None
    if pd is None and isinstance(meta.get("import"), dict):
        pd = meta["import"].get("paths")
    if not isinstance(pd, dict) or not all(isinstance(p, list) and p and all(type(x) in (str, int) for x in p)
                                           for p in pd.values()):
        return None
    return pd


def nest(flat: dict[str, Any], paths: dict[str, list]) -> dict:
    """``flat`` (name → value) as nested dicts and lists along ``paths`` (names missing there stay
    top-level keys)."""
    root: dict = {}
    for name, value in flat.items():
        path = paths.get(name) or [name]
        node = root
        for key, nxt in zip(path, path[1:]):
            node = _child(node, key, [] if type(nxt) is int else {})
        _put(node, path[-1], value)
    return optimizer_states(root)


def _child(node, key, default):
    if isinstance(node, dict):
        return node.setdefault(key, default)
    _extend(node, key)
    if node[key] is None:
        node[key] = default
    return node[key]


def _put(node, key, value) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        _extend(node, key)
        node[key] = value


def _extend(lst: list, i: int) -> None:
    if len(lst) <= i:
        lst.extend([None] * (i + 1 - len(lst)))


def optimizer_states(obj):
    """Key every optimizer's ``state`` by integer parameter ids again (DCP's paths hold them as
    strings, or as list indices): ``load_state_dict`` silently drops state under other keys.
    DCP saves no empty dict, so a fresh optimizer's missing ``state`` comes back empty."""
    if isinstance(obj, dict):
        if "param_groups" in obj and "state" not in obj:
            obj["state"] = {}
        if "param_groups" in obj and isinstance(obj.get("state"), list):
            obj["state"] = {i: v for i, v in enumerate(obj["state"]) if v is not None}
        elif "param_groups" in obj and isinstance(obj.get("state"), dict):
            obj["state"] = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in obj["state"].items()}
        for v in obj.values():
            optimizer_states(v)
    elif isinstance(obj, list):
        for v in obj:
            optimizer_states(v)
    return obj


def flatten(obj: dict, prefix: str = "", path: tuple = ()):
    """``(dotted name, path of keys, value)`` of each leaf of nested dicts (an empty dict is a leaf)."""
    for k, v in obj.items():
        name, p = f"{prefix}{k}", path + (k if type(k) in (str, int) else str(k),)
        if isinstance(v, dict) and v:
            yield from flatten(v, name + ".", p)
        else:
            yield name, list(p), v
