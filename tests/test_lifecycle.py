"""The job lifecycle table and `transition()` on SQLite (no servers): every allowed
move applies, every other one changes nothing, and moves write status events."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.db import Database
from api.errors import APIError
from api.lifecycle import (
    ACTIVE,
    HELD_BY_RUNNER,
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    sources,
    transition,
)
from api.models import Base, Job, JobEvent, Tenant, new_id, utcnow
from api.services import job_runs, jobs

ALLOWED = [(a, b) for a, nexts in TRANSITIONS.items() for b in sorted(nexts)]
REFUSED = [(a, b) for a, b in itertools.product(JobStatus, JobStatus) if b not in TRANSITIONS[a]]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'lifecycle.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def tenant(db: Database) -> Tenant:
    row = Tenant(id=new_id("ten"), name="acme", created_at=utcnow())
    with db.transaction() as session:
        session.add(row)
    return row


def make_job(db: Database, tenant: Tenant, status: JobStatus) -> str:
    job_id = new_id("job")
    with db.transaction() as session:
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant.id,
                dataset_id=None,
                status=status,
                config={},
                attempts=0,
                cancel_requested=False,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    return job_id


def job_row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def status_events(db: Database, job_id: str) -> list[str]:
    with db.session() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [e.data["status"] for e in rows if e.kind == "status"]


# --- the table ------------------------------------------------------------------------------


def test_every_status_has_a_row_and_only_statuses_follow() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(nexts <= set(JobStatus) for nexts in TRANSITIONS.values())


def test_terminal_statuses_have_no_exits() -> None:
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == TERMINAL
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert set(JobStatus) - TERMINAL == ACTIVE and all(TRANSITIONS[s] for s in ACTIVE)


def test_every_status_is_reachable_from_the_initial_one() -> None:
    seen, frontier = {INITIAL}, [INITIAL]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()] - seen:
            seen.add(nxt)
            frontier.append(nxt)
    assert seen == set(JobStatus)


def test_nothing_leads_back_to_queued_and_only_running_repeats() -> None:
    assert INITIAL == JobStatus.QUEUED and sources(INITIAL) == frozenset()
    assert [s for s in JobStatus if s in TRANSITIONS[s]] == [JobStatus.RUNNING]


def test_a_runner_holds_running_and_cancelling_jobs() -> None:
    assert {JobStatus.RUNNING, JobStatus.CANCELLING} == HELD_BY_RUNNER


# --- transition() ---------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "to"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_every_allowed_transition_applies(
    db: Database, tenant: Tenant, current: JobStatus, to: JobStatus
) -> None:
    job_id = make_job(db, tenant, current)
    with db.transaction() as session:
        assert transition(session, job_id, to, error_code="x", attempts=7)
    job = job_row(db, job_id)
    assert job.status == to and isinstance(job.status, JobStatus)
    assert job.error_code == "x" and job.attempts == 7


@pytest.mark.parametrize(("current", "to"), REFUSED, ids=[f"{a}->{b}" for a, b in REFUSED])
def test_every_disallowed_transition_changes_nothing(
    db: Database, tenant: Tenant, current: JobStatus, to: JobStatus
) -> None:
    job_id = make_job(db, tenant, current)
    before = job_row(db, job_id)
    with db.transaction() as session:
        assert not transition(session, job_id, to, error_code="x", attempts=7)
    job = job_row(db, job_id)
    assert job.status == current and job.error_code is None and job.attempts == 0
    assert job.updated_at == before.updated_at
    assert status_events(db, job_id) == []


def test_a_move_writes_one_status_event(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.QUEUED)
    for to in (JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.CANCELLED):
        with db.transaction() as session:
            assert transition(session, job_id, to)
    assert status_events(db, job_id) == ["running", "cancelling", "cancelled"]


def test_a_same_status_update_writes_no_event(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.RUNNING)
    with db.transaction() as session:
        assert transition(session, job_id, JobStatus.RUNNING, attempts=2, worker="w@h")
    job = job_row(db, job_id)
    assert job.attempts == 2 and job.worker == "w@h"
    assert status_events(db, job_id) == []


def test_expected_narrows_the_sources(db: Database, tenant: Tenant) -> None:
    """The client's "queued -> cancelled" must not cancel a job a worker just claimed."""
    job_id = make_job(db, tenant, JobStatus.RUNNING)
    with db.transaction() as session:
        assert not transition(session, job_id, JobStatus.CANCELLED, expected=JobStatus.QUEUED)
        assert not transition(session, job_id, JobStatus.RUNNING, expected=JobStatus.QUEUED)
    assert job_row(db, job_id).status == JobStatus.RUNNING
    with db.transaction() as session:
        assert transition(session, job_id, JobStatus.CANCELLING, expected=JobStatus.RUNNING)
    assert status_events(db, job_id) == ["cancelling"]


