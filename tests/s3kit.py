"""A real S3-compatible server on 127.0.0.1 for tests (moto's server mode), and a small HTTP proxy
in front of it that injects faults and counts requests.

Nothing here contacts any other address: the session's environment points every AWS client at
the local server, with fixed test credentials, and no AWS config or credentials file is read.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import logging
import os
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass

SECRET = "casckpt-test-secret-0123456789abcdef"
KEY_ID = "casckpt-test-key-id"
ENV = {
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that could point a client elsewhere: removed for the session.
DROP = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_put_guard = threading.Lock()


def atomic_conditional_puts() -> None:
    """Make moto's conditional PUT atomic, as S3's is.

    NOTE: moto (5.x) honours ``If-None-Match: *`` by looking the key up and then storing the
    object, without a lock, while its server answers requests on many threads: two racing
    creates can both pass the check and both get 200 (the back-end conformance suite's race
    tests caught it). Real S3, GCS and Azure decide the race on the server; this serializes
    moto's conditional PUTs (and the user metadata set after the object) to do the same.
    """
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "_casckpt_atomic", False):
        return
    original = S3Response.put_object

    def put_object(self, *args, **kwargs):
        if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
            with _put_guard:
                return original(self, *args, **kwargs)
        return original(self, *args, **kwargs)
    put_object._casckpt_atomic = True
    S3Response.put_object = put_object


class Moto:
    """moto's threaded server on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        atomic_conditional_puts()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket (a plain PUT: moto checks no signature) and return its name."""
        name = name or f"t-{uuid.uuid4().hex[:20]}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        return name

    def stop(self) -> None:
        self._server.stop()


def environment(endpoint: str) -> dict[str, str]:
    return {**ENV, "AWS_ENDPOINT_URL": endpoint}


def apply_env(env: dict[str, str], drop: tuple[str, ...] = DROP) -> dict[str, str | None]:
    """Set ``env`` (and remove ``drop``) in os.environ; returns what to restore."""
    saved = {k: os.environ.get(k) for k in (*env, *drop)}
    for k in drop:
        os.environ.pop(k, None)
    os.environ.update(env)
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def serving(server, env: dict[str, str], drop: tuple[str, ...] = DROP):
    """Yield ``server`` with ``env`` set (and ``drop`` removed) in os.environ; afterwards the
    environment is as it was and the server stopped (the session fixtures of S3 and Azure)."""
    saved = apply_env(env, drop)
    try:
        yield server
    finally:
        restore_env(saved)
        server.stop()


# -- fault injection ----------------------------------------------------------------------------
SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')


@dataclass
class Fault:
    """What to do to the next ``count`` requests that match ``method`` (None: any) and whose path
    contains ``path``: ``"503"`` (SlowDown), ``"500"``, ``"drop"`` (close the connection before
    forwarding), ``"lose"`` (forward, then close without answering: the request took effect but
    its answer is lost), ``"delay"`` (wait ``seconds``, then forward)."""

    action: str
    count: int = 1
    method: str | None = None
    path: str = ""
    seconds: float = 0.0


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (host, port) that applies the
    planned :class:`Fault` s in order and records every request it sees."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: collections.deque[Fault] = collections.deque()
        self.requests: list[tuple[str, str]] = []
        self.ranged: list[str] = []  # paths of GETs with a Range header
        self.injected: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.ranged.clear()
            self.injected.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and path in p)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for f in self.faults:
                if (f.method is None or f.method == method) and f.path in path:
                    f.count -= 1
                    if f.count <= 0:
                        self.faults.remove(f)
                    self.injected.append((f.action, method, path))
                    return f
        return None

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if h.command == "GET" and h.headers.get("Range"):
            with self._lock:
                self.ranged.append(h.path)
        fault = self._take(h.command, h.path)
        action = fault.action if fault else None
        if action in ("503", "500"):
            h.send_response(int(action))
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(SLOWDOWN)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(SLOWDOWN)
            return
        if action == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "delay":
            time.sleep(fault.seconds)
        status, headers, data = self._forward(h.command, h.path, dict(h.headers), body)
        if action == "lose":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(k, v)
        length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
        h.send_header("Content-Length", length if h.command == "HEAD" else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- pytest fixtures (import them into a test module) -------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def moto():
    """One moto server for the session, with the environment pointing every client at it."""
    server = Moto()
    with serving(server, environment(server.endpoint)):
        yield server


@pytest.fixture
def s3_url(moto) -> str:
    """A fresh bucket and prefix for one test."""
    return f"s3://{moto.bucket()}/store-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def proxy_server(moto):
    proxy = FaultProxy(moto.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(proxy_server):
    """The fault proxy, with no fault planned and no request counted."""
    proxy_server.clear()
    yield proxy_server
    proxy_server.clear()
