"""Request and response bodies (pydantic v2).

The job config is `td3core.config.JobConfig` flattened for people: every
`DistillConfig` field (users, length, rank, epochs, inner_steps, window, seed,
alt, fsa, ...) sits at the top level next to the job-level fields (model,
teacher, learner, evaluations, max_len, eval_seeds, negatives_seed,
paper_compatible), plus `preset`, the settings it starts from.
`build_job_config` turns it into a validated `JobConfig`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    UrlConstraints,
    ValidationError,
    WrapSerializer,
    create_model,
    field_serializer,
)

from api.errors import APIError, format_validation_errors
from api.labels import Labels
from api.lifecycle import TERMINAL, EventKind, JobStatus
from td3core.config import DistillConfig, JobConfig, PresetName

DISTILL_FIELDS = tuple(DistillConfig.model_fields)
JOB_FIELDS = tuple(f for f in JobConfig.model_fields if f != "distill")


def _flat_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in DistillConfig.model_fields.items():
        fields[name] = (info.annotation, info)
    for name in JOB_FIELDS:
        info = JobConfig.model_fields[name]
        fields[name] = (info.annotation, info)
    fields["preset"] = (
        PresetName | None,
        Field(
            None,
            description="the settings to start from: 'default' (the library's defaults, "
            "used when omitted: hours on a CPU for ML-100k), 'paper' (the paper's Algorithm 1 "
            "as published: FSA on, pool learners, a random start, the teacher at the authors' "
            "lr) or 'smoke' (a pipeline check, well under a minute on a CPU on small data); "
            "the fields given here override it",
        ),
    )
    return fields


FlatJobConfig = create_model(
    "FlatJobConfig",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A JobConfig with the distillation fields at the top level.",
    **_flat_fields(),
)


def build_job_config(flat: dict[str, Any]) -> JobConfig:
    """Flat request config -> validated JobConfig (422 with pydantic's message): the
    preset's settings (default: "default") with the given fields on top."""
    flat = dict(flat)
    preset: PresetName = flat.pop("preset", None) or "default"
    unknown = sorted(set(flat) - set(DISTILL_FIELDS) - set(JOB_FIELDS))
    if unknown:
        raise APIError(422, "validation_error", f"config: unknown field(s): {', '.join(unknown)}")
    distill = {k: v for k, v in flat.items() if k in DISTILL_FIELDS}
    rest = {k: v for k, v in flat.items() if k in JOB_FIELDS}
    try:
        return JobConfig.from_preset(preset, {"distill": distill, **rest})
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


def _as_given(value: Any, handler: Any) -> Any:
    # Stored configs are JobConfig dumps: sent back as they are, not re-validated, so a
    # row written by an older version still reads (the schema documents JobConfig).
    return value if isinstance(value, dict) else handler(value)


# The config a job runs with (`JobConfig`, nested: `distill`, `model`, `teacher`, ...).
EchoedConfig = Annotated[SkipValidation[JobConfig], WrapSerializer(_as_given)]


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
    statistics: DatasetStatistics | None = Field(description="null until the dataset is ready")
    created_at: datetime
    labels: dict[str, str] = {}
    status: Literal["processing", "ready", "failed"] = Field(
        "ready",
        description="processing: a large upload waits for a worker to parse it; jobs need ready",
    )
    error: ErrorOut | None = Field(None, description="why processing failed")

    @field_serializer("created_at")
    def _ser_time(self, value: datetime) -> str | None:
        return _utc(value)


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


WebhookUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)]


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_0123456789abcdef01234567",
                    "config": {"users": 50, "length": 20, "preset": "smoke"},
                    "labels": {"pipeline_run": "run-2026-11-29-001"},
                    "webhook_url": "https://pipelines.example.com/hooks/td3",
                }
            ]
        },
    )

    dataset_id: str = Field(min_length=1, max_length=40)
    config: FlatJobConfig
    labels: Labels = {}
    webhook_url: WebhookUrl | None = Field(
        None,
        description="POSTed the job (signed, Standard Webhooks) once it ends; the signing "
        "secret is in the creation response only",
    )


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


