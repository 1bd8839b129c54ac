"""Celery tasks. Module-level imports stay torch-free (the parent imports this)."""

from __future__ import annotations

from celery import Task

from api.broker import DISTILL_TASK
from worker.celery_app import app


@app.task(name=DISTILL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def distill(self: Task, job_id: str) -> None:
    """Run one distillation job; all state lives in the database."""
    from worker.runner import run_job_by_id

    run_job_by_id(job_id, worker=str(self.request.hostname or "worker"))


@app.task(name="td3.ping")
def ping() -> str:
    """Short work for the default queue (a liveness probe for the worker)."""
    return "pong"
