"""A back-end on object storage (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob
Storage) through ``obstore``, the Python bindings to Rust's ``object_store``; the only module that
imports it (install ``casckpt[cloud]``).

A store is a prefix in a bucket: ``s3://bucket/runs/llama``, ``gs://bucket/prefix``,
``az://container/prefix``. Each blob is the object ``<prefix>/<key>``.

- ``put_if_absent`` is a conditional PUT (``If-None-Match: *`` on S3 and Azure, generation 0 on
  GCS): the server lets exactly one of several racing writers create the object, and a PUT is
  atomic, so nobody sees part of one. ``replace`` is a plain PUT.
- Credentials, region and endpoint come from each cloud's usual environment variables
  (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION``, ``AWS_ALLOW_HTTP``; ``GOOGLE_SERVICE_ACCOUNT``…; ``AZURE_STORAGE_ACCOUNT_NAME``,
  ``AZURE_STORAGE_ACCOUNT_KEY``…), read by object_store itself; ``options`` given here override
  them. No AWS config or credentials file is read.
- Throttling (503 SlowDown, 429), other 5xx answers, dropped connections and timeouts are retried
  by object_store with exponential backoff and jitter, within :data:`RETRY` bounds.
- Secrets never appear in messages: URLs with credentials in them are refused, errors are cut to
  their first paragraph and every secret value known to this process is masked in them.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from datetime import timedelta
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import obstore
from obstore import exceptions as obx
from obstore.store import AzureStore, GCSStore, S3Store

from ..errors import CasckptError, StoreIOError
from . import Backend, Blob, BlobNotFoundError, check_key, check_prefix

SCHEMES = {"s3": S3Store, "gs": GCSStore, "az": AzureStore}
# Keys one object_store bulk delete sends in one request: S3's DeleteObjects takes 1,000, Azure's
# Blob Batch 256; GCS has none, and object_store runs 10 single DELETEs at once there.
DELETE_BATCH = {"s3": 1000, "az": 256, "gs": 10}
ENV_PREFIX = {"s3": "AWS_", "gs": "GOOGLE_", "az": "AZURE_"}

# object_store's client options; every other option goes to the cloud's config (S3Config, …).
CLIENT_KEYS = frozenset(
    "allow_http allow_invalid_certificates connect_timeout default_content_type default_headers "
    "http1_only http2_keep_alive_interval http2_keep_alive_timeout http2_keep_alive_while_idle "
    "http2_only pool_idle_timeout pool_max_idle_per_host proxy_url proxy_ca_certificate "
    "proxy_excludes root_certificate randomize_addresses read_timeout timeout user_agent".split())
# Retry options casckpt takes (seconds), passed to object_store's RetryConfig.
RETRY_KEYS = frozenset({"max_retries", "retry_timeout", "init_backoff", "max_backoff"})
RETRY = {"max_retries": 10, "retry_timeout": 120.0, "init_backoff": 0.1, "max_backoff": 15.0}
# NOTE: an explicit request timeout bounds how long one request can hang (object_store's default
# is 30 s); with retry_timeout it bounds a whole operation, which the lock's expiry argument uses.
CLIENT = {"connect_timeout": "5s", "timeout": "60s"}

# User metadata naming the call that created an object (see put_if_absent). NOTE: letters only:
# Azure takes metadata names that are C# identifiers (a '-' fails every create with InvalidMetadata)
# and some proxies drop headers with '_'. An object made under an older name reads as another's.
WRITE_ID = "casckptwrite"
# Names of options and environment variables whose values are secrets (masked in messages).
_SECRET_NAME = re.compile(r"secret|token|password|sas|(^|_)key($|_)|credential|signature", re.I)
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")


def is_url(location) -> bool:
    """Whether ``location`` names object storage (``scheme://…``) rather than a local path."""
    return isinstance(location, str) and "://" in location


def parse_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket, prefix)`` of a store URL; refuses anything odd with a typed error."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise CasckptError(f"unsupported store URL scheme {scheme!r}: use s3://, gs:// or az:// "
                           "(or a local path)")
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # NOTE: the URL is not echoed: userinfo may hold a secret.
        raise CasckptError(f"a {scheme}:// store URL holds no credentials, user or port; give them "
                           "through the environment or the backend options")
    if any(c in rest for c in "?#"):
        raise CasckptError(f"store URL {_cut(url)!r} has a query or fragment; it takes none")
    if not _BUCKET.fullmatch(bucket):
        raise CasckptError(f"store URL {_cut(url)!r}: bad bucket or container name {bucket[:64]!r}")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)  # UnsafePathError for '..', empty parts, odd characters
    return scheme, bucket, prefix


