"""A local S3-compatible server for tools/bench: moto's server mode on 127.0.0.1, in its own
process (so the server's Python work does not share the benchmark's GIL), logging one line per
request (``METHOD path``) to a file, so the bench can count what each save costs in requests.

    python tools/s3local.py PORT LOGFILE      # runs until killed
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.1"')
# NOTE: werkzeug wraps the request line of every answer but a 200 in ANSI colour codes (a 206
# ranged GET, a 204 DELETE, a 404): strip them, or those requests go uncounted.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Requests(logging.Handler):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.out = open(path, "a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        m = _LINE.search(_ANSI.sub("", record.getMessage()))
        if m:
            self.out.write(f"{m.group(1)} {m.group(2)}\n")


def main() -> None:
    port, log_path = int(sys.argv[1]), sys.argv[2]
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from s3kit import atomic_conditional_puts  # moto's conditional PUT made atomic, as S3's is

    atomic_conditional_puts()

    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.handlers[:] = [_Requests(log_path)]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
