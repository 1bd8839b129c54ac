"""Distillation jobs."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api.deps import BrokerDep, DatabaseDep, TenantDep
from api.lifecycle import EventKind, JobStatus
from api.schemas import (
    EventList,
    EventOut,
    JobCreate,
    JobList,
    JobOut,
    build_job_config,
)
from api.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"description": "replay of an earlier request with the same Idempotency-Key"},
        409: {"description": "the first request with this key is still in flight"},
        422: {"description": "invalid config, or the key was used with a different body"},
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    tenant: TenantDep,
    db: DatabaseDep,
    broker: BrokerDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JobOut:
    config = build_job_config(body.config.model_dump(exclude_unset=True))
    job, created = service.create(
        db,
        tenant,
        dataset_id=body.dataset_id,
        config=config.model_dump(mode="json"),
        body=body.model_dump(mode="json", exclude_unset=True),
        idempotency_key=idempotency_key,
        enqueue=broker.enqueue_distill,
    )
    response.status_code = 202 if created else 200
    return JobOut.from_row(job)


@router.get("", response_model=JobList)
def list_jobs(
    tenant: TenantDep,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    status: JobStatus | None = None,
    dataset_id: Annotated[str | None, Query(max_length=40)] = None,
) -> JobList:
    rows, next_cursor = service.list_(
        db, tenant, limit=limit, cursor=cursor, status=status, dataset_id=dataset_id
    )
    return JobList(items=[JobOut.from_row(r) for r in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, tenant: TenantDep, db: DatabaseDep) -> JobOut:
    return JobOut.from_row(service.get(db, tenant, job_id))


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    job_id: str,
    tenant: TenantDep,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    kind: EventKind | None = None,
) -> EventList:
    """Oldest first. `next_cursor` is always set once there are events: pass it back to
    get only newer ones (poll-friendly)."""
    rows, next_cursor = service.events(db, tenant, job_id, limit=limit, cursor=cursor, kind=kind)
    return EventList(
        items=[EventOut.from_row(r) for r in rows],
        next_cursor=next_cursor,
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={409: {"description": "the job already succeeded or failed"}},
)
def cancel_job(job_id: str, tenant: TenantDep, db: DatabaseDep) -> JobOut:
    """Cooperative: queued -> cancelled at once; running -> cancelling, and the worker
    stops at its next outer step (-> cancelled)."""
    return JobOut.from_row(service.cancel(db, tenant, job_id))


@router.get(
    "/{job_id}/summary",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "the .safetensors summary",
        },
        409: {"description": "the job has not succeeded"},
    },
)
def download_summary(job_id: str, tenant: TenantDep, db: DatabaseDep) -> Response:
    art = service.summary(db, tenant, job_id)
    b64 = base64.b64encode(bytes.fromhex(art.sha256)).decode()
    return Response(
        content=art.content,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{art.filename}"',
            "X-Content-SHA256": art.sha256,
            "Repr-Digest": f"sha-256=:{b64}:",
            "ETag": f'"{art.sha256}"',
        },
    )


@router.get("/{job_id}/report", responses={409: {"description": "the job has not succeeded"}})
def get_report(job_id: str, tenant: TenantDep, db: DatabaseDep) -> dict[str, Any]:
    return service.report(db, tenant, job_id)
