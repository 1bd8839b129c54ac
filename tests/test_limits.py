"""Limits and fairness: upper bounds on every numeric job setting, the compute
estimate, per-tenant quotas (429), the JSON body limit (413), the job time limit
(failed with `timeout`), fair scheduling between tenants, and /metrics."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers_service import TINY_CONFIG
from pydantic import BaseModel
from sqlalchemy import func, select, update

from api import migrate
from api.db import Database
from api.errors import APIError
from api.lifecycle import JobStatus
from api.main import create_app
from api.models import Job, Tenant, new_id, utcnow
from api.schemas import build_job_config
from api.services import auth
from api.services.scheduling import fair_pick
from api.settings import Settings
from td3core.config import DistillConfig, JobConfig, ModelConfig, TrainConfig
from td3core.cost import UNIT, estimate_compute

CSV = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 12},{1000 + k}\n" for u in range(15) for k in range(8)
)


# --- bounds ---------------------------------------------------------------------------------


def _numeric_fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    return [
        (name, info)
        for name, info in model.model_fields.items()
        if info.annotation in (int, float, int | None, float | None)
    ]


@pytest.mark.parametrize("model", [DistillConfig, TrainConfig, ModelConfig, JobConfig])
def test_every_numeric_setting_has_an_upper_bound(model):
    for name, info in _numeric_fields(model):
        bounds = [m for m in info.metadata if hasattr(m, "le") or hasattr(m, "lt")]
        assert bounds, f"{model.__name__}.{name} has no upper bound"


@pytest.mark.parametrize(
    "change",
    [
        {"users": 100_000},
        {"length": 4096},
        {"epochs": 10_000},
        {"inner_steps": 100_000, "window": 2},
        {"temperature": 1e9},
        {"outer_lr": 1e6},
        {"real_batch": 10**9},
        {"seed": 2**63},
        {"teacher": {"max_steps": 10**8}},
        {"model": {"hidden": 10**6}},
        {"max_len": 100_000},
    ],
    ids=lambda c: next(iter(c)),
)
def test_sizes_and_run_times_past_the_bounds_are_refused(change):
    with pytest.raises(APIError) as exc:
        build_job_config({**TINY_CONFIG, **change})
    assert exc.value.status == 422 and exc.value.code == "invalid_config"
    assert next(iter(change)) in exc.value.message


def test_the_compute_estimate_follows_its_documented_formula():
    config = build_job_config(TINY_CONFIG)
    items, interactions = 40, 3000
    outer = TINY_CONFIG["epochs"] * math.ceil(interactions / config.distill.real_batch)
    distill = outer * 4 * 4 * 8 * items  # inner steps x users x length x items
    teacher = 30 * 64 * 8 * items
    evaluation = 1 * 1 * len(config.search_lrs) * 1 * 10 * 8 * 8 * items
    expected = (distill + teacher + evaluation) / UNIT
    assert estimate_compute(config, items=items, interactions=interactions) == pytest.approx(
        expected
    )
    bigger = build_job_config({**TINY_CONFIG, "epochs": 10})
    assert estimate_compute(bigger, items=items, interactions=interactions) > expected


def test_the_cli_prints_the_estimate(capsys):
    import json

    from td3.cli import main

    config = json.dumps(TINY_CONFIG)
    assert main(["admin", "estimate", config, "--items", "40", "--interactions", "3000"]) == 0
    units = float(capsys.readouterr().out.split()[0])
    expected = estimate_compute(build_job_config(TINY_CONFIG), items=40, interactions=3000)
    assert units == pytest.approx(expected, rel=1e-5)
    bad = json.dumps({**TINY_CONFIG, "users": 10**6})
    assert main(["admin", "estimate", bad, "--items", "40", "--interactions", "3000"]) == 2
    assert "users" in capsys.readouterr().err


# --- quotas, body limit, metrics (the API on SQLite, no worker) -------------------------------


@pytest.fixture
def api(tmp_path):
    def make(**limits: Any) -> tuple[TestClient, Database, list[str]]:
        settings = Settings(home=tmp_path, readiness_workers=0, **limits)
        migrate.upgrade(settings)
        app = create_app(settings)
        sent: list[str] = []
        app.state.broker.enqueue_distill = sent.append
        return TestClient(app), Database(settings.database_url), sent

    return make


def _upload(client: TestClient, headers: dict[str, str]) -> Any:
    return client.post("/v1/datasets", params={"filename": "x.csv"}, content=CSV, headers=headers)


def _submit(client: TestClient, headers: dict[str, str], dataset_id: str, **change: Any) -> Any:
    body = {"dataset_id": dataset_id, "config": {**TINY_CONFIG, **change}}
    return client.post("/v1/jobs", json=body, headers=headers)


def _jobs(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_quotas_answer_429_and_store_nothing(api):
    client, db, _ = api(tenant_max_active_jobs=2, job_max_compute=0.5, tenant_max_compute=0.1)
    headers = {"Authorization": f"Bearer {auth.create_key(db, 'acme')[1]}"}
    with client:
        ds = _upload(client, headers).json()
        tiny = estimate_compute(build_job_config(TINY_CONFIG), items=12, interactions=120)
        assert _submit(client, headers, ds["id"]).status_code == 202
        assert _jobs(db) == 1
        with db.session() as session:
            assert session.scalar(select(Job.compute_estimate)) == pytest.approx(tiny)

        huge = _submit(client, headers, ds["id"], epochs=1000, inner_steps=5000)
        assert huge.status_code == 429 and huge.json()["error"]["code"] == "quota_exceeded"
        assert "one job may use at most 0.5" in huge.json()["error"]["message"]

        assert _submit(client, headers, ds["id"]).status_code == 202
        third = _submit(client, headers, ds["id"])
        assert third.status_code == 429 and "2 jobs queued or running" in third.text
        assert _jobs(db) == 2

        # a finished job frees its slot, but its compute stays spent
        with db.transaction() as session:
            session.execute(update(Job).values(status=JobStatus.SUCCEEDED, compute_estimate=0.09))
        spent = _submit(client, headers, ds["id"])
        assert spent.status_code == 429 and "of this tenant's 0.1 are used" in spent.text
        assert _jobs(db) == 2


def test_the_storage_quota_refuses_uploads(api):
    client, db, _ = api(tenant_max_stored_bytes=1)
    headers = {"Authorization": f"Bearer {auth.create_key(db, 'acme')[1]}"}
    other = {"Authorization": f"Bearer {auth.create_key(db, 'other')[1]}"}
    with client:
        ds = _upload(client, headers)
        assert ds.status_code == 201  # the first upload starts below the quota
        again = _upload(client, headers)
        assert again.status_code == 429 and "delete datasets" in again.json()["error"]["message"]
        job = _submit(client, headers, ds.json()["id"])
        assert job.status_code == 429
        assert _upload(client, other).status_code == 201  # quotas are per tenant


def test_json_bodies_over_the_limit_answer_413(api):
    client, db, sent = api(max_body_bytes=4096)
    headers = {"Authorization": f"Bearer {auth.create_key(db, 'acme')[1]}"}
    padded = {"dataset_id": "ds_x", "config": {**TINY_CONFIG, "pad": "x" * 5000}}
    with client:
        declared = client.post("/v1/jobs", json=padded, headers=headers)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"dataset_id": "ds_x", "config": {"pad": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}}'

        streamed = client.post(
            "/v1/jobs", content=chunks(), headers={**headers, "content-type": "application/json"}
        )
        assert streamed.status_code == 413
        # uploads have their own (larger) limit
        assert _upload(client, headers).status_code == 201
        assert _jobs(db) == 0 and sent == []


def test_metrics_report_requests_jobs_and_workers(api):
    client, db, _ = api(metrics_token="s3cret")
    headers = {"Authorization": f"Bearer {auth.create_key(db, 'acme')[1]}"}
    with client:
        ds = _upload(client, headers).json()
        job = _submit(client, headers, ds["id"]).json()
        client.get(f"/v1/jobs/{job['id']}", headers=headers)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'td3_jobs{status="queued"} 1.0' in text and "td3_queue_depth 1.0" in text
    assert "td3_live_workers 0.0" in text and "td3_outer_steps_per_second 0.0" in text
    assert (
        'td3_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0' in text
    )
    assert job["id"] not in text and "acme" not in text  # templates, no tenant data


# --- the time limit -------------------------------------------------------------------------


def test_a_job_past_its_time_limit_fails_with_timeout(api, tmp_path):
    from worker.runner import run_job_by_id

    client, db, _ = api()
    headers = {"Authorization": f"Bearer {auth.create_key(db, 'acme')[1]}"}
    with client:
        ds = _upload(client, headers).json()
        job = _submit(client, headers, ds["id"]).json()
    settings = Settings(home=tmp_path, device="cpu", job_time_limit=1e-6)
    assert run_job_by_id(job["id"], settings=settings) == "timeout"
    with db.session() as session:
        row = session.get_one(Job, job["id"])
    assert row.status == JobStatus.FAILED and row.error_code == "timeout"
    assert "time limit" in (row.error_message or "")


# --- fair scheduling ------------------------------------------------------------------------


def _tenant(db: Database, name: str) -> str:
    with db.transaction() as session:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow())
        session.add(tenant)
    return tenant.id


def _queued(db: Database, tenant_id: str, age: int) -> str:
    job_id = new_id("job")
    with db.transaction() as session:
        created = utcnow() - timedelta(seconds=1000 - age)
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant_id,
                status=JobStatus.QUEUED,
                config={},
                attempts=0,
                cancel_requested=False,
                created_at=created,
                updated_at=created,
            )
        )
    return job_id


def test_tenants_take_turns_on_a_single_worker(tmp_path):
    """One worker, tenant A's backlog of three submitted before B's one job: the queue
    hands out A1, A2, A3, B1 in that order, and fair scheduling starts A1, B1, A2, A3."""
    settings = Settings(home=tmp_path)
    migrate.upgrade(settings)
    db = Database(settings.database_url)
    a, b = _tenant(db, "a"), _tenant(db, "b")
    a1, a2, a3 = (_queued(db, a, age) for age in (1, 2, 3))
    b1 = _queued(db, b, 4)
    queue, started = [a1, a2, a3, b1], []
    while queue:
        message = queue.pop(0)
        picked = fair_pick(db, message)
        if picked != message:
            queue.append(message)  # what the runner does: the skipped job keeps a message
        with db.transaction() as session:
            job = session.get_one(Job, picked)
            if job.status != JobStatus.QUEUED:
                continue  # a duplicate: begin_attempt drops it
            job.status, job.started_at = JobStatus.RUNNING, utcnow()
        started.append(picked)
        with db.transaction() as session:  # the single worker finishes it before the next
            session.get_one(Job, picked).status = JobStatus.SUCCEEDED
    assert started == [a1, b1, a2, a3]
    assert fair_pick(db, a1) == a1  # a finished job's message is left to begin_attempt
