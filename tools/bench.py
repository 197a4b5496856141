"""tools/bench: casckpt vs DCP's FileSystemWriter/FileSystemReader on the same state, same run.

Prints medians of several runs and ratios (casckpt / DCP), writes the figures as JSON and a PNG of
cumulative storage vs step. Both sides go through dcp.save / dcp.load; only the storage layer
differs (casckpt: CasWriter + DedupSavePlanner, CasReader). Weights are "trained-like": N(0, σ)
with σ varying per layer, which compresses like real trained weights (README, Performance).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

import casckpt
from casckpt import chunking, codec, delta

warnings.filterwarnings("ignore")
MiB = 1 << 20


# -- state dicts -------------------------------------------------------------------------------
def trained_like(rng: np.random.Generator, shape, sigma: float, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)).to(dtype)


def model_state(mib: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``mib`` MiB of float32 "weights": layers of 4 MiB (1024 × 1024) with per-layer scale."""
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.weight": trained_like(rng, (1024, 1024), 0.01 + 0.03 * rng.random())
            for i in range(mib // 4)}


def change_chunks(sd: dict[str, torch.Tensor], fraction: float, chunk_size: int, seed: int) -> None:
    """Touch one row in ``fraction`` of all chunks (chunks are whole-row ranges of each tensor)."""
    rng = np.random.default_rng(seed)
    for t in sd.values():
        rows_per_chunk = max(1, chunk_size // (t[0].numel() * t.element_size()))
        n_chunks = -(-t.shape[0] // rows_per_chunk)
        for c in np.flatnonzero(rng.random(n_chunks) < fraction):
            t[c * rows_per_chunk] += 1e-3


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_bytes(path: Path) -> int:
    """Chunk and manifest bytes (the LMDB index is a cache of a few MiB and is not counted)."""
    return dir_bytes(path / "chunks") + dir_bytes(path / "snapshots")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dcp_save(sd, path):
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(path)))


def cas_save(sd, store, name, **kw):
    w = casckpt.CasWriter(store, snapshot=name, **kw)
    dcp.save(sd, storage_writer=w, planner=casckpt.DedupSavePlanner())
    return w.stats


def dcp_load(sd, path):
    dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path)))


def cas_load(sd, store, name):
    dcp.load(sd, storage_reader=casckpt.CasReader(store, snapshot=name))


# -- a) to d): speed -----------------------------------------------------------------------------
def speed(work: Path, mib: int, repeat: int) -> dict:
    sd = model_state(mib)
    runs = {k: [] for k in ("dcp_save", "cold", "unchanged", "changed5", "changed5_nodelta", "dcp_load", "load")}
    changed_frac = []
    for r in range(repeat):
        # Alternate the order so drifting machine load hits both sides alike.
        for side in (("dcp", "cas") if r % 2 == 0 else ("cas", "dcp")):
            if side == "dcp":
                d = work / f"dcp{r}"
                runs["dcp_save"].append(timed(lambda: dcp_save(sd, d)))
                runs["dcp_load"].append(timed(lambda: dcp_load(sd, d)))
                shutil.rmtree(d)
            else:
                s, off = work / f"cas{r}", work / f"cas-off{r}"
                delta.CACHE.clear()
                runs["cold"].append(timed(lambda: cas_save(sd, s, "cold")))
                runs["unchanged"].append(timed(lambda: cas_save(sd, s, "same")))
                runs["load"].append(timed(lambda: cas_load(sd, s, "same")))
                cas_save(sd, off, "cold", delta=False)
                change_chunks(sd, 0.05, casckpt.Store.open(s).config.chunk_size, seed=r)
                stats = []
                # the same 5 % change saved with deltas (default) and without, in either order
                for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    if mode == "on":
                        runs["changed5"].append(timed(lambda: stats.append(cas_save(sd, s, "changed"))))
                    else:
                        runs["changed5_nodelta"].append(timed(lambda: cas_save(sd, off, "changed", delta=False)))
                changed_frac.append(stats[0].new_chunks / stats[0].chunks)
                shutil.rmtree(s)
                shutil.rmtree(off)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "state_mib": mib, "repeat": repeat, "seconds_median": med, "seconds_all": runs,
        "changed_chunk_fraction": statistics.median(changed_frac),
        "ratios": {
            "cold_save": med["cold"] / med["dcp_save"],
            "unchanged_save": med["unchanged"] / med["dcp_save"],
            "changed5_save": med["changed5"] / med["dcp_save"],
            "load": med["load"] / med["dcp_load"],
            "changed5_delta_vs_nodelta": med["changed5"] / med["changed5_nodelta"],
        },
    }


