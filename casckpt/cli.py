"""The ``casckpt`` command: thin subcommands over the library verbs.

Each command opens the store, calls one library function and prints its result: a table for
people, or with ``--json`` the ``to_json()`` of the dataclass the library returned. Long
operations draw a progress bar on stderr (tqdm, see :mod:`casckpt.progress`) only when stderr is
a terminal. The options ``--json``, ``--index`` and ``--utc`` go before or after the command.

Exit codes: 0 ok; 1 verify found a problem; 2 usage error or a casckpt error (no such store or
snapshot, bad name, unreadable input, I/O error); 3 the store lock is busy (``--no-wait``);
70 an internal error (a bug: please report the traceback); 130 interrupted (the command says
what state it left).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Callable

from . import __version__
from .errors import CasckptError, LockTimeoutError
from .store import Store

OK, PROBLEMS, ERROR, BUSY, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 70, 130

SNAP_HELP = "snapshot name, or 'latest' (the newest snapshot a training job saved; see README)"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    args.state = {}
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe must surface here, not in the flush at exit (code 120)
        return code
    except LockTimeoutError as exc:
        return _fail(exc, BUSY)
    except BrokenPipeError:  # `casckpt ls STORE | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except (CasckptError, OSError) as exc:
        return _fail(exc, ERROR)
    except KeyboardInterrupt:
        print(f"\ncasckpt: interrupted: {interrupted(args)}", file=sys.stderr)
        return INTERRUPTED
    except Exception:
        traceback.print_exc()
        return INTERNAL


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; unknown options are reported by the parser of the command they follow."""
    p, subs = parser()
    args, extra = p.parse_known_args(argv)
    if args.command is None:
        p.error(f"unrecognized arguments: {' '.join(extra)}" if extra else
                "no COMMAND given (see casckpt --help)")
    if extra:
        subs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="casckpt", description="Content-addressed, deduplicating checkpoint store.",
                                epilog="Options --json, --index and --utc may come before or after COMMAND.")
    p.add_argument("--version", action="version", version=f"casckpt {__version__}")
    _globals(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", metavar="STORE", help="path of the store")
    # NOTE: SUPPRESS keeps a subcommand from resetting what was given before the command.
    _globals(common, suppress=True)
    subs: dict[str, argparse.ArgumentParser] = {}

    def cmd(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        s = subs[name] = sub.add_parser(name, parents=[common], help=help, description=help)
        s.set_defaults(run=fn)
        return s

    from .clicmds import add_commands
    add_commands(cmd)
    return p, subs


def _globals(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    kw = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--json", action="store_true", help="print machine-readable JSON", **kw)
    p.add_argument("--index", metavar="PATH", help="where the LMDB index lives if not in the store "
                   "(e.g. a local disk)", **kw)
    p.add_argument("--utc", action="store_true", help="show times in UTC (default: local time, "
                   "as TZ says)", **kw)


# -- interrupts ------------------------------------------------------------------------------------
def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command left behind, and whether running it again is safe."""
    msg = getattr(args, "interrupted", None)
    if msg is None:
        return "nothing was changed; running the command again is safe"
    return msg(args)


# -- shared by the commands ------------------------------------------------------------------------
def open_store(args, *, create: bool = False, no_wait: bool = False) -> Store:
    return Store.open(args.store, create=create, index_path=args.index, lock_timeout=0 if no_wait else None)


def emit_json(obj) -> int:
    print(json.dumps(obj, indent=2, allow_nan=False))
    return OK


def _fail(exc: BaseException, code: int) -> int:
    print(f"casckpt: error: {exc}", file=sys.stderr)
    return code
