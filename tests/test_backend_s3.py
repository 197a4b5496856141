"""The conformance suite on the object-storage back-end, against moto's S3 server on 127.0.0.1,
plus what only object storage has: URLs, options, secrets kept out of messages, retries."""

from __future__ import annotations

import functools
import os
import pickle
import traceback
import uuid

import pytest
from hypothesis.stateful import run_state_machine_as_test

pytest.importorskip("obstore")

from backendkit import BackendConformance, BlobMachine, machine_settings
from casckpt.backends.object import ObjectBackend
from casckpt.errors import CasckptError, StoreIOError
from s3kit import SECRET, Fault, free_port
from s3kit import moto, proxy, proxy_server, s3_url  # noqa: F401 (fixtures)


@pytest.fixture
def backend(s3_url):
    return ObjectBackend(s3_url)


@pytest.fixture
def reopen(backend):
    return functools.partial(ObjectBackend, backend.url)


class TestS3(BackendConformance):
    pass


class S3Machine(BlobMachine):
    url = None

    @classmethod
    def make(cls):
        return ObjectBackend(f"{cls.url}/m-{uuid.uuid4().hex[:8]}")


def test_state_machine(s3_url):
    S3Machine.url = s3_url
    run_state_machine_as_test(S3Machine, settings=machine_settings())


# -- URLs and options ---------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["s3://b/../x", "s3://bkt/a//b", "s3://bkt/a/./b", "s3://bkt/a b",
                                 "s3://bkt/a\x00b", "s3://bkt/" + "x" * 2000, "s3://bkt/..", "s3://bkt/~/x"])
def test_hostile_prefix_refused(url):
    with pytest.raises(CasckptError):
        ObjectBackend(url)


@pytest.mark.parametrize("url", ["ftp://bkt/x", "s3://", "s3:///x", "s3://b/x", "s3://bkt/x?versionId=1",
                                 "s3://bkt/x#frag", "s3://bkt:9000/x", "http://bkt/x"])
def test_bad_url_refused(url):
    with pytest.raises(CasckptError):
        ObjectBackend(url)


def test_url_with_credentials_refused_without_echoing_them():
    with pytest.raises(CasckptError) as err:
        ObjectBackend("s3://AKIAXXXX:very-secret-words@bkt/prefix")
    assert "very-secret-words" not in str(err.value) and "AKIAXXXX" not in str(err.value)


def test_url_round_trip(s3_url):
    b = ObjectBackend(s3_url + "/")
    assert b.url == s3_url and b.local_path is None
    assert pickle.loads(pickle.dumps(b)).url == s3_url


def test_explicit_options_override_environment(s3_url, proxy):
    # The environment points at moto itself; the options send this back-end through the proxy.
    b = ObjectBackend(s3_url, options={"endpoint": proxy.endpoint})
    b.replace("x", [b"1"])
    assert b.get("x") == b"1"
    assert proxy.count("PUT") == 1 and proxy.count("GET") == 1
    assert ObjectBackend(s3_url).get("x") == b"1"  # same bucket, reached directly


def test_prefixes_are_apart(s3_url):
    a, b = ObjectBackend(s3_url + "/a"), ObjectBackend(s3_url + "/ab")
    a.replace("k", [b"A"])
    b.replace("k", [b"B"])
    assert [x.key for x in a.list()] == ["k"] and a.get("k") == b"A"
    assert ObjectBackend(s3_url).get("ab/k") == b"B"


# -- secrets ------------------------------------------------------------------------------------
def _everything_said(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_secrets_never_in_errors(moto, s3_url, caplog):
    secret = "opt-secret-" + uuid.uuid4().hex
    opts = {"secret_access_key": secret, "access_key_id": "AKIAOPTIONKEY", "max_retries": 0}
    missing = ObjectBackend(s3_url.replace("s3://", "s3://no-such-bucket-") , options=opts)
    closed = ObjectBackend(s3_url, options={**opts, "endpoint": f"http://127.0.0.1:{free_port()}"})
    errors = []
    for op in (lambda: missing.get("k"), lambda: missing.replace("k", [b"x"]),
               lambda: list(missing.list("")), lambda: closed.get("k"), lambda: closed.put_if_absent("k", [b"x"])):
        with pytest.raises(CasckptError) as err:
            op()
        errors.append(err.value)
    assert any(isinstance(e, StoreIOError) for e in errors)
    for e in errors:
        said = _everything_said(e)
        assert secret not in said and SECRET not in said, said
        assert e.__cause__ is None and e.__suppress_context__
    assert secret not in repr(missing) + missing.url + caplog.text


def test_scrub_masks_every_known_secret(s3_url):
    b = ObjectBackend(s3_url, options={"session_token": "tok-123456789"})
    said = b.scrub(f"signature failed for tok-123456789 with {SECRET}\n\nDebug source: more")
    assert "tok-123456789" not in said and SECRET not in said and "Debug source" not in said


# -- retries ------------------------------------------------------------------------------------
@pytest.fixture
def via_proxy(s3_url, proxy):
    return ObjectBackend(s3_url, options={"endpoint": proxy.endpoint, "init_backoff": 0.01,
                                          "max_backoff": 0.05, "timeout": "1s"})


@pytest.mark.parametrize("action", ["503", "500", "drop"])
def test_transient_failures_are_retried(via_proxy, proxy, action):
    payload = os.urandom(100_000)
    proxy.plan(Fault(action, count=3, method="PUT"))
    assert via_proxy.put_if_absent("c/1", [payload]) is True
    proxy.plan(Fault(action, count=2, method="GET"), Fault(action, count=2, method="HEAD"))
    assert via_proxy.get("c/1") == payload
    assert via_proxy.get_range("c/1", 10, 20) == payload[10:20]
    assert via_proxy.size("c/1") == len(payload)
    proxy.plan(Fault(action, count=2, method="GET"))  # LIST is a GET
    assert [b.key for b in via_proxy.list("c/")] == ["c/1"]
    assert len(proxy.injected) == 9
    assert not proxy.faults


def test_slow_answer_is_retried(via_proxy, proxy):
    via_proxy.replace("slow", [b"s"])
    proxy.plan(Fault("delay", method="GET", seconds=2.5))  # past the 1 s timeout
    assert via_proxy.get("slow") == b"s"
    assert proxy.count("GET", "/slow") == 2


def test_lost_answer_to_a_create_is_still_ours(via_proxy, proxy):
    """The server stored the object but the answer never came: the retry meets a 412, and the
    back-end recognises its own bytes."""
    proxy.plan(Fault("lose", method="PUT"))
    assert via_proxy.put_if_absent("m.json", [b'{"name": "x", "id": "1234"}']) is True
    assert via_proxy.put_if_absent("m.json", [b'{"name": "x", "id": "5678"}']) is False


def test_persistent_failure_is_a_typed_error(via_proxy, proxy):
    opts = {**via_proxy.options, "max_retries": 2}
    b = ObjectBackend(via_proxy.url, options=opts)
    proxy.plan(Fault("503", count=100, method="PUT"))
    with pytest.raises(StoreIOError) as err:
        b.put_if_absent("k", [b"x"])
    assert "SlowDown" in str(err.value) or "503" in str(err.value)
    proxy.clear()
    assert b.put_if_absent("k", [b"x"]) is True
