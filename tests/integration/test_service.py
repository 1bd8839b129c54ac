"""The service against the real Postgres, Redis and a real Celery worker process."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import time

import pytest
from helpers_service import TINY_CONFIG, auth_headers
from sqlalchemy import func, select

from api.errors import APIError
from api.lifecycle import TERMINAL, JobStatus
from api.models import Checkpoint, Dataset, Job, JobEvent
from api.services import job_runs
from api.services import jobs as jobs_service

pytestmark = pytest.mark.integration


def _count(db, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def _submit(client, auth, dataset_id, config=None, key=None):
    headers = {**auth, "Idempotency-Key": key or secrets.token_hex(8)}
    return client.post(
        "/v1/jobs",
        json={"dataset_id": dataset_id, "config": config or TINY_CONFIG},
        headers=headers,
    )


def _wait(client, auth, job_id, until, timeout=180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if until(job):
            return job
        assert job["status"] not in TERMINAL or until(job), job
        assert time.monotonic() < deadline, f"timed out waiting; last state {job}"
        time.sleep(0.2)


def _all_events(client, auth, job_id, limit=3) -> list[dict]:
    events, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job_id}/events", params=params, headers=auth).json()
        events += page["items"]
        if not page["items"]:
            return events
        cursor = page["next_cursor"]


# --- the happy path -------------------------------------------------------------------------


def test_upload_job_summary_report(client, auth, dataset, worker):
    assert dataset["statistics"]["users"] == 60 and dataset["format"] == "csv"
    assert len(dataset["sha256"]) == 64
    r = _submit(client, auth, dataset["id"])
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["config"]["distill"]["users"] == 4
    done = _wait(client, auth, job["id"], lambda j: j["status"] in TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["error"] is None
    assert done["progress"]["stage"] in ("evaluate", "distill")
    assert done["timings"]["run_seconds"] > 0 and done["metrics"]

    r = client.get(f"/v1/jobs/{job['id']}/summary", headers=auth)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert ".safetensors" in r.headers["content-disposition"]
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"]
    assert r.headers["repr-digest"].startswith("sha-256=:")
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=auth).json()
    assert report["format"] == "td3-report/1" and report["dataset"]["users"] == 60

    events = _all_events(client, auth, job["id"])
    statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert any(e["kind"] == "progress" for e in events)
    assert any(e["kind"] == "metric" for e in events)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})

    # terminal statuses never change again
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


def test_downloaded_summary_reproduces_the_reported_metrics(
    client, auth, dataset, worker, synthetic_csv, tmp_path, capsys
):
    """`td3 evaluate` on the uploaded file and the downloaded summary alone gives the
    job's reported summary row (same split, negatives, recipe and seeds)."""
    import json

    from td3.cli import main

    job = _submit(client, auth, dataset["id"]).json()
    done = _wait(client, auth, job["id"], lambda j: j["status"] in TERMINAL)
    assert done["status"] == "succeeded", done
    summary = tmp_path / "summary.safetensors"
    summary.write_bytes(client.get(f"/v1/jobs/{job['id']}/summary", headers=auth).content)
    data = tmp_path / "synthetic.csv"
    data.write_bytes(synthetic_csv)
    reported = client.get(f"/v1/jobs/{job['id']}/report", headers=auth).json()["evaluation"]

    capsys.readouterr()
    assert (
        main(["evaluate", str(data), "--summary", str(summary), "--device", "cpu", "--quiet"]) == 0
    )
    measured = json.loads(capsys.readouterr().out)["summary"]
    for key in ("uni100", "full", "valid_mrr10", "steps", "runs"):
        assert measured[key] == reported["summary"][key], key


# --- cancellation ---------------------------------------------------------------------------


def test_cancel_queued_job_at_once(idle_client, client, auth, dataset, db):
    job = _submit(idle_client, auth, dataset["id"]).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    # a late delivery of a cancelled job does nothing
    from worker.runner import run_job_by_id

    settings = client.app.state.settings
    assert run_job_by_id(job["id"], settings=settings) == "job already cancelled"
    assert client.get(f"/v1/jobs/{job['id']}/summary", headers=auth).status_code == 409


