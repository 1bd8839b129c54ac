"""Jobs: creation (idempotent), listing, cancellation, results, and the worker-side
state transitions. Every status change is a conditional UPDATE guarded on the
current status, so a terminal status never changes again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import Database
from api.errors import APIError, not_found
from api.models import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATUSES,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    Report,
    Tenant,
    new_id,
    utcnow,
)
from api.pagination import decode_cursor, encode_cursor, newest_first_page

log = logging.getLogger("td3.jobs")


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data, created_at=utcnow()))


def _transition(session: Session, job_id: str, allowed: Sequence[str], **values: Any) -> bool:
    """UPDATE jobs SET ... WHERE id = :id AND status IN allowed; True if it applied."""
    values.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(tuple(allowed))).values(**values)
    )
    applied = result.rowcount == 1
    if applied and "status" in values:
        _event(session, job_id, "status", {"status": values["status"]})
    return applied


# --- API side ---------------------------------------------------------------------------


def _replay(job: Job, body_hash: str) -> Job:
    if job.request_hash != body_hash:
        raise APIError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )
    if job.enqueued_at is None and job.status == QUEUED:
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
) -> tuple[Job, bool]:
    """Returns (job, created). The task is enqueued only after the row is committed."""
    body_hash = request_hash(body)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant.id,
        dataset_id=dataset_id,
        status=QUEUED,
        config=config,
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    try:
        with db.transaction() as session:
            if idempotency_key is not None:
                existing = _by_key(session, tenant, idempotency_key)
                if existing is not None:
                    return _replay(existing, body_hash), False
            found = session.scalar(
                select(Dataset.id)
                .where(Dataset.id == dataset_id, Dataset.tenant_id == tenant.id)
                .with_for_update()
            )
            if found is None:
                raise not_found("dataset", dataset_id)
            session.add(job)
            session.flush()
            _event(session, job.id, "status", {"status": QUEUED})
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
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise not_found("job", job_id)
    return job


def list_(
    db: Database,
    tenant: Tenant,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    dataset_id: str | None,
) -> tuple[list[Job], str | None]:
    query = select(Job).where(Job.tenant_id == tenant.id)
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
    kind: str | None,
) -> tuple[list[JobEvent], str | None]:
    get(db, tenant, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if kind:
        query = query.where(JobEvent.kind == kind)
    if cursor:
        (after,) = decode_cursor(cursor, 1)
        if not isinstance(after, int):
            raise APIError(422, "invalid_cursor", "cursor is not one this API returned")
        query = query.where(JobEvent.id > after)
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


def cancel(db: Database, tenant: Tenant, job_id: str) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker finishes it)."""
    with db.transaction() as session:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
        if job is None:
            raise not_found("job", job_id)
        now = utcnow()
        if _transition(
            session,
            job_id,
            [QUEUED],
            status=CANCELLED,
            cancel_requested=True,
            finished_at=now,
            error_code="cancelled",
            error_message="cancelled by the client before it started",
        ) or _transition(session, job_id, [RUNNING], status=CANCELLING, cancel_requested=True):
            pass
        else:
            current = session.scalar(select(Job.status).where(Job.id == job_id))
            if current in (SUCCEEDED, FAILED):
                raise APIError(409, "job_finished", f"job {job_id!r} already {current}")
    return get(db, tenant, job_id)


def summary(db: Database, tenant: Tenant, job_id: str) -> Artifact:
    job = get(db, tenant, job_id)
    if job.status != SUCCEEDED:
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
    if job.status != SUCCEEDED:
        raise APIError(409, "job_not_succeeded", f"job {job_id!r} is {job.status}; no report yet")
    with db.session() as session:
        row = session.get(Report, job_id)
    if row is None:  # pragma: no cover
        raise not_found("report of job", job_id)
    return row.content


# --- worker side ------------------------------------------------------------------------


@dataclass
class Start:
    """What a worker should do with a delivered job."""

    run: bool
    reason: str = ""
    attempts: int = 0
    config: dict[str, Any] | None = None
    dataset: bytes | None = None
    checkpoint: bytes | None = None