# -- e) peak RSS, each in a fresh process ------------------------------------------------------
def rss_child(mode: str, path: str, mib: int) -> None:
    sd = model_state(mib)
    if mode == "cas_delta_save":  # one dense step on top of snapshot "rss": every chunk a delta
        for t in sd.values():
            t.add_(1e-4 * torch.sign(torch.randn(t.shape, generator=torch.Generator().manual_seed(1))))
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: measure the operation alone
    {"dcp_save": lambda: dcp_save(sd, Path(path)),
     "cas_save": lambda: cas_save(sd, Path(path), "rss"),
     "cas_delta_save": lambda: cas_save(sd, Path(path), "rss-delta"),
     "dcp_load": lambda: dcp_load(sd, Path(path)),
     "cas_load": lambda: cas_load(sd, Path(path), "rss")}[mode]()
    print(json.dumps({"base": base, "peak": _status("VmHWM"), "cache": delta.CACHE._held}))


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss(work: Path, mib: int) -> dict:
    out = {}
    dcp_save(model_state(mib), work / "rss-dcp")
    cas_save(model_state(mib), work / "rss-cas", "rss")
    for mode, path in (("dcp_save", work / "rss-dcp-new"), ("cas_save", work / "rss-cas-new"),
                       ("cas_delta_save", work / "rss-cas"),
                       ("dcp_load", work / "rss-dcp"), ("cas_load", work / "rss-cas")):
        res = subprocess.run([sys.executable, __file__, "--rss-child", mode, str(path), str(mib)],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"rss child {mode} failed:\n{res.stderr[-3000:]}")
        doc = json.loads(res.stdout.strip().splitlines()[-1])
        out[mode] = {"peak_mib": doc["peak"] / MiB, "extra_mib": (doc["peak"] - doc["base"]) / MiB,
                     "base_cache_mib": doc["cache"] / MiB}
    out["save_extra_vs_dcp_mib"] = out["cas_save"]["peak_mib"] - out["dcp_save"]["peak_mib"]
    out["delta_save_extra_vs_dcp_mib"] = out["cas_delta_save"]["peak_mib"] - out["dcp_save"]["peak_mib"]
    out["load_extra_vs_dcp_mib"] = out["cas_load"]["peak_mib"] - out["dcp_load"]["peak_mib"]
    return out