def test_cancel_running_job(client, auth, dataset, worker):
    long = {**TINY_CONFIG, "teacher": {"max_steps": 100_000, "eval_every": 1, "batch_size": 64}}
    job = _submit(client, auth, dataset["id"], long).json()
    _wait(client, auth, job["id"], lambda j: j["status"] == "running" and j["progress"])
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    done = _wait(client, auth, job["id"], lambda j: j["status"] in TERMINAL, timeout=60)
    assert done["status"] == "cancelled" and done["error"]["code"] == "cancelled"


# --- idempotency ----------------------------------------------------------------------------


def test_idempotent_create(idle_client, auth, dataset, db):
    before = _count(db, Job)
    key = secrets.token_hex(8)
    first = _submit(idle_client, auth, dataset["id"], key=key)
    assert first.status_code == 202
    same = _submit(idle_client, auth, dataset["id"], key=key)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = _submit(idle_client, auth, dataset["id"], {**TINY_CONFIG, "rank": 2}, key=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert _count(db, Job) == before + 1
    idle_client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth)


def test_idempotent_create_in_flight_is_409(idle_client, auth, dataset, db):
    """A second request while the first is between its commit and its enqueue."""
    from api.services.auth import authenticate

    tenant = authenticate(db, auth["Authorization"].split()[1])
    key = secrets.token_hex(8)
    body = {"dataset_id": dataset["id"], "config": TINY_CONFIG}
    seen: list[int] = []

    def enqueue(job_id: str) -> None:
        with pytest.raises(APIError) as exc:
            jobs_service.create(
                db,
                tenant,
                dataset_id=dataset["id"],
                config={},
                body=body,
                idempotency_key=key,
                enqueue=lambda _id: None,
            )
        seen.append(exc.value.status)

    job, created = jobs_service.create(
        db,
        tenant,
        dataset_id=dataset["id"],
        config={},
        body=body,
        idempotency_key=key,
        enqueue=enqueue,
    )
    assert created and seen == [409]
    r = _submit(idle_client, auth, dataset["id"], key=key)
    assert r.status_code == 200 and r.json()["id"] == job.id
    idle_client.post(f"/v1/jobs/{job.id}/cancel", headers=auth)


# --- pagination -----------------------------------------------------------------------------


