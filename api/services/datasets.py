"""Datasets: receive an upload (bounded while it streams), parse it with the
torch-free `td3core.data` readers, preprocess it, and store the processed bytes in
the database (a worker on another machine needs only the database and the broker).

Small uploads (at most `inline_parse_bytes` once decompressed) are parsed in the
request; larger ones are stored raw with status `processing` and parsed by the
`td3.parse_dataset` task on the default queue, which makes the dataset `ready` or
`failed` (with the reader's message). Either way the same limits hold: the upload is
checked by a `StreamGuard` as it arrives (compressed size, decompressed size, line
length, rows), so a gzip or line bomb is refused before anything is held, and the
parse is bounded again by the reader (`Limits`, plus distinct ids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from api.db import Database
from api.errors import APIError, format_validation_errors
from api.labels import with_labels
from api.lifecycle import ACTIVE
from api.models import Dataset, Job, Tenant, new_id, utcnow
from api.pagination import newest_first_page
from api.services.tenancy import owned_or_404
from api.settings import Settings
from td3core.data.limits import LimitError, Limits, StreamGuard
from td3core.data.readers import ReaderOptions
from td3core.errors import DataError

PROCESSING, READY, FAILED = "processing", "ready", "failed"

log = logging.getLogger("td3.datasets")


@dataclass(frozen=True)
class UploadOptions:
    """How to read the upload (the library's reader options) and how to preprocess it
    (`PreprocessConfig` fields; a missing one takes the library default)."""

    name: str
    filename: str
    reader: ReaderOptions = dataclasses.field(default_factory=ReaderOptions)
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What the parse task needs, as stored on a `processing` row."""
        return {
            "reader": self.reader.model_dump(mode="json"),
            "preprocess": self.preprocess,
        }


def clean_name(value: str, fallback: str = "upload") -> str:
    """A client-given name without control or format characters (NUL, CR, LF, bidi
    overrides...): it is stored, listed and echoed in headers and messages."""
    cleaned = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C").strip()
    return cleaned or fallback


def limits(settings: Settings) -> Limits:
    return Limits(
        max_decompressed_bytes=settings.max_decompressed_bytes,
        max_rows=settings.max_rows,
        max_line_bytes=settings.max_line_bytes,
        max_distinct_ids=settings.max_distinct_ids,
    )


def limit_error(exc: LimitError) -> APIError:
    """413 naming the setting that refused the data."""
    return APIError(413, "payload_too_large", f"{exc} (setting TD3_{exc.limit.upper()})")


class Upload:
    """The request body as it arrives: written to an anonymous temporary file (it has
    no name, so nothing is left behind even if the process is killed), hashed, and
    pushed through a `StreamGuard`. Use as a context manager: the file is closed (and
    so removed) on every path."""

    def __init__(self, settings: Settings, filename: str):
        self.max_bytes = settings.max_upload_bytes
        self.guard = StreamGuard(limits(settings), name=filename)
        self.digest = hashlib.sha256()
        self.size = 0
        self.file = tempfile.TemporaryFile(prefix="td3-upload-")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, chunk: bytes) -> None:
        """Take one received chunk; 413 past a limit, 422 for corrupt gzip."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self.digest.update(chunk)
        self.file.write(chunk)
        _checked(lambda: _drain(self.guard.feed(chunk)))

    def finish(self) -> None:
        """The body has ended: 422 if it was empty or its gzip is truncated."""
        if self.size == 0:
            raise APIError(422, "invalid_data", f"{self.guard.name}: the upload is empty")
        _checked(lambda: _drain(self.guard.finish()))

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        "payload_too_large",
        f"upload exceeds the limit of {limit} bytes (setting TD3_MAX_UPLOAD_BYTES)",
    )


def _drain(pieces: Iterator[bytes]) -> None:
    # the guard's checks run as the decompressed pieces pass; the data itself is on disk
    for _ in pieces:
        pass


def _checked(step: Callable[[], None]) -> None:
    try:
        step()
    except LimitError as exc:
        raise limit_error(exc) from exc
    except DataError as exc:
        raise APIError(422, "invalid_data", str(exc)) from exc


@dataclass(frozen=True)
class ParsedDataset:
    content: bytes
    stats: dict[str, Any]
    preprocessing: dict[str, Any]
    format: str


def parse_upload(data: bytes, opts: UploadOptions, sha256: str, bounds: Limits) -> ParsedDataset:
    """Read + preprocess + serialise. Bad input raises APIError(422) with the reader's
    message (file, line, problem), a limit APIError(413). No database access here."""
    from pydantic import ValidationError

    from td3core.data import PreprocessConfig, build_dataset, read_interactions_bytes
    from td3core.data.storage import dataset_to_bytes
    from td3core.errors import TD3Error

    try:
        settings = PreprocessConfig(**opts.preprocess)
    except ValidationError as exc:
        raise APIError(
            422, "invalid_preprocessing", format_validation_errors(exc.errors())
        ) from exc
    try:
        inter = read_interactions_bytes(data, opts.filename, opts.reader, limits=bounds)
        dataset = build_dataset(inter, settings)
    except LimitError as exc:
        raise limit_error(exc) from exc
    except TD3Error as exc:
        raise APIError(422, "invalid_data", str(exc)) from exc
    dataset.source_sha256 = sha256
    return ParsedDataset(
        dataset_to_bytes(dataset),
        dataset.stats().as_dict(),
        settings.model_dump(mode="json"),
        inter.fmt,
    )


def store(
    db: Database,
    tenant: Tenant,
    opts: UploadOptions,
    upload: Upload,
    settings: Settings,
    *,
    enqueue_parse: Callable[[str], None],
) -> Dataset:
    """A small upload is parsed now (status `ready`, or the request fails with nothing
    stored); a larger one is stored raw as `processing` and handed to the worker."""
    row = Dataset(
        id=new_id("ds"),
        tenant_id=tenant.id,
        name=opts.name,
        filename=opts.filename,
        format=opts.reader.fmt,
        size_bytes=upload.size,
        sha256=upload.sha256,
        preprocessing={},
        stats={},
        created_at=utcnow(),
        labels=opts.labels,
    )
    if upload.guard.decompressed <= settings.inline_parse_bytes:
        parsed = parse_upload(upload.read(), opts, upload.sha256, limits(settings))
        _fill(row, parsed)
        with db.transaction() as session:
            session.add(row)
        return row
    row.status = PROCESSING
    row.content = b""
    row.upload = upload.read()
    row.upload_options = opts.to_json()
    with db.transaction() as session:
        session.add(row)
    try:
        enqueue_parse(row.id)
    except Exception as exc:
        with db.transaction() as session:
            session.execute(delete(Dataset).where(Dataset.id == row.id))
        raise APIError(
            503, "broker_unavailable", "the task queue is unavailable; nothing was stored, retry"
        ) from exc
    row.upload = None  # the response needs none of it
    return row


def _fill(row: Dataset, parsed: ParsedDataset) -> None:
    row.status = READY
    row.format = parsed.format
    row.preprocessing = parsed.preprocessing
    row.stats = parsed.stats
    row.content = parsed.content


def parse_stored(db: Database, dataset_id: str, settings: Settings) -> str:
    """The worker's side: parse a `processing` dataset's raw upload and make it `ready`
    or `failed`. Returns the outcome (for logs and tests); a dataset that is gone or
    already parsed (a redelivered task) is left alone."""
    with db.session() as session:
        found = session.execute(
            select(
                Dataset.filename,
                Dataset.name,
                Dataset.sha256,
                Dataset.upload,
                Dataset.upload_options,
            ).where(Dataset.id == dataset_id, Dataset.status == PROCESSING)
        ).one_or_none()
    if found is None:
        return "skipped"
    filename, name, sha256, data, stored = found
    opts = UploadOptions(
        name=name,
        filename=filename,
        reader=ReaderOptions.model_validate(stored["reader"]),
        preprocess=stored["preprocess"],
    )
    values: dict[str, Any]
    try:
        parsed = parse_upload(data, opts, sha256, limits(settings))
    except APIError as exc:
        values = {"status": FAILED, "error_code": exc.code, "error_message": exc.message}
        outcome = FAILED
    except Exception as exc:  # noqa: BLE001 - a bug must still end the processing
        log.exception("dataset %s: parsing failed with an internal error", dataset_id)
        values = {
            "status": FAILED,
            "error_code": "internal",
            "error_message": f"internal error ({type(exc).__name__}); see the worker log",
        }
        outcome = FAILED
    else:
        values = {
            "status": READY,
            "format": parsed.format,
            "preprocessing": parsed.preprocessing,
            "stats": parsed.stats,
            "content": parsed.content,
        }
        outcome = READY
    with db.transaction() as session:
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == PROCESSING)
            .values(**values, upload=None, upload_options=None)
        )
    return outcome


def require_ready(dataset: Dataset) -> Dataset:
    """409 unless the dataset is parsed (jobs can only run on a `ready` dataset)."""
    if dataset.status == READY:
        return dataset
    if dataset.status == PROCESSING:
        raise APIError(
            409,
            "dataset_not_ready",
            f"dataset {dataset.id!r} is still being processed; retry when its status is ready",
        )
    raise APIError(
        409,
        "dataset_not_ready",
        f"dataset {dataset.id!r} failed to process ({dataset.error_message}); upload it again",
    )


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
