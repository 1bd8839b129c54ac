"""The Celery app of the worker. Connection, queues and serialisation come from
`api.broker.celery_config` (the API's producer uses the same); the settings here
are the worker's own: tasks are acknowledged late and rejected (requeued) when the
child running them dies, with the number of deliveries capped by the job row's
`attempts`.

Run: `celery -A worker.celery_app worker -Q gpu,default --concurrency 1`
(one worker process per GPU; `td3 serve` starts one for you)."""

from __future__ import annotations

from celery import Celery

from api.broker import celery_config
from api.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("td3", include=["worker.tasks"])
    app.conf.update(
        celery_config(settings),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process (and GPU context) per job
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


app = make_celery(get_settings())
