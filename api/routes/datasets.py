"""Datasets. Upload = the file as the raw request body (not multipart), so it is
streamed to disk, size-limited and hashed as it arrives; options are query params."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import DatabaseDep, SettingsDep, TenantDep
from api.errors import APIError, error_responses
from api.labels import MAX_LABELS, LabelQuery, parse_label_filters
from api.models import Dataset
from api.schemas import DatasetList, DatasetOut, DatasetStatistics
from api.services import datasets as service
from td3core.data.readers import Format, ReaderOptions

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422))

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        filename=row.filename,
        format=row.format,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        preprocessing=row.preprocessing,
        statistics=DatasetStatistics(**row.stats),
        created_at=row.created_at,
        labels=row.labels or {},
    )


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        "payload_too_large",
        f"upload exceeds the limit of {limit} bytes (setting TD3_MAX_UPLOAD_BYTES)",
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload an interaction file (raw request body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The interaction file itself as the raw body (optionally gzip'd); "
            "e.g. `curl --data-binary @u.data -H 'Content-Type: application/octet-stream'`.",
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "user_id,item_id,timestamp\nu1,i7,1700000000\nu1,i3,1700000060\n",
                }
            },
        }
    },
    responses=error_responses(
        413, 415, 422, s415="multipart/form-data: send the file as the raw body"
    ),
)
async def upload_dataset(
    request: Request,
    tenant: TenantDep,
    db: DatabaseDep,
    settings: SettingsDep,
    filename: Annotated[str, Query(min_length=1, max_length=255)] = "upload",
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    format: Format = "auto",
    user_col: Annotated[str, Query(min_length=1, max_length=100)] = "user_id",
    item_col: Annotated[str, Query(min_length=1, max_length=100)] = "item_id",
    time_col: Annotated[
        str | None, Query(max_length=100, description="empty: file order is time")
    ] = "timestamp",
    rating_col: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    delimiter: Annotated[str | None, Query(min_length=1, max_length=4)] = None,
    has_header: bool | None = None,
    dedup: Literal["none", "keep-first", "keep-last"] | None = None,
    kcore: Literal["none", "one-pass", "iterative"] | None = None,
    min_user: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    min_item: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    min_rating: float | None = None,
    label: Annotated[
        list[str] | None,
        Query(max_length=MAX_LABELS, description="a label to attach, `key:value`; repeatable"),
    ] = None,
) -> DatasetOut:
    limit = settings.max_upload_bytes
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise APIError(
            415,
            "unsupported_media_type",
            "send the file as the raw request body, not multipart/form-data",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    preprocess = {
        k: v
        for k, v in {
            "dedup": dedup,
            "kcore": kcore,
            "min_user": min_user,
            "min_item": min_item,
            "min_rating": min_rating,
        }.items()
        if v is not None
    }
    opts = service.UploadOptions(
        name=name or filename,
        filename=filename,
        reader=ReaderOptions(
            fmt=format,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col or None,
            rating_col=rating_col,
            delimiter=delimiter,
            has_header=has_header,
        ),
        preprocess=preprocess,
        labels=parse_label_filters(label),
    )
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryDirectory(prefix="td3-upload-") as tmp:
        path = Path(tmp) / (_SAFE.sub("_", Path(filename).name).strip(".") or "upload")
        with path.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise APIError(422, "invalid_data", f"{filename}: the upload is empty")
        sha = digest.hexdigest()
        parsed = await run_in_threadpool(service.parse_upload, path, opts, sha)
    row = await run_in_threadpool(service.create, db, tenant, opts, parsed, size=size, sha256=sha)
    return _out(row)


@router.get("", response_model=DatasetList)
def list_datasets(
    tenant: TenantDep,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    label: LabelQuery = None,
) -> DatasetList:
    """Newest first."""
    rows, next_cursor = service.list_(
        db, tenant, limit=limit, cursor=cursor, labels=parse_label_filters(label)
    )
    return DatasetList(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset_id: str, tenant: TenantDep, db: DatabaseDep) -> DatasetOut:
    return _out(service.get(db, tenant, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=error_responses(404, 409, s409="a job that has not finished uses the dataset"),
)
def delete_dataset(dataset_id: str, tenant: TenantDep, db: DatabaseDep) -> Response:
    service.delete_(db, tenant, dataset_id)
    return Response(status_code=204)
