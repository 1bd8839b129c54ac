"""Jobs, the worker side: claim a delivered job, record progress and checkpoints,
answer "should I stop?", store the result, and find jobs no live worker holds.
Every status change goes through `api.lifecycle.transition`."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update

from api.db import Database
from api.lifecycle import ACTIVE, HELD_BY_RUNNER, TERMINAL, JobStatus, record_event, transition
from api.models import Artifact, Checkpoint, Dataset, Job, Report, new_id, utcnow


@dataclass(frozen=True)
class Claimed:
    """The delivery is this worker's to run: the job's inputs."""

    attempts: int
    config: dict[str, Any]
    dataset: bytes
    checkpoint: bytes | None
    started_at: datetime | None = None  # when the job's first attempt began (its time limit)


@dataclass(frozen=True)
class Dropped:
    """The delivery is not run; `reason` says why (for logs and tests)."""

    reason: str


def runner_gone(job: Job, *, lease_seconds: float, now: datetime | None = None) -> bool:
    """Whether the process that last ran `job` can no longer be running it.

    A lease, wherever the runner is: it renews `updated_at` (`heartbeat`) every few
    seconds, so a row older than `lease_seconds` has lost its runner (a pid reused in a
    restarted container cannot keep a dead job alive). On this machine a dead pid is
    noticed at once."""
    if job.worker is None or job.worker_pid is None:
        return True
    if ((now or utcnow()) - job.updated_at).total_seconds() > lease_seconds:
        return True
    if worker_host(job.worker) == socket.gethostname():
        try:
            os.kill(job.worker_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
    return False


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
) -> Claimed | Dropped:
    """Claim a delivered job: count the attempt, move it to running, load its inputs.
    A second delivery of a job whose runner is alive is dropped (never two runners).
    A delivery past `max_attempts` (the worker running it died each time) fails the job
    with code `worker_lost`."""
    with db.transaction() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return Dropped("job no longer exists")
        if job.status in TERMINAL:
            return Dropped(f"job already {job.status}")
        now = utcnow()
        redelivered = job.status == JobStatus.RUNNING
        if redelivered and not runner_gone(job, lease_seconds=lease_seconds, now=now):
            return Dropped(f"already running on {job.worker} (pid {job.worker_pid})")
        if job.status == JobStatus.CANCELLING or job.cancel_requested:
            transition(
                session,
                job_id,
                JobStatus.CANCELLED,
                finished_at=now,
                error_code="cancelled",
                error_message="cancelled by the client",
            )
            return Dropped("cancelled")
        attempts = job.attempts + 1
        if attempts > max_attempts:
            transition(
                session,
                job_id,
                JobStatus.FAILED,
                finished_at=now,
                error_code="worker_lost",
                error_message=f"the worker running this job was lost {job.attempts} times "
                f"(limit {max_attempts}); giving up",
            )
            return Dropped("worker_lost")
        if not transition(
            session,
            job_id,
            JobStatus.RUNNING,
            attempts=attempts,
            worker=worker,
            worker_pid=pid,
            started_at=job.started_at or now,
        ):  # pragma: no cover - we hold the row lock
            return Dropped("status changed")
        if redelivered:
            record_event(session, job_id, "log", {"message": f"redelivered (attempt {attempts})"})
        dataset = session.scalar(select(Dataset.content).where(Dataset.id == job.dataset_id))
        if dataset is None:
            transition(
                session,
                job_id,
                JobStatus.FAILED,
                finished_at=now,
                error_code="dataset_missing",
                error_message="the job's dataset was deleted",
            )
            return Dropped("dataset_missing")
        ckpt = session.scalar(select(Checkpoint.content).where(Checkpoint.job_id == job_id))
        if ckpt is not None:
            record_event(session, job_id, "log", {"message": "resuming from the last checkpoint"})
        return Claimed(
            attempts=attempts,
            config=job.config,
            dataset=dataset,
            checkpoint=ckpt,
            started_at=job.started_at or now,
        )


def record_progress(db: Database, job_id: str, progress: dict[str, Any], *, event: bool) -> None:
    """Store the latest progress (and append it to the event log if `event`); ignored
    once the job has ended."""
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(HELD_BY_RUNNER))
            .values(progress=progress, updated_at=utcnow())
        )
        if event:
            record_event(session, job_id, "progress", progress)


def heartbeat(db: Database, job_id: str, *, pid: int) -> bool:
    """The runner `pid` renews its lease on the job (see `runner_gone`); False once
    the job is no longer its to run."""
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_pid == pid, Job.status.in_(HELD_BY_RUNNER))
            .values(updated_at=utcnow())
        )
        return cast(CursorResult[Any], result).rowcount == 1


def cancel_requested(db: Database, job_id: str) -> bool:
    """Whether the runner should stop: cancelled, or no longer running at all."""
    with db.session() as session:
        row = session.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == job_id)
        ).first()
    return row is None or bool(row.cancel_requested) or row.status != JobStatus.RUNNING


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
    """Store the summary and report and end the job as succeeded; False (nothing
    stored) if its status had changed meanwhile."""
    digest = hashlib.sha256(summary).hexdigest()
    with db.transaction() as session:
        now = utcnow()
        if not transition(session, job_id, JobStatus.SUCCEEDED, finished_at=now, metrics=metrics):
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
            record_event(session, job_id, "metric", metrics)
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    return True


def finish(db: Database, job_id: str, status: JobStatus, *, code: str, message: str) -> bool:
    """End a job the runner holds as failed or cancelled, with an error code."""
    if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ValueError(f"finish() ends a job as failed or cancelled, not {status}")
    with db.transaction() as session:
        return transition(
            session,
            job_id,
            status,
            finished_at=utcnow(),
            error_code=code,
            error_message=message[:10_000],
        )


def requeue_orphans(
    db: Database, enqueue: Callable[[str], None], *, lease_seconds: float, queued: bool = True
) -> list[str]:
    """Send every orphaned job to the queue again; returns their ids. `queued=False`
    is the periodic sweep (see `orphaned_jobs`)."""
    ids = orphaned_jobs(db, lease_seconds=lease_seconds, queued=queued)
    for job_id in ids:
        enqueue(job_id)
        with db.transaction() as session:
            # enqueued_at (not updated_at: that is the runner's lease) marks the requeue
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
            record_event(session, job_id, "log", {"message": "re-enqueued: no live worker held it"})
    return ids


def orphaned_jobs(db: Database, *, lease_seconds: float, queued: bool = True) -> list[str]:
    """Jobs that no live worker will finish: running ones whose runner is gone, and
    (`queued`) queued ones (their message may have been lost with a killed worker; a
    duplicate delivery is dropped by `begin_attempt`). Cancelling ones whose runner is
    gone end as cancelled here.

    The periodic sweep passes `queued=False`: a queued job's message is lost only with
    a worker that died, and `td3 serve` requeues them whenever it (re)starts one (the
    admin command too); it also skips a job
    already requeued since its runner's last heartbeat (its message is waiting for a
    free worker), so a long backlog does not fill the queue with copies."""
    with db.transaction() as session:
        jobs = session.scalars(select(Job).where(Job.status.in_(ACTIVE))).all()
        requeue = []
        for job in jobs:
            if job.status == JobStatus.QUEUED:
                if queued:
                    requeue.append(job.id)
            elif runner_gone(job, lease_seconds=lease_seconds):
                if job.status == JobStatus.CANCELLING:
                    transition(
                        session,
                        job.id,
                        JobStatus.CANCELLED,
                        finished_at=utcnow(),
                        error_code="cancelled",
                        error_message="cancelled by the client",
                    )
                elif queued or job.enqueued_at is None or job.enqueued_at < job.updated_at:
                    requeue.append(job.id)
        return requeue


# --- webhooks ---------------------------------------------------------------------------
# A job's terminal status is itself the record that its webhook is due: a job that ended
# with a webhook and no delivery state yet is picked up by the next dispatch, whichever
# process ended it and even if that process died right after.


def dispatch_webhooks(
    db: Database, enqueue: Callable[[str], None], *, job_id: str | None = None
) -> list[str]:
    """Hand every due webhook (or only `job_id`'s) to the queue, once: the state moves
    from none to `queued` before the send, and back if the send fails."""
    due = select(Job.id).where(
        Job.status.in_(TERMINAL), Job.webhook_url.is_not(None), Job.webhook_status.is_(None)
    )
    if job_id is not None:
        due = due.where(Job.id == job_id)
    with db.session() as session:
        candidates = list(session.scalars(due))
    sent = []
    for ident in candidates:
        if not _set_webhook_status(db, ident, "queued", expected=None):
            continue  # another dispatcher took it
        try:
            enqueue(ident)
        except Exception:
            _set_webhook_status(db, ident, None, expected="queued")
            raise
        sent.append(ident)
    return sent


def _set_webhook_status(db: Database, job_id: str, to: str | None, *, expected: str | None) -> bool:
    current = Job.webhook_status.is_(None) if expected is None else Job.webhook_status == expected
    with db.transaction() as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, current).values(webhook_status=to)
        )
        return cast(CursorResult[Any], result).rowcount == 1


@dataclass(frozen=True)
class WebhookDelivery:
    """What a delivery attempt sends: the job as `GET /v1/jobs/{id}` shows it."""

    url: str
    secret: str
    job: Job


def webhook_delivery(db: Database, job_id: str) -> WebhookDelivery | None:
    """The job's webhook if a delivery is still wanted (None once delivered or given up)."""
    with db.session() as session:
        job = session.get(Job, job_id)
    if job is None or not job.webhook_url or not job.webhook_secret:
        return None
    if job.webhook_status in ("delivered", "failed"):
        return None
    return WebhookDelivery(job.webhook_url, job.webhook_secret, job)


def record_webhook_attempt(db: Database, job_id: str, *, error: str | None, retry: bool) -> None:
    """One attempt's outcome: delivered (`error` None), retrying, or failed for good."""
    now = utcnow()
    status = "delivered" if error is None else "retrying" if retry else "failed"
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                webhook_status=status,
                webhook_attempts=Job.webhook_attempts + 1,
                webhook_last_error=None if error is None else error[:2000],
                webhook_delivered_at=now if error is None else None,
            )
        )
        message = "webhook delivered" if error is None else f"webhook attempt failed: {error}"
        record_event(session, job_id, "log", {"message": message[:2000], "webhook": status})
