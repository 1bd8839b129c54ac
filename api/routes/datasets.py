"""Datasets. Upload = the file as the raw request body (not multipart), so it is
streamed to disk, size-limited, hashed and checked for bombs as it arrives
(`api.services.datasets.Upload`); reader and preprocessing options are query params,
the reader's generated from `td3core.data.readers.ReaderOptions`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from api.deps import BrokerDep, DatabaseDep, SettingsDep, TenantDep
from api.errors import APIError, error_responses, format_validation_errors
from api.labels import LabelQuery, parse_label_filters
from api.models import Dataset
from api.schemas import DatasetList, DatasetOut, DatasetStatistics, ErrorOut
from api.services import datasets as service
from td3core.data.preprocess import Dedup, KCore
from td3core.data.readers import ReaderOptions

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422, 503)
)


def _reader_query_fields() -> dict[str, Any]:
    """The reader's query parameters: `ReaderOptions`' fields with their types, limits
    and descriptions; `fmt` is called `format` (as it always was) and `columns` is
    comma-separated."""
    fields: dict[str, Any] = {}
    for name, info in ReaderOptions.model_fields.items():
        if name == "columns":
            fields[name] = (
                str | None,
                Field(
                    None,
                    max_length=2000,
                    description="comma-separated names of the columns of a file without a "
                    "header, e.g. `user_id,item_id,rating,timestamp`",
                ),
            )
        else:
            fields["format" if name == "fmt" else name] = (info.annotation, info)
    return fields


ReaderQuery = create_model(
    "ReaderQuery", __doc__="How to read the upload (`ReaderOptions`).", **_reader_query_fields()
)


def reader_options(query: Annotated[ReaderQuery, Query()]) -> ReaderOptions:
    values = query.model_dump()
    values["fmt"] = values.pop("format")
    values["time_col"] = values["time_col"] or None  # empty: file order is time
    if values["columns"] is not None:
        values["columns"] = tuple(c.strip() for c in values["columns"].split(","))
    try:
        return ReaderOptions(**values)
    except ValidationError as exc:
        raise APIError(422, "invalid_options", format_validation_errors(exc.errors())) from exc


ReaderDep = Annotated[ReaderOptions, Depends(reader_options)]


def _out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        filename=row.filename,
        format=row.format,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        preprocessing=row.preprocessing,
        statistics=DatasetStatistics(**row.stats) if row.stats else None,
        created_at=row.created_at,
        labels=row.labels or {},
        status=row.status,
        error=ErrorOut(code=row.error_code, message=row.error_message or "")
        if row.error_code
        else None,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload an interaction file (raw request body)",
    description="201 with the dataset's statistics when it was parsed in the request "
    "(small uploads); 202 with `status: processing` when a worker parses it (poll "
    "`GET /v1/datasets/{id}` until `ready` or `failed`). Refused while it streams: "
    "413 past `TD3_MAX_UPLOAD_BYTES` (compressed) or past `TD3_MAX_DECOMPRESSED_BYTES`, "
    "`TD3_MAX_ROWS`, `TD3_MAX_LINE_BYTES` (once decompressed); `TD3_MAX_DISTINCT_IDS` "
    "while parsing.",
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
    responses={
        202: {"model": DatasetOut, "description": "stored; a worker parses it"},
        **error_responses(
            403,
            413,
            415,
            422,
            429,
            503,
            s415="multipart/form-data: send the file as the raw body",
            s429="the tenant's stored bytes are at its quota",
        ),
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    tenant: TenantDep,
    db: DatabaseDep,
    settings: SettingsDep,
    broker: BrokerDep,
    reader: ReaderDep,
    filename: Annotated[str, Query(min_length=1, max_length=255)] = "upload",
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    dedup: Dedup | None = None,
    kcore: KCore | None = None,
    min_user: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    min_item: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    min_rating: float | None = None,
    label: Annotated[
        list[str] | None,
        Query(max_length=400, description="a label to attach, `key:value`; repeatable"),
    ] = None,
) -> DatasetOut:
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise APIError(
            415,
            "unsupported_media_type",
            "send the file as the raw request body, not multipart/form-data",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise service.too_large(settings.max_upload_bytes)
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
    filename = service.clean_name(filename)
    opts = service.UploadOptions(
        name=service.clean_name(name or filename),
        filename=filename,
        reader=reader,
        preprocess=preprocess,
        labels=parse_label_filters(label),
    )
    with service.Upload(settings, filename) as upload:
        async for chunk in request.stream():
            # decompressing a bomb's chunk is CPU work: off the event loop
            await run_in_threadpool(upload.write, chunk)
        await run_in_threadpool(upload.finish)
        row = await run_in_threadpool(
            service.store, db, tenant, opts, upload, settings, enqueue_parse=broker.enqueue_parse
        )
    if row.status == service.PROCESSING:
        response.status_code = 202
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
    responses=error_responses(403, 404, 409, s409="a job that has not finished uses the dataset"),
)
def delete_dataset(dataset_id: str, tenant: TenantDep, db: DatabaseDep) -> Response:
    service.delete_(db, tenant, dataset_id)
    return Response(status_code=204)
