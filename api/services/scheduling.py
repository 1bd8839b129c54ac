"""Fair scheduling between tenants, decided when a worker takes a job.

A queue message is a turn, not a promise to one job: when a worker receives the
message of a queued job, it starts instead the oldest queued job of the tenant that
has the fewest jobs running (ties: the one served least recently, then the one that
has waited longest), and sends the skipped job's message again. Every queued job
keeps a message, so none is stranded, and one tenant's backlog cannot hold the
single embedded worker (or all production workers) for days: tenants take turns.

Why this and not per-tenant queues or a concurrency cap with countdowns: Celery
workers consume a fixed set of queues, and a cap alone still runs a backlog first-in
first-out on one worker; the database already knows every waiting job, so it can
pick exactly, for any number of workers, with no extra broker machinery.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from api.db import Database
from api.lifecycle import HELD_BY_RUNNER, JobStatus
from api.models import Job


def fair_pick(db: Database, job_id: str) -> str:
    """The job a delivery of `job_id` should start: if `job_id` is queued, the oldest
    queued job of the tenant whose turn it is (often `job_id` itself); otherwise
    `job_id` (`begin_attempt` resumes or drops it)."""
    with db.session() as session:
        own = session.execute(select(Job.status, Job.tenant_id).where(Job.id == job_id)).first()
        if own is None or own.status != JobStatus.QUEUED:
            return job_id
        running = dict(
            session.execute(
                select(Job.tenant_id, func.count())
                .where(Job.status.in_(HELD_BY_RUNNER))
                .group_by(Job.tenant_id)
            ).all()
        )
        last_start = dict(
            session.execute(
                select(Job.tenant_id, func.max(Job.started_at)).group_by(Job.tenant_id)
            ).all()
        )
        waiting = session.execute(
            select(Job.tenant_id, func.min(Job.created_at))
            .where(Job.status == JobStatus.QUEUED)
            .group_by(Job.tenant_id)
        ).all()
        never = datetime.min

        def turn(row: tuple[str, datetime]) -> tuple[int, datetime, datetime]:
            tenant, oldest = row
            return (running.get(tenant, 0), last_start.get(tenant) or never, oldest)

        tenant, _ = min(waiting, key=turn)
        picked = session.scalars(
            select(Job.id)
            .where(Job.tenant_id == tenant, Job.status == JobStatus.QUEUED)
            .order_by(Job.created_at, Job.id)
            .limit(1)
        ).first()
        return picked or job_id  # another worker took it meanwhile: keep our own
