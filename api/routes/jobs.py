"""Distillation jobs."""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import HTMLResponse

from api.deps import BrokerDep, DatabaseDep, SettingsDep, TenantDep
from api.errors import APIError, error_responses
from api.labels import LabelQuery, parse_label_filters
from api.lifecycle import EventKind, JobStatus
from api.models import Artifact
from api.schemas import (
    EventList,
    EventOut,
    JobCreate,
    JobList,
    JobOut,
    Report,
    build_job_config,
)
from api.services import jobs as service
from api.services.quotas import Quotas
from td3core.errors import DataError

# every route: a bad key (401), bad parameters (422), the database down (503)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 503))

MAX_SEED = 2**32 - 1


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {
            "model": JobOut,
            "description": "replay of an earlier request with the same Idempotency-Key",
        },
        **error_responses(
            403,
            404,
            409,
            413,
            422,
            429,
            503,
            s403="the API key is read-only",
            s404="no such dataset",
            s409="the dataset is not ready, or the first request with this "
            "Idempotency-Key is still in flight",
            s413="the JSON body is over TD3_MAX_BODY_BYTES",
            s422="invalid config, or the Idempotency-Key was used with a different body",
            s429="over one of the tenant's quotas (active jobs, compute)",
            s503="the job queue or the database is unavailable; nothing was created",
        ),
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    tenant: TenantDep,
    db: DatabaseDep,
    broker: BrokerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JobOut:
    """Queue a distillation of a dataset. With `webhook_url`, the job is POSTed there
    once it ends, signed with `webhook_secret` (in this response only)."""
    config = build_job_config(body.config.model_dump(exclude_unset=True))
    job, created = service.create(
        db,
        tenant,
        dataset_id=body.dataset_id,
        config=config.model_dump(mode="json"),
        body=body.model_dump(mode="json", exclude_unset=True),
        idempotency_key=idempotency_key,
        enqueue=broker.enqueue_distill,
        labels=body.labels,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        quotas=Quotas.from_settings(settings),
    )
    response.status_code = 202 if created else 200
    return JobOut.from_row(job).model_copy(update={"webhook_secret": job.webhook_secret})


@router.get("", response_model=JobList)
def list_jobs(
    tenant: TenantDep,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    status: JobStatus | None = None,
    dataset_id: Annotated[str | None, Query(max_length=40)] = None,
    label: LabelQuery = None,
) -> JobList:
    """Newest first."""
    rows, next_cursor = service.list_(
        db,
        tenant,
        limit=limit,
        cursor=cursor,
        status=status,
        dataset_id=dataset_id,
        labels=parse_label_filters(label),
    )
    return JobList(items=[JobOut.from_row(r) for r in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job_id: str, tenant: TenantDep, db: DatabaseDep) -> JobOut:
    return JobOut.from_row(service.get(db, tenant, job_id))


@router.get("/{job_id}/events", response_model=EventList, responses=error_responses(404))
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
    responses=error_responses(
        403, 404, 409, s403="the API key is read-only", s409="the job already succeeded or failed"
    ),
)
def cancel_job(job_id: str, tenant: TenantDep, db: DatabaseDep, broker: BrokerDep) -> JobOut:
    """Cooperative: queued -> cancelled at once; running -> cancelling, and the worker
    stops at its next outer step (-> cancelled)."""
    return JobOut.from_row(
        service.cancel(db, tenant, job_id, enqueue_webhook=broker.enqueue_webhook)
    )


SummaryFormat = Literal["safetensors", "inter", "npy"]
# format -> (media type, file extension)
_SUMMARY_MEDIA = {
    "safetensors": ("application/octet-stream", "safetensors"),
    "inter": ("text/plain; charset=utf-8", "inter"),
    "npy": ("application/octet-stream", "npy"),
}


@router.get(
    "/{job_id}/summary",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/plain": {"schema": {"type": "string"}},
            },
            "description": "the summary: the `td3-summary/1` safetensors file (default; "
            "`td3-farzi-summary/1` for `distill.method` 'farzi'), "
            "sampled RecBole `.inter` sequences, or the dense `[users, length, items]` "
            "probabilities as `.npy`; `X-Content-SHA256` is the sha256 of the body",
        },
        **error_responses(
            404,
            409,
            413,
            422,
            s409="the job has not succeeded",
            s413="the dense export would exceed the export size limit",
            s422="invalid parameters, or the summary cannot be written in that format",
        ),
    },
)
def download_summary(
    job_id: str,
    tenant: TenantDep,
    db: DatabaseDep,
    settings: SettingsDep,
    format: SummaryFormat = "safetensors",
    seed: Annotated[
        int, Query(ge=0, le=MAX_SEED, description="sampling seed of the `inter` export")
    ] = 0,
) -> Response:
    art = service.summary(db, tenant, job_id)
    media_type, extension = _SUMMARY_MEDIA[format]
    content = (
        art.content
        if format == "safetensors"
        else _export(art, format, seed=seed, max_bytes=settings.max_export_bytes)
    )
    sha256 = art.sha256 if format == "safetensors" else hashlib.sha256(content).hexdigest()
    b64 = base64.b64encode(bytes.fromhex(sha256)).decode()
    return Response(
        content=content,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{job_id}-summary.{extension}"',
            "X-Content-SHA256": sha256,
            "Repr-Digest": f"sha-256=:{b64}:",
            "ETag": f'"{sha256}"',
        },
    )


def _export(art: Artifact, format: SummaryFormat, *, seed: int, max_bytes: int) -> bytes:
    """The summary in another format. Imported here, not at module load: the exports
    need torch, which the API process loads only when someone asks for one."""
    from td3core.export import summary_to_inter, summary_to_npy
    from td3core.summary import summary_from_bytes

    summary_file = summary_from_bytes(art.content)
    try:
        if format == "inter":
            return summary_to_inter(summary_file, seed=seed)
        return summary_to_npy(summary_file, max_bytes=max_bytes)
    except DataError as exc:
        if format == "npy":  # the dense tensor is over the limit
            raise APIError(
                413,
                "export_too_large",
                f"{exc} (setting TD3_MAX_EXPORT_BYTES); download the safetensors summary "
                "or the sampled `inter` export instead",
            ) from exc
        # the summary cannot be written as text (e.g. an item id holding a tab)
        raise APIError(
            422, "export_unavailable", f"{exc}; download the safetensors summary instead"
        ) from exc


@router.get(
    "/{job_id}/report",
    response_model=Report,
    responses={
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "the report (`td3-report/1`) as JSON, or as an HTML page",
        },
        **error_responses(404, 409, s409="the job has not succeeded"),
    },
)
def get_report(
    job_id: str,
    tenant: TenantDep,
    db: DatabaseDep,
    format: Literal["json", "html"] = "json",
) -> Any:
    content = service.report(db, tenant, job_id)
    if format == "html":
        from td3core.report_html import render_report_html

        return HTMLResponse(render_report_html(content))
    return Report.model_validate(content)
