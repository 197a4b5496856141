"""Azurite, Microsoft's Azure Storage emulator (from the npm registry), on 127.0.0.1 for tests: the
object back-end against a real Blob Storage API (conditional creates, metadata, Blob Batch deletes).

tools/test installs it into ``.azurite/`` with npm where npm is available; without it the tests that
need it skip and say why. It runs with telemetry off and keeps blobs in memory: nothing here
contacts any other address. The account is the emulator's well-known development account, whose
key is public (it is in Microsoft's documentation), not a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest

import s3kit
from s3kit import FaultProxy, free_port, serving

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# object_store's emulator mode: the development account, plain HTTP, at AZURITE_BLOB_STORAGE_URL
OPTIONS = {"use_emulator": True, "allow_http": True}
# Variables that could point an Azure client elsewhere: removed for the session.
DROP = ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_TOKEN",
        "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class Azurite:
    """The emulator's blob service on a free port of 127.0.0.1, blobs in memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # NOTE: in its own working folder: Azurite writes a debug log and metadata files there
        self.work = Path(tempfile.mkdtemp(prefix="casckpt-azurite-"))
        self.proc = subprocess.Popen(
            [str(EXE), "--silent", "--inMemoryPersistence", "--disableTelemetry", "--blobHost", "127.0.0.1",
             "--blobPort", str(self.port)], cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Azurite did not start on port {self.port}")
            time.sleep(0.1)

    def container(self) -> str:
        """Create a fresh container (a Shared Key signed PUT) and return its name."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        date, version = formatdate(usegmt=True), "2021-08-06"
        # NOTE: the string to sign of a request without body or conditions: the verb, eleven empty
        # standard headers, the x-ms- headers, the account-qualified resource and its query
        signed = "\n".join(["PUT", *[""] * 11, f"x-ms-date:{date}", f"x-ms-version:{version}",
                            f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"])
        sig = base64.b64encode(hmac.new(base64.b64decode(KEY), signed.encode(), hashlib.sha256).digest()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("PUT", f"/{ACCOUNT}/{name}?restype=container", body=b"",
                         headers={"x-ms-date": date, "x-ms-version": version,
                                  "Authorization": f"SharedKey {ACCOUNT}:{sig}"})
            r = conn.getresponse()
            assert r.status == 201, (r.status, r.read()[:300])
        finally:
            conn.close()
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- pytest fixtures (import them into a test module) -------------------------------------------
@pytest.fixture(scope="session")
def azurite():
    """One Azurite for the session, with the environment pointing object_store's emulator mode at it."""
    if not EXE.exists():
        pytest.skip(f"Azurite is not installed at {EXE.parent.parent.parent} (tools/test installs it with npm "
                    "where npm is available)")
    server = Azurite()
    with serving(server, {"AZURITE_BLOB_STORAGE_URL": server.endpoint}, drop=(*s3kit.DROP, *DROP)):
        yield server


@pytest.fixture
def az_url(azurite) -> str:
    """A fresh container and prefix for one test."""
    return f"az://{azurite.container()}/store-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def az_proxy(azurite, monkeypatch):
    """An HTTP proxy in front of Azurite that counts requests; back-ends made while it is in use go
    through it (object_store reads the emulator's address when a store is made)."""
    proxy = FaultProxy(azurite.port)
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", proxy.endpoint)
    yield proxy
    proxy.stop()
