"""The Celery app. Postgres is the source of truth, so results are ignored;
tasks are acknowledged late and rejected (requeued) when the child running them
dies, with the number of deliveries capped by the job row's `attempts`.

Run: `celery -A worker.celery_app worker -Q gpu,default --concurrency 1`
(one worker process per GPU; `td3 serve` starts one for you)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from api.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("td3", broker=settings.broker_url, include=["worker.tasks"])
    transport_options: dict = {}
    if settings.broker_is_filesystem:
        folder = settings.broker_folder
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.polling_interval,
        }
    elif settings.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        # an unacked task is redelivered after this long: it must exceed the longest job
        transport_options = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process (and GPU context) per job
        task_default_queue=settings.default_queue,
        task_queues=(Queue(settings.gpu_queue), Queue(settings.default_queue)),
        task_routes={"td3.distill": {"queue": settings.gpu_queue}},
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


app = make_celery(get_settings())
