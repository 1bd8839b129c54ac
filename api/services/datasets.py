"""Datasets: parse an uploaded interaction file with the torch-free `td3core.data`
readers, preprocess it, and store the processed bytes in the database (a worker
on another machine needs only the database and the broker)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from api.db import Database
from api.errors import APIError, not_found
from api.models import ACTIVE_STATUSES, Dataset, Job, Tenant, new_id, utcnow
from api.pagination import newest_first_page


@dataclass(frozen=True)
class UploadOptions:
    """Reader options and preprocessing options; None means the library default."""

    name: str
    filename: str
    format: str = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    rating_col: str | None = None
    delimiter: str | None = None
    has_header: bool | None = None
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDataset:
    content: bytes
    stats: dict[str, Any]
    preprocessing: dict[str, Any]
    format: str


def parse_upload(path: Path, opts: UploadOptions, sha256: str) -> ParsedDataset:
    """Read + preprocess + serialise. Bad input raises APIError(422) with the reader's
    message (file, line, problem). No database access here."""
    from pydantic import ValidationError

    from td3core.data import FORMATS, PreprocessConfig, build_dataset, read_interactions
    from td3core.data.storage import dataset_to_bytes
    from td3core.errors import TD3Error

    if opts.format != "auto" and opts.format not in FORMATS:
        raise APIError(
            422,
            "invalid_format",
            f"unknown format {opts.format!r}; one of: auto, {', '.join(sorted(FORMATS))}",
        )
    try:
        settings = PreprocessConfig(**opts.preprocess)
    except ValidationError as exc:
        from api.errors import format_validation_errors

        raise APIError(
            422, "invalid_preprocessing", format_validation_errors(exc.errors())
        ) from exc
    try:
        inter = read_interactions(
            path,
            fmt=opts.format,
            user_col=opts.user_col,
            item_col=opts.item_col,
            time_col=opts.time_col,
            rating_col=opts.rating_col,
            delimiter=opts.delimiter,
            has_header=opts.has_header,
        )
        dataset = build_dataset(inter, settings)
    except TD3Error as exc:
        raise APIError(422, "invalid_data", _rename(str(exc), path, opts.filename)) from exc
    dataset.source_sha256 = sha256
    return ParsedDataset(
        dataset_to_bytes(dataset),
        dataset.stats().as_dict(),
        settings.model_dump(mode="json"),
        inter.fmt,
    )


def _rename(message: str, path: Path, filename: str) -> str:
    """Report the client's file name, not our temporary path."""
    return message.replace(str(path), filename).replace(path.name, filename)


def create(
    db: Database,
    tenant: Tenant,
    opts: UploadOptions,
    parsed: ParsedDataset,
    *,
    size: int,
    sha256: str,
) -> Dataset:
    row = Dataset(
        id=new_id("ds"),
        tenant_id=tenant.id,
        name=opts.name,
        filename=opts.filename,
        format=parsed.format,
        size_bytes=size,
        sha256=sha256,
        preprocessing=parsed.preprocessing,
        stats=parsed.stats,
        content=parsed.content,
        created_at=utcnow(),
    )
    with db.transaction() as session:
        session.add(row)
    return row


_META = (
    Dataset.id,
    Dataset.tenant_id,
    Dataset.name,
    Dataset.filename,
    Dataset.format,
    Dataset.size_bytes,
    Dataset.sha256,
    Dataset.preprocessing,
    Dataset.stats,
    Dataset.created_at,
)


def _meta_query():
    # never load the (large) processed bytes for listings
    from sqlalchemy.orm import load_only

    return select(Dataset).options(load_only(*_META))


def get(db: Database, tenant: Tenant, dataset_id: str) -> Dataset:
    with db.session() as session:
        row = session.scalar(
            _meta_query().where(Dataset.id == dataset_id, Dataset.tenant_id == tenant.id)
        )
        if row is None:
            raise not_found("dataset", dataset_id)
        return row


def list_(
    db: Database, tenant: Tenant, *, limit: int, cursor: str | None
) -> tuple[list, str | None]:
    query = _meta_query().where(Dataset.tenant_id == tenant.id)
    return newest_first_page(db, query, Dataset.created_at, Dataset.id, limit=limit, cursor=cursor)


def delete_(db: Database, tenant: Tenant, dataset_id: str) -> None:
    with db.transaction() as session:
        row = session.scalar(
            select(Dataset.id)
            .where(Dataset.id == dataset_id, Dataset.tenant_id == tenant.id)
            .with_for_update()
        )
        if row is None:
            raise not_found("dataset", dataset_id)
        busy = session.scalar(
            select(Job.id)
            .where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES))
            .limit(1)
        )
        if busy is not None:
            raise APIError(
                409,
                "dataset_in_use",
                f"dataset {dataset_id!r} is used by job {busy!r}, which has not finished; "
                "cancel it or wait for it to finish",
            )
        session.execute(delete(Dataset).where(Dataset.id == dataset_id))
