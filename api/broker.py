"""The API's side of the Celery broker: one connection config for both sides, and a
small producer that enqueues jobs by task name. The worker (`worker.celery_app`)
builds its app from the same `celery_config`; nothing here imports the worker."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from api.settings import Settings

# The names the worker registers its tasks under.
DISTILL_TASK = "td3.distill"
# Delivers a finished job's webhook (on the default queue: short, network-bound).
WEBHOOK_TASK = "td3.webhook"
# Parses a large upload into a dataset (default queue: CPU only, no GPU needed).
PARSE_DATASET_TASK = "td3.parse_dataset"


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for `settings.broker_url`."""
    if settings.broker_is_filesystem:
        folder = settings.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.polling_interval,
        }
    if settings.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        # an unacked task is redelivered after this long: it must exceed the longest job
        return {"visibility_timeout": settings.visibility_timeout}
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that producer and worker must agree on: where the broker is,
    how messages are encoded, which queues exist and where a task goes. Postgres is
    the source of truth, so results are never stored."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": settings.default_queue,
        "task_queues": (Queue(settings.gpu_queue), Queue(settings.default_queue)),
        "task_routes": {DISTILL_TASK: {"queue": settings.gpu_queue}},
    }


class Broker:
    """Sends distillation tasks and checks the broker answers (for `/readyz`)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = Celery("td3-api")
        self.celery.conf.update(celery_config(settings))

    def enqueue_distill(self, job_id: str) -> None:
        self.celery.send_task(
            DISTILL_TASK,
            args=[job_id],
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
        )

    def enqueue_parse(self, dataset_id: str) -> None:
        self.celery.send_task(PARSE_DATASET_TASK, args=[dataset_id], retry=True)

    def enqueue_webhook(self, job_id: str) -> None:
        send_webhook_task(self.celery, job_id)

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        if self.settings.broker_is_filesystem:
            folder = self.settings.broker_folder / "queue"
            if not folder.is_dir():
                raise RuntimeError(f"broker folder {folder} is missing")
            return
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def close(self) -> None:
        self.celery.close()


def send_webhook_task(
    celery: Celery, job_id: str, *, attempt: int = 1, countdown: float = 0
) -> None:
    """Enqueue delivery `attempt` of `job_id`'s webhook (the worker's retries come back
    through here with a countdown)."""
    celery.send_task(
        WEBHOOK_TASK,
        args=[job_id, attempt],
        countdown=countdown or None,
        queue=celery.conf.task_default_queue,
    )