# -- f) storage over 10 steps --------------------------------------------------------------------
def scenario_states(kind: str, rng: np.random.Generator):
    """Yield 10 successive state dicts of one training scenario (mutated in place)."""
    if kind == "frozen_base":
        # Fine-tuning with LoRA adapters (rank 8) on a frozen 60 MiB base: 1.6% of the
        # parameters train, and Adam keeps two moments for each of them.
        sd = {f"base.{i}.weight": trained_like(rng, (1024, 1024), 0.02) for i in range(15)}
        lora = {f"base.{i}.lora_{ab}": trained_like(rng, (8, 1024) if ab == "a" else (1024, 8), 0.02)
                for i in range(15) for ab in "ab"}
        sd.update(lora)
        sd.update({f"optim.{k}.exp_avg": torch.zeros_like(v) for k, v in lora.items()})
        sd.update({f"optim.{k}.exp_avg_sq": torch.zeros_like(v) for k, v in lora.items()})
        for step in range(10):
            for k, v in lora.items():
                g = trained_like(rng, v.shape, 1e-3)
                sd[f"optim.{k}.exp_avg"].mul_(0.9).add_(g, alpha=0.1)
                sd[f"optim.{k}.exp_avg_sq"].mul_(0.999).add_(g * g, alpha=0.001)
                v.add_(sd[f"optim.{k}.exp_avg"], alpha=-1e-2)
            yield sd
    elif kind.startswith("sparse_embedding"):
        rows, dim = 262_144, 64  # 64 MiB table, 256-byte rows
        sd = {"emb.weight": trained_like(rng, (rows, dim), 0.02), "mlp.weight": trained_like(rng, (1024, 1024), 0.02)}
        # Ids drawn from a Zipf law. "clustered": rows are ordered by id frequency (as when a
        # vocabulary is sorted by count); "scattered": ids are hashed to random rows.
        perm = np.arange(rows) if kind.endswith("clustered") else rng.permutation(rows)
        for step in range(10):
            ids = np.unique(np.minimum(rng.zipf(1.2, size=int(0.03 * rows)), rows) - 1)
            sd["emb.weight"][torch.from_numpy(perm[ids])] += 1e-3
            sd["mlp.weight"].add_(trained_like(rng, (1024, 1024), 1e-4))
            yield sd
    else:
        raise ValueError(kind)


# -- the dense scenario: an AdamW fine-tune of real trained weights --------------------------------
LR = 1e-4  # a typical fine-tuning learning rate for a BERT-sized model
# NOTE: optimizer steps before the first checkpoint. exp_avg_sq (β2 = 0.999) remembers ~1000
# steps: 20 steps in it still grows ~5 % per step, which no checkpoint of a real fine-tune sees.
WARMUP = 100


