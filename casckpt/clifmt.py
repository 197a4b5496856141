"""How the casckpt command writes things for people: tables, sizes, times, counts, name lists."""

from __future__ import annotations

import re
import shutil
import textwrap
from datetime import datetime, timezone


def table(headers: list[str], rows: list[list], *, head: bool = True) -> None:
    cells = ([headers] if head else []) + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))] if cells else []
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 snapshot``, ``2 snapshots``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def when(created: str, *, utc: bool = False) -> str:
    """A manifest's ``created`` (UTC, ISO 8601) as local time with its UTC offset (the zone
    ``TZ`` names, else the system's), or in UTC marked ``UTC``; unparsable text is shown as is."""
    try:
        t = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return created
    if utc:
        return t.strftime("%Y-%m-%d %H:%M:%S UTC")
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def names(items: list[str], *, indent: str = "  ") -> str:
    """A list of names wrapped to the terminal's width, one or more per line, never one long line."""
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120))
    return textwrap.fill("  ".join(items), width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``state.2`` before ``state.10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)
