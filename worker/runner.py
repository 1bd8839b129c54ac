"""What a worker does with one job: claim it, run the pipeline with hooks that
write progress/checkpoints to the database and read the cancel flag, store the
summary and report, and end in exactly one terminal status."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from api.broker import Broker
from api.db import Database
from api.lifecycle import JobStatus
from api.logs import bind
from api.models import utcnow
from api.services import job_runs, scheduling
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

    def __init__(
        self, db: Database, job_id: str, settings: Settings, *, deadline: datetime | None = None
    ):
        self.db = db
        self.job_id = job_id
        self.checkpoint_every = settings.checkpoint_every
        self._interval = settings.progress_interval
        self._last_event = 0.0
        self._last_stage: str | None = None
        self.checkpoints = 0
        self.deadline = deadline
        self.timed_out = False

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
        gpu_memory = _gpu_memory_bytes()
        if gpu_memory is not None:
            data["gpu_memory_bytes"] = gpu_memory  # read by the API's metrics
        now = time.monotonic()
        event = (
            progress.stage != self._last_stage
            or progress.step >= progress.total
            or now - self._last_event >= self._interval
        )
        if event:
            self._last_event = now
            self._last_stage = progress.stage
        try:
            job_runs.record_progress(self.db, self.job_id, data, event=event)
        except OperationalError:
            # progress is for people: a database outage must not end the job (the next
            # checkpoint or the result write fails instead, and the job is resumed)
            log.warning("job %s: progress not recorded (database unavailable)", self.job_id)

    def should_cancel(self) -> bool:
        """Stop when cancelled, or past the job's time limit (`timed_out`); the last
        checkpoint (at most CHECKPOINT_EVERY outer steps old) stays stored."""
        if self.deadline is not None and utcnow() >= self.deadline:
            self.timed_out = True
            return True
        try:
            return job_runs.cancel_requested(self.db, self.job_id)
        except OperationalError:
            log.warning("job %s: cancel flag not read (database unavailable)", self.job_id)
            return False

    def save_checkpoint(self, blob: bytes) -> None:
        job_runs.save_checkpoint(self.db, self.job_id, bytes(blob))
        self.checkpoints += 1


def _gpu_memory_bytes() -> int | None:
    """Peak CUDA memory of this process, if it has used CUDA (torch is loaded by then)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


@contextmanager
def job_lease(db: Database, job_id: str, *, interval: float) -> Iterator[None]:
    """Renew this process's lease on the job every `interval` seconds while the block
    runs (a thread: the job's own loop may sit in one long step), so a sweep on any
    machine can tell a live runner from a dead one (`job_runs.runner_gone`)."""
    stop = threading.Event()
    pid = os.getpid()

    def renew() -> None:
        # at once, then every `interval`: the sweep requeues a lost job only when its
        # lease is newer than its last `enqueued_at` (which the API writes just after
        # the first enqueue), so the lease must move past it early
        with bind(job_id=job_id):
            while True:
                try:
                    if not job_runs.heartbeat(db, job_id, pid=pid):
                        return  # no longer ours (ended, or claimed by another runner)
                except Exception:  # noqa: BLE001 - a database blip must not end the job
                    log.warning("job %s: lease renewal failed", job_id, exc_info=True)
                if stop.wait(interval):
                    return

    thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval)


def _device(settings: Settings) -> str:
    """The job's torch device, with the job's number of CPU threads set."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    if settings.device:
        return settings.device
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
    """Returns the reason the job ended here (for logs and tests). With fair
    scheduling, the delivery may start another tenant's queued job instead and send
    `job_id`'s message again (`api.services.scheduling`)."""
    settings = settings or get_settings()
    db = _database(settings)
    if settings.fair_scheduling:
        picked = scheduling.fair_pick(db, job_id)
        if picked != job_id:
            _enqueue_again(settings, job_id)
            log.info("job %s yields its turn to job %s (fair scheduling)", job_id, picked)
            job_id = picked
    with bind(job_id=job_id):
        return _run(db, job_id, worker=worker, settings=settings)


def _enqueue_again(settings: Settings, job_id: str) -> None:
    broker = Broker(settings)
    try:
        broker.enqueue_distill(job_id)
    finally:
        broker.close()


def _run(db: Database, job_id: str, *, worker: str, settings: Settings) -> str:
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
    deadline = (
        start.started_at + timedelta(seconds=settings.job_time_limit)
        if settings.job_time_limit and start.started_at is not None
        else None
    )
    with job_lease(db, job_id, interval=settings.heartbeat_interval):
        return _run_claimed(db, job_id, start, settings=settings, deadline=deadline)


def _run_claimed(
    db: Database,
    job_id: str,
    start: job_runs.Claimed,
    *,
    settings: Settings,
    deadline: datetime | None,
) -> str:
    # The library (and torch) load here, in the process that runs the job, never in
    # the worker's parent before it forks.
    from td3core import pipeline
    from td3core.config import JobConfig
    from td3core.data.storage import dataset_from_bytes
    from td3core.errors import Cancelled, ConfigError, DataError, TD3Error

    hooks = DbHooks(db, job_id, settings, deadline=deadline)
    try:
        config = JobConfig.model_validate(start.config)
        dataset = dataset_from_bytes(start.dataset)
        result = pipeline.run_job(
            dataset, config, hooks, device=_device(settings), resume_from=start.checkpoint
        )
    except Cancelled:
        if hooks.timed_out:
            job_runs.finish(
                db,
                job_id,
                JobStatus.FAILED,
                code="timeout",
                message=f"the job ran past its time limit of {settings.job_time_limit:g} s "
                "(JOB_TIME_LIMIT); its last checkpoint is kept",
            )
            return "timeout"
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