def _cut(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _seconds(value) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.fullmatch(str(value))
    if not m:
        raise CasckptError(f"bad duration {value!r}: give seconds, or a string such as '30s'")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


class ObjectBackend(Backend):
    """Blobs as objects under ``url`` (``s3://bucket/prefix``, ``gs://…``, ``az://…``).

    ``options`` are object_store settings (``endpoint``, ``access_key_id``, ``region``,
    ``allow_http``, ``timeout``, …) and the retry bounds in :data:`RETRY` (seconds; from the
    environment as ``CASCKPT_RETRY_TIMEOUT`` and the like); they override the environment.
    """

    local_path = None

    def __init__(self, url: str, *, options: Mapping[str, object] | None = None) -> None:
        self.scheme, self.bucket, self.prefix = parse_url(url)
        self.delete_batch = DELETE_BATCH[self.scheme]
        self.options = dict(options or {})
        self._secrets = _secret_values(self.options)
        config = {k: v for k, v in self.options.items() if k not in CLIENT_KEYS | RETRY_KEYS}
        client = {**CLIENT, **_client_env(self.scheme),
                  **{k: v for k, v in self.options.items() if k in CLIENT_KEYS}}
        retry = {**RETRY, **{k: float(os.environ[f"CASCKPT_{k.upper()}"]) for k in RETRY_KEYS
                             if f"CASCKPT_{k.upper()}" in os.environ},
                 **{k: float(v) for k, v in self.options.items() if k in RETRY_KEYS}}
        #: The longest one operation can take before it fails (every retry included): what the
        #: lock's expiry argument needs (casckpt.objlock).
        self.deadline = retry["retry_timeout"] + _seconds(client["timeout"])
        retry_config = {"max_retries": int(retry["max_retries"]),
                        "retry_timeout": timedelta(seconds=retry["retry_timeout"]),
                        "backoff": {"init_backoff": timedelta(seconds=retry["init_backoff"]),
                                    "max_backoff": timedelta(seconds=retry["max_backoff"]), "base": 2}}
        with self._errors("", "connecting to"):
            self._store = SCHEMES[self.scheme](self.bucket, prefix=self.prefix or None, config=config,
                                               client_options=client, retry_config=retry_config)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def __repr__(self) -> str:
        return f"ObjectBackend({self.url!r})"

    def __reduce__(self):
        # NOTE: reopened from the URL and options (a spawned rank or test process), never by
        # pickling object_store's client.
        return _reopen, (self.url, self.options)

    # -- reads ------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        check_key(key)
        with self._errors(key, "reading"):
            return bytes(obstore.get(self._store, key).bytes())

    def get_versioned(self, key: str) -> tuple[bytes, tuple[str, int] | None]:
        check_key(key)
        with self._errors(key, "reading"):
            got = obstore.get(self._store, key)
            return bytes(got.bytes()), _tag(got.meta)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        check_key(key)
        if start < 0 or end < start:
            raise ValueError(f"bad byte range [{start}, {end})")
        if start == end:
            if self.size(key) is None:
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}")
            return b""
        try:
            with self._errors(key, "reading"):
                return bytes(obstore.get_range(self._store, key, start=start, end=end))
        except BlobNotFoundError:
            raise
        except CasckptError:
            # NOTE: a range that starts at or past the end is 416 on S3; the contract says empty.
            size = self.size(key)
            if size is None:
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}") from None
            if start >= size:
                return b""
            raise

    def get_head(self, key: str, n: int) -> tuple[bytes, int]:
        """The first ``n`` bytes of the blob and its whole size, in one request (a ranged GET)."""
        check_key(key)
        try:
            with self._errors(key, "reading"):
                got = obstore.get(self._store, key, options={"range": (0, n)})
                return bytes(got.bytes()), int(got.meta["size"])
        except BlobNotFoundError:
            raise
        except CasckptError:
            if self.size(key) == 0:  # NOTE: any range of an empty object is 416 on S3
                return b"", 0
            raise

    def size(self, key: str) -> int | None:
        meta = self._head(key)
        return None if meta is None else int(meta["size"])

    def version(self, key: str) -> tuple[str, int] | None:
        """The object's ETag and size (one HEAD), the same value a listing gives (see :func:`_tag`)."""
        meta = self._head(key)
        return None if meta is None else _tag(meta)

    def _head(self, key: str) -> dict | None:
        check_key(key)
        try:
            with self._errors(key, "checking"):
                return obstore.head(self._store, key)
        except BlobNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[Blob]:
        check_prefix(prefix)
        # NOTE: object_store lists whole path segments ('a' lists 'a/…', not 'ab'): list the
        # folder above the prefix and filter.
        folder = prefix.rpartition("/")[0]
        with self._errors(prefix, "listing"):
            for batch in obstore.list(self._store, folder + "/" if folder else None, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    if key.startswith(prefix) and _safe(key):
                        yield _blob(key, meta)

    # -- writes -----------------------------------------------------------------------------------
    def put_if_absent(self, key: str, parts: Iterable, *, sync: bool = True) -> bool:
        check_key(key)
        data, token = _payload(parts), uuid.uuid4().hex
        try:
            with self._errors(key, "writing"):
                obstore.put(self._store, key, data, mode="create", use_multipart=False,
                            attributes={WRITE_ID: token})
            return True
        except _Conflict:
            # NOTE: a retried PUT whose first try landed (its answer was lost) meets its own
            # object: each create carries a random id in the object's metadata to tell.
            return self._write_id(key) == token

    def _write_id(self, key: str) -> str | None:
        try:
            with self._errors(key, "checking"):
                return obstore.get(self._store, key, options={"head": True}).attributes.get(WRITE_ID)
        except BlobNotFoundError:
            return None

    def replace(self, key: str, parts: Iterable, *, sync: bool = True) -> None:
        check_key(key)
        data = _payload(parts)
        with self._errors(key, "writing"):
            obstore.put(self._store, key, data, mode="overwrite", use_multipart=False)

    def delete(self, key: str) -> bool:
        # NOTE: DELETE answers 204 whether or not the object was there: HEAD first to say which.
        if self.size(key) is None:
            return False
        with self._errors(key, "deleting"):
            obstore.delete(self._store, key)
        return True

    def delete_many(self, keys: Sequence[str], *, before: Callable[[], None] | None = None) -> None:
        """One bulk delete: S3's DeleteObjects or Azure's Blob Batch, one request for up to
        :attr:`delete_batch` keys (on GCS, that many DELETEs at once). No HEAD: the caller need
        not know which keys were there."""
        keys = [check_key(k) for k in keys]
        if len(keys) > self.delete_batch:
            raise ValueError(f"{len(keys)} keys in one delete_many; at most {self.delete_batch}")
        if not keys:
            return
        if before:
            before()
        try:
            with self._errors(keys[0], "deleting"):
                obstore.delete(self._store, keys)
        except BlobNotFoundError:
            # NOTE: S3 deletes missing keys quietly; GCS and Azure fail the batch on the first
            # missing one, maybe with others not yet deleted: finish one request at a time.
            for k in keys:
                if before:
                    before()
                try:
                    with self._errors(k, "deleting"):
                        obstore.delete(self._store, k)
                except BlobNotFoundError:
                    pass

    # -- errors -----------------------------------------------------------------------------------
    def _errors(self, key: str, doing: str) -> "_Translate":
        return _Translate(self, key, doing)

    def scrub(self, text: str) -> str:
        """``text`` with its first paragraph only and every known secret masked."""
        text = text.split("\n\nDebug source:", 1)[0].strip()
        for s in self._secrets | _secret_values(os.environ):
            text = text.replace(s, "***")
        return _cut(text, 600)


class _Conflict(Exception):
    """The object exists (a conditional PUT lost)."""


class _Translate:
    """Turn obstore's exceptions into casckpt's typed errors, secrets masked, no chained cause."""

    def __init__(self, backend: ObjectBackend, key: str, doing: str) -> None:
        self.backend, self.key, self.doing = backend, key, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, (CasckptError, GeneratorExit)) or not isinstance(exc, Exception):
            return False
        where = f"{self.key!r} in {self.backend.url}" if self.key else self.backend.url
        if isinstance(exc, (obx.AlreadyExistsError, obx.PreconditionError)):
            raise _Conflict() from None
        if isinstance(exc, (obx.NotFoundError, FileNotFoundError)):
            raise BlobNotFoundError(f"no blob {where}") from None
        code = errno.EACCES if isinstance(exc, (obx.PermissionDeniedError, obx.UnauthenticatedError)) else errno.EIO
        raise StoreIOError(code, f"{self.doing} {where} failed: {self.backend.scrub(str(exc))}") from None


