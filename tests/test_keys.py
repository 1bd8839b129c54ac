"""API keys: scopes (read-only keys get 403 on writes; another tenant's ids stay 404),
expiry and revocation (401), the admin commands that manage them, keys refused in the
URL and blanked out of every log line."""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api import migrate
from api.db import Database
from api.logs import ContextFilter, JsonFormatter, bind, redact
from api.main import create_app
from api.models import utcnow
from api.services import auth
from api.settings import Settings
from td3.cli import main


@pytest.fixture
def env(tmp_path):
    settings = Settings(home=tmp_path, readiness_workers=0)
    migrate.upgrade(settings)
    app = create_app(settings)
    app.state.broker.enqueue_distill = lambda _job_id: None
    with TestClient(app) as client:
        yield client, Database(settings.database_url)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_read_only_keys_read_but_get_403_on_writes(env):
    client, db = env
    _, writer = auth.create_key(db, "acme")
    _, reader = auth.create_key(db, "acme", scope="read-only")
    _, stranger = auth.create_key(db, "other", scope="read-only")
    upload = client.post(
        "/v1/datasets",
        params={"filename": "x.csv"},
        content=b"user_id,item_id,timestamp\n1,2,3\n1,3,4\n",
        headers=_bearer(writer),
    )
    assert upload.status_code in (201, 422), upload.text  # the scope let it through
    assert client.get("/v1/datasets", headers=_bearer(reader)).status_code == 200
    for method, path in (
        ("POST", "/v1/jobs"),
        ("POST", "/v1/datasets"),
        ("DELETE", "/v1/datasets/ds_x"),
        ("POST", "/v1/jobs/job_x/cancel"),
    ):
        r = client.request(method, path, headers=_bearer(reader), json={})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"] == {"code": "forbidden", "message": "this API key is read-only"}
    assert client.get("/v1/jobs/job_x", headers=_bearer(stranger)).status_code == 404


def test_expired_and_revoked_keys_are_refused(env):
    client, db = env
    _, soon = auth.create_key(db, "acme", expires_at=utcnow() + timedelta(hours=1))
    _, gone = auth.create_key(db, "acme", expires_at=utcnow() - timedelta(seconds=1))
    _, revoked = auth.create_key(db, "acme")
    assert client.get("/v1/jobs", headers=_bearer(soon)).status_code == 200
    assert client.get("/v1/jobs", headers=_bearer(gone)).status_code == 401
    info = auth.revoke_key(db, revoked[:10])  # by its prefix
    assert info.state(utcnow()) == "revoked"
    r = client.get("/v1/jobs", headers=_bearer(revoked))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    auth.expire_key(db, info.id, utcnow() - timedelta(seconds=1))
    assert auth.revoke_key(db, info.id).revoked_at == info.revoked_at  # the first one stays
    with pytest.raises(LookupError, match="no key"):
        auth.revoke_key(db, "key_nope")
    with pytest.raises(ValueError, match="scope"):
        auth.create_key(db, "acme", scope="admin")  # type: ignore[arg-type]


def test_a_key_in_the_url_is_refused_and_never_logged(env, caplog):
    client, db = env
    _, key = auth.create_key(db, "acme")
    for params in ({"api_key": key}, {"cursor": key}, {"token": "x"}):
        r = client.get("/v1/jobs", params=params, headers=_bearer(key))
        assert r.status_code == 401, params
        assert "Authorization" in r.json()["error"]["message"]

    # what uvicorn's access log passes: the path with its query string as an argument
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/v1/jobs?api_key={key}&limit=2&x={key}", "1.1", 401),
        None,
    )
    ContextFilter().filter(record)
    line = JsonFormatter().format(record)
    assert key not in line and key[4:] not in line
    assert "api_key=***" in line and "limit=2" in line
    assert redact(f"Bearer {key}") == "Bearer td3_***"


def test_log_lines_carry_request_job_and_tenant_ids(env):
    client, db = env
    tenant, key = auth.create_key(db, "acme")
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(JsonFormatter().format(record))

    handler = Capture()
    handler.addFilter(ContextFilter())
    logger, access = logging.getLogger("td3.jobs"), logging.getLogger("td3.access")
    logger.addHandler(handler)
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with bind(job_id="job_1"):
            logger.warning("running")
        r = client.get("/v1/jobs/job_x", headers={**_bearer(key), "X-Request-ID": "req-42"})
        assert r.headers["x-request-id"] == "req-42"
        r = client.get("/v1/jobs", headers={**_bearer(key), "X-Request-ID": "bad id\n"})
        assert r.headers["x-request-id"] != "bad id\n" and len(r.headers["x-request-id"]) == 16
    finally:
        logger.removeHandler(handler)
        access.removeHandler(handler)
    assert '"job_id": "job_1"' in seen[0] and '"message": "running"' in seen[0]
    request = json.loads(seen[1])
    assert request["message"].startswith("GET /v1/jobs/job_x 404 ")
    assert request["request_id"] == "req-42" and request["tenant_id"] == tenant.id


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TD3_HOME", str(tmp_path / "home"))
    for name in ("TD3_DATABASE_URL", "TD3_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    umask = os.umask(0o022)  # the commands make it private; give the test's back after
    yield tmp_path / "home"
    os.umask(umask)


def test_admin_commands_create_list_expire_and_revoke_keys(cli_home, capsys):
    assert main(["admin", "create-key", "--tenant", "t1", "--scope", "read-only"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("td3_")
    assert main(["admin", "create-key", "--tenant", "t1", "--expires-in", "90d"]) == 0
    capsys.readouterr()
    assert os.stat(cli_home).st_mode & 0o777 == 0o700
    assert os.stat(cli_home / "td3.db").st_mode & 0o777 == 0o600

    assert main(["admin", "list-keys", "--tenant", "t1"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("t1", "read-only", "active"),
        ("t1", "read-write", "active"),
    ]
    assert key not in str(rows) and rows[1][6] != "-"

    assert main(["admin", "expire-key", key[:10]]) == 0
    assert "expired" in capsys.readouterr().out
    assert main(["admin", "revoke-key", rows[1][0]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["admin", "revoke-key", "key_nope"]) == 2
    assert "no key" in capsys.readouterr().err
    assert main(["admin", "list-keys"]) == 0
    states = [line.split("\t")[4] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert states == ["expired", "revoked"]
    with pytest.raises(SystemExit):
        main(["admin", "create-key", "--tenant", "t1", "--expires-in", "soon"])
