"""`td3 serve` supervises its workers (embedded mode: SQLite + the filesystem broker,
real worker processes): restarts a killed worker, stops every worker on SIGTERM,
refuses a second serve on the same home, keeps $TD3_HOME private, and a worker whose
serve was killed stops itself. /readyz needs a live worker."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from helpers_serve import ROOT, Served, alive, wait_for

from api import migrate
from api.db import Database
from api.lifecycle import JobStatus
from api.models import Job, Tenant, new_id, utcnow
from api.services import job_runs, workers
from api.settings import Settings
from td3 import serve
from worker.celery_app import Housekeeper

pytestmark = pytest.mark.integration  # real processes (no Postgres or Redis needed)

# heartbeats and leases short enough for a test to see them
FAST = {"TD3_HEARTBEAT_INTERVAL": "0.5", "TD3_LEASE_SECONDS": "3", "TD3_SWEEP_INTERVAL": "1"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_restarts_a_killed_worker_and_stops_them_all_on_sigterm(tmp_path):
    home = tmp_path / "home"
    with Served(home, FAST) as served:
        served.wait_ready()
        assert _mode(home) == 0o700
        for name in ("td3.db", "serve.lock"):
            assert _mode(home / name) == 0o600, name
        assert _mode(home / "broker") == 0o700 and _mode(home / "broker" / "queue") == 0o700

        second = subprocess.run(
            [sys.executable, "-m", "td3", "serve", "--port", "0"],
            env=served.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"another `td3 serve` (pid {served.pid})" in second.stderr

        [first] = served.workers()
        os.kill(first, signal.SIGKILL)
        [second_worker] = served.wait(
            lambda: [p for p in served.workers() if p != first], 30, "a new worker"
        )
        assert not Path(f"/proc/{first}").exists(), "the dead worker was not reaped"
        served.wait_ready()
        assert "restarting in" in served.log(tail=0)

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(40) == 0
        assert not alive(second_worker), "td3 serve left its worker behind"


def test_a_worker_outlives_no_killed_serve_and_the_home_can_be_served_again(tmp_path):
    home = tmp_path / "home"
    with Served(home, FAST) as served:
        served.wait_ready()
        workers = served.workers()
        os.kill(served.pid, signal.SIGKILL)
        served.proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in workers), 20, "the orphaned worker to stop")
    with Served(home, FAST) as again:
        again.wait_ready()
        assert len(again.workers()) == 1


def test_readyz_is_503_without_a_live_worker(tmp_path):
    with Served(tmp_path / "home", FAST, args=("--no-worker",)) as served:
        served.wait(lambda: served.readyz() is not None, 60, "the API")
        body = httpx.get(f"{served.url}/readyz", timeout=5).json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
        assert body["checks"]["workers"].startswith("error: RuntimeError: 0 live worker(s)")


def test_one_gpu_per_worker_without_loading_torch(monkeypatch):
    assert serve.gpu_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert serve.gpu_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert [serve._gpu_env(["2", "3"], i) for i in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "2"},
        {"CUDA_VISIBLE_DEVICES": "3"},
        {"CUDA_VISIBLE_DEVICES": "2"},
    ]
    assert serve._gpu_env([], 0) == {}
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: no GPU
    assert serve.gpu_devices({}) == []
    probe = "import sys, td3.serve, td3.service_commands; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr


def _running_job(db: Database, *, worker: str, pid: int, lease_age: float) -> str:
    job_id = new_id("job")
    beat = utcnow() - timedelta(seconds=lease_age)
    with db.transaction() as session:
        tenant = Tenant(id=new_id("ten"), name=new_id("t"), created_at=utcnow())
        session.add(tenant)
        session.flush()
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant.id,
                status=JobStatus.RUNNING,
                config={},
                attempts=1,
                cancel_requested=False,
                worker=worker,
                worker_pid=pid,
                created_at=beat,
                updated_at=beat,
                enqueued_at=beat - timedelta(seconds=1),
            )
        )
    return job_id


def test_the_sweep_requeues_a_lost_runner_once_and_the_housekeeper_beats(tmp_path):
    """A runner elsewhere whose lease ran out is requeued by the sweep, once (its message
    then waits for a free worker); a live lease is left alone; a worker's housekeeping
    thread writes its heartbeat row and sweeps on its own."""
    settings = Settings(home=tmp_path, lease_seconds=5, heartbeat_interval=0.1, sweep_interval=0.1)
    migrate.upgrade(settings)
    db = Database(settings.database_url)
    lost = _running_job(db, worker="td3-1@elsewhere", pid=1, lease_age=60)
    live = _running_job(db, worker="td3-2@elsewhere", pid=1, lease_age=1)
    here = _running_job(db, worker=f"td3-3@{socket.gethostname()}", pid=os.getpid(), lease_age=1)

    sent: list[str] = []
    assert job_runs.requeue_orphans(db, sent.append, lease_seconds=5, queued=False) == [lost]
    assert job_runs.requeue_orphans(db, sent.append, lease_seconds=5, queued=False) == []
    assert sent == [lost] and live not in sent and here not in sent
    assert job_runs.heartbeat(db, here, pid=os.getpid())
    assert not job_runs.heartbeat(db, here, pid=os.getpid() + 1)  # not its runner

    lost_again = _running_job(db, worker="td3-4@elsewhere", pid=1, lease_age=60)
    keeper = Housekeeper(settings, "td3-test@here", supervisor=None)
    keeper.start()
    try:
        deadline = time.monotonic() + 20
        while workers.live_count(db, lease_seconds=5) < 1 or not list(
            (tmp_path / "broker" / "queue").iterdir()
        ):
            assert time.monotonic() < deadline, "no heartbeat or no sweep"
            time.sleep(0.1)
    finally:
        keeper.stop()
    assert workers.live_count(db, lease_seconds=5) == 0  # a stopped worker deregisters
    workers.beat(db, "td3-old@gone", host="gone", pid=1)
    assert workers.prune(db, older_than=3600) == 0
    assert workers.prune(db, older_than=-1) == 1  # silent for longer than that: forgotten
    with db.session() as session:
        assert (
            session.get_one(Job, lost_again).enqueued_at
            > session.get_one(Job, lost_again).updated_at
        )


def test_the_sweep_sends_the_webhooks_of_jobs_it_did_not_see_end(tmp_path):
    """A job that ended without its task sending the webhook (failed by the sweep as
    worker_lost, or a task that died after the final status) gets it from the next sweep,
    once."""
    settings = Settings(home=tmp_path, lease_seconds=5)
    migrate.upgrade(settings)
    db = Database(settings.database_url)
    ended = _running_job(db, worker="td3-1@elsewhere", pid=1, lease_age=1)
    with db.transaction() as session:
        job = session.get_one(Job, ended)
        job.status, job.webhook_url = JobStatus.FAILED, "https://hooks.example/td3"
    keeper = Housekeeper(settings, "td3-test@here", supervisor=None)
    queue = tmp_path / "broker" / "queue"
    keeper.sweep()
    with db.session() as session:
        assert session.get_one(Job, ended).webhook_status == "queued"
    sent = list(queue.iterdir())
    assert len(sent) == 1 and ended.encode() in sent[0].read_bytes()
    keeper.sweep()
    assert len(list(queue.iterdir())) == 1  # not twice
