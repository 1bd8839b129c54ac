"""Faults injected into a running service, on real Postgres, Redis and worker
processes (`td3 serve` in a subprocess, supervising its worker): SIGKILL of the job's
process, of the worker's main process and of `td3 serve` itself, a duplicate
delivery, Redis restarted and Postgres restarted mid-job. The API answers 503 (never
500) while a backend is down, and every job ends `succeeded` with a summary whose
tensors equal an uninterrupted run's.

Redis and Postgres here are private instances on other ports (started and restarted
by the tests): the machine's own servers are shared and never touched."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from glob import glob
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers_serve import Served, alive, wait_for
from helpers_service import TINY_CONFIG, free_port, require_or_skip
from safetensors.numpy import load
from sqlalchemy import select

from api import migrate
from api.broker import Broker
from api.db import Database
from api.models import Checkpoint, Job
from api.services.auth import create_key
from api.settings import Settings
from td3.serve import start_worker

from .conftest import private_database

pytestmark = pytest.mark.integration

# long enough (12 outer steps, one checkpoint each) to be hit mid-distillation
FAULT_CONFIG = {**TINY_CONFIG, "epochs": 12, "inner_steps": 6, "window": 2}
# short heartbeats and leases, so a lost runner is noticed within seconds
FAST = {
    "TD3_HEARTBEAT_INTERVAL": "0.5",
    "TD3_LEASE_SECONDS": "4",
    "TD3_SWEEP_INTERVAL": "1",
    "TD3_MAX_ATTEMPTS": "6",
    "TD3_CHECKPOINT_EVERY": "1",
    "TD3_PROGRESS_INTERVAL": "0",
    "TD3_DEVICE": "cpu",
}


class PrivateRedis:
    """A redis-server of our own on a free port (no persistence): stop and start it."""

    def __init__(self) -> None:
        require_or_skip(shutil.which("redis-server") is not None, "no redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._answers, 20, "redis to answer")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temporary folder, run as the
    `postgres` user on a free port): stop and start it."""

    def __init__(self) -> None:
        bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        usable = bool(bins) and shutil.which("runuser") is not None and os.geteuid() == 0
        require_or_skip(usable, "cannot run a private PostgreSQL (initdb, runuser, root)")
        self.bin = Path(bins[-1]).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="td3-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postgres")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / command[0]), *command[1:]]
            + ["--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(self.bin / "postgres"), "-D", str(self.data)]
            + ["-p", str(self.port), "-k", str(self.data), "-c", "listen_addresses=127.0.0.1"]
            + ["-c", "fsync=off", "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._answers, 30, "postgres to answer")

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=1
            ):
                return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a crash, not a clean shutdown
            self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Stack:
    """`td3 serve` (with its worker) on a database and a private Redis, a tenant key
    and an uploaded dataset; `restart()` replaces the serve process."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        redis: PrivateRedis,
        csv: bytes,
        args: tuple[str, ...] = (),
    ):
        self.redis = redis
        tag = secrets.token_hex(3)
        self.env = {
            **FAST,
            "TD3_DATABASE_URL": database_url,
            "TD3_BROKER_URL": redis.url,
            "TD3_GPU_QUEUE": f"faults-gpu-{tag}",
            "TD3_DEFAULT_QUEUE": f"faults-default-{tag}",
            # an API without workers of its own is ready on its own
            "TD3_READINESS_WORKERS": "0" if "--no-worker" in args else "1",
        }
        self.home = home
        self.settings = Settings(
            home=home,
            **{k[4:].lower(): v for k, v in self.env.items()},  # type: ignore[arg-type]
        )
        migrate.upgrade(self.settings)
        self.db = Database(database_url)
        self.headers = {"Authorization": f"Bearer {create_key(self.db, 'faults')[1]}"}
        self.args = args
        self.served = Served(home, self.env, args).start().wait_ready()
        self.http = httpx.Client(base_url=self.served.url, headers=self.headers, timeout=30)
        r = self.http.post("/v1/datasets", params={"filename": "s.csv"}, content=csv)
        assert r.status_code == 201, r.text
        self.dataset = r.json()["id"]

    def restart(self) -> None:
        groups = self.served.groups
        self.served = Served(self.home, self.env, self.args).start().wait_ready()
        self.served.groups |= groups  # closed (killed) with it at the end
        self.http = httpx.Client(base_url=self.served.url, headers=self.headers, timeout=30)

    def submit(self) -> str:
        r = self.http.post("/v1/jobs", json={"dataset_id": self.dataset, "config": FAULT_CONFIG})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def mid_distillation(self, job_id: str) -> Job:
        """Wait until the job is distilling with two checkpoints stored; its row."""

        def ready() -> Job | None:
            with self.db.session() as s:
                job = s.get_one(Job, job_id)
                seq = s.scalar(select(Checkpoint.sequence).where(Checkpoint.job_id == job_id))
            assert job.status not in ("succeeded", "failed"), "finished before the fault"
            distilling = (job.progress or {}).get("stage") == "distill"
            return job if distilling and (seq or 0) >= 2 and job.status == "running" else None

        return wait_for(ready, 180, "the job to be mid-distillation", self.served.log())

    def finished(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            try:
                job = self.job(job_id)
            except (httpx.TransportError, ValueError):
                return None
            return job if job.get("status") in ("succeeded", "failed", "cancelled") else None

        job = wait_for(done, timeout, f"job {job_id} to finish", self.served.log())
        assert job["status"] == "succeeded", (job, self.served.log())
        return job

    def tensors(self, job_id: str) -> dict[str, np.ndarray]:
        r = self.http.get(f"/v1/jobs/{job_id}/summary")
        assert r.status_code == 200, r.text
        return load(r.content)

    def close(self) -> None:
        self.http.close()
        self.served.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    redis = PrivateRedis()
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, synthetic_csv) -> Iterator[Stack]:
    with private_database() as url:
        stack = Stack(tmp_path_factory.mktemp("faults"), url, redis_server, synthetic_csv)
        try:
            yield stack
        finally:
            stack.close()


@pytest.fixture(scope="module")
def reference(stack: Stack) -> dict[str, np.ndarray]:
    """An uninterrupted run's summary: every fault below must reproduce it exactly."""
    job_id = stack.submit()
    job = stack.finished(job_id)
    assert job["attempts"] == 1
    return stack.tensors(job_id)


def assert_same(tensors: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(tensors) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def _killed_and_resumed(stack: Stack, reference, kill: Callable[[Job], None]) -> dict:
    job_id = stack.submit()
    kill(stack.mid_distillation(job_id))
    job = stack.finished(job_id)
    assert job["attempts"] >= 2, job
    events = stack.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()
    messages = [e["data"].get("message") for e in events["items"] if e["kind"] == "log"]
    assert "resuming from the last checkpoint" in messages, messages
    assert_same(stack.tensors(job_id), reference)
    return job


def test_a_duplicate_delivery_is_dropped(stack, reference):
    job_id = stack.submit()
    stack.mid_distillation(job_id)
    broker = Broker(stack.settings)
    try:
        broker.enqueue_distill(job_id)  # while its runner is alive
        job = stack.finished(job_id)
        broker.enqueue_distill(job_id)  # and once it has succeeded
    finally:
        broker.close()
    time.sleep(2)
    assert stack.job(job_id)["attempts"] == job["attempts"] == 1
    assert stack.job(job_id)["status"] == "succeeded"
    assert_same(stack.tensors(job_id), reference)
    # the worker's log records carry the job id (JSON lines)
    line = f'"logger": "td3.worker", "message": "job {job_id}: attempt 1", "job_id": "{job_id}"'
    assert line in stack.served.log(tail=0)


def test_sigkill_of_the_job_process(stack, reference):
    _killed_and_resumed(stack, reference, lambda job: os.kill(job.worker_pid, signal.SIGKILL))


def test_sigkill_of_the_worker_main_process(stack, reference):
    def kill_parent(job: Job) -> None:
        [main] = stack.served.workers()
        assert job.worker_pid != main  # the job runs in a child of the worker
        os.kill(main, signal.SIGKILL)

    _killed_and_resumed(stack, reference, kill_parent)
    assert "restarting in" in stack.served.log(tail=0)


def test_sigkill_of_td3_serve(stack, reference):
    def kill_serve(job: Job) -> None:
        workers = stack.served.workers()
        # Frozen first, so the tiny job cannot finish in the moment its worker takes to
        # notice that serve is gone (a stopped process still dies of SIGKILL).
        os.kill(job.worker_pid, signal.SIGSTOP)
        os.kill(stack.served.pid, signal.SIGKILL)
        stack.served.proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in workers), 20, "its worker to stop")
        # The pool child dies with its group; a loaded machine may take a moment to reap it.
        wait_for(lambda: not alive(job.worker_pid), 20, "the job's process to stop")
        stack.restart()

    _killed_and_resumed(stack, reference, kill_serve)