def runner_gone(job: Job, *, lease_seconds: float, now: datetime | None = None) -> bool:
    """Whether the process that last ran `job` can no longer be running it.

    On this machine the answer is exact (is that pid alive?); for a runner on another
    machine it is a lease: no progress written for `lease_seconds`."""
    if job.worker is None or job.worker_pid is None:
        return True
    if worker_host(job.worker) == socket.gethostname():
        try:
            os.kill(job.worker_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
        return False
    age = ((now or utcnow()) - job.updated_at).total_seconds()
    return age > lease_seconds


def worker_host(worker: str) -> str:
    """The machine part of a Celery node name ("name@host")."""
    return worker.rpartition("@")[2]


def begin_attempt(
    db: Database,
    job_id: str,
    *,
    max_attempts: int,
    worker: str,
    pid: int,
    lease_seconds: float,
) -> Start:
    """Claim a delivered job: count the attempt, move it to running, load its inputs.
    A second delivery of a job whose runner is alive is dropped (never two runners).
    A delivery past `max_attempts` (the worker running it died each time) fails the job
    with code `worker_lost`."""
    with db.transaction() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return Start(False, "job no longer exists")
        if job.status in TERMINAL_STATUSES:
            return Start(False, f"job already {job.status}")
        now = utcnow()
        if job.status == RUNNING and not runner_gone(job, lease_seconds=lease_seconds, now=now):
            return Start(False, f"already running on {job.worker} (pid {job.worker_pid})")
        if job.status == CANCELLING or job.cancel_requested:
            _transition(
                session,
                job_id,
                [QUEUED, RUNNING, CANCELLING],
                status=CANCELLED,
                finished_at=now,
                error_code="cancelled",
                error_message="cancelled by the client",
            )
            return Start(False, "cancelled")
        attempts = job.attempts + 1
        if attempts > max_attempts:
            _transition(
                session,
                job_id,
                [QUEUED, RUNNING],
                status=FAILED,
                finished_at=now,
                attempts=job.attempts,
                error_code="worker_lost",
                error_message=f"the worker running this job was lost {job.attempts} times "
                f"(limit {max_attempts}); giving up",
            )
            return Start(False, "worker_lost")
        values: dict[str, Any] = {
            "attempts": attempts,
            "worker": worker,
            "worker_pid": pid,
            "started_at": job.started_at or now,
        }
        if job.status == QUEUED:
            applied = _transition(session, job_id, [QUEUED], status=RUNNING, **values)
        else:
            applied = _transition(session, job_id, [RUNNING], **values)
            _event(session, job_id, "log", {"message": f"redelivered (attempt {attempts})"})
        if not applied:  # pragma: no cover - we hold the row lock
            return Start(False, "status changed")
        dataset = session.scalar(select(Dataset.content).where(Dataset.id == job.dataset_id))
        if dataset is None:
            _transition(
                session,
                job_id,
                [RUNNING],
                status=FAILED,
                finished_at=now,
                error_code="dataset_missing",
                error_message="the job's dataset was deleted",
            )
            return Start(False, "dataset_missing")
        ckpt = session.scalar(select(Checkpoint.content).where(Checkpoint.job_id == job_id))
        if ckpt is not None:
            _event(session, job_id, "log", {"message": "resuming from the last checkpoint"})
        return Start(True, attempts=attempts, config=job.config, dataset=dataset, checkpoint=ckpt)


def record_progress(db: Database, job_id: str, progress: dict[str, Any], *, event: bool) -> None:
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((RUNNING, CANCELLING)))
            .values(progress=progress, updated_at=utcnow())
        )
        if event:
            _event(session, job_id, "progress", progress)


def cancel_requested(db: Database, job_id: str) -> bool:
    with db.session() as session:
        row = session.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == job_id)
        ).first()
    return row is None or bool(row.cancel_requested) or row.status != RUNNING


def save_checkpoint(db: Database, job_id: str, blob: bytes) -> None:
    digest = hashlib.sha256(blob).hexdigest()
    with db.transaction() as session:
        row = session.get(Checkpoint, job_id, with_for_update=True)
        if row is None:
            session.add(
                Checkpoint(
                    job_id=job_id,
                    content=blob,
                    sha256=digest,
                    size_bytes=len(blob),
                    sequence=1,
                    created_at=utcnow(),
                )
            )
        else:
            row.content, row.sha256, row.size_bytes = blob, digest, len(blob)
            row.sequence += 1
            row.created_at = utcnow()


def succeed(
    db: Database,
    job_id: str,
    *,
    summary: bytes,
    report: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> bool:
    digest = hashlib.sha256(summary).hexdigest()
    with db.transaction() as session:
        now = utcnow()
        applied = _transition(
            session,
            job_id,
            [RUNNING, CANCELLING],
            status=SUCCEEDED,
            finished_at=now,
            metrics=metrics,
        )
        if not applied:
            return False
        session.add(
            Artifact(
                id=new_id("art"),
                job_id=job_id,
                kind="summary",
                filename=f"{job_id}-summary.safetensors",
                media_type="application/octet-stream",
                sha256=digest,
                size_bytes=len(summary),
                content=summary,
                created_at=now,
            )
        )
        session.add(Report(job_id=job_id, content=report, created_at=now))
        if metrics:
            _event(session, job_id, "metric", metrics)
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    return True


def finish(db: Database, job_id: str, status: str, *, code: str, message: str) -> bool:
    """running/cancelling -> failed | cancelled."""
    with db.transaction() as session:
        return _transition(
            session,
            job_id,
            [RUNNING, CANCELLING],
            status=status,
            finished_at=utcnow(),
            error_code=code,
            error_message=message[:10_000],
        )


def requeue_orphans(
    db: Database, enqueue: Callable[[str], None], *, lease_seconds: float
) -> list[str]:
    """Send every orphaned job to the queue again; returns their ids."""
    ids = orphaned_jobs(db, lease_seconds=lease_seconds)
    for job_id in ids:
        enqueue(job_id)
        with db.transaction() as session:
            _event(session, job_id, "log", {"message": "re-enqueued: no live worker held it"})
    return ids


def orphaned_jobs(db: Database, *, lease_seconds: float) -> list[str]:
    """Jobs that no live worker will finish: running ones whose runner is gone, and
    queued ones (their message may have been lost with a killed worker; a duplicate
    delivery is dropped by `begin_attempt`). Cancelling ones whose runner is gone end
    as cancelled here."""
    with db.transaction() as session:
        jobs = session.scalars(
            select(Job).where(Job.status.in_((QUEUED, RUNNING, CANCELLING)))
        ).all()
        requeue = []
        for job in jobs:
            if job.status == QUEUED:
                requeue.append(job.id)
            elif runner_gone(job, lease_seconds=lease_seconds):
                if job.status == CANCELLING:
                    _transition(
                        session,
                        job.id,
                        [CANCELLING],
                        status=CANCELLED,
                        finished_at=utcnow(),
                        error_code="cancelled",
                        error_message="cancelled by the client",
                    )
                else:
                    requeue.append(job.id)
        return requeue
