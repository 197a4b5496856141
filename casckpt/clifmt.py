"""How the casckpt command writes things for people: tables, sizes, times, counts, name lists."""

from __future__ import annotations

import re
import shutil
import textwrap
from datetime import datetime, timezone


LEFT = {"TAGS", "META", "VALUE"}  # text columns; the first column is always left-aligned


def table(headers: list[str], rows: list[list], *, head: bool = True) -> None:
    cells = ([headers] if head else []) + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))] if cells else []
    left = {0} | {i for i, h in enumerate(headers) if h in LEFT}
    for r in cells:
        print("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


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
    """A list of names wrapped to the terminal's width, never one long line; runs of three or more
    consecutive numbers (``step-001`` to ``step-295``) shortened to ``step-001..step-295 (295)``."""
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120))
    return textwrap.fill("  ".join(runs(items)), width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def runs(items: list[str]) -> list[str]:
    out: list[list[str]] = []
    for name in items:
        last = out[-1][-1] if out else None
        if last is not None and _next_of(last) == name:
            out[-1].append(name)
        else:
            out.append([name])
    shown: list[str] = []
    for r in out:
        shown.extend([f"{r[0]}..{r[-1]} ({len(r)})"] if len(r) >= 3 else r)
    return shown


def _next_of(name: str) -> str | None:
    """``step-009`` -> ``step-010``: the name with its trailing number one higher, same width."""
    m = re.fullmatch(r"(.*?)(\d+)", name)
    if not m:
        return None
    digits = m.group(2)
    return f"{m.group(1)}{int(digits) + 1:0{len(digits)}d}"


def rename_rule(renamed) -> tuple[str, str] | None:
    """When two or more renames all swap one prefix for another (``x.`` -> ``model.x.``), that
    pair of prefixes; else ``None``."""
    rules = set()
    for old, new in renamed:
        n = 0
        while n < min(len(old), len(new)) and old[-1 - n] == new[-1 - n]:
            n += 1
        # NOTE: the shared suffix must start at a dot: "a.w1"/"b.w1" is ("a.", "b."), not ("a.w", "b.w")
        while n and not (_after_dot(old, n) and _after_dot(new, n)):
            i = old[len(old) - n:].find(".")
            n = n - i - 1 if i >= 0 else 0
        rules.add((old[:len(old) - n], new[:len(new) - n]))
    return rules.pop() if len(renamed) >= 2 and len(rules) == 1 else None


def _after_dot(s: str, n: int) -> bool:
    return n == len(s) or s[len(s) - n - 1] == "."


def short(s: str, width: int) -> str:
    return s if len(s) <= width else s[:width - 1] + "…"