def test_redis_restarted_mid_job(stack, reference):
    job_id = stack.submit()
    stack.mid_distillation(job_id)
    stack.redis.stop()
    try:
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
        refused = stack.http.post(
            "/v1/jobs", json={"dataset_id": stack.dataset, "config": FAULT_CONFIG}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "broker_unavailable"
        assert stack.http.get(f"/v1/jobs/{job_id}").status_code == 200
    finally:
        stack.redis.start()
    stack.finished(job_id)
    assert_same(stack.tensors(job_id), reference)
    after = stack.submit()  # the worker reconnected
    stack.finished(after)
    assert_same(stack.tensors(after), reference)


def test_postgres_restarted_mid_job(tmp_path, redis_server, synthetic_csv, reference):
    postgres = PrivatePostgres()
    postgres.start()
    stack = None
    try:
        stack = Stack(tmp_path / "home", postgres.url, redis_server, synthetic_csv)
        job_id = stack.submit()
        stack.mid_distillation(job_id)
        postgres.stop()
        for path in ("/v1/jobs", f"/v1/jobs/{job_id}", "/v1/datasets"):
            down = stack.http.get(path)
            assert down.status_code == 503, (path, down.text)
            assert down.json()["error"]["code"] == "database_unavailable"
        assert stack.http.get("/readyz").status_code == 503
        time.sleep(2)  # the job's runner meets the outage too
        postgres.start()
        stack.finished(job_id)
        assert_same(stack.tensors(job_id), reference)
    finally:
        if stack is not None:
            stack.close()
        postgres.remove()


def test_a_sigkilled_production_worker_is_swept_back(
    tmp_path, redis_server, synthetic_csv, reference
):
    """Workers as compose runs them (no td3 serve): one dies with its whole container
    (SIGKILL of its process group) mid-job, its replacement starts; the job's message
    sits unacknowledged in Redis until the visibility timeout (48 h), so only the
    replacement's orphan sweep can bring the job back, within seconds here."""
    with private_database() as url:
        stack = Stack(
            tmp_path / "home",
            url,
            redis_server,
            synthetic_csv,
            args=("--no-worker",),
        )
        env = {**stack.env, "OMP_NUM_THREADS": "1"}
        workers = []
        try:
            workers.append(start_worker(stack.settings, env=env, stdout=subprocess.DEVNULL))
            job_id = stack.submit()
            stack.mid_distillation(job_id)
            os.killpg(workers[0].pid, signal.SIGKILL)
            workers[0].wait(10)
            workers.append(start_worker(stack.settings, env=env, stdout=subprocess.DEVNULL))
            started = time.monotonic()
            job = stack.finished(job_id)
            assert job["attempts"] == 2 and time.monotonic() - started < 60
            events = stack.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()
            messages = [e["data"].get("message", "") for e in events["items"]]
            assert "re-enqueued: no live worker held it" in messages
            assert_same(stack.tensors(job_id), reference)
        finally:
            for worker in workers:
                with suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
            stack.close()
