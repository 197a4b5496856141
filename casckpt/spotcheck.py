"""Sampled presence checks: how a save trusts the index without one ``lstat`` per unchanged chunk.

An index entry says "this chunk file is durable" (docs/FORMAT.md, the index). A file can still
vanish behind the store's back: deleted by hand, lost with a disk, a store restored without
some of its chunks. Checking every indexed chunk on every save costs one ``lstat`` per chunk,
about 0.3 ms each on NFS or Lustre: two minutes per save of 400k chunks. So a save checks a
random sample of ``SAMPLE`` of the indexed chunks it reuses; if any is missing, the store has
lost files and it checks all of them (and drops the entries of the missing ones, so this save
writes them again). Below ``SAMPLE`` chunks everything is checked.

The trade, documented in README and docs/FORMAT.md: a lost file outside the sample is trusted by
that save, whose snapshot then references a chunk that is not there. Nothing is silently
trusted for long: ``verify`` (quick or full) reports the chunk missing, with every snapshot and
item that needs it, and drops its index entry; ``gc`` lists every chunk file anyway and drops
the entries of the missing ones; either way the next save of the same data writes the chunk
again, which heals every snapshot that references it (same digest, same name).
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

from .digest import Digest

SAMPLE = 32  # indexed chunks a save checks with lstat; one missing → it checks them all

_rng = random.Random()


def lost(have: Iterable[Digest], exists: Callable[[Digest], bool]) -> set[Digest]:
    """Those of ``have`` (indexed chunks) whose files are gone: ``set()`` if a sample of
    ``SAMPLE`` of them is all present, else every missing one."""
    have = list(have)
    pick = have if len(have) <= SAMPLE else _rng.sample(have, SAMPLE)
    if all(exists(d) for d in pick):
        return set()
    return {d for d in have if not exists(d)}
