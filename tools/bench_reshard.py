"""tools/bench --reshard: dedup after a world-size change (FSDP2 on gloo, CPU).

A model whose weights have 1032 rows (FSDP2 splits them 516/344/258 over 2/3/4 ranks, off the
chunk grid) is saved on 2 ranks, then loaded and re-saved unchanged on 3 and on 4 ranks into the
same store. Prints, per world size, the chunks and bytes the unchanged re-save wrote as a share
of a full save. Run: ``.venv/bin/python tools/bench_reshard.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import warnings

import torch
import torch.multiprocessing as mp

ROWS, COLS, LAYERS = 1032, 1024, 4  # 4 MiB float32 weights each, as in the measurement


def _model(world: int) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(COLS, ROWS, bias=False) if i % 2 == 0 else
                                  torch.nn.Linear(ROWS, COLS, bias=False) for i in range(LAYERS)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def _job(rank: int, world: int, port: int, root: str, name: str, load: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    import casckpt

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _model(world)
        sd = {"model": get_model_state_dict(model)}
        if load:
            casckpt.load(sd, root, load)
        stats = casckpt.save(sd, root, name)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(stats.to_json(), f)
    finally:
        dist.destroy_process_group()


def _run(world: int, root: str, name: str, load: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(root, f"..{name}.json")
    mp.spawn(_job, args=(world, port, root, name, load, out), nprocs=world, join=True)
    with open(out) as f:
        return json.load(f)


def reshard_report() -> dict:
    with tempfile.TemporaryDirectory(prefix="casckpt-reshard-") as tmp:
        root = os.path.join(tmp, "store")
        full = _run(2, root, "w2", "")
        res = {"full_save": {"chunks": full["chunks"], "bytes_written": full["bytes_written"]}}
        for world in (3, 4):
            st = _run(world, root, f"w{world}", "w2")
            res[f"resave_on_{world}"] = {
                "new_chunks": st["new_chunks"], "chunks": st["chunks"],
                "chunks_written_share": st["new_chunks"] / st["chunks"],
                "bytes_written_share": st["bytes_written"] / full["bytes_written"]}
    return res


def main() -> None:
    res = reshard_report()
    print(f"FSDP2 {LAYERS} x {ROWS}x{COLS} float32, saved on 2 ranks; unchanged re-saves (target ≤ 10 %):")
    for k, v in res.items():
        if k.startswith("resave"):
            print(f"  {k:12s} wrote {v['new_chunks']:3d} of {v['chunks']:3d} chunks "
                  f"({v['chunks_written_share']:.0%}), {v['bytes_written_share']:.0%} of a full save's bytes")
    json.dump(res, sys.stdout if "--json" in sys.argv else open(os.devnull, "w"))


if __name__ == "__main__":
    main()
