"""``casckpt report``: a self-contained HTML page with PNG plots of what a store holds and costs.

Plots: storage over snapshots (logical vs stored, cumulative); per snapshot, the share of its
bytes that were new (dedup) and how well its new chunks compressed; a heatmap of per-module
change (relative L2, as ``diff --stat``) between consecutive snapshots; and which snapshots a gc
policy would keep. The PNGs are embedded as data URIs (the page needs no other file) and also
written beside it. The only module that imports matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from . import retention
from .diff import diff, natural_key, stat
from .errors import CasckptError
from .store import Store
from .usage import du

HEATMAP_PAIRS = 40  # consecutive pairs compared for the heatmap (the newest ones)
HEATMAP_ROWS = 40  # modules shown (the most changed ones)


@dataclass(frozen=True)
class SnapshotCost:
    name: str
    created: str
    logical: int
    new_raw: int  # uncompressed bytes of chunks this snapshot was the first to reference
    new_stored: int  # their bytes on disk


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CasckptError("casckpt report needs matplotlib: pip install 'casckpt[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def costs(store: Store) -> list[SnapshotCost]:
    """Per snapshot, oldest first: logical bytes and the bytes of chunks it added to the store."""
    sizes = {d: (i.raw_len, i.stored_len) for d, i in store.index.chunks()}
    seen: set = set()
    out = []
    for s in store.snapshots():
        new = store.manifest(s.name).digests() - seen
        seen |= new
        raw = sum(sizes.get(d, (0, 0))[0] for d in new)
        out.append(SnapshotCost(s.name, s.created, s.logical_bytes, raw, sum(sizes.get(d, (0, 0))[1] for d in new)))
    return out


def changes(store: Store, names: list[str]) -> tuple[list[str], list[str], list[list[float]]]:
    """Modules, pair labels and relative L2 change of each module between consecutive snapshots
    (0 where nothing changed; NaN where undefined). Only modules whose values moved are rows."""
    pairs = list(zip(names, names[1:]))[-HEATMAP_PAIRS:]
    cols = []
    for a, b in pairs:
        cols.append({m.module: (m.rel_l2 if m.rel_l2 is not None else math.nan)
                     for m in stat(diff(store, a, b, values=True, small_values=False))})

    def peak(mod: str) -> float:
        return max((v for c in cols if not math.isnan(v := c.get(mod, 0.0))), default=0.0)

    # NOTE: the most changed modules, shown in model order (layer 2 above layer 10)
    moved = [m for m in {m for c in cols for m in c} if peak(m) > 0]  # not only added, removed or scalar
    mods = sorted(sorted(moved, key=peak, reverse=True)[:HEATMAP_ROWS], key=natural_key)
    return mods, [b for _, b in pairs], [[c.get(m, 0.0) for c in cols] for m in mods]


def write(store: Store, out: str | Path, *, policy: retention.Policy | None = None) -> Path:
    """Write ``out/index.html`` and its PNGs; returns the page's path."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = costs(store)
    if not rows:
        raise CasckptError(f"store {store.root} has no snapshots to report on")
    names = [r.name for r in rows]
    policy = policy or retention.Policy()
    kept = retention.select(retention.of_store(store, store.snapshots()), policy)
    figs = {"storage": _storage(plt, rows), "dedup": _dedup(plt, rows),
            "change": _heatmap(plt, *changes(store, names)), "retention": _retention(plt, rows, kept, policy)}
    images = {}
    for key, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        (out / f"{key}.png").write_bytes(buf.getvalue())
        images[key] = base64.b64encode(buf.getvalue()).decode()
    page = out / "index.html"
    page.write_text(_html(store, rows, images, kept, policy))
    return page


# -- plots -----------------------------------------------------------------------------------------
def _storage(plt, rows):
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(rows))
    logical, stored, a, b = [], [], 0, 0
    for r in rows:
        a, b = a + r.logical, b + r.new_stored
        logical.append(a / 2**20)
        stored.append(b / 2**20)
    ax.plot(x, logical, label="logical (what full copies would take)", marker=".")
    ax.plot(x, stored, label="stored in the store", marker=".")
    _names_axis(ax, rows)
    ax.set_ylabel("MiB, cumulative")
    ax.set_title("Storage over snapshots")
    ax.legend()
    return fig


