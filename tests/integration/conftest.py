"""Real Postgres + Redis + a real Celery worker process, isolated per test session:
a fresh database `td3_test_<random>` (dropped afterwards), a Redis DB number and
queue names of our own. Locally, missing servers skip; with `CI` set they fail."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers_service import auth_headers, require_or_skip

from api import migrate
from api.db import Database
from api.main import create_app
from api.settings import Settings
from td3.serve import start_worker, stop_worker

PG_HOST = os.environ.get("TD3_TEST_PG_HOST", "127.0.0.1:5432")
REDIS_URL = os.environ.get("TD3_TEST_REDIS", "redis://127.0.0.1:6379")


def _admin_url() -> str | None:
    import psycopg

    for user in ("postgres", "root"):
        url = f"postgresql://{user}@{PG_HOST}/test"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.Error:
            continue
    return None


@contextmanager
def private_database() -> Iterator[str]:
    """A fresh database on the test PostgreSQL (its SQLAlchemy URL), dropped afterwards."""
    admin = _admin_url()
    require_or_skip(admin is not None, f"no PostgreSQL at {PG_HOST} (database 'test')")
    assert admin is not None
    import psycopg

    name = f"td3_test_{secrets.token_hex(5)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user_host = admin.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{user_host}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url():
    with private_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        ok = True
    except redis.RedisError:
        ok = False
    require_or_skip(ok, f"no Redis at {REDIS_URL}")
    db = 1 + secrets.randbelow(15)
    return f"{REDIS_URL}/{db}"


@pytest.fixture(scope="session")
def settings(pg_url, redis_url, tmp_path_factory) -> Settings:
    tag = secrets.token_hex(4)
    s = Settings(
        home=tmp_path_factory.mktemp("td3home"),
        database_url=pg_url,
        broker_url=redis_url,
        gpu_queue=f"td3test-gpu-{tag}",
        default_queue=f"td3test-default-{tag}",
        max_upload_bytes=64 * 1024,
        checkpoint_every=1,
        progress_interval=0.0,
        max_attempts=3,
        device="cpu",
        # this session's database holds jobs with no queue message on purpose (the idle
        # client's): a fair scheduler would start them; tests/integration/test_faults.py
        # checks fairness and readiness with their own database and workers
        fair_scheduling=False,
        readiness_workers=0,
    )
    migrate.upgrade(s)
    yield s
    import redis

    r = redis.Redis.from_url(redis_url)
    for q in (s.gpu_queue, s.default_queue):
        r.delete(q)


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    """A real Celery worker process (prefork, 2 children) on the test queues."""
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    with log.open("wb") as out:
        proc = start_worker(
            settings,
            concurrency=2,
            env={"OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    time.sleep(0.5)
    assert proc.poll() is None, log.read_text()
    yield proc
    stop_worker(proc, timeout=10)
    print(log.read_text()[-5000:])


@pytest.fixture(scope="session")
def db(settings) -> Database:
    return Database(settings.database_url)


@pytest.fixture(scope="session")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def idle_client(settings):
    """The same database, but jobs go to a queue no worker reads: they stay queued."""
    idle = settings.model_copy(update={"gpu_queue": f"{settings.gpu_queue}-idle"})
    with TestClient(create_app(idle)) as c:
        yield c


@pytest.fixture(scope="session")
def auth(db) -> dict[str, str]:
    return auth_headers(db, "acme")


@pytest.fixture(scope="session")
def other_auth(db) -> dict[str, str]:
    return auth_headers(db, "other")


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> bytes:
    from td3core.data.synthetic import generate_interactions, write_interactions_csv

    path = tmp_path_factory.mktemp("data") / "synthetic.csv"
    write_interactions_csv(generate_interactions(60, 40, 12, 0), path)
    return path.read_bytes()


@pytest.fixture(scope="session")
def dataset(client, auth, synthetic_csv) -> dict:
    r = client.post(
        "/v1/datasets",
        params={"filename": "synthetic.csv", "name": "synthetic"},
        content=synthetic_csv,
        headers=auth,
    )
    assert r.status_code == 201, r.text
    return r.json()