def test_job_pagination_and_filters(idle_client, client, db, synthetic_csv):
    auth = auth_headers(db, "pager")
    ds = client.post(
        "/v1/datasets", params={"filename": "s.csv"}, content=synthetic_csv, headers=auth
    ).json()
    ids = [_submit(idle_client, auth, ds["id"]).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=auth).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    by_ds = client.get(
        "/v1/jobs", params={"dataset_id": ds["id"], "limit": 200}, headers=auth
    ).json()
    assert len(by_ds["items"]) == 5
    bad = client.get("/v1/jobs", params={"cursor": "nonsense"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
    bad = client.get("/v1/jobs", params={"status": "bogus"}, headers=auth)
    assert bad.status_code == 422
    listed = client.get("/v1/datasets", params={"limit": 1}, headers=auth).json()
    assert [d["id"] for d in listed["items"]] == [ds["id"]] and listed["next_cursor"] is None
    for job_id in ids[1:]:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)


# --- auth and tenants -----------------------------------------------------------------------


def test_auth_and_tenant_isolation(client, idle_client, auth, other_auth, dataset):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    for headers in ({}, {"Authorization": "Bearer td3_wrong"}, {"Authorization": "Basic abc"}):
        r = client.get("/v1/datasets", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.post("/v1/jobs", json={}, headers={}).status_code == 401
    job = _submit(idle_client, auth, dataset["id"]).json()
    for path in (
        f"/v1/datasets/{dataset['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/summary",
        f"/v1/jobs/{job['id']}/report",
    ):
        assert client.get(path, headers=other_auth).status_code == 404, path
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other_auth).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=other_auth).status_code == 404
    assert _submit(client, other_auth, dataset["id"]).status_code == 404
    assert client.get("/v1/datasets", headers=other_auth).json()["items"] == []
    assert client.get("/v1/jobs", headers=other_auth).json()["items"] == []
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_readyz_reports_a_dead_broker_and_database(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    broken = settings.model_copy(
        update={
            "broker_url": "redis://127.0.0.1:1/0",
            "database_url": "postgresql+psycopg://x@127.0.0.1:1/x",
        }
    )
    with TestClient(create_app(broken)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"] != "ok" and r.json()["checks"]["database"] != "ok"


# --- validation -----------------------------------------------------------------------------

BIG = b"user_id,item_id,timestamp\n" + b"1,2,3\n" * 20_000


@pytest.mark.parametrize(
    ("params", "body", "status", "needle"),
    [
        ({}, b"", 422, "empty"),
        ({}, b"user,item_id,timestamp\n1,2,3\n", 422, "user_id"),
        ({}, b"user_id,item_id,timestamp\n1,2,3\n1,3,yesterday\n", 422, ":3"),
        ({}, BIG, 413, "limit"),
        ({"format": "xlsx"}, b"user_id,item_id,timestamp\n1,2,3\n", 422, "format"),
        ({"min_user": -1}, b"user_id,item_id,timestamp\n1,2,3\n", 422, "min_user"),
    ],
    ids=[
        "empty",
        "bad-column",
        "non-numeric-timestamp",
        "too-large",
        "unknown-format",
        "negative-option",
    ],
)
def test_invalid_uploads_leave_nothing(client, auth, db, params, body, status, needle):
    before = _count(db, Dataset)
    r = client.post(
        "/v1/datasets", params={"filename": "bad.csv", **params}, content=body, headers=auth
    )
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert needle in message, message
    assert "/tmp" not in message
    assert _count(db, Dataset) == before


def test_upload_too_large_while_streaming(client, auth, db):
    """No Content-Length: the limit is enforced on the bytes as they arrive."""
    before = _count(db, Dataset)

    def chunks():
        for _ in range(100):
            yield b"1,2,3\n" * 200

    r = client.post("/v1/datasets", params={"filename": "big.csv"}, content=chunks(), headers=auth)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert _count(db, Dataset) == before


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"window": 8}, "window (8) must not exceed inner_steps (4)"),
        ({"users": None}, "users"),
        ({"bogus": 1}, "bogus"),
        ({"epochs": -1}, "epochs"),
        ({"rank": 0}, "rank"),
        ({"teacher": {"max_steps": -5}}, "max_steps"),
    ],
    ids=[
        "window-gt-inner",
        "missing-users",
        "unknown-field",
        "negative-epochs",
        "zero-rank",
        "negative-nested",
    ],
)
def test_invalid_configs_leave_nothing(client, auth, dataset, db, change, needle):
    before = _count(db, Job)
    config = {k: v for k, v in {**TINY_CONFIG, **change}.items() if v is not None}
    r = _submit(client, auth, dataset["id"], config)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"], r.json()
    assert _count(db, Job) == before


def test_unknown_dataset_is_404(client, auth):
    assert _submit(client, auth, "ds_nope").status_code == 404


# --- datasets in use ------------------------------------------------------------------------


def test_delete_dataset_refused_while_used(idle_client, client, auth, synthetic_csv, db):
    ds = client.post(
        "/v1/datasets", params={"filename": "d.csv"}, content=synthetic_csv, headers=auth
    ).json()
    job = _submit(idle_client, auth, ds["id"]).json()
    r = client.delete(f"/v1/datasets/{ds['id']}", headers=auth)
    assert r.status_code == 409 and job["id"] in r.json()["error"]["message"]
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["dataset_id"] is None


# --- worker loss ----------------------------------------------------------------------------


def test_killed_worker_is_redelivered_and_resumes(client, auth, dataset, db, worker):
    config = {**TINY_CONFIG, "epochs": 12, "inner_steps": 6, "window": 2}
    job = _submit(client, auth, dataset["id"], config).json()

    def distilling_with_checkpoint(j):
        if j["status"] in TERMINAL:
            return True
        with db.session() as s:
            seq = s.scalar(select(Checkpoint.sequence).where(Checkpoint.job_id == j["id"]))
        return bool(j["progress"]) and j["progress"]["stage"] == "distill" and (seq or 0) >= 2

    state = _wait(client, auth, job["id"], distilling_with_checkpoint, timeout=120)
    assert state["status"] == "running", "the job finished before it could be killed"
    with db.session() as s:
        pid = s.scalar(select(Job.worker_pid).where(Job.id == job["id"]))
    os.kill(pid, signal.SIGKILL)

    done = _wait(client, auth, job["id"], lambda j: j["status"] in TERMINAL, timeout=180)
    with db.session() as s:
        events = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.id)
        ).all()
    trace = [(e.kind, e.data) for e in events if e.kind != "progress"]
    assert done["status"] == "succeeded" and done["attempts"] == 2, (done, trace)
    messages = [e.data.get("message") for e in events if e.kind == "log"]
    assert "resuming from the last checkpoint" in messages, trace
    resumed_at = next(
        i
        for i, e in enumerate(events)
        if e.kind == "log" and e.data.get("message", "").startswith("redelivered")
    )
    after = [e for e in events[resumed_at:] if e.kind == "progress"]
    assert after and all(e.data["stage"] != "teacher" for e in after)
    assert client.get(f"/v1/jobs/{job['id']}/summary", headers=auth).status_code == 200


