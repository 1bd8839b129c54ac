"""The job lifecycle in one table: the statuses, which status may follow which,
and the one function that changes a job's status.

Every status change is a conditional `UPDATE jobs ... WHERE status IN (statuses
from which the new one is allowed)`, so two processes racing on one job (a client
cancelling while a worker finishes, a redelivered task) cannot both win, and a
terminal status never changes again. The change and its `status` event are
written in the caller's transaction.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = JobStatus

# A job is created in this status (the one no transition leads to).
INITIAL = _S.QUEUED

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # queued -> failed: a delivery over the attempt limit fails the job from any active
    # status but cancelling (which ends as cancelled); a queued job has made no attempt
    # yet, so this guards against a broken count rather than a real path
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED, _S.FAILED}),
    # running -> running: a redelivered job whose runner died is claimed again
    # (attempts, worker and pid change; the status does not, so no status event)
    _S.RUNNING: frozenset({_S.RUNNING, _S.CANCELLING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED}),
    # a job asked to stop may still finish first, or fail
    _S.CANCELLING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}


def sources(to: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which `to` is allowed."""
    return frozenset(s for s, nxt in TRANSITIONS.items() if to in nxt)


TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE: frozenset[JobStatus] = frozenset(TRANSITIONS) - TERMINAL
# A worker holds the job while it can still succeed: it writes progress and it
# alone ends the job.
HELD_BY_RUNNER: frozenset[JobStatus] = sources(_S.SUCCEEDED)

EventKind = Literal["status", "progress", "metric", "log"]


def record_event(session: Session, job_id: str, kind: EventKind, data: dict[str, Any]) -> None:
    """Append to the job's event log (what `GET /v1/jobs/{id}/events` pages through)."""
    from api.models import JobEvent, utcnow  # api.models imports JobStatus from here

    session.add(JobEvent(job_id=job_id, kind=kind, data=data, created_at=utcnow()))


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    expected: JobStatus | None = None,
    **values: Any,
) -> bool:
    """Move the job to `to` (setting `values` too) if its current status allows it
    (and is `expected`, when given: "queued -> cancelled" must not cancel a job that
    a worker claimed meanwhile); True if it applied. A move writes a `status` event;
    a same-status update (a redelivered running job claimed again) writes none."""
    allowed = sources(to) if expected is None else sources(to) & {expected}
    values = {**values, "status": to}
    if _update(session, job_id, allowed - {to}, values):
        record_event(session, job_id, "status", {"status": to.value})
        return True
    return to in allowed and _update(session, job_id, frozenset({to}), values)


def _update(
    session: Session, job_id: str, current: frozenset[JobStatus], values: dict[str, Any]
) -> bool:
    from api.models import Job, utcnow  # api.models imports JobStatus from here

    if not current:
        return False
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(current))
        .values(**{"updated_at": utcnow(), **values})
    )
    # an UPDATE always answers with a cursor result (the typing says only Result)
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1
