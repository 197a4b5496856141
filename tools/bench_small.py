"""tools/bench --small: the "many small tensors" scenario of issue 13, casckpt vs DCP in one run.

20,000 float32 tensors of 64–1,024 elements (random sizes, trained-like values) plus 4 large
ones of 4 MiB, through ``dcp.save``/``dcp.load`` on both sides (CasWriter + DedupSavePlanner vs
FileSystemWriter), medians of ``--repeat`` interleaved runs: cold save into an empty store, save
of the unchanged state, load; and chunk files per snapshot against the bound
``ceil(bytes / chunk size) + a constant per rank``.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import bench  # tools/ is on sys.path when bench runs as a script
import casckpt

SMALL, LARGE = 20_000, 4


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sd = {f"blocks.{i}.norm": bench.trained_like(rng, (int(rng.integers(64, 1025)),), 0.02) for i in range(SMALL)}
    sd.update({f"big.{i}": bench.trained_like(rng, (1024, 1024), 0.02) for i in range(LARGE)})
    return sd


def cpu_timed(cpu: list, fn) -> float:
    """Wall seconds of ``fn()``; its process CPU seconds (every thread) go to ``cpu``: a second
    view on a shared machine, where the wall-clock ratio swings with the other jobs."""
    c0 = time.process_time()
    wall = bench.timed(fn)
    cpu.append(time.process_time() - c0)
    return wall


def run(work: Path, repeat: int) -> dict:
    sd = state()
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    runs = {k: [] for k in ("dcp_save", "dcp_load", "cold", "unchanged", "load", "dcp_save_cpu", "unchanged_cpu")}
    files = []
    for r in range(repeat):
        for side in (("dcp", "cas") if r % 2 == 0 else ("cas", "dcp")):
            if side == "dcp":
                d = work / f"dcp{r}"
                runs["dcp_save"].append(cpu_timed(runs["dcp_save_cpu"], lambda: bench.dcp_save(sd, d)))
                runs["dcp_load"].append(bench.timed(lambda: bench.dcp_load(sd, d)))
                shutil.rmtree(d)
            else:
                s = work / f"cas{r}"
                runs["cold"].append(bench.timed(lambda: bench.cas_save(sd, s, "cold")))
                files.append(len(list((s / "chunks").glob("*/*"))))
                runs["unchanged"].append(cpu_timed(runs["unchanged_cpu"], lambda: bench.cas_save(sd, s, "same")))
                runs["load"].append(bench.timed(lambda: bench.cas_load(sd, s, "same")))
                shutil.rmtree(s)
    med = {k: statistics.median(v) for k, v in runs.items()}
    chunk = casckpt.chunking.DEFAULT_CHUNK_SIZE
    return {"tensors": len(sd), "bytes": nbytes, "seconds_median": med, "chunk_files": files,
            "file_bound": math.ceil(nbytes / chunk), "ratios": {
                "cold_save": med["cold"] / med["dcp_save"], "unchanged_save": med["unchanged"] / med["dcp_save"],
                "load": med["load"] / med["dcp_load"],
                "unchanged_save_cpu": med["unchanged_cpu"] / med["dcp_save_cpu"]}}


def main(repeat: int = 3) -> dict:
    work = Path(tempfile.mkdtemp(prefix="casckpt-bench-small-", dir="."))
    try:
        res = run(work, repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m, q = res["seconds_median"], res["ratios"]
    print(f"many small tensors: {res['tensors']} tensors, {res['bytes'] / 2**20:.1f} MiB, medians of {repeat}")
    print(f"  cold save      {m['cold']:.3f} s vs DCP {m['dcp_save']:.3f} s = {q['cold_save']:.2f}x (target <= 1.0)")
    print(f"  unchanged save {m['unchanged']:.3f} s = {q['unchanged_save']:.2f}x (target <= 0.3); "
          f"CPU time {m['unchanged_cpu']:.3f} s vs DCP {m['dcp_save_cpu']:.3f} s = {q['unchanged_save_cpu']:.2f}x")
    print(f"  load           {m['load']:.3f} s vs DCP {m['dcp_load']:.3f} s = {q['load']:.2f}x (target <= 1.0)")
    print(f"  chunk files per snapshot {statistics.median(res['chunk_files'])} "
          f"(bytes / chunk size = {res['file_bound']})")
    return res


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
