"""Health, readiness and metrics: no API key (the metrics hold no tenant data and
can be put behind their own token, `METRICS_TOKEN`)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import BrokerDep, DatabaseDep, SettingsDep
from api.errors import APIError
from api.schemas import Health
from api.services import workers

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(db: DatabaseDep, broker: BrokerDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the database and the broker answer, and (unless READINESS_WORKERS is
    0) enough workers have sent a heartbeat recently (503 otherwise)."""
    probes: dict[str, Callable[[], None]] = {"database": db.ping, "broker": broker.ping}
    if settings.readiness_workers:

        def enough_workers() -> None:
            live = workers.live_count(db, lease_seconds=settings.lease_seconds)
            if live < settings.readiness_workers:
                raise RuntimeError(
                    f"{live} live worker(s); {settings.readiness_workers} needed "
                    f"(no heartbeat in the last {settings.lease_seconds:g} s)"
                )

        probes["workers"] = enough_workers
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {}},
)
def metrics(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Prometheus metrics (requests, jobs by status, queue depth, live workers, outer
    steps per second, GPU memory). With METRICS_TOKEN set, `Authorization: Bearer
    <token>` is required."""
    if settings.metrics_token:
        expected = f"Bearer {settings.metrics_token}"
        if authorization is None or not hmac.compare_digest(
            authorization.encode(), expected.encode()
        ):
            raise APIError(
                401,
                "unauthorized",
                "metrics need the metrics token",
                headers={"WWW-Authenticate": "Bearer"},
            )
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
