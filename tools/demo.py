"""casckpt demo: fine-tune a small model on CPU with a DCP checkpoint every step, then resume.

Most of the model is frozen (as in fine-tuning), so each step changes only the head and its
optimizer state; casckpt writes just those chunks. The table compares the store's growth with
what DCP's FileSystemWriter would have written (one real FileSystemWriter save, measured, times
the number of saves). Exit status 0 only if the resumed state equals the last saved one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp

import casckpt

MB = 1e6


def build(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(4000, 256),                       # frozen "pretrained" part
        *[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU()) for _ in range(4)],
        torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))  # trained head
    for p in model[:5].parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, opt


def state(model, opt, step: int) -> dict:
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step": step}


def train_step(model, opt, gen: torch.Generator) -> float:
    x = torch.randint(0, 4000, (32, 8), generator=gen)
    y = torch.randn(32, 64, generator=gen)
    loss = torch.nn.functional.mse_loss(model(x).mean(dim=1), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def tree_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def store_bytes(root: str) -> int:
    return tree_bytes(os.path.join(root, "chunks")) + tree_bytes(os.path.join(root, "snapshots"))


def filesystem_writer_bytes(sd: dict, scratch: str) -> tuple[int, float]:
    """Size and time of one real DCP FileSystemWriter save of ``sd``."""
    path = os.path.join(scratch, "fs-writer")
    started = time.perf_counter()
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(path))
    seconds = time.perf_counter() - started
    size = tree_bytes(path)
    shutil.rmtree(path)
    return size, seconds


def same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
    return a == b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", nargs="?", help="store path (default: a temp dir, removed afterwards)")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
    torch.set_num_threads(1)
    scratch = tempfile.mkdtemp(prefix="casckpt-demo-")
    root = args.store or os.path.join(scratch, "store")
    try:
        return run(root, scratch, args.steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(root: str, scratch: str, steps: int) -> int:
    model, opt = build()
    gen = torch.Generator().manual_seed(1)
    train_step(model, opt, gen)  # optimizer state exists from the first save on
    fs_size, fs_seconds = filesystem_writer_bytes(state(model, opt, 0), scratch)
    print(f"store: {root}\nFileSystemWriter, one save: {fs_size / MB:.2f} MB in {fs_seconds * 1000:.0f} ms\n")
    head = f"{'step':>4} {'loss':>8} {'logical MB':>10} {'new MB':>8} {'store MB':>9} {'FSWriter MB':>11} {'save ms':>8}"
    print(head + "\n" + "-" * len(head))
    total_new = 0
    for step in range(1, steps + 1):
        loss = train_step(model, opt, gen)
        stats = casckpt.save(state(model, opt, step), root, f"step-{step:04d}")
        total_new += stats.bytes_written
        print(f"{step:>4} {loss:>8.4f} {stats.logical_bytes / MB:>10.2f} {stats.bytes_written / MB:>8.3f} "
              f"{store_bytes(root) / MB:>9.2f} {step * fs_size / MB:>11.2f} {stats.seconds * 1000:>8.1f}")
    final = store_bytes(root)
    print(f"\n{steps} saves: store {final / MB:.2f} MB vs FileSystemWriter {steps * fs_size / MB:.2f} MB "
          f"({steps * fs_size / final:.1f}x smaller)")
    return resume(root, state(model, opt, steps))


def resume(root: str, saved: dict) -> int:
    model, opt = build(seed=99)  # different weights: the load must overwrite them all
    train_step(model, opt, torch.Generator().manual_seed(5))
    sd = state(model, opt, 0)
    name = casckpt.load(sd, root, "latest")
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optim"])
    ok = same_state(saved, state(model, opt, sd["step"]))
    print(f"resumed from {name!r} (step {sd['step']}): state {'equals' if ok else 'DIFFERS from'} the saved one")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