def test_a_missing_job_does_not_transition(db: Database) -> None:
    with db.transaction() as session:
        assert not transition(session, "job_missing", JobStatus.RUNNING)


# --- the services use it ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "after"),
    [
        (JobStatus.QUEUED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.CANCELLING),
        (JobStatus.CANCELLING, JobStatus.CANCELLING),
        (JobStatus.CANCELLED, JobStatus.CANCELLED),
    ],
)
def test_cancel(db: Database, tenant: Tenant, current: JobStatus, after: JobStatus) -> None:
    job_id = make_job(db, tenant, current)
    webhooks: list[str] = []
    job = jobs.cancel(db, tenant, job_id, enqueue_webhook=webhooks.append)
    assert job.status == after
    assert webhooks == []  # the job has no webhook URL
    moved = [after.value] if after != current else []
    assert status_events(db, job_id) == moved


@pytest.mark.parametrize("current", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_cancel_of_a_finished_job_is_409(db: Database, tenant: Tenant, current: JobStatus) -> None:
    job_id = make_job(db, tenant, current)
    with pytest.raises(APIError) as exc:
        jobs.cancel(db, tenant, job_id, enqueue_webhook=pytest.fail)
    assert exc.value.status == 409 and exc.value.code == "job_finished"
    assert job_row(db, job_id).status == current


def test_cancel_of_another_tenants_job_is_404(db: Database, tenant: Tenant) -> None:
    other = Tenant(id=new_id("ten"), name="other", created_at=utcnow())
    with db.transaction() as session:
        session.add(other)
    job_id = make_job(db, tenant, JobStatus.QUEUED)
    with pytest.raises(APIError) as exc:
        jobs.cancel(db, other, job_id, enqueue_webhook=pytest.fail)
    assert exc.value.status == 404 and job_row(db, job_id).status == JobStatus.QUEUED


def test_a_runner_cannot_finish_a_terminal_job(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.CANCELLED)
    assert not job_runs.finish(db, job_id, JobStatus.FAILED, code="internal", message="late")
    assert not job_runs.succeed(db, job_id, summary=b"s", report={}, metrics=None)
    assert job_row(db, job_id).status == JobStatus.CANCELLED


def test_finish_ends_only_as_failed_or_cancelled(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.RUNNING)
    with pytest.raises(ValueError, match="failed or cancelled"):
        job_runs.finish(db, job_id, JobStatus.SUCCEEDED, code="x", message="x")
    assert job_runs.finish(db, job_id, JobStatus.FAILED, code="internal", message="boom")
    job = job_row(db, job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "internal"
    assert job.finished_at is not None


def test_a_delivery_past_the_attempt_limit_fails_the_job(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.RUNNING)  # no worker recorded: its runner is gone
    with db.transaction() as session:
        session.get_one(Job, job_id).attempts = 3
    start = job_runs.begin_attempt(
        db, job_id, max_attempts=3, worker="w@h", pid=1, lease_seconds=60
    )
    assert start == job_runs.Dropped("worker_lost")
    assert job_row(db, job_id).status == JobStatus.FAILED
    assert status_events(db, job_id) == ["failed"]


def test_a_delivery_of_a_cancelled_job_is_dropped(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.CANCELLED)
    start = job_runs.begin_attempt(
        db, job_id, max_attempts=3, worker="w@h", pid=1, lease_seconds=60
    )
    assert start == job_runs.Dropped("job already cancelled")


def test_a_claimed_job_without_its_dataset_fails(db: Database, tenant: Tenant) -> None:
    job_id = make_job(db, tenant, JobStatus.QUEUED)  # dataset_id None: deleted
    start = job_runs.begin_attempt(
        db, job_id, max_attempts=3, worker="w@h", pid=1, lease_seconds=60
    )
    assert start == job_runs.Dropped("dataset_missing")
    assert job_row(db, job_id).error_code == "dataset_missing"
    assert status_events(db, job_id) == ["running", "failed"]