WebhookStatus = Literal["waiting", "pending", "queued", "retrying", "delivered", "failed"]


class WebhookOut(BaseModel):
    url: str
    status: WebhookStatus = Field(
        description="waiting: the job has not ended; pending: it ended, the delivery is "
        "due; queued: a delivery attempt is on the queue; retrying: an attempt failed, "
        "another follows after a backoff; delivered; failed: every attempt failed"
    )
    attempts: int
    last_error: str | None
    delivered_at: str | None


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
    config: EchoedConfig
    progress: ProgressOut | None
    metrics: dict[str, Any] | None
    timings: Timings
    error: ErrorOut | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None
    labels: dict[str, str] = {}
    webhook: WebhookOut | None = None
    webhook_secret: str | None = Field(
        None,
        description="the key that signs this job's webhook (`whsec_...`); only in the "
        "response that created the job (and its Idempotency-Key replays)",
    )

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
            labels=job.labels or {},
            webhook=WebhookOut(
                url=job.webhook_url,
                status=job.webhook_status or ("pending" if job.status in TERMINAL else "waiting"),
                attempts=job.webhook_attempts or 0,
                last_error=job.webhook_last_error,
                delivered_at=_utc(job.webhook_delivered_at),
            )
            if job.webhook_url
            else None,
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


# --- the report (`td3-report/1`, built by td3core.report) ---------------------------------
# Permissive where the library may add keys: extra fields pass through.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class MetricStat(BaseModel):
    mean: float | None = Field(description="over the row's runs; null if not finite")
    std: float | None


class EvaluationRow(_Open):
    """One data source's learners (summary, full data, a sampler), averaged over runs."""

    runs: int
    uni100: dict[str, MetricStat] | None = Field(
        None, description="`hr@5`, `ndcg@10`, `mrr@20`, ... under seeded uni100 negatives"
    )
    full: dict[str, MetricStat] | None = Field(None, description="the same under full ranking")
    valid_mrr10: float | None = None
    train_seconds: float | None = None
    steps: float | None = None
    interactions: float | None = Field(None, description="training interactions the row saw")
    lr: list[float] = Field([], description="the learning rate each run's search chose")


class ReportDataset(_Open):
    users: int
    items: int
    interactions: int
    avg_length: float
    sparsity: float
    sha256: str | None = None
    preprocessing: dict[str, Any] = {}


class ReportSplit(_Open):
    train: int
    valid: int
    test: int
    max_len: int


class ReportTeacher(_Open):
    valid_mrr10: float | None
    steps: int
    pool_epochs: list[float] = Field(description="epoch of each pool entry (fractional: mid-epoch)")
    pool_note: str = ""


class CurvePoint(_Open):
    epoch: int
    valid_mrr10: float | None = None


class ReportDistillation(_Open):
    best_epoch: int
    best_valid_mrr10: float | None
    curves: list[CurvePoint]


class Report(_Open):
    """`td3-report/1`: settings, data, teacher, distillation curves, the evaluation
    table (rows: `summary`, `full`, samplers, ...), timings and memory."""

    format: Literal["td3-report/1"]
    config: EchoedConfig
    dataset: ReportDataset
    split: ReportSplit
    teacher: ReportTeacher
    distillation: ReportDistillation
    evaluation: dict[str, EvaluationRow] = Field(description="the first learner's table")
    evaluation_by_learner: dict[str, dict[str, EvaluationRow]] = Field(
        {}, description="every evaluated learner's table"
    )
    protocol: dict[str, str] = Field({}, description="how every number was obtained")
    timings: dict[str, float | None] = {}
    peak_memory_mb: float | None = None
    device: str | None = None