def _dedup(plt, rows):
    fig, ax = plt.subplots(figsize=(9, 4))
    x = list(range(len(rows)))
    new = [100 * r.new_raw / r.logical if r.logical else 0 for r in rows]
    comp = [r.new_stored / r.new_raw if r.new_raw else math.nan for r in rows]
    ax.bar(x, new, color="tab:blue", label="new bytes, % of the snapshot (dedup)")
    ax.set_ylabel("% new")
    ax2 = ax.twinx()
    ax2.plot(x, comp, color="tab:orange", marker="o", label="stored / raw of its new chunks (compression)")
    ax2.set_ylabel("compression (stored / raw)")
    ax2.set_ylim(0, max(1.05, max((c for c in comp if not math.isnan(c)), default=1) * 1.1))
    _names_axis(ax, rows)
    ax.set_title("Dedup and compression per snapshot")
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return fig


def _heatmap(plt, mods, labels, grid):
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(mods) + 1.5)))
    if not mods:
        ax.text(0.5, 0.5, "no changes between consecutive snapshots", ha="center", va="center")
        ax.set_axis_off()
        return fig
    vals = [[math.log10(v) if v and not math.isnan(v) and v > 0 else math.nan for v in row] for row in grid]
    im = ax.imshow(vals, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(mods)), [m[-40:] for m in mods], fontsize=7)
    step = max(1, len(labels) // 20)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=60, ha="right", fontsize=7)
    fig.colorbar(im, ax=ax, label="log10 relative L2 change")
    ax.set_title("Per-module change from the previous snapshot (blank: unchanged)")
    return fig


def _retention(plt, rows, kept, policy):
    fig, ax = plt.subplots(figsize=(9, 2.2))
    k = [i for i, r in enumerate(rows) if r.name in kept]
    d = [i for i, r in enumerate(rows) if r.name not in kept]
    ax.scatter(k, [1] * len(k), marker="o", color="tab:green", label=f"kept ({len(k)})")
    ax.scatter(d, [1] * len(d), marker="x", color="tab:red", label=f"dropped ({len(d)})")
    ax.set_yticks([])
    ax.set_xlim(-1, len(rows))
    _names_axis(ax, rows)
    ax.set_title(f"What gc {_policy_text(policy)} would keep")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _names_axis(ax, rows) -> None:
    step = max(1, len(rows) // 20)
    ax.set_xticks(range(0, len(rows), step), [r.name for r in rows][::step], rotation=60, ha="right", fontsize=7)


def _policy_text(policy) -> str:
    parts = [f"--keep-{f} {getattr(policy, f)}" for f in ("last", "every", "hourly", "daily", "weekly", "monthly") if getattr(policy, f) is not None]
    if policy.within is not None:
        parts.append(f"--keep-within {policy.within:g}s")
    parts += [f"--keep {n}" for n in policy.keep]
    return " ".join(parts) or "(no policy: keeps everything)"


# -- the page --------------------------------------------------------------------------------------
def _html(store, rows, images, kept, policy) -> str:
    u = du(store)
    e = html.escape
    table = "\n".join(f"<tr><td>{e(r.name)}</td><td>{e(r.created)}</td><td>{r.logical:,}</td>"
                      f"<td>{r.new_stored:,}</td><td>{'kept' if r.name in kept else 'dropped'}</td></tr>"
                      for r in rows)
    figs = "\n".join(f'<figure><img id="plot-{k}" alt="{e(k)} plot" src="data:image/png;base64,{v}">'
                     f"</figure>" for k, v in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>casckpt report: {e(str(store.root))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>casckpt report</h1>
<p>Store <code>{e(str(store.root))}</code>: {u.snapshots} snapshots, {u.logical_bytes:,} logical bytes,
{u.stored_bytes:,} stored in {u.chunks} chunks (dedup {u.dedup_ratio}, compression {u.compression_ratio},
total {u.ratio}). Retention shown: gc {e(_policy_text(policy))}.</p>
{figs}
<h2>Snapshots</h2>
<table><tr><th>name</th><th>created (UTC)</th><th>logical bytes</th><th>new stored bytes</th><th>policy</th></tr>
{table}
</table></body></html>
"""
