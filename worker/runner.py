"""What a worker does with one job: claim it, run the pipeline with hooks that
write progress/checkpoints to the database and read the cancel flag, store the
summary and report, and end in exactly one terminal status."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from api.db import Database
from api.lifecycle import JobStatus
from api.services import job_runs
from api.settings import Settings, get_settings

if TYPE_CHECKING:
    from td3core.pipeline import Progress

log = logging.getLogger("td3.worker")

_db: Database | None = None


def _database(settings: Settings) -> Database:
    global _db
    if _db is None or _db.url != settings.database_url:
        _db = Database(settings.database_url)
    return _db


class DbHooks:
    """`td3core.pipeline.JobHooks` backed by the database."""

    def __init__(self, db: Database, job_id: str, settings: Settings):
        self.db = db
        self.job_id = job_id
        self.checkpoint_every = settings.checkpoint_every
        self._interval = settings.progress_interval
        self._last_event = 0.0
        self._last_stage: str | None = None
        self.checkpoints = 0

    def on_progress(self, progress: Progress) -> None:
        data = {
            "stage": progress.stage,
            "epoch": int(progress.epoch),
            "step": int(progress.step),
            "total": int(progress.total),
            "losses": {k: float(v) for k, v in (progress.losses or {}).items()},
            "eta_seconds": None if progress.eta_seconds is None else float(progress.eta_seconds),
            "message": progress.message or "",
        }
        now = time.monotonic()
        event = (
            progress.stage != self._last_stage
            or progress.step >= progress.total
            or now - self._last_event >= self._interval
        )
        if event:
            self._last_event = now
            self._last_stage = progress.stage
        job_runs.record_progress(self.db, self.job_id, data, event=event)

    def should_cancel(self) -> bool:
        return job_runs.cancel_requested(self.db, self.job_id)

    def save_checkpoint(self, blob: bytes) -> None:
        job_runs.save_checkpoint(self.db, self.job_id, bytes(blob))
        self.checkpoints += 1


def _device(settings: Settings) -> str:
    if settings.device:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, numpy scalars -> Python (Postgres JSON is strict)."""
    import math

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def run_job_by_id(job_id: str, *, worker: str = "worker", settings: Settings | None = None) -> str:
    """Returns the reason the job ended here (for logs and tests)."""
    settings = settings or get_settings()
    db = _database(settings)
    start = job_runs.begin_attempt(
        db,
        job_id,
        max_attempts=settings.max_attempts,
        worker=worker,
        pid=os.getpid(),
        lease_seconds=settings.lease_seconds,
    )
    if isinstance(start, job_runs.Dropped):
        log.info("job %s not run: %s", job_id, start.reason)
        return start.reason
    log.info(
        "job %s: attempt %d%s",
        job_id,
        start.attempts,
        " (resuming from checkpoint)" if start.checkpoint else "",
    )

    # The library (and torch) load here, in the process that runs the job, never in
    # the worker's parent before it forks.
    from td3core import pipeline
    from td3core.config import JobConfig
    from td3core.data.storage import dataset_from_bytes
    from td3core.errors import Cancelled, ConfigError, DataError, TD3Error

    try:
        config = JobConfig.model_validate(start.config)
        dataset = dataset_from_bytes(start.dataset)
        hooks = DbHooks(db, job_id, settings)
        result = pipeline.run_job(
            dataset, config, hooks, device=_device(settings), resume_from=start.checkpoint
        )
    except Cancelled:
        job_runs.finish(
            db, job_id, JobStatus.CANCELLED, code="cancelled", message="cancelled by the client"
        )
        return "cancelled"
    except TD3Error as exc:
        code = (
            "data_error"
            if isinstance(exc, DataError)
            else "config_error"
            if isinstance(exc, ConfigError)
            else "td3_error"
        )
        job_runs.finish(db, job_id, JobStatus.FAILED, code=code, message=str(exc))
        return code
    except Exception as exc:  # noqa: BLE001 - any bug still ends the job, never leaves it running
        log.exception("job %s failed with an internal error", job_id)
        job_runs.finish(
            db,
            job_id,
            JobStatus.FAILED,
            code="internal",
            message=f"internal error ({type(exc).__name__}); see the worker log",
        )
        return "internal"

    report = json_safe(dict(result.report))
    if not job_runs.succeed(
        db, job_id, summary=bytes(result.summary), report=report, metrics=report.get("evaluation")
    ):
        log.warning("job %s finished but its status had changed; result dropped", job_id)
        return "dropped"
    return "succeeded"
