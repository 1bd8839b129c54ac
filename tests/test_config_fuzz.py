"""Property-based fuzzing of job configs (hypothesis): whatever a client sends as
`config`, the API answers 202 (or 429 over a quota) or 422 with the error envelope,
never a 500, and every accepted config has a finite compute estimate."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers_service import TINY_CONFIG
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api import migrate
from api.db import Database
from api.errors import APIError
from api.main import create_app
from api.schemas import DISTILL_FIELDS, JOB_FIELDS, build_job_config
from api.services import auth
from api.settings import Settings
from td3core.cost import estimate_compute

CSV = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 12},{1000 + k}\n" for u in range(15) for k in range(8)
)
EXAMPLES = 300
NAMES = sorted({*DISTILL_FIELDS, *JOB_FIELDS, "bogus", "", "users "})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["sasrec", "summary", "inner", "step", "func", "1e3", "NaN"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["max_steps", "lr", "hidden", "x"]), inner, max_size=3),
    ),
    max_leaves=8,
)
plausible = st.one_of(st.integers(min_value=1, max_value=40), st.floats(1e-4, 1.0))
configs = st.one_of(
    # a valid config with a few settings moved within plausible ranges
    st.builds(
        lambda changes: {**TINY_CONFIG, **changes},
        st.dictionaries(st.sampled_from(sorted(DISTILL_FIELDS)), plausible, max_size=3),
    ),
    # near a valid config: a few fields changed or removed
    st.builds(
        lambda changes, drop: {k: v for k, v in {**TINY_CONFIG, **changes}.items() if k != drop},
        st.dictionaries(st.sampled_from(NAMES), values, max_size=4),
        st.sampled_from([None, "users", "length", "window"]),
    ),
    # anything at all
    st.dictionaries(st.sampled_from(NAMES), values, max_size=8),
)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    s = Settings(home=home, readiness_workers=0, tenant_max_active_jobs=0)
    migrate.upgrade(s)
    app = create_app(s)
    app.state.broker.enqueue_distill = lambda _job_id: None
    headers = {"Authorization": f"Bearer {auth.create_key(Database(s.database_url), 'f')[1]}"}
    with TestClient(app) as client:
        r = client.post("/v1/datasets", params={"filename": "x.csv"}, content=CSV, headers=headers)
        assert r.status_code == 201, r.text
        yield client, headers, r.json()["id"]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=configs)
def test_any_config_validates_or_answers_422(api, config: dict[str, Any]):
    client, headers, dataset_id = api
    # NaN and Infinity go over the wire as Python's json writes them (not strict JSON)
    body = json.dumps({"dataset_id": dataset_id, "config": config})
    r = client.post(
        "/v1/jobs", content=body, headers={**headers, "content-type": "application/json"}
    )
    assert r.status_code in (202, 422, 429), (config, r.status_code, r.text)
    event(f"answered {r.status_code}")
    if r.status_code != 202:
        error = r.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        return
    accepted = build_job_config(config)
    assert math.isfinite(estimate_compute(accepted, items=12, interactions=120))


@settings(max_examples=EXAMPLES, deadline=None)
@given(config=configs)
def test_the_library_validator_agrees(config: dict[str, Any]):
    """`build_job_config` (what the CLI and the API share) only ever raises a 422."""
    try:
        built = build_job_config(config)
    except APIError as exc:
        assert exc.status == 422 and exc.code in ("invalid_config", "validation_error")
    else:
        assert built.distill.users <= 10_000 and built.distill.length <= 1024
