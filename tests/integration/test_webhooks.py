"""Webhooks against a real receiver (an http.server thread on 127.0.0.1), the real
Postgres, Redis and Celery worker: a finished job is POSTed once it ends, signed with
the secret its creation returned; a receiver that fails first gets the retry; a
webhook that never gets through ends as failed after the attempt limit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from helpers_service import TINY_CONFIG, auth_headers

from api.lifecycle import TERMINAL
from api.services import jobs as jobs_service
from api.services.auth import authenticate
from api.signing import InvalidSignature, verify
from worker import webhooks

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """Answers each POST with the next of `statuses` (the last one repeats)."""

    statuses: list[int]
    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@contextmanager
def receiver(*statuses: int) -> Iterator[Receiver]:
    state = Receiver(list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses[min(len(state.received), len(state.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/td3"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _submit(client, auth, dataset_id, url, config=None) -> dict:
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": dataset_id, "config": config or TINY_CONFIG, "webhook_url": url},
        headers=auth,
    )
    assert r.status_code == 202, r.text
    return r.json()


def _wait_webhook(client, auth, job_id, statuses, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if job["webhook"]["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"timed out; last state {job}"
        time.sleep(0.2)


def test_finished_job_is_posted_signed_after_a_failed_attempt(client, auth, dataset, worker):
    with receiver(503, 200) as hook:
        created = _submit(client, auth, dataset["id"], hook.url)
        secret = created["webhook_secret"]
        assert secret.startswith("whsec_") and created["webhook"]["status"] == "waiting"
        # the secret is shown once: never by a read
        assert (
            client.get(f"/v1/jobs/{created['id']}", headers=auth).json()["webhook_secret"] is None
        )
        job = _wait_webhook(client, auth, created["id"], {"delivered", "failed"})

    assert job["status"] == "succeeded" and job["status"] in TERMINAL
    assert job["webhook"]["status"] == "delivered" and job["webhook"]["attempts"] == 2
    assert job["webhook"]["delivered_at"] and job["webhook"]["last_error"] is None
    assert len(hook.received) == 2
    (first_headers, _), (headers, body) = hook.received
    # one message, however many attempts: receivers drop duplicates by webhook-id
    assert first_headers["webhook-id"] == headers["webhook-id"] == f"msg_{job['id']}"
    verify(secret, headers, body)
    with pytest.raises(InvalidSignature):
        verify(secret, headers, body.replace(b"succeeded", b"failed"))
    payload = json.loads(body)
    assert payload["id"] == job["id"] and payload["status"] == "succeeded"
    assert payload["webhook_secret"] is None
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    assert [e["data"].get("webhook") for e in events if "webhook" in e["data"]] == [
        "retrying",
        "delivered",
    ]


def test_a_job_cancelled_while_queued_is_posted(idle_client, auth, dataset, worker):
    """The API ends it: the API hands the webhook to the default queue, which the
    worker reads even though the distillation queue of `idle_client` is unread."""
    with receiver(204) as hook:
        created = _submit(idle_client, auth, dataset["id"], hook.url)
        cancelled = idle_client.post(f"/v1/jobs/{created['id']}/cancel", headers=auth).json()
        assert cancelled["status"] == "cancelled"
        job = _wait_webhook(idle_client, auth, created["id"], {"delivered", "failed"})
    assert job["webhook"]["status"] == "delivered" and job["webhook"]["attempts"] == 1
    (headers, body) = hook.received[0]
    verify(created["webhook_secret"], headers, body)
    assert json.loads(body)["status"] == "cancelled"


class FakeCelery:
    """Records what `worker.webhooks` enqueues instead of sending it."""

    def __init__(self) -> None:
        self.conf = SimpleNamespace(task_default_queue="default")
        self.sent: list[dict] = []

    def send_task(self, name: str, **kwargs: object) -> None:
        self.sent.append({"name": name, **kwargs})


def test_gives_up_after_the_attempt_limit(idle_client, db, settings, synthetic_csv):
    """Each attempt backs off twice as long; after the last one the webhook is failed
    and nothing is enqueued. The delivery function runs here, in the test process."""
    auth = auth_headers(db, "hooks")
    ds = idle_client.post(
        "/v1/datasets", params={"filename": "h.csv"}, content=synthetic_csv, headers=auth
    ).json()
    tenant = authenticate(db, auth["Authorization"].split()[1])
    with receiver(500) as hook:
        created = _submit(idle_client, auth, ds["id"], hook.url)
        due: list[str] = []
        jobs_service.cancel(db, tenant, created["id"], enqueue_webhook=due.append)
        assert due == [created["id"]]
        # a second dispatch finds nothing: the delivery is already queued
        jobs_service.cancel(db, tenant, created["id"], enqueue_webhook=due.append)
        assert due == [created["id"]]

        celery = FakeCelery()
        limited = settings.model_copy(update={"webhook_max_attempts": 2, "webhook_backoff": 3})
        assert webhooks.deliver(celery, limited, created["id"], 1) == "retrying"
        assert [(m["args"], m["countdown"]) for m in celery.sent] == [([created["id"], 2], 3)]
        assert webhooks.deliver(celery, limited, created["id"], 2) == "failed"
        assert len(celery.sent) == 1 and len(hook.received) == 2
        assert webhooks.deliver(celery, limited, created["id"], 3) == "nothing to deliver"

    job = idle_client.get(f"/v1/jobs/{created['id']}", headers=auth).json()
    assert job["webhook"]["status"] == "failed" and job["webhook"]["attempts"] == 2
    assert job["webhook"]["last_error"].startswith("HTTP 500")
    assert job["webhook"]["delivered_at"] is None


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "not a url", "http://" + "a" * 2100 + ".com/"]
)
def test_invalid_webhook_urls_are_refused(client, auth, dataset, url):
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": dataset["id"], "config": TINY_CONFIG, "webhook_url": url},
        headers=auth,
    )
    assert r.status_code == 422 and "webhook_url" in r.json()["error"]["message"]
