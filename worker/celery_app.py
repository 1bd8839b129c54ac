"""The Celery app of the worker. Connection, queues and serialisation come from
`api.broker.celery_config` (the API's producer uses the same); the settings here
are the worker's own: tasks are acknowledged late and rejected (requeued) when the
child running them dies, with the number of deliveries capped by the job row's
`attempts`.

The worker's main process also keeps house in a thread (`Housekeeper`): a heartbeat
row every HEARTBEAT_INTERVAL seconds (what `/readyz` counts), a sweep for orphaned
jobs every SWEEP_INTERVAL seconds (jobs whose runner died, on any machine, go back
to the queue within about LEASE_SECONDS + SWEEP_INTERVAL, without waiting for the
broker's visibility timeout), and, under `td3 serve`, a watchdog that ends the worker
when its supervisor is gone.

Run: `celery -A worker.celery_app worker -Q gpu,default --concurrency 1`
(one worker process per GPU; `td3 serve` starts one for you)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery import Celery, signals

from api.broker import Broker, celery_config
from api.db import Database
from api.logs import configure
from api.services import job_runs, workers
from api.settings import Settings, get_settings

log = logging.getLogger("td3.worker")

# Set by `td3 serve` for the workers it starts: the pid to outlive never.
SUPERVISOR_ENV = "TD3_SUPERVISOR_PID"
# heartbeat rows of workers silent this long (seconds) are deleted by the sweeps
FORGET_AFTER = 24 * 3600


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


class Housekeeper(threading.Thread):
    """Heartbeat, orphan sweep (and due webhooks) and supervisor watchdog of one worker
    node."""

    def __init__(self, settings: Settings, node: str, *, supervisor: int | None):
        super().__init__(name="td3-housekeeper", daemon=True)
        self.settings = settings
        self.node = node
        self.supervisor = supervisor
        self.stopping = threading.Event()
        self.db = Database(settings.database_url)

    def run(self) -> None:
        next_sweep = time.monotonic() + self.settings.sweep_interval
        while True:
            if self.supervisor is not None and os.getppid() != self.supervisor:
                log.error("td3 serve (pid %d) is gone: stopping this worker", self.supervisor)
                # the whole group (main + children); their jobs resume from checkpoints
                os.killpg(os.getpgrp(), signal.SIGKILL)
            self._guarded("heartbeat", self.beat)
            if time.monotonic() >= next_sweep:
                self._guarded("orphan sweep", self.sweep)
                next_sweep = time.monotonic() + self.settings.sweep_interval
            if self.stopping.wait(self.settings.heartbeat_interval):
                return

    def beat(self) -> None:
        workers.beat(self.db, self.node, host=socket.gethostname(), pid=os.getpid())

    def sweep(self) -> list[str]:
        broker = Broker(self.settings)
        try:
            ids = job_runs.requeue_orphans(
                self.db,
                broker.enqueue_distill,
                lease_seconds=self.settings.lease_seconds,
                queued=False,
            )
            # jobs ended here (e.g. worker_lost) or by a task that died before sending
            # get their webhooks now, not when some later task happens to finish
            job_runs.dispatch_webhooks(self.db, broker.enqueue_webhook)
        finally:
            broker.close()
        if ids:
            log.warning("re-enqueued %d orphaned job(s): %s", len(ids), ", ".join(ids))
        workers.prune(self.db, older_than=FORGET_AFTER)
        return ids

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self._guarded("deregistration", lambda: workers.gone(self.db, self.node))

    def _guarded(self, what: str, step: Any) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - a database or broker blip: try again next round
            log.warning("worker %s: %s failed", self.node, what, exc_info=True)


_housekeeper: Housekeeper | None = None


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = "INFO", **_: Any) -> None:
    """JSON log lines (with the job id while a job runs) instead of Celery's format."""
    configure(logging.getLevelName(loglevel) if isinstance(loglevel, int) else str(loglevel))


@signals.worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    global _housekeeper
    supervisor = os.environ.get(SUPERVISOR_ENV)
    _housekeeper = Housekeeper(
        get_settings(),
        str(getattr(sender, "hostname", None) or socket.gethostname()),
        supervisor=int(supervisor) if supervisor else None,
    )
    _housekeeper.start()


@signals.worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


app = make_celery(get_settings())
