"""Jobs, the HTTP side: creation (idempotent), lookup, listing, the event log,
cancellation and results. The worker side is `api.services.job_runs`; every status
change goes through `api.lifecycle.transition`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import Database
from api.errors import APIError, not_found
from api.labels import with_labels
from api.lifecycle import INITIAL, EventKind, JobStatus, record_event, transition
from api.models import Artifact, Dataset, Job, JobEvent, Report, Tenant, new_id, utcnow
from api.pagination import decode_id_cursor, encode_cursor, newest_first_page
from api.services.datasets import require_ready
from api.services.job_runs import dispatch_webhooks
from api.services.quotas import Quotas
from api.services.tenancy import owned_or_404
from api.signing import new_secret

log = logging.getLogger("td3.jobs")


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, body_hash: str) -> Job:
    if job.request_hash != body_hash:
        raise APIError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )
    if job.enqueued_at is None and job.status == JobStatus.QUEUED:
        raise APIError(
            409,
            "request_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
    return job


def _by_key(session: Session, tenant: Tenant, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))


def create(
    db: Database,
    tenant: Tenant,
    *,
    dataset_id: str,
    config: dict[str, Any],
    body: dict[str, Any],
    idempotency_key: str | None,
    enqueue: Callable[[str], None],
    labels: dict[str, str] | None = None,
    webhook_url: str | None = None,
    quotas: Quotas | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). The task is enqueued only after the row is committed.
    A webhook gets its own signing secret (`job.webhook_secret`). With `quotas`, a job
    over the tenant's quotas is refused (429) and not stored."""
    body_hash = request_hash(body)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant.id,
        dataset_id=dataset_id,
        status=INITIAL,
        config=config,
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        created_at=utcnow(),
        updated_at=utcnow(),
        labels=labels or {},
        webhook_url=webhook_url,
        webhook_secret=new_secret() if webhook_url else None,
        webhook_attempts=0,
    )
    try:
        with db.transaction() as session:
            if idempotency_key is not None:
                existing = _by_key(session, tenant, idempotency_key)
                if existing is not None:
                    return _replay(existing, body_hash), False
            # the lock makes a concurrent delete of the dataset wait and then see this job;
            # a dataset still processing (or failed) has nothing to train on: 409
            dataset = require_ready(owned_or_404(session, Dataset, dataset_id, tenant, lock=True))
            if quotas is not None:
                job.compute_estimate = quotas.admit_job(session, tenant, config, dataset)
            session.add(job)
            session.flush()
            record_event(session, job.id, "status", {"status": INITIAL.value})
    except IntegrityError:
        # a concurrent request with the same key won the insert
        if idempotency_key is None:
            raise
        with db.session() as session:
            existing = _by_key(session, tenant, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, body_hash), False

    try:
        enqueue(job.id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        with db.transaction() as session:
            session.execute(delete(Job).where(Job.id == job.id))
        raise APIError(
            503, "broker_unavailable", "the job queue is unavailable; nothing was created, retry"
        ) from exc
    now = utcnow()
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job.id).values(enqueued_at=now))
    job.enqueued_at = now
    return job, True


def get(db: Database, tenant: Tenant, job_id: str) -> Job:
    with db.session() as session:
        return owned_or_404(session, Job, job_id, tenant)


def list_(
    db: Database,
    tenant: Tenant,
    *,
    limit: int,
    cursor: str | None,
    status: JobStatus | None,
    dataset_id: str | None,
    labels: dict[str, str] | None = None,
) -> tuple[list[Job], str | None]:
    query = with_labels(select(Job).where(Job.tenant_id == tenant.id), Job.labels, labels or {})
    if status:
        query = query.where(Job.status == status)
    if dataset_id:
        query = query.where(Job.dataset_id == dataset_id)
    return newest_first_page(db, query, Job.created_at, Job.id, limit=limit, cursor=cursor)


def events(
    db: Database,
    tenant: Tenant,
    job_id: str,
    *,
    limit: int,
    cursor: str | None,
    kind: EventKind | None,
) -> tuple[list[JobEvent], str | None]:
    get(db, tenant, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if kind:
        query = query.where(JobEvent.kind == kind)
    if cursor:
        query = query.where(JobEvent.id > decode_id_cursor(cursor))
    query = query.order_by(JobEvent.id).limit(limit + 1)
    with db.session() as session:
        rows = list(session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
    if rows:
        # always hand back a cursor so a client can poll for newer events
        next_cursor = encode_cursor(rows[-1].id)
    elif cursor:
        next_cursor = cursor
    return rows, next_cursor


def cancel(
    db: Database, tenant: Tenant, job_id: str, *, enqueue_webhook: Callable[[str], None]
) -> Job:
    """queued -> cancelled at once (its webhook is sent); running -> cancelling (the
    worker finishes it). Cancelling a cancelled or cancelling job again changes nothing;
    a finished one is 409."""
    with db.transaction() as session:
        owned_or_404(session, Job, job_id, tenant)
        moved = transition(
            session,
            job_id,
            JobStatus.CANCELLED,
            expected=JobStatus.QUEUED,
            cancel_requested=True,
            finished_at=utcnow(),
            error_code="cancelled",
            error_message="cancelled by the client before it started",
        ) or transition(
            session,
            job_id,
            JobStatus.CANCELLING,
            expected=JobStatus.RUNNING,
            cancel_requested=True,
        )
        if not moved:
            current = session.scalar(select(Job.status).where(Job.id == job_id))
            if current in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                raise APIError(409, "job_finished", f"job {job_id!r} already {current}")
    try:
        dispatch_webhooks(db, enqueue_webhook, job_id=job_id)
    except Exception:  # the cancel stands; the next dispatch sends the webhook
        log.exception("could not enqueue the webhook of job %s", job_id)
    return get(db, tenant, job_id)


def summary(db: Database, tenant: Tenant, job_id: str) -> Artifact:
    job = get(db, tenant, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise APIError(
            409, "job_not_succeeded", f"job {job_id!r} is {job.status}; no summary to download"
        )
    with db.session() as session:
        art = session.scalar(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "summary")
        )
    if art is None:  # pragma: no cover - succeeded jobs always have one
        raise not_found("summary of job", job_id)
    return art


def report(db: Database, tenant: Tenant, job_id: str) -> dict[str, Any]:
    job = get(db, tenant, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise APIError(409, "job_not_succeeded", f"job {job_id!r} is {job.status}; no report yet")
    with db.session() as session:
        row = session.get(Report, job_id)
    if row is None:  # pragma: no cover
        raise not_found("report of job", job_id)
    return row.content
