"""Request and response bodies (pydantic v2).

The job config is `td3core.config.JobConfig` flattened for people: every
`DistillConfig` field (users, length, rank, epochs, inner_steps, window, seed,
alt, fsa, ...) sits at the top level next to the job-level fields (model,
teacher, learner, evaluations, max_len, eval_seeds, negatives_seed,
paper_compatible). `build_job_config` turns it into a validated `JobConfig`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_serializer

from api.errors import APIError, format_validation_errors
from api.lifecycle import EventKind, JobStatus
from td3core.config import DistillConfig, JobConfig

DISTILL_FIELDS = tuple(DistillConfig.model_fields)
JOB_FIELDS = tuple(f for f in JobConfig.model_fields if f != "distill")


def _flat_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in DistillConfig.model_fields.items():
        fields[name] = (info.annotation, info)
    for name in JOB_FIELDS:
        info = JobConfig.model_fields[name]
        fields[name] = (info.annotation, info)
    return fields


FlatJobConfig = create_model(
    "FlatJobConfig",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A JobConfig with the distillation fields at the top level.",
    **_flat_fields(),
)


def build_job_config(flat: dict[str, Any]) -> JobConfig:
    """Flat request config -> validated JobConfig (422 with pydantic's message)."""
    unknown = sorted(set(flat) - set(DISTILL_FIELDS) - set(JOB_FIELDS))
    if unknown:
        raise APIError(422, "validation_error", f"config: unknown field(s): {', '.join(unknown)}")
    distill = {k: v for k, v in flat.items() if k in DISTILL_FIELDS}
    rest = {k: v for k, v in flat.items() if k in JOB_FIELDS}
    try:
        return JobConfig.model_validate({"distill": distill, **rest})
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] == "distill":
                loc = loc[1:]
            errors.append({**err, "loc": tuple(loc)})
        raise APIError(
            422, "invalid_config", format_validation_errors(errors, prefix="config")
        ) from exc


def _utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetStatistics(BaseModel):
    users: int
    items: int
    interactions: int
    avg_length: float
    sparsity: float = Field(description="percent of the user x item matrix that is empty")


class DatasetOut(_Out):
    id: str
    name: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    preprocessing: dict[str, Any]
    statistics: DatasetStatistics
    created_at: datetime

    @field_serializer("created_at")
    def _ser_time(self, value: datetime) -> str | None:
        return _utc(value)


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=40)
    config: FlatJobConfig


class ProgressOut(BaseModel):
    stage: str | None = None
    epoch: int | None = None
    step: int | None = None
    total: int | None = None
    losses: dict[str, float] = {}
    eta_seconds: float | None = None
    message: str | None = None


class ErrorOut(BaseModel):
    code: str
    message: str


class Timings(BaseModel):
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    queued_seconds: float | None
    run_seconds: float | None


class JobOut(BaseModel):
    id: str
    dataset_id: str | None
    status: JobStatus
    config: dict[str, Any]
    progress: ProgressOut | None
    metrics: dict[str, Any] | None
    timings: Timings
    error: ErrorOut | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None

    @classmethod
    def from_row(cls, job: Any) -> JobOut:
        def seconds(a: datetime | None, b: datetime | None) -> float | None:
            return round((b - a).total_seconds(), 3) if a and b else None

        return cls(
            id=job.id,
            dataset_id=job.dataset_id,
            status=job.status,
            config=job.config,
            progress=ProgressOut.model_validate(job.progress) if job.progress else None,
            metrics=job.metrics,
            timings=Timings(
                created_at=_utc(job.created_at),
                started_at=_utc(job.started_at),
                finished_at=_utc(job.finished_at),
                queued_seconds=seconds(job.created_at, job.started_at),
                run_seconds=seconds(job.started_at, job.finished_at),
            ),
            error=ErrorOut(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            idempotency_key=job.idempotency_key,
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    kind: EventKind
    data: dict[str, Any]
    created_at: str | None

    @classmethod
    def from_row(cls, event: Any) -> EventOut:
        return cls(id=event.id, kind=event.kind, data=event.data, created_at=_utc(event.created_at))


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