def _client_env(scheme: str) -> dict[str, str]:
    """Client options from the environment (``AWS_ALLOW_HTTP``, ``AWS_TIMEOUT``…): object_store
    reads them only when no client options are given, and casckpt always gives some."""
    prefix = ENV_PREFIX[scheme]
    return {k: os.environ[prefix + k.upper()] for k in CLIENT_KEYS if prefix + k.upper() in os.environ}


def _secret_values(mapping: Mapping) -> set[str]:
    return {str(v) for k, v in mapping.items()
            if _SECRET_NAME.search(str(k)) and isinstance(v, str) and len(v) >= 4}


def _safe(key: str) -> bool:
    try:
        check_key(key)
        return True
    except CasckptError:
        return False  # an object someone else put under the prefix, with a name we never make


def _payload(parts: Iterable):
    """One contiguous buffer for a single PUT (object_store would turn an iterable into a
    multipart upload, which a conditional PUT cannot be)."""
    parts = list(parts)
    if len(parts) == 1:
        view = memoryview(parts[0])
        if view.contiguous:
            return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return b"".join(parts)


def _blob(key: str, meta: Mapping) -> Blob:
    """A listed object; the lock objects are judged by its Last-Modified time (casckpt.objlock)."""
    modified = meta.get("last_modified")
    return Blob(key, int(meta["size"]), mtime=modified.timestamp() if modified is not None else None,
                    version=_tag(meta))


def _tag(meta: Mapping) -> tuple[str, int] | None:
    """An object's version: its ETag, which differs whenever the bytes do (S3: the MD5 of a plain
    PUT's bytes, or a fresh value with SSE-KMS; GCS and Azure: a new one per write; equal bytes
    under one tag is all a cache of parsed manifests needs) and its size. Not the time: a
    listing and a HEAD give it to different precisions. None where the server gives no ETag.

    NOTE: without its quotes: Azure lists an ETag bare and answers a HEAD with it quoted, so the
    two would never match (each manifest parsed again, its cached references never reused)."""
    etag = str(meta.get("e_tag") or "").strip('"')
    return (etag, int(meta["size"])) if etag else None


def _reopen(url: str, options: dict) -> ObjectBackend:
    return ObjectBackend(url, options=options)
