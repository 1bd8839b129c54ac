"""The OpenAPI contract: readable operation ids, the error envelope declared for every
error status (FastAPI's `{"detail": [...]}` 422 gone), examples on request bodies,
typed config and report schemas; and schemathesis against the live app (SQLite, a
stub queue, a real key): no 5xx, no undocumented status, responses that conform."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers_service import TINY_CONFIG
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import migrate
from api.db import Database
from api.main import create_app
from api.services.auth import create_key
from api.settings import Settings

OPERATIONS = {
    ("post", "/v1/datasets"): "upload_dataset",
    ("get", "/v1/datasets"): "list_datasets",
    ("get", "/v1/datasets/{dataset_id}"): "get_dataset",
    ("delete", "/v1/datasets/{dataset_id}"): "delete_dataset",
    ("post", "/v1/jobs"): "create_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("get", "/v1/jobs/{job_id}/events"): "list_events",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/summary"): "download_summary",
    ("get", "/v1/jobs/{job_id}/report"): "get_report",
}
ERROR_REF = "#/components/schemas/ErrorResponse"
CSV = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 12},{1000 + k}\n" for u in range(15) for k in range(8)
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The app on SQLite with the queue replaced by lists, a key, a dataset and a job."""
    service = Settings(home=tmp_path_factory.mktemp("openapi"), max_upload_bytes=20_000)
    migrate.upgrade(service)
    app = create_app(service)
    app.state.broker.enqueue_distill = lambda job_id: None
    app.state.broker.enqueue_webhook = lambda job_id: None
    db = Database(service.database_url)
    _, key = create_key(db, "schemathesis")
    _, read_only = create_key(db, "schemathesis", scope="read-only")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        ds = client.post("/v1/datasets", params={"filename": "x.csv"}, content=CSV, headers=auth)
        job = client.post(
            "/v1/jobs", json={"dataset_id": ds.json()["id"], "config": TINY_CONFIG}, headers=auth
        )
        assert ds.status_code == 201 and job.status_code == 202, (ds.text, job.text)
        ids = {"dataset_id": ds.json()["id"], "job_id": job.json()["id"], "read_only": read_only}
        yield app, auth, client.get("/openapi.json").json(), ids


def _operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {
        (method, path): op
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if path.startswith("/v1/")
    }


def test_operation_ids_are_the_route_names(env):
    spec = env[2]
    assert {key: op["operationId"] for key, op in _operations(spec).items()} == OPERATIONS
    every_id = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(every_id) == len(set(every_id))


def test_errors_are_declared_as_the_envelope(env):
    spec = env[2]
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    for (method, path), op in _operations(spec).items():
        errors = {s: r for s, r in op["responses"].items() if s.startswith(("4", "5"))}
        assert {"401", "422", "503"} <= set(errors), (method, path)
        if "{" in path:
            assert "404" in errors, (method, path)
        if method in ("post", "delete"):  # writes: a read-only key gets 403
            assert "403" in errors, (method, path)
        for status, response in errors.items():
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref == ERROR_REF, (method, path, status)
    create = spec["paths"]["/v1/jobs"]["post"]["responses"]
    upload = spec["paths"]["/v1/datasets"]["post"]["responses"]
    assert {"404", "409", "413", "429"} <= set(create) and {"413", "415", "429"} <= set(upload)


def test_request_bodies_have_examples(env):
    for (method, path), op in _operations(env[2]).items():
        if "requestBody" not in op:
            continue
        (media,) = op["requestBody"]["content"].values()
        schema = media["schema"]
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = env[2]["components"]["schemas"][name]
        assert media.get("example") or schema.get("examples"), (method, path)


def test_config_and_report_are_typed(env):
    spec = env[2]
    schemas = spec["components"]["schemas"]
    job_out = schemas["JobOut"]["properties"]
    assert job_out["config"]["$ref"].endswith("/JobConfig")
    assert job_out["webhook"]["anyOf"][0]["$ref"].endswith("/WebhookOut")
    assert {"distill", "teacher", "learner", "evaluations"} <= set(
        schemas["JobConfig"]["properties"]
    )
    flat = schemas["FlatJobConfig"]["properties"]
    assert {"users", "length", "preset", "epochs", "teacher"} <= set(flat)
    report = spec["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]
    assert report["application/json"]["schema"]["$ref"].endswith("/Report")
    assert set(schemas["Report"]["required"]) >= {"format", "distillation", "evaluation"}
    row = schemas["EvaluationRow"]["properties"]
    assert {"runs", "uni100", "full", "interactions", "lr"} <= set(row)


# Bounded and deterministic: a few examples per operation, derandomized, no example
# database; about half a minute on 2 cores.
CONFORMANCE = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_live_responses_conform_to_the_spec(env):
    app, auth, _, ids = env
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/v1/")
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @CONFORMANCE
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=auth, checks=checks)

        conforms()
        # random ids find nothing (404): the real ones reach the success responses, and
        # a read-only key the 403 of every write
        known = {
            name: ids[name] for name in ("dataset_id", "job_id") if "{" + name in operation.path
        }
        read_only = {"Authorization": f"Bearer {ids['read_only']}"}
        for headers in (read_only, auth):
            response = operation.Case(path_parameters=known or None).call_and_validate(
                headers=headers, checks=checks
            )
            if headers is read_only and operation.method.lower() in ("post", "delete"):
                assert response.status_code == 403, (operation.path, response.text)
        tested.append((operation.method.lower(), operation.path))
    assert sorted(tested) == sorted(OPERATIONS)