def test_redelivery_cap_fails_with_worker_lost(idle_client, auth, dataset, db, settings):
    job = _submit(idle_client, auth, dataset["id"]).json()
    from sqlalchemy import update

    with db.transaction() as s:
        s.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(status="running", attempts=settings.max_attempts)
        )
    start = job_runs.begin_attempt(
        db,
        job["id"],
        max_attempts=settings.max_attempts,
        worker="test",
        pid=os.getpid(),
        lease_seconds=settings.lease_seconds,
    )
    assert start == job_runs.Dropped("worker_lost")
    got = idle_client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["status"] == "failed" and got["error"]["code"] == "worker_lost"


def _as_running(db, job_id, *, worker, pid, updated_at=None):
    from sqlalchemy import update

    values = {"status": "running", "worker": worker, "worker_pid": pid}
    if updated_at is not None:
        values["updated_at"] = updated_at
    with db.transaction() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_delivery_of_a_live_job_is_dropped(idle_client, auth, dataset, db, settings):
    import socket
    from datetime import timedelta

    from api.models import utcnow

    job = _submit(idle_client, auth, dataset["id"]).json()
    here = f"td3-test@{socket.gethostname()}"

    def attempt():
        return job_runs.begin_attempt(
            db,
            job["id"],
            max_attempts=settings.max_attempts,
            worker=here,
            pid=os.getpid(),
            lease_seconds=60,
        )

    _as_running(db, job["id"], worker=here, pid=os.getpid())  # alive, on this machine
    start = attempt()
    assert isinstance(start, job_runs.Dropped) and start.reason.startswith("already running")
    _as_running(db, job["id"], worker="td3@elsewhere", pid=1, updated_at=utcnow())  # fresh lease
    assert isinstance(attempt(), job_runs.Dropped)
    with db.session() as s:
        assert s.scalar(select(Job.attempts).where(Job.id == job["id"])) == 0

    _as_running(
        db, job["id"], worker="td3@elsewhere", pid=1, updated_at=utcnow() - timedelta(seconds=120)
    )  # lease expired
    assert isinstance(attempt(), job_runs.Claimed)
    _as_running(db, job["id"], worker=here, pid=_dead_pid())  # its process is gone
    start = attempt()
    assert isinstance(start, job_runs.Claimed) and start.attempts == 2
    job_runs.finish(db, job["id"], JobStatus.CANCELLED, code="cancelled", message="test over")


def test_orphaned_job_is_requeued_and_resumes(
    idle_client, client, auth, dataset, db, settings, worker
):
    import socket

    from api.broker import Broker

    job = _submit(idle_client, auth, dataset["id"]).json()  # its message goes nowhere
    _as_running(db, job["id"], worker=f"td3-gone@{socket.gethostname()}", pid=_dead_pid())
    sent: list[str] = []
    requeued = job_runs.requeue_orphans(db, sent.append, lease_seconds=settings.lease_seconds)
    assert job["id"] in requeued and requeued == sent

    broker = Broker(settings)  # on the queue the live test worker reads
    try:
        broker.enqueue_distill(job["id"])
    finally:
        broker.close()
    done = _wait(client, auth, job["id"], lambda j: j["status"] in TERMINAL, timeout=180)
    assert done["status"] == "succeeded", done
    events = _all_events(client, auth, job["id"], limit=50)
    assert any(e["data"].get("message", "").startswith("re-enqueued") for e in events)