def minilm_run(steps: int = 10, seed: int = 0):
    """Yield ``(fp32_state, bf16_state)`` after each of ``steps`` AdamW steps on MiniLM's real
    weights (tools/realweights.py, 90.9 MB fp32), one optimizer step between checkpoints.

    fp32 state: master weights plus AdamW's exp_avg and exp_avg_sq (3 × 90.9 MB); bf16 state: the
    weights alone cast to bfloat16. The loss is synthetic, with a fixed pull and fresh minibatch
    noise of equal size (gradient signal-to-noise 1):
    ``L = Σ ½‖p − p₀ − δ‖² + ⟨ξ_t, p⟩``, δ ~ N(0, (0.01 σ_p)²) fixed, ξ_t ~ N(0, (0.01 σ_p)²)
    drawn each step, so ``∇L = p − p₀ − δ + ξ_t`` (set directly: no graph to build).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from realweights import minilm

    gen = torch.Generator().manual_seed(seed)
    params = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in minilm().items()}
    anchor = {k: p.detach().clone() for k, p in params.items()}
    scale = {k: 0.01 * float(p.detach().std()) if p.numel() > 1 else 1e-4 for k, p in params.items()}
    pull = {k: anchor[k] + torch.randn(p.shape, generator=gen) * scale[k] for k, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=LR, fused=True)  # fused: the same update, ~10x faster on CPU
    for step in range(WARMUP + steps):
        for k, p in params.items():
            p.grad = p.detach() - pull[k] + torch.randn(p.shape, generator=gen) * scale[k]
        opt.step()
        if step >= WARMUP:
            fp32 = {f"model.{k}": p.detach() for k, p in params.items()}
            for k, p in params.items():
                fp32[f"optim.{k}.exp_avg"] = opt.state[p]["exp_avg"]
                fp32[f"optim.{k}.exp_avg_sq"] = opt.state[p]["exp_avg_sq"]
            yield fp32, {k: p.detach().to(torch.bfloat16) for k, p in params.items()}


def minilm_checkpoints(work: Path, configs: dict[str, dict], *, loads: int = 5) -> dict:
    """Checkpoint every step of :func:`minilm_run` into one pair of stores (fp32 + AdamW, bf16
    weights) per config (``Store.open`` keywords; ``cache=False``: no base cache): cumulative
    storage, each save's time, and the time to load the last snapshot. One training run feeds
    every config, each with its own base cache (so they cannot evict each other's bases)."""
    saved_cache = delta.CACHE
    runs = {}
    for name, kw in configs.items():
        kw = dict(kw)
        cache = delta.BaseCache(delta.DEFAULT_CACHE_BYTES if kw.pop("cache", True) else 0)
        stores = {kind: casckpt.Store.open(work / f"mini-{len(runs)}-{kind}", create=True, **kw)
                  for kind in ("fp32", "bf16")}
        runs[name] = (cache, stores, {kind: {"bytes": [], "save_s": []} for kind in stores})
    last, one_dcp = {}, {}
    try:
        for step, states in enumerate(minilm_run()):
            for kind, sd in zip(("fp32", "bf16"), states):
                if step == 0:
                    d = work / f"mini-dcp-{kind}"
                    dcp_save(sd, d)
                    one_dcp[kind] = dir_bytes(d)
                    shutil.rmtree(d)
                for cache, stores, res in runs.values():
                    delta.CACHE = cache
                    res[kind]["save_s"].append(timed(lambda: cas_save(sd, stores[kind], f"step-{step}")))
                    res[kind]["bytes"].append(store_bytes(stores[kind].root))
                last[kind] = {k: v.clone() for k, v in sd.items()}
        out = {}
        # NOTE: the configs' loads take turns, so a noisy neighbour slows them alike
        times = {(name, kind): [] for name, (_, stores, _) in runs.items() for kind in stores}
        for _ in range(loads):
            for name, (cache, stores, _) in runs.items():
                delta.CACHE = cache
                for kind, store in stores.items():
                    times[name, kind].append(timed(lambda: cas_load(last[kind], store, "latest")))
        for name, (cache, stores, res) in runs.items():
            for kind, store in stores.items():
                r = res[kind]
                r["one_dcp_snapshot"] = one_dcp[kind]
                r["load_s"] = statistics.median(times[name, kind])
                r["save_step_s"] = statistics.median(r["save_s"][1:])
                r["vs_one_dcp_snapshot"] = r["bytes"][-1] / one_dcp[kind]
            out[name] = res
    finally:
        delta.CACHE = saved_cache
        for _, stores, _ in runs.values():
            for store in stores.values():
                store.close()
                shutil.rmtree(store.root, ignore_errors=True)
    return out


def delta_sweep(work: Path, depths: list[int]) -> dict:
    """Chain depth and base source vs storage, step-save time and load time (README, Performance)."""
    runs = {"off": dict(delta=False)}
    for k in depths:
        runs[f"depth {k}"] = dict(max_depth=k)
    runs[f"depth {depths[0]}, no cache"] = dict(max_depth=depths[0], cache=False)
    return minilm_checkpoints(work, runs)


def storage(work: Path) -> dict:
    out = {}
    dense = minilm_checkpoints(work, {"on": {}, "off": {"delta": False}})
    for kind in ("fp32", "bf16"):
        r = dense["on"][kind]
        ref = [r["one_dcp_snapshot"] * (i + 1) for i in range(len(r["bytes"]))]
        out[f"dense_{kind}" + ("_adamw" if kind == "fp32" else "")] = {
            "casckpt_bytes": r["bytes"], "dcp_bytes": ref, "one_dcp_snapshot": ref[0],
            "casckpt_vs_one_dcp_snapshot": r["bytes"][-1] / ref[0], "casckpt_vs_dcp_10": r["bytes"][-1] / ref[-1],
            "delta_off_vs_one_dcp_snapshot": dense["off"][kind]["vs_one_dcp_snapshot"],
            "step_save_s": {"on": r["save_step_s"], "off": dense["off"][kind]["save_step_s"]},
            "load_s": {"delta": r["load_s"], "full": dense["off"][kind]["load_s"]}}
    for kind in ("frozen_base", "sparse_embedding_clustered", "sparse_embedding_scattered"):
        store, rng = work / f"st-{kind}", np.random.default_rng(7)
        cas, ref = [], []
        for step, sd in enumerate(scenario_states(kind, rng)):
            cas_save(sd, store, f"step-{step}")
            cas.append(store_bytes(store))
            d = work / f"st-dcp-{kind}"
            dcp_save(sd, d)
            ref.append((ref[-1] if ref else 0) + dir_bytes(d))  # DCP keeps every snapshot whole
            shutil.rmtree(d)
        out[kind] = {"casckpt_bytes": cas, "dcp_bytes": ref, "one_dcp_snapshot": ref[0],
                     "casckpt_vs_one_dcp_snapshot": cas[-1] / ref[0], "casckpt_vs_dcp_10": cas[-1] / ref[-1]}
        shutil.rmtree(store)
    return dict(sorted(out.items(), key=lambda kv: kv[0].startswith("dense")))


# -- chunk size sweep (docs/FORMAT.md, "Chunk size"; run with --chunk-sizes) ----------------------
def chunk_sizes(work: Path, sizes_kib: list[int], repeat: int) -> dict:
    """Cold save, load, file count and a partial-update cost for each chunk size, same state."""
    sd = model_state(256)
    rng = np.random.default_rng(11)
    sd["emb.weight"] = trained_like(rng, (200_000, 128), 0.02)  # 100 MiB, 512-byte rows
    out = {}
    for kib in sizes_kib:
        saves, loads, updates = [], [], []
        for r in range(repeat):
            s = work / f"cs{kib}-{r}"
            w = casckpt.CasWriter(s, snapshot="a", chunk_size=kib << 10)
            saves.append(timed(lambda: dcp.save(sd, storage_writer=w, planner=casckpt.DedupSavePlanner())))
            loads.append(timed(lambda: cas_load(sd, s, "a")))
            files = w.stats.new_chunks
            emb = sd["emb.weight"]
            hot = torch.from_numpy(np.random.default_rng(r).choice(20_000, 2_000, replace=False))
            emb[hot] += 1e-3  # 1% of the rows, among the hottest 10%
            updates.append(cas_save(sd, s, "b").bytes_written / (emb.numel() * emb.element_size()))
            emb[hot] -= 1e-3
            shutil.rmtree(s)
        out[f"{kib}KiB"] = {"cold_save_s": statistics.median(saves), "load_s": statistics.median(loads),
                            "chunk_files": files, "update_written_over_table": statistics.median(updates)}
    return out


# -- g) compression --------------------------------------------------------------------------------
def compression() -> dict:
    rng = np.random.default_rng(3)
    w = torch.cat([trained_like(rng, (256, 1024), 0.01 + 0.03 * rng.random()) for _ in range(64)])
    out = {}
    for dt in ("float32", "bfloat16"):
        t = w.to(getattr(torch, dt))
        raw = t.view(torch.uint8).numpy().reshape(-1)
        k = t.element_size()
        for grouped in (False, True):
            cfg = codec.CodecConfig(level=1, byte_grouping=grouped)
            size, enc_s, dec_s = 0, 0.0, 0.0
            step = chunking.DEFAULT_CHUNK_SIZE
            for off in range(0, raw.size, step):
                view = memoryview(raw[off:off + step])
                t0 = time.perf_counter()
                kind, parts = codec.encode(view, group=k, config=cfg)
                enc_s += time.perf_counter() - t0
                payload = b"".join(bytes(p) for p in parts)
                size += len(payload)
                t0 = time.perf_counter()
                codec.decode(kind, memoryview(payload), view.nbytes)
                dec_s += time.perf_counter() - t0
            out[f"{dt}_{'grouped' if grouped else 'plain'}"] = {
                "stored_over_raw": size / raw.size, "compress_mb_s": raw.size / enc_s / 1e6,
                "decompress_mb_s": raw.size / dec_s / 1e6}
    import bench_codec  # real MiniLM weights: casckpt's codecs side by side with ZipNN
    out.update(bench_codec.flat(bench_codec.compression_report()))
    return out


# -- report --------------------------------------------------------------------------------------
def plot(storage_res: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(storage_res), figsize=(4.2 * len(storage_res), 3.6))
    for ax, (kind, r) in zip(axes, storage_res.items()):
        steps = range(1, len(r["dcp_bytes"]) + 1)
        ax.plot(steps, [b / MiB for b in r["dcp_bytes"]], "o-", label="DCP FileSystemWriter")
        ax.plot(steps, [b / MiB for b in r["casckpt_bytes"]], "s-", label="casckpt")
        ax.set_title(kind.replace("_", " "))
        ax.set_xlabel("checkpoint (step)")
        ax.set_ylabel("cumulative storage (MiB)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report(res: dict) -> None:
    s = res["speed"]
    m = s["seconds_median"]
    print(f"\n== speed: {s['state_mib']} MiB float32 state, median of {s['repeat']} runs ==")
    rows = [("cold save (empty store)", m["cold"], m["dcp_save"], "≤ 1.20"),
            ("unchanged-state save", m["unchanged"], m["dcp_save"], "≤ 0.15"),
            (f"~5%-changed save ({s['changed_chunk_fraction']:.1%} of chunks)", m["changed5"], m["dcp_save"], "≤ 0.25"),
            ("load", m["load"], m["dcp_load"], "≤ 1.30"),
            ("~5%-changed save: deltas on / off", m["changed5"], m["changed5_nodelta"], "≤ 1.50")]
    print(f"{'':44s} {'casckpt':>9s} {'DCP':>9s} {'ratio':>7s}  target   (last row: on, off)")
    for name, a, b, target in rows:
        print(f"{name:44s} {a:8.3f}s {b:8.3f}s {a / b:7.3f}  {target}")
    if "rss" in res:
        r = res["rss"]
        print("\n== peak RSS (fresh process each; state dict included) ==")
        for mode in ("dcp_save", "cas_save", "cas_delta_save", "dcp_load", "cas_load"):
            print(f"{mode:14s} peak {r[mode]['peak_mib']:8.1f} MiB   above the state: {r[mode]['extra_mib']:7.1f} MiB"
                  f"   base cache {r[mode]['base_cache_mib']:5.1f} MiB")
        print(f"casckpt save peak − DCP save peak: {r['save_extra_vs_dcp_mib']:+.1f} MiB (target ≤ +256); "
              f"a delta save's: {r['delta_save_extra_vs_dcp_mib']:+.1f} MiB, of which the base cache holds "
              f"{r['cas_delta_save']['base_cache_mib']:.1f} MiB (bounded on its own: 256 MiB)")
    print("\n== storage after 10 checkpoints ==")
    for kind, r in res["storage"].items():
        print(f"{kind:28s} casckpt {r['casckpt_bytes'][-1] / MiB:8.1f} MiB   DCP {r['dcp_bytes'][-1] / MiB:8.1f} MiB"
              f"   casckpt / one DCP snapshot {r['casckpt_vs_one_dcp_snapshot']:5.2f}   casckpt / DCP {r['casckpt_vs_dcp_10']:5.3f}")
    for kind, r in res["storage"].items():
        if "step_save_s" in r:
            sv, ld = r["step_save_s"], r["load_s"]
            print(f"{kind:28s} deltas off: {r['delta_off_vs_one_dcp_snapshot']:5.2f} DCP snapshots;  step save on/off "
                  f"{sv['on']:.3f}s/{sv['off']:.3f}s = {sv['on'] / sv['off']:.2f} (≤ 1.5);  load delta/full "
                  f"{ld['delta']:.3f}s/{ld['full']:.3f}s = {ld['delta'] / ld['full']:.2f} (≤ 1.5)")
    print(f"\n== compression of trained-like weights (zstd level 1, {chunking.DEFAULT_CHUNK_SIZE >> 20} MiB chunks) ==")
    for k, v in res["compression"].items():
        print(f"{k:18s} stored/raw {v['stored_over_raw']:.3f}   compress {v['compress_mb_s']:7.0f} MB/s"
              f"   decompress {v['decompress_mb_s']:7.0f} MB/s")


def report_sweep(sweep: dict) -> None:
    print(f"{'':22s} {'storage after 10, in DCP snapshots':>36s}   {'step save (median)':>20s}   {'load last':>18s}")
    print(f"{'':22s} {'fp32+AdamW':>18s} {'bf16':>17s}   {'fp32':>9s} {'bf16':>10s}   {'fp32':>8s} {'bf16':>9s}")
    for name, r in sweep.items():
        f, b = r["fp32"], r["bf16"]
        print(f"{name:22s} {f['vs_one_dcp_snapshot']:18.2f} {b['vs_one_dcp_snapshot']:17.2f}   "
              f"{f['save_step_s']:8.3f}s {b['save_step_s']:9.3f}s   {f['load_s']:7.3f}s {b['load_s']:8.3f}s")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the speed-test state (MiB)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (median reported)")
    ap.add_argument("--out", default="bench-out", help="folder for bench.json and storage.png")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir under the repo)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "rss", "storage", "compression"])
    ap.add_argument("--chunk-sizes", nargs="+", type=int, metavar="KIB", default=None,
                    help="only sweep these chunk sizes (KiB) and print the table behind the default")
    ap.add_argument("--delta-depths", nargs="+", type=int, metavar="K", default=None,
                    help="only sweep these delta chain depths on the MiniLM AdamW run (and delta off, and "
                         "the first depth without the base cache) and print the table behind the default")
    ap.add_argument("--store", default=None, metavar="URL",
                    help="only compare on object storage: an s3:// URL served by a local S3 server (moto) "
                         "started here; casckpt vs DCP's FsspecWriter/FsspecReader over s3fs (tools/bench_s3.py)")
    ap.add_argument("--reshard", action="store_true",
                    help="only measure what an unchanged re-save writes after a world-size change "
                         "(FSDP2 on gloo: saved on 2 ranks, re-saved on 3 and 4; tools/bench_reshard.py)")
    ap.add_argument("--small", action="store_true",
                    help="only the many-small-tensors scenario (20,000 tiny tensors; tools/bench_small.py)")
    args = ap.parse_args()
    if args.small:
        import bench_small  # tools/ is on sys.path when bench runs as a script

        bench_small.main(args.repeat)
        return
    if args.store:
        import bench_s3  # tools/ is on sys.path when bench runs as a script

        res = bench_s3.s3_speed(args.store, args.mib, args.repeat)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench-s3.json").write_text(json.dumps(res, indent=2))
        bench_s3.report(res)
        return
    if args.reshard:
        import bench_reshard  # tools/ is on sys.path when bench runs as a script

        bench_reshard.main()
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="casckpt-bench-", dir=args.dir or "."))
    res = {"torch": torch.__version__, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.delta_depths:
        try:
            res["delta_depths"] = delta_sweep(work, args.delta_depths)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "delta-depths.json").write_text(json.dumps(res, indent=2))
        report_sweep(res["delta_depths"])
        return
    if args.chunk_sizes:
        try:
            res["chunk_sizes"] = chunk_sizes(work, args.chunk_sizes, args.repeat)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "chunk-sizes.json").write_text(json.dumps(res, indent=2))
        print(f"{'chunk':>8s} {'cold save':>10s} {'load':>8s} {'files':>6s} {'1% hot rows update writes':>28s}")
        for k, v in res["chunk_sizes"].items():
            print(f"{k:>8s} {v['cold_save_s']:9.2f}s {v['load_s']:7.2f}s {v['chunk_files']:6d} "
                  f"{v['update_written_over_table']:27.1%}")
        return
    try:
        if "speed" not in args.skip:
            res["speed"] = speed(work, args.mib, args.repeat)
        if "rss" not in args.skip:
            res["rss"] = peak_rss(work, args.mib)
        res["storage"] = storage(work) if "storage" not in args.skip else {}
        res["compression"] = compression() if "compression" not in args.skip else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    if "speed" in res:
        report(res)
    if res["storage"] and plot(res["storage"], out / "storage.png"):
        print(f"\nwrote {out / 'bench.json'} and {out / 'storage.png'}")


if __name__ == "__main__":
    main()
