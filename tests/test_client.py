"""td3.client without a server: every error status maps to its TD3Error with the
server's code and message (httpx.MockTransport), downloads refuse a bad checksum
without touching the target, webhook signatures verify, and the client imports no
server-side dependency. The client against the real service: tests/integration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from api.signing import new_secret, sign
from td3.client import (
    AuthError,
    ChecksumMismatch,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidSignature,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    TD3Error,
    TooManyRequests,
    Unavailable,
    ValidationFailed,
    verify_webhook,
)

ROOT = Path(__file__).resolve().parent.parent


def _client(handler) -> Client:
    return Client("http://td3.test", "td3_key", transport=httpx.MockTransport(handler))


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthError),
        (403, PermissionDenied),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (415, ValidationFailed),
        (422, ValidationFailed),
        (429, TooManyRequests),
        (503, Unavailable),
        (500, TD3Error),
    ],
)
def test_error_statuses_map_to_typed_errors(status, cls):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _error(status, "some_code", "what went wrong")

    with _client(handler) as client, pytest.raises(cls) as exc:
        client.job("job_1")
    assert type(exc.value) is cls
    assert (exc.value.status, exc.value.code, exc.value.message) == (
        status,
        "some_code",
        "what went wrong",
    )
    assert seen[0].headers["authorization"] == "Bearer td3_key"


def test_validation_details_and_non_envelope_bodies():
    details = [{"loc": ["body", "config", "users"], "msg": "Field required"}]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            body = {"error": {"code": "validation_error", "message": "m", "details": details}}
            return httpx.Response(422, json=body)
        return httpx.Response(502, text="<html>bad gateway</html>")

    with _client(handler) as client:
        with pytest.raises(ValidationFailed) as exc:
            client.create_job("ds_1", {"length": 5})
        assert exc.value.details == details
        with pytest.raises(TD3Error) as other:
            client.dataset("ds_1")
    assert other.value.code == "http_502" and "bad gateway" in other.value.message


def test_create_job_sends_an_idempotency_key_unless_given():
    keys = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        return _error(409, "request_in_progress", "retry shortly")

    with _client(handler) as client:
        for given in (None, "run-42"):
            with pytest.raises(Conflict):
                client.create_job("ds_1", {"users": 2, "length": 5}, idempotency_key=given)
    assert keys[0] and len(keys[0]) >= 16 and keys[1] == "run-42"


def test_ready_needs_no_key():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200 if request.url.path == "/readyz" else 401)

    with Client("http://td3.test", "", transport=httpx.MockTransport(handler)) as client:
        assert client.ready() is True
        with pytest.raises(AuthError):
            client.jobs()
    assert all("authorization" not in headers for headers in seen)


DATASET = {
    "id": "ds_1",
    "name": "big.csv",
    "filename": "big.csv",
    "format": "csv",
    "size_bytes": 5,
    "sha256": "0" * 64,
    "preprocessing": {},
    "statistics": None,
    "created_at": None,
    "status": "processing",
}


def test_a_refused_large_upload_is_validation_failed(tmp_path):
    """A worker parses a large upload (202, processing); its refusal comes later, as
    the dataset's error: `upload` waits for it and raises it like an inline 422."""
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            request.read()
            return httpx.Response(202, json=DATASET)
        polls.append(request.url.path)
        if len(polls) < 2:
            return httpx.Response(200, json=DATASET)
        error = {"code": "invalid_data", "message": "line 3: not a number"}
        return httpx.Response(200, json={**DATASET, "status": "failed", "error": error})

    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b,c")
    with _client(handler) as client:
        assert client.upload(path, wait=False).status == "processing"
        polls.clear()
        with pytest.raises(ValidationFailed) as exc:
            client.upload(path, poll=0.01)
    assert exc.value.code == "invalid_data" and "big.csv: line 3" in exc.value.message
    assert polls == ["/v1/datasets/ds_1"] * 2


def test_unreachable_service_is_connection_failed():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client:
        with pytest.raises(ConnectionFailed) as exc:
            client.jobs()
        assert exc.value.status == 0
        assert client.ready() is False


def test_download_refuses_a_checksum_mismatch_and_leaves_no_file(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("format") == "npy":
            return _error(413, "export_too_large", "over the limit")
        return httpx.Response(200, content=b"summary bytes", headers={"X-Content-SHA256": "0" * 64})

    target = tmp_path / "summary.safetensors"
    with _client(handler) as client:
        with pytest.raises(ChecksumMismatch):
            client.download_summary("job_1", target)
        with pytest.raises(PayloadTooLarge) as exc:
            client.download_summary("job_1", tmp_path / "s.npy", format="npy")
    assert exc.value.code == "export_too_large"
    assert list(tmp_path.iterdir()) == []


def test_webhook_signatures_verify_and_refuse_tampering_and_replays():
    secret, body = new_secret(), json.dumps({"id": "job_1", "status": "succeeded"}).encode()
    headers = {
        "webhook-id": "msg_job_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,bogus " + sign(secret, "msg_job_1", 1700000000, body),
    }
    verify_webhook(secret, headers, body, now=1700000010)
    for bad_secret, bad_body, now in (
        (new_secret(), body, 1700000010),  # another job's secret
        (secret, body + b" ", 1700000010),  # altered body
        (secret, body, 1700000000 + 3600),  # replayed an hour later
    ):
        with pytest.raises(InvalidSignature):
            verify_webhook(bad_secret, headers, bad_body, now=now)
    with pytest.raises(InvalidSignature):
        verify_webhook(secret, {"webhook-id": "x"}, body)


def test_the_client_needs_no_server_dependencies():
    code = (
        "import sys, td3.client\n"
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('sqlalchemy', 'celery', 'fastapi', 'torch', 'kombu'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
