"""Fast service tests: no Postgres, Redis or worker (SQLite + a stub queue)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers_service import TINY_CONFIG

from api import migrate
from api.db import Database
from api.main import create_app
from api.pagination import encode_cursor
from api.schemas import build_job_config
from api.services.auth import create_key, hash_key
from api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

CSV = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 12},{1000 + k}\n" for u in range(15) for k in range(8)
)


def test_api_does_not_import_torch():
    code = (
        "import sys, api.main, td3.service_commands, worker.celery_app, worker.tasks\n"
        "api.main.create_app()\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "assert 'td3core.data.samples' not in sys.modules\n"
    )
    env = {"TD3_HOME": "/nonexistent-td3-home", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr


def test_settings_default_to_embedded(monkeypatch, tmp_path):
    monkeypatch.setenv("TD3_HOME", str(tmp_path))
    monkeypatch.delenv("TD3_DATABASE_URL", raising=False)
    monkeypatch.delenv("TD3_BROKER_URL", raising=False)
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'td3.db'}"
    assert s.broker_url == "filesystem://" and s.broker_is_filesystem


def test_child_env_carries_every_setting(monkeypatch, tmp_path):
    """A child process started with `child_env()` sees exactly these settings."""
    settings = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://u@db/x",
        broker_url="redis://broker:6379/2",
        max_attempts=5,
        lease_seconds=12.5,
        device="cpu",
        gpu_queue="gpu-7",
    )
    env = settings.child_env()
    assert set(env) == {f"TD3_{name.upper()}" for name in Settings.model_fields}
    assert all(isinstance(v, str) for v in env.values())
    for name in list(os.environ):
        if name.startswith("TD3_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_broker_transport_options_follow_the_broker_url(tmp_path):
    from api.broker import transport_options

    embedded = Settings(home=tmp_path, broker_url="", polling_interval=0.5)
    options = transport_options(embedded)
    assert (
        options["data_folder_in"]
        == options["data_folder_out"]
        == str(tmp_path / "broker" / "queue")
    )
    assert options["polling_interval"] == 0.5 and options["store_processed"] is False
    redis = Settings(home=tmp_path, broker_url="redis://h:6379/0", visibility_timeout=3600)
    assert transport_options(redis) == {"visibility_timeout": 3600}
    assert transport_options(Settings(home=tmp_path, broker_url="amqp://h//")) == {}


def test_the_worker_app_shares_the_api_broker_config(tmp_path):
    from api.broker import DISTILL_TASK, celery_config
    from worker.celery_app import make_celery
    from worker.tasks import distill

    settings = Settings(home=tmp_path, broker_url="redis://h:6379/3", gpu_queue="g1")
    conf = make_celery(settings).conf
    for key, value in celery_config(settings).items():
        assert conf[key] == value, key
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert distill.name == DISTILL_TASK


def test_the_producer_enqueues_by_task_name_on_the_gpu_queue(tmp_path):
    """Embedded broker: the message lands in the folder the worker reads, addressed
    to the distillation task on the GPU queue."""
    import base64
    import json

    from api.broker import DISTILL_TASK, Broker

    settings = Settings(home=tmp_path, gpu_queue="gpu-x")
    broker = Broker(settings)
    with pytest.raises(RuntimeError, match="broker folder"):
        broker.ping()
    settings.ensure_dirs()
    broker.ping()
    try:
        broker.enqueue_distill("job_1")
    finally:
        broker.close()
    (message,) = (tmp_path / "broker" / "queue").iterdir()
    body = json.loads(message.read_text())
    assert body["headers"]["task"] == DISTILL_TASK
    assert body["properties"]["delivery_info"]["routing_key"] == "gpu-x"
    assert json.loads(base64.b64decode(body["body"]))[0] == ["job_1"]


def test_flat_config_maps_to_job_config():
    cfg = build_job_config(TINY_CONFIG)
    assert cfg.distill.users == 4 and cfg.distill.window == 2
    assert cfg.teacher.max_steps == 30 and cfg.evaluations == ["summary"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"window": 8}, "window (8) must not exceed inner_steps (4)"),
        ({"users": None}, "config.users"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_flat_config_errors(change, needle):
    from api.errors import APIError

    body = {**TINY_CONFIG, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(APIError) as exc:
        build_job_config(body)
    assert exc.value.status == 422 and needle in exc.value.message


@pytest.fixture
def app_env(tmp_path):
    settings = Settings(home=tmp_path, max_upload_bytes=20_000)
    migrate.upgrade(settings)
    app = create_app(settings)
    sent: list[str] = []
    app.state.broker.enqueue_distill = sent.append
    db = Database(settings.database_url)
    _, key = create_key(db, "acme")
    _, other = create_key(db, "other")
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other}"}, sent


def test_migrations_create_schema_on_sqlite(tmp_path):
    from sqlalchemy import inspect

    settings = Settings(home=tmp_path)
    migrate.upgrade(settings)
    names = set(inspect(Database(settings.database_url).engine).get_table_names())
    assert {
        "tenants",
        "api_keys",
        "datasets",
        "jobs",
        "job_events",
        "checkpoints",
        "artifacts",
        "reports",
        "alembic_version",
    } <= names
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(
        migrate.alembic_config(settings.database_url)
    ).get_current_head()
    assert head is not None and migrate.current_revision(settings.database_url) == head


def test_keys_are_stored_hashed(tmp_path):
    from sqlalchemy import select

    from api.models import ApiKey

    settings = Settings(home=tmp_path)
    migrate.upgrade(settings)
    db = Database(settings.database_url)
    _, key = create_key(db, "acme")
    assert key.startswith("td3_") and len(key) > 40
    with db.session() as s:
        stored = s.scalars(select(ApiKey.key_hash)).all()
    assert stored == [hash_key(key)] and key not in stored


def test_sqlite_flow_without_worker(app_env):
    client, auth, other, sent = app_env
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/datasets").status_code == 401
    r = client.post("/v1/datasets", params={"filename": "x.csv"}, content=CSV, headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["statistics"]["users"] == 15 and ds["format"] == "csv"
    assert client.get(f"/v1/datasets/{ds['id']}", headers=other).status_code == 404

    body = {"dataset_id": ds["id"], "config": TINY_CONFIG}
    r = client.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and sent == [job["id"]]
    r2 = client.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": "k1"})
    assert r2.status_code == 200 and r2.json()["id"] == job["id"] and len(sent) == 1
    r3 = client.post(
        "/v1/jobs",
        json={**body, "config": {**TINY_CONFIG, "seed": 3}},
        headers={**auth, "Idempotency-Key": "k1"},
    )
    assert r3.status_code == 422 and r3.json()["error"]["code"] == "idempotency_key_reused"

    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 409
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [e["data"]["status"] for e in events["items"]] == ["queued", "cancelled"]
    newer = client.get(
        f"/v1/jobs/{job['id']}/events", params={"cursor": events["next_cursor"]}, headers=auth
    ).json()
    assert newer == {"items": [], "next_cursor": events["next_cursor"]}
    # not a cursor at all; a well-formed cursor that holds no event id
    for cursor in ("nonsense", encode_cursor("evt_1")):
        r = client.get(f"/v1/jobs/{job['id']}/events", params={"cursor": cursor}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    assert client.get(f"/v1/jobs/{job['id']}/summary", headers=auth).status_code == 409
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204


def test_openapi_lists_v1_routes(app_env):
    client = app_env[0]
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}/summary",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/report",
        "/readyz",
    ):
        assert p in paths


def test_docker_compose_is_valid_yaml():
    import yaml

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"api", "worker", "postgres", "redis"} <= set(doc["services"])
    devices = doc["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_docker_compose_config_parses():
    """`docker compose config` validates the file without an engine."""
    import shutil
    import subprocess

    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose"]
    else:
        pytest.skip("neither docker compose nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_a_job_runs_with_the_configured_torch_threads(tmp_path):
    import torch

    from worker.runner import _device

    before = torch.get_num_threads()
    try:
        assert _device(Settings(home=tmp_path, device="cpu", torch_threads=1)) == "cpu"
        assert torch.get_num_threads() == 1
        assert Settings(home=tmp_path).child_env()["TD3_TORCH_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
