"""`td3 serve`: migrations, a Celery worker subprocess, and uvicorn in this process.

With no configuration this is the embedded mode: SQLite + the serverless
`filesystem://` broker under $TD3_HOME (default ~/.td3); the worker is a real
Celery worker process, so the code paths are the production ones."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

from api.settings import Settings

log = logging.getLogger("td3.serve")


def worker_command(settings: Settings, *, concurrency: int = 1) -> list[str]:
    """`celery worker` on this settings' queues, named after this process (a job row
    records the node name, and `runner_gone` checks the pid on the same host)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        f"{settings.gpu_queue},{settings.default_queue}",
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--loglevel",
        "INFO",
        "--hostname",
        f"td3-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def start_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """A Celery worker process on this settings' queues, in its own process group
    (so `stop_worker` can signal its children too)."""
    child_env = {**os.environ, **settings.child_env(), **(env or {})}
    return subprocess.Popen(
        worker_command(settings, concurrency=concurrency),
        env=child_env,
        start_new_session=True,
        **popen,
    )


def stop_worker(proc: subprocess.Popen[bytes] | None, *, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM: finish the running task), then cold (SIGQUIT), then kill.
    An unfinished job stays unacked and is redelivered (and resumed) later."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def requeue_orphans(settings: Settings) -> list[str]:
    """Jobs left behind by a worker that died with its messages (the serverless broker
    drops a message once fetched) go back to the queue; `begin_attempt` resumes them
    from their checkpoints."""
    from api.broker import Broker
    from api.db import Database
    from api.services import job_runs

    broker = Broker(settings)
    try:
        ids = job_runs.requeue_orphans(
            Database(settings.database_url),
            broker.enqueue_distill,
            lease_seconds=settings.lease_seconds,
        )
    finally:
        broker.close()
    if ids:
        log.info("re-enqueued %d orphaned job(s): %s", len(ids), ", ".join(ids))
    return ids


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    with_worker: bool,
    log_level: str = "info",
) -> int:
    import uvicorn

    from api import migrate
    from api.main import create_app

    migrate.upgrade(settings)
    proc = start_worker(settings, concurrency=workers) if with_worker else None
    if proc is not None:
        log.info("started celery worker pid %d", proc.pid)
        requeue_orphans(settings)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
    finally:
        stop_worker(proc)
    return 0
