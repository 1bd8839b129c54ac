"""Webhook delivery: POST a finished job (the JSON `GET /v1/jobs/{id}` answers) to its
`webhook_url`, signed Standard-Webhooks style (`api.signing`), retried with
exponential backoff until a 2xx or `webhook_max_attempts`. Torch-free (the worker's
parent imports this through `worker.tasks`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from celery import Celery

from api.broker import send_webhook_task
from api.db import Database
from api.schemas import JobOut
from api.services import job_runs
from api.settings import Settings
from api.signing import sign

log = logging.getLogger("td3.webhooks")

MAX_BACKOFF = 3600.0


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before the attempt after `attempt` (1-based): base, 2 x base, 4 x base..."""
    return min(settings.webhook_backoff * 2 ** (attempt - 1), MAX_BACKOFF)


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    # a task runs in a fresh child (worker_max_tasks_per_child=1): no pool to keep
    db = Database(settings.database_url)
    try:
        yield db
    finally:
        db.dispose()


def dispatch_due(celery: Celery, settings: Settings) -> list[str]:
    """Queue the webhooks of every job that has ended and not been sent yet."""
    with _database(settings) as db:
        return job_runs.dispatch_webhooks(db, lambda job_id: send_webhook_task(celery, job_id))


def post(url: str, secret: str, msg_id: str, body: bytes, *, timeout: float) -> str | None:
    """One signed POST; the problem as text, or None on a 2xx. Redirects are not
    followed (the signature is for the URL the client gave)."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "td3-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code} {response.text[:200]}"


def deliver(celery: Celery, settings: Settings, job_id: str, attempt: int) -> str:
    """Attempt `attempt` of `job_id`'s webhook; a failure before the last attempt
    enqueues the next one after the backoff. Returns the outcome (for logs and tests)."""
    with _database(settings) as db:
        delivery = job_runs.webhook_delivery(db, job_id)
        if delivery is None:
            return "nothing to deliver"
        # One message per job (it ends once): the same id on every retry lets a receiver
        # drop duplicates.
        body = JobOut.from_row(delivery.job).model_dump_json().encode()
        error = post(
            delivery.url, delivery.secret, f"msg_{job_id}", body, timeout=settings.webhook_timeout
        )
        retry = error is not None and attempt < settings.webhook_max_attempts
        job_runs.record_webhook_attempt(db, job_id, error=error, retry=retry)
    if error is None:
        return "delivered"
    log.warning("webhook of job %s, attempt %d: %s", job_id, attempt, error)
    if retry:
        send_webhook_task(celery, job_id, attempt=attempt + 1, countdown=backoff(settings, attempt))
        return "retrying"
    return "failed"
