"""Celery tasks. Module-level imports stay torch-free (the parent imports this)."""

from __future__ import annotations

from celery import Task

from api.broker import DISTILL_TASK, PARSE_DATASET_TASK, WEBHOOK_TASK
from api.settings import get_settings
from worker import webhooks
from worker.celery_app import app


@app.task(name=DISTILL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def distill(self: Task, job_id: str) -> None:
    """Run one distillation job; all state lives in the database."""
    from worker.runner import run_job_by_id

    run_job_by_id(job_id, worker=str(self.request.hostname or "worker"))
    # the job has ended (or was not ours to run): send its webhook and any left due
    webhooks.dispatch_due(app, get_settings())


@app.task(name=WEBHOOK_TASK, acks_late=True)
def webhook(job_id: str, attempt: int = 1) -> str:
    """One delivery attempt of a finished job's webhook (`worker.webhooks`)."""
    return webhooks.deliver(app, get_settings(), job_id, attempt)


@app.task(name=PARSE_DATASET_TASK, acks_late=True, reject_on_worker_lost=True)
def parse_dataset(dataset_id: str) -> str:
    """Parse a large upload (`api.services.datasets.parse_stored`): the dataset becomes
    `ready` or `failed`. Redelivery after a lost worker parses again (idempotent)."""
    from api.db import Database
    from api.services.datasets import parse_stored

    settings = get_settings()
    return parse_stored(Database(settings.database_url), dataset_id, settings)


@app.task(name="td3.ping")
def ping() -> str:
    """Short work for the default queue (a liveness probe for the worker)."""
    return "pong"
