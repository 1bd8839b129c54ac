"""`td3 serve`: migrations, supervised Celery worker processes, and uvicorn in this
process.

With no configuration this is the embedded mode: SQLite + the serverless
`filesystem://` broker under $TD3_HOME (default ~/.td3); the workers are real
Celery worker processes, so the code paths are the production ones.

Supervision: one `td3 serve` per home (a `flock`ed lock file; a second one exits
with code 2); worker processes that die are restarted with exponential backoff
(their leftover children killed, their jobs requeued); SIGTERM and SIGINT stop the
server and then every worker (never one left behind); a worker whose `td3 serve` was
killed outright stops itself (`worker.celery_app.Housekeeper`). This module never
imports torch: GPUs are counted with `nvidia-smi -L`."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from api.settings import Settings, private_umask

log = logging.getLogger("td3.serve")

# the worker's watchdog reads this (worker.celery_app.SUPERVISOR_ENV; nothing imports worker)
SUPERVISOR_ENV = "TD3_SUPERVISOR_PID"
LOCK_NAME = "serve.lock"
# restart backoff: 1 s, doubling up to a minute; reset once a worker has lived this long
BACKOFF_FIRST, BACKOFF_MAX, STABLE_SECONDS = 1.0, 60.0, 60.0


def worker_command(settings: Settings, *, concurrency: int = 1, index: int = 0) -> list[str]:
    """`celery worker` on this settings' queues, named after this process and its slot
    (a job row records the node name, and `runner_gone` checks the pid on the same host)."""
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
        f"td3-{os.getpid()}-{index}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def start_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    index: int = 0,
    env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """A Celery worker process on this settings' queues, in its own process group
    (so `stop_worker` can signal its children too)."""
    child_env = {**os.environ, **settings.child_env(), **(env or {})}
    return subprocess.Popen(
        worker_command(settings, concurrency=concurrency, index=index),
        env=child_env,
        start_new_session=True,
        **popen,
    )


def stop_worker(proc: subprocess.Popen[bytes] | None, *, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM: finish the running task), then cold (SIGQUIT), then kill.
    An unfinished job stays unacked and is redelivered (and resumed) later."""
    if proc is None:
        return
    if proc.poll() is not None:
        kill_group(proc.pid)  # the main process is gone; its children may not be
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_group(proc.pid)


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a worker's process group (children of a dead main
    process cannot report their jobs back; the jobs resume from checkpoints)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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


def gpu_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this host offers, without loading torch: CUDA_VISIBLE_DEVICES if set,
    else one per `nvidia-smi -L` line (none without nvidia-smi)."""
    environ = dict(os.environ if environ is None else environ)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i in range(sum(line.startswith("GPU ") for line in out.splitlines()))]


class AlreadyServing(RuntimeError):
    pass


class ServeLock:
    """`$TD3_HOME/serve.lock`, held with `flock` while `td3 serve` runs: a second
    `td3 serve` on the same home would add a second set of workers and sweeps."""

    def __init__(self, home: Path):
        self.path = home / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        os.chmod(self.path, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyServing(
                f"another `td3 serve` (pid {holder}) is running on {self.path.parent}; "
                f"stop it first (or set TD3_HOME to another directory)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@dataclass
class _Slot:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor(threading.Thread):
    """Keeps `count` worker processes alive: starts them, restarts one that dies
    (exponential backoff, its leftover children killed, orphaned jobs requeued), and
    stops them all on `stop()`."""

    def __init__(self, settings: Settings, count: int, *, poll: float = 0.5, **popen: Any):
        super().__init__(name="td3-supervisor", daemon=True)
        self.settings = settings
        self.poll = poll
        self.popen = popen
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        gpus = gpu_devices()
        self.slots = [
            _Slot(i, {SUPERVISOR_ENV: str(os.getpid())} | _gpu_env(gpus, i)) for i in range(count)
        ]
        self.restarts = 0

    def pids(self) -> list[int]:
        with self._lock:
            return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def run(self) -> None:
        while not self._stopping.is_set():
            started = False
            with self._lock:
                for slot in self.slots:
                    started |= self._tend(slot, time.monotonic())
            if started:
                self._requeue()
            self._stopping.wait(self.poll)

    def _tend(self, slot: _Slot, now: float) -> bool:
        """Check one slot; True if a worker was (re)started."""
        if slot.proc is not None:
            code = slot.proc.poll()  # reaps a dead worker: no zombie
            if code is None:
                if now - slot.started > STABLE_SECONDS:
                    slot.failures = 0
                return False
            kill_group(slot.proc.pid)
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**slot.failures)
            log.error(
                "worker %d (pid %d) exited with code %s; restarting in %.0f s",
                slot.index,
                slot.proc.pid,
                code,
                delay,
            )
            slot.proc, slot.failures, slot.restart_at = None, slot.failures + 1, now + delay
            self.restarts += 1
        if now < slot.restart_at or self._stopping.is_set():
            return False
        slot.proc = start_worker(self.settings, index=slot.index, env=slot.env, **self.popen)
        slot.started = now
        log.info("started worker %d, pid %d", slot.index, slot.proc.pid)
        return True

    def _requeue(self) -> None:
        try:
            requeue_orphans(self.settings)
        except Exception:  # noqa: BLE001 - the next (re)start or sweep tries again
            log.warning("could not requeue orphaned jobs", exc_info=True)

    def stop(self) -> None:
        """Stop supervising, then stop every worker (warm, then cold, then killed)."""
        self._stopping.set()
        if self.is_alive():
            self.join()
        with self._lock:
            for slot in self.slots:
                stop_worker(slot.proc)
                slot.proc = None


def _gpu_env(gpus: list[str], index: int) -> dict[str, str]:
    """One GPU per worker process (round robin when there are more workers)."""
    return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if gpus else {}


class _Stop(Exception):
    """SIGTERM or SIGINT reached `td3 serve`."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    with_worker: bool,
    log_level: str = "info",
) -> int:
    """Run until SIGTERM/SIGINT; 0 then, 2 if another `td3 serve` holds this home."""
    private_umask()  # the database, broker messages and lock file: this user's only
    lock = ServeLock(settings.home)
    try:
        lock.acquire()
    except AlreadyServing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn handles both signals while it runs, then re-raises them: these handlers
    # turn them into `_Stop`, so the workers are always stopped below
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = Supervisor(settings, workers) if with_worker else None
    try:
        import uvicorn

        from api import migrate
        from api.main import create_app

        migrate.upgrade(settings)
        if supervisor is not None:
            supervisor.start()
        config = uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level=log_level,
            log_config=None,  # api.logs configured the root logger
            access_log=False,  # td3.access logs each request, without its query string
        )
        uvicorn.Server(config).run()
    except _Stop as stop:
        log.info("%s received: stopping", stop)
    finally:
        for sig in previous:  # a second signal must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop()
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
