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
from api.errors import APIError, format_validation_errors
from api.labels import with_labels
from api.lifecycle import ACTIVE
from api.models import Dataset, Job, Tenant, new_id, utcnow
from api.pagination import newest_first_page
from api.services.tenancy import owned_or_404
from td3core.data.readers import ReaderOptions


@dataclass(frozen=True)
class UploadOptions:
    """How to read the upload (the library's reader options) and how to preprocess it
    (`PreprocessConfig` fields; a missing one takes the library default)."""

    name: str
    filename: str
    reader: ReaderOptions = dataclasses.field(default_factory=ReaderOptions)
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


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

    from td3core.data import PreprocessConfig, build_dataset, read_interactions
    from td3core.data.storage import dataset_to_bytes
    from td3core.errors import TD3Error

    try:
        settings = PreprocessConfig(**opts.preprocess)
    except ValidationError as exc:
        raise APIError(
            422, "invalid_preprocessing", format_validation_errors(exc.errors())
        ) from exc
    try:
        inter = read_interactions(path, opts.reader)
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
        labels=opts.labels,
    )
    with db.transaction() as session:
        session.add(row)
    return row


def get(db: Database, tenant: Tenant, dataset_id: str) -> Dataset:
    with db.session() as session:
        return owned_or_404(session, Dataset, dataset_id, tenant)


def list_(
    db: Database,
    tenant: Tenant,
    *,
    limit: int,
    cursor: str | None,
    labels: dict[str, str] | None = None,
) -> tuple[list[Dataset], str | None]:
    query = with_labels(
        select(Dataset).where(Dataset.tenant_id == tenant.id), Dataset.labels, labels or {}
    )
    return newest_first_page(db, query, Dataset.created_at, Dataset.id, limit=limit, cursor=cursor)


def delete_(db: Database, tenant: Tenant, dataset_id: str) -> None:
    with db.transaction() as session:
        # the lock makes a concurrent job creation on this dataset wait for the verdict
        owned_or_404(session, Dataset, dataset_id, tenant, lock=True)
        busy = session.scalar(
            select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE)).limit(1)
        )
        if busy is not None:
            raise APIError(
                409,
                "dataset_in_use",
                f"dataset {dataset_id!r} is used by job {busy!r}, which has not finished; "
                "cancel it or wait for it to finish",
            )
        session.execute(delete(Dataset).where(Dataset.id == dataset_id))
