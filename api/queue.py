"""Sending work to the Celery broker and checking it is reachable (torch-free)."""

from __future__ import annotations

from api.settings import Settings

DISTILL_TASK = "td3.distill"


class Queue:
    def __init__(self, settings: Settings):
        from worker.celery_app import make_celery

        self.settings = settings
        self.celery = make_celery(settings)

    def enqueue_distill(self, job_id: str) -> None:
        self.celery.send_task(
            DISTILL_TASK,
            args=[job_id],
            queue=self.settings.gpu_queue,
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
        )

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
