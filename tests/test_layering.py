"""The package's layering, checked from the source: imports run one way only, the core never
imports torch, and each third-party library has one module that imports it.

Every module of casckpt is parsed with ``ast`` (module-level imports and those inside functions;
``if TYPE_CHECKING:`` blocks are skipped, as they never run), so a new module must be placed in a
layer below before this test passes, and an import that runs the wrong way fails it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "casckpt"

# Lowest first. A module may import modules of its own layer or of layers below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"errors"}),
    ("basics", {"digest", "codec", "planes", "dtypes", "chunking", "nest", "fsutil", "pipeline", "delta",
                "progress", "clifmt", "retention", "spotcheck", "packs", "gcpause"}),
    ("seam and parts", {"backends", "backends.local", "backends.object", "chunks", "index", "manifest", "lock",
                        "objlock", "objcache", "config", "thin", "checkpoint_id", "safetensors_file"}),
    ("store", {"store", "snapshots", "saving", "arrays", "bases", "reindex", "reclaim", "refcache"}),
    ("verbs", {"gc", "diff", "verify", "usage", "transfer", "torchio", "report", "values"}),
    ("dcp and cli", {"dcp", "dcp.api", "dcp.host", "dcp.meta", "dcp.planner", "dcp.reader", "dcp.rankwrite",
                     "dcp.reshard", "dcp.writer",
                     "cli", "clicmds", "__main__", "", "integrations", "integrations.accelerate",
                     "integrations.lightning"}),
]

# Top-layer groups that must not import each other.
APART = [({"dcp", "dcp.api", "dcp.host", "dcp.meta", "dcp.planner", "dcp.reader", "dcp.rankwrite", "dcp.reshard",
           "dcp.writer"},
          {"cli", "clicmds", "__main__"})]

# Third-party library -> the modules allowed to import it. numpy is the array type of the core
# API (like a builtin here), so it is not held to one module.
OWNERS = {
    "blake3": {"digest"},
    "zstandard": {"codec"},
    "lmdb": {"index"},
    "tqdm": {"progress"},
    "torch": {"torchio", "dcp.api", "dcp.host", "dcp.meta", "dcp.planner", "dcp.rankwrite", "dcp.reader",
              "dcp.writer", "integrations.accelerate"},
    "accelerate": {"integrations.accelerate"},
    "lightning": {"integrations.lightning"},
    "matplotlib": {"report"},
    "obstore": {"backends.object"},
}
FREE = {"numpy"} | set(sys.stdlib_module_names)


def module_name(path: Path) -> str:
    """``casckpt/dcp/api.py`` -> ``dcp.api``; a package's ``__init__`` is the package (``""``: casckpt)."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """What ``path`` imports: names of casckpt modules (as :func:`module_name` gives them) and,
    prefixed with ``+``, top-level names of other libraries."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here.split(".") if path.name == "__init__.py" and here else here.split(".")[:-1]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node.test)
            for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                out.add(_ours(a.name, modules) if a.name.split(".")[0] == "casckpt" else "+" + a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                if top == "casckpt":
                    base = node.module.split(".")[1:]
                else:
                    out.add("+" + top)
                    continue
            else:
                base = (package[:len(package) - node.level + 1] if node.level > 1 else list(package))
                base = base + (node.module.split(".") if node.module else [])
            for a in node.names:  # ``from . import x``: x may be a module or a name in one
                sub = ".".join(base + [a.name])
                out.add(sub if sub in modules else ".".join(base))
    return out


def _type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _ours(dotted: str, modules: set[str]) -> str:
    name = ".".join(dotted.split(".")[1:])
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def graph() -> dict[str, set[str]]:
    paths = sorted(PKG.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def violations(g: dict[str, set[str]], layers=LAYERS, apart=APART, owners=OWNERS) -> list[str]:
    """Every import in ``g`` (module -> imports, as :func:`imports_of` gives them) that breaks a rule."""
    layer = {m: i for i, (_, ms) in enumerate(layers) for m in ms}
    out = [f"module {m or 'casckpt'} is in no layer: place it in LAYERS" for m in g if m not in layer]
    for m, deps in sorted(g.items()):
        for d in sorted(deps):
            if d.startswith("+"):
                lib = d[1:]
                if lib in owners and m not in owners[lib]:
                    out.append(f"{m} imports {lib}, which only {sorted(owners[lib])} may import")
                elif lib not in owners and lib not in FREE:
                    out.append(f"{m} imports {lib}, a library with no owner in OWNERS")
            elif d != m and layer.get(d, -1) > layer.get(m, len(layers)):
                out.append(f"{m} ({layers[layer[m]][0]}) imports {d or 'casckpt'} ({layers[layer[d]][0]}): "
                           "an import the wrong way")
            for a, b in apart:
                if (m in a and d in b) or (m in b and d in a):
                    out.append(f"{m} imports {d}: these sides never import each other")
    return out


def test_the_package_is_layered():
    assert violations(graph()) == []


def test_the_graph_is_read_from_every_module():
    g = graph()
    assert {"store", "backends.local", "dcp.writer", "torchio", ""} <= set(g)
    assert "store" in g["gc"] and "+lmdb" in g["index"] and "backends" in g["backends.local"]
    assert "+torch" in g["torchio"] and "fsutil" in g["backends.local"] and "torchio" in g["dcp.meta"]
    assert "saving" not in g["bases"]  # under TYPE_CHECKING: never runs


@pytest.mark.parametrize("bad,why", [
    ({"store": {"gc"}}, "wrong way"),                     # the store reaching up to a verb
    ({"chunks": {"store"}}, "wrong way"),                 # a part reaching up to the store
    ({"errors": {"digest"}}, "wrong way"),
    ({"gc": {"dcp.api"}}, "wrong way"),                   # a verb reaching up to the DCP layer
    ({"cli": {"dcp.api"}}, "never import each other"),
    ({"store": {"+torch"}}, "only"),                       # the core importing torch
    ({"chunks": {"+zstandard"}}, "only"),                 # a second importer of a library
    ({"gc": {"+requests"}}, "no owner"),
    ({"newmodule": set()}, "no layer"),
])
def test_a_bad_graph_is_caught(bad, why):
    g = {**graph(), **bad}
    found = violations(g)
    assert found and all(why in v for v in found), found


def test_core_and_verbs_do_not_load_torch():
    code = ("import sys, casckpt, casckpt.store, casckpt.gc, casckpt.diff, casckpt.verify, casckpt.usage, "
            "casckpt.transfer, casckpt.report, casckpt.values, casckpt.reindex, casckpt.cli, casckpt.clicmds; "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
